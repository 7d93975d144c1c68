"""ReformerPreTrainedModel, ReformerModel and the task heads."""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import ModelOutput

from .attention import SELF_ATTENTION_CLASSES
from .configuration import ReformerConfig
from .embeddings import AxialPositionEmbeddings, ReformerEmbeddings
from .reversible import ReformerStack, ReversibleLayer


class AttentionBlock(nn.Module):
    """F of a reversible layer: layer norm -> self-attention -> output projection -> dropout."""

    def __init__(self, config, kind):
        super().__init__()
        self.kind = kind
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attention = SELF_ATTENTION_CLASSES[kind](config)
        inner = config.num_attention_heads * config.head_size
        self.output = nn.Linear(inner, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden, pad_mask=None):
        return self.dropout(self.output(self.self_attention(self.layer_norm(hidden), pad_mask)))


class FeedForwardBlock(nn.Module):
    """G of a reversible layer: layer norm -> dense -> dropout -> activation -> dense -> dropout.

    Applied to `chunk_size_feed_forward` positions at a time when that is set: every position
    is independent, so the chunks give exactly the unchunked result with a smaller peak.
    """

    def __init__(self, config):
        super().__init__()
        self.chunk_size = config.chunk_size_feed_forward
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dense_in = nn.Linear(config.hidden_size, config.feed_forward_size)
        self.activation = ACT2FN[config.hidden_act]
        self.dense_out = nn.Linear(config.feed_forward_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def transform(self, hidden):
        hidden = self.activation(self.dropout(self.dense_in(self.layer_norm(hidden))))
        return self.dropout(self.dense_out(hidden))

    def forward(self, hidden):
        if not self.chunk_size or hidden.shape[1] <= self.chunk_size:
            return self.transform(hidden)
        return torch.cat([self.transform(part) for part in hidden.split(self.chunk_size, dim=1)], dim=1)


def padding_multiple(config):
    """Inputs are padded to a multiple of every chunk length the stack uses."""
    multiple = 1
    if "lsh" in config.attn_layers:
        multiple = math.lcm(multiple, config.lsh_attn_chunk_length)
    if "local" in config.attn_layers:
        multiple = math.lcm(multiple, config.local_attn_chunk_length)
    return multiple


@dataclass
class ReformerModelOutput(ModelOutput):
    """last_hidden_state: (batch, length, 2 * hidden_size), the two residual streams concatenated."""

    last_hidden_state: torch.FloatTensor = None
    past_key_values: object = None
    hidden_states: tuple = None
    attentions: tuple = None


@dataclass
class ReformerCausalLMOutput(ModelOutput):
    loss: torch.FloatTensor = None
    logits: torch.FloatTensor = None
    past_key_values: object = None
    hidden_states: tuple = None
    attentions: tuple = None


class ReformerPreTrainedModel(PreTrainedModel):
    config_class = ReformerConfig
    base_model_prefix = "reformer"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["ReversibleLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, AxialPositionEmbeddings):
            for weight in module.weights:
                nn.init.normal_(weight, mean=0.0, std=getattr(self.config, "axial_norm_std", 1.0))
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ReformerModel(ReformerPreTrainedModel):
    """Embeddings -> stack of reversible layers -> layer norm over the concatenated streams."""

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = ReformerEmbeddings(config)
        layers = [ReversibleLayer(AttentionBlock(config, kind), FeedForwardBlock(config)) for kind in config.attn_layers]
        self.encoder = ReformerStack(layers, config.reversible)
        self.layer_norm = nn.LayerNorm(2 * config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def _check_inputs(self, input_ids, inputs_embeds, attention_mask, position_ids, output_attentions):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("ReformerModel: pass exactly one of input_ids and inputs_embeds.")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        if len(shape) != 2 or shape[1] == 0:
            raise ValueError(f"ReformerModel: expected inputs of shape (batch, length >= 1), got {tuple(shape)}.")
        if inputs_embeds is not None and inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"ReformerModel: inputs_embeds has last dimension {inputs_embeds.shape[-1]}; "
                f"expected hidden_size={self.config.hidden_size}."
            )
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(shape):
            raise ValueError(
                f"ReformerModel: attention_mask has shape {tuple(attention_mask.shape)}; "
                f"expected {tuple(shape)} to match the inputs."
            )
        if position_ids is not None and tuple(position_ids.shape[-1:]) != tuple(shape[-1:]):
            raise ValueError(
                f"ReformerModel: position_ids has shape {tuple(position_ids.shape)}; expected (batch, {shape[1]})."
            )
        limit = self.config.max_sequence_length
        longest = shape[1] if position_ids is None else int(position_ids.max()) + 1
        if longest > limit:
            raise ValueError(
                f"ReformerModel: sequence length {longest} exceeds the model's maximum of {limit} positions "
                "(max_position_embeddings, and the product of axial_pos_shape with axial embeddings)."
            )
        if output_attentions:
            raise ValueError(
                "ReformerModel: output_attentions=True is not supported; LSH and local attention never "
                "build the full attention matrix."
            )
        return shape

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        **kwargs,
    ):
        batch, length = self._check_inputs(input_ids, inputs_embeds, attention_mask, position_ids, output_attentions)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        if position_ids is None:
            position_ids = torch.arange(length, device=device).expand(batch, length)

        hidden = self.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds, position_ids=position_ids)
        pad_mask = None if attention_mask is None else attention_mask == 0
        padded_length = -(-length // padding_multiple(self.config)) * padding_multiple(self.config)
        if padded_length != length:
            hidden = nn.functional.pad(hidden, (0, 0, 0, padded_length - length))
            if pad_mask is None:
                pad_mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
            pad_mask = nn.functional.pad(pad_mask, (0, padded_length - length), value=True)
        if pad_mask is not None and not pad_mask.any():
            pad_mask = None

        y1, y2, all_hidden = self.encoder(hidden, pad_mask, output_hidden_states)
        sequence_output = self.dropout(self.layer_norm(torch.cat([y1, y2], dim=-1)))[:, :length]
        if all_hidden is not None:
            all_hidden = tuple(h[:, :length] for h in all_hidden)
        if not return_dict:
            return tuple(v for v in (sequence_output, all_hidden) if v is not None)
        return ReformerModelOutput(last_hidden_state=sequence_output, hidden_states=all_hidden)


def shifted_token_losses(logits, labels):
    """Summed next-token cross-entropy (float32) and the number of counted targets.

    logits (batch, length, vocab) predict labels (batch, length) shifted by one; -100 is ignored.
    """
    targets = labels[:, 1:]
    loss_sum = nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss_sum, (targets != -100).sum()


class ReformerForCausalLM(ReformerPreTrainedModel, GenerationMixin):
    """Reformer with a language-modelling head over the concatenated residual streams."""

    def __init__(self, config):
        if not config.is_decoder:
            raise ValueError(
                "ReformerForCausalLM needs a causal model: set ReformerConfig(is_decoder=True) "
                f"(got is_decoder={config.is_decoder})."
            )
        super().__init__(config)
        self.reformer = ReformerModel(config)
        self.lm_head = nn.Linear(2 * config.hidden_size, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        logits_to_keep=0,
        num_items_in_batch=None,
        **kwargs,
    ):
        """labels: (batch, length) token ids aligned with the inputs (the model shifts them); -100 is ignored.

        With `chunk_size_lm_head` set and labels given, the loss is computed over chunks of that
        many positions, each chunk's logits rebuilt in the backward pass instead of kept, and
        `logits` is returned as None: the (length, vocab) logits are what that setting avoids.
        `logits_to_keep=n` computes logits for the last n positions only (generation).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.reformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        if labels is not None and tuple(labels.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; expected {tuple(hidden.shape[:2])}.")

        loss, logits = None, None
        chunk = self.config.chunk_size_lm_head
        if labels is not None and chunk:
            loss_sum, count = chunked_lm_loss(self.lm_head, hidden, labels, chunk)
        else:
            logits = self.lm_head(hidden if not logits_to_keep else hidden[:, -logits_to_keep:])
            if labels is not None:
                loss_sum, count = shifted_token_losses(logits, labels)
        if labels is not None:
            denominator = num_items_in_batch if num_items_in_batch is not None else count
            loss = loss_sum / torch.as_tensor(denominator, device=loss_sum.device).clamp(min=1)

        if not return_dict:
            return tuple(v for v in (loss, logits, outputs.hidden_states) if v is not None)
        return ReformerCausalLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


def chunked_lm_loss(lm_head, hidden, labels, chunk_size):
    """Summed shifted cross-entropy over position chunks without keeping any chunk's logits.

    Each chunk's logits are recomputed in the backward pass (activation checkpointing), so the
    peak holds one (chunk_size, vocab) block instead of (length, vocab).
    """
    targets = nn.functional.pad(labels[:, 1:], (0, 1), value=-100)

    def chunk_loss(hidden_chunk, target_chunk):
        logits = lm_head(hidden_chunk).float()
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target_chunk.reshape(-1), ignore_index=-100, reduction="sum"
        )

    loss_sum = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[1], chunk_size):
        hidden_chunk = hidden[:, start : start + chunk_size]
        target_chunk = targets[:, start : start + chunk_size]
        loss_sum = loss_sum + torch.utils.checkpoint.checkpoint(chunk_loss, hidden_chunk, target_chunk, use_reentrant=False)
    return loss_sum, (targets != -100).sum()


class ReformerClassificationHead(nn.Module):
    """Pooled representation -> dense -> tanh -> dropout -> labels."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(2 * config.hidden_size, config.hidden_size)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pooled):
        return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(pooled)))))


class ReformerForSequenceClassification(ReformerPreTrainedModel):
    """Sequence classification or regression.

    Pools the first position for a bidirectional model (like BERT), and the last non-padding
    position for a causal one (the only position that has seen the whole sequence).
    """

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.reformer = ReformerModel(config)
        self.classifier = ReformerClassificationHead(config)
        self.post_init()

    def pool(self, hidden, attention_mask):
        if not self.config.is_decoder:
            return hidden[:, 0]
        if attention_mask is None:
            return hidden[:, -1]
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (positions * (attention_mask != 0)).argmax(dim=-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        **kwargs,
    ):
        """labels: class ids (batch,), float targets (batch, num_labels) for multi-label, or values for regression."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.reformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        logits = self.classifier(self.pool(outputs.last_hidden_state, attention_mask))
        loss = None if labels is None else self.classification_loss(logits, labels)
        if not return_dict:
            return tuple(v for v in (loss, logits, outputs.hidden_states) if v is not None)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    def classification_loss(self, logits, labels):
        problem_type = self.config.problem_type
        if problem_type is None:
            if self.num_labels == 1:
                problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem_type = "single_label_classification"
            else:
                problem_type = "multi_label_classification"
            self.config.problem_type = problem_type
        if problem_type == "regression":
            return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float().view(logits.shape[0], -1).squeeze(-1))
        if problem_type == "single_label_classification":
            return nn.functional.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1))
        if problem_type == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        raise ValueError(
            f"config.problem_type={problem_type!r}; expected 'regression', 'single_label_classification' "
            "or 'multi_label_classification'."
        )
