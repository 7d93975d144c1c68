"""reformer_hf: the Reformer as a Hugging Face transformers model package."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .configuration import ReformerConfig
from .modeling import ReformerForCausalLM, ReformerForSequenceClassification, ReformerModel, ReformerPreTrainedModel
from .tokenization import ReformerByteTokenizer, register_tokenizer_auto_class, train_bpe_tokenizer

__all__ = [
    "ReformerConfig",
    "ReformerForCausalLM",
    "ReformerForSequenceClassification",
    "ReformerModel",
    "ReformerPreTrainedModel",
    "ReformerByteTokenizer",
    "train_bpe_tokenizer",
]

AutoConfig.register(ReformerConfig.model_type, ReformerConfig, exist_ok=True)
AutoModel.register(ReformerConfig, ReformerModel, exist_ok=True)
AutoModelForCausalLM.register(ReformerConfig, ReformerForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(ReformerConfig, ReformerForSequenceClassification, exist_ok=True)
AutoTokenizer.register(ReformerConfig, tokenizer_class=ReformerByteTokenizer, exist_ok=True)
register_tokenizer_auto_class()
