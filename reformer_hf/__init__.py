"""reformer_hf: the Reformer as a Hugging Face transformers model package."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from .cache import ReformerCache
from .configuration import ReformerConfig
from .modeling import ReformerForCausalLM, ReformerForSequenceClassification, ReformerModel, ReformerPreTrainedModel
from .seq2seq import ReformerForConditionalGeneration, ReformerSeq2SeqCache, translation_config
from .tokenization import ReformerByteTokenizer, register_tokenizer_auto_class, train_bpe_tokenizer

__all__ = [
    "ReformerCache",
    "ReformerConfig",
    "ReformerForCausalLM",
    "ReformerForConditionalGeneration",
    "ReformerForSequenceClassification",
    "ReformerModel",
    "ReformerPreTrainedModel",
    "ReformerSeq2SeqCache",
    "ReformerByteTokenizer",
    "train_bpe_tokenizer",
    "translation_config",
]

AutoConfig.register(ReformerConfig.model_type, ReformerConfig, exist_ok=True)
AutoModel.register(ReformerConfig, ReformerModel, exist_ok=True)
AutoModelForCausalLM.register(ReformerConfig, ReformerForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(ReformerConfig, ReformerForSequenceClassification, exist_ok=True)
AutoModelForSeq2SeqLM.register(ReformerConfig, ReformerForConditionalGeneration, exist_ok=True)
AutoTokenizer.register(ReformerConfig, tokenizer_class=ReformerByteTokenizer, exist_ok=True)
register_tokenizer_auto_class()

# trust_remote_code: save_pretrained copies the code into the folder and writes auto_map entries,
# so the folder loads where this package is not installed.
ReformerConfig.register_for_auto_class()
ReformerModel.register_for_auto_class("AutoModel")
ReformerForCausalLM.register_for_auto_class("AutoModelForCausalLM")
ReformerForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
ReformerForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
