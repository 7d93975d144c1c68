"""reformer_hf: the Reformer as a Hugging Face transformers model package."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration import ReformerConfig
from .modeling import ReformerForCausalLM, ReformerForSequenceClassification, ReformerModel, ReformerPreTrainedModel

__all__ = [
    "ReformerConfig",
    "ReformerForCausalLM",
    "ReformerForSequenceClassification",
    "ReformerModel",
    "ReformerPreTrainedModel",
]

AutoConfig.register(ReformerConfig.model_type, ReformerConfig, exist_ok=True)
AutoModel.register(ReformerConfig, ReformerModel, exist_ok=True)
AutoModelForCausalLM.register(ReformerConfig, ReformerForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(ReformerConfig, ReformerForSequenceClassification, exist_ok=True)
