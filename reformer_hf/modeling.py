"""ReformerPreTrainedModel, ReformerModel and the task heads."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, SequenceClassifierOutput
from transformers.utils import logging

from . import compat
from .blocks import AttentionBlock, FeedForwardBlock
from .cache import ReformerCache
from .configuration import ReformerConfig
from .embeddings import AxialPositionEmbeddings, ReformerEmbeddings
from .forward_checks import (
    check_attention_mask,
    check_cache_continuation,
    check_labels_batch,
    refuse_unknown_keywords,
)
from .generation import ReformerGenerationMixin
from .layer_norm import ReformerLayerNorm
from .losses import chunked_lm_loss, mean_over_items, shifted_token_losses
from .reversible import ReformerStack, ReversibleLayer
from .stack_running import continue_from_cache, default_position_ids, run_padded_stack

logger = logging.get_logger(__name__)

@dataclass
class ReformerModelOutput(BaseModelOutputWithPast):
    """last_hidden_state: (batch, length, 2 * hidden_size), the two residual streams concatenated
    and normalised.  residual_streams: the two streams (y1, y2) before that, instead of
    last_hidden_state, when the forward is asked for them (`return_residual_streams=True`).
    The cache is in the field the installed transformers names it (compat.CACHE_FIELD);
    `past_key_values` reads it in every version."""

    residual_streams: tuple = None


class ReformerCausalLMOutput(CausalLMOutputWithPast):
    """transformers' causal LM output; the cache as in ReformerModelOutput."""


# Every head is the shared stack plus a small projection, so a folder saved from any head loads as any head.
REMOTE_CODE_AUTO_MAP = {
    "AutoModel": "ReformerModel",
    "AutoModelForCausalLM": "ReformerForCausalLM",
    "AutoModelForSequenceClassification": "ReformerForSequenceClassification",
}


class ReformerPreTrainedModel(PreTrainedModel):
    """The heads' base.  `gradient_checkpointing_enable()` (and `TrainingArguments(gradient_checkpointing=True)`)
    recompute each layer of a plain stack (reversible=False) in the backward pass instead of keeping its
    activations; a reversible stack keeps one copy of the streams whatever the depth already, so there it
    changes nothing and says so once in the log (see ReformerStack)."""

    config_class = ReformerConfig
    base_model_prefix = "reformer"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # Every head divides its summed loss by Trainer's `num_items_in_batch` when given (mean_over_items),
    # so Trainer must pass it and not divide the loss by the accumulation steps again.
    accepts_loss_kwargs = True
    _no_split_modules = ["ReversibleLayer"]

    def __init__(self, config, *inputs, **kwargs):
        # A config edited after construction (`config.num_buckets = 5`) is checked again before any layer exists.
        # (Checked by its method, not its class: a trust_remote_code folder brings its own ReformerConfig class.)
        if not callable(getattr(config, "validate_reformer", None)):
            raise TypeError(f"{type(self).__name__} needs a reformer_hf ReformerConfig; got {type(config).__name__}.")
        config.validate_reformer()
        super().__init__(config, *inputs, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save_pretrained; for a class registered for trust_remote_code (the package's
        __init__ does that) config.json's auto_map names every head, not only the saved one."""
        if self._auto_class is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            heads = {auto: f"{module}.{name}" for auto, name in REMOTE_CODE_AUTO_MAP.items()}
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **heads}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, AxialPositionEmbeddings):
            for weight in module.weights:
                nn.init.normal_(weight, mean=0.0, std=self.config.axial_norm_std)
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
        self.encoder = ReformerStack(layers, config.reversible, config.reversible_stored_layers)
        self.layer_norm = ReformerLayerNorm(2 * config.hidden_size, eps=config.layer_norm_eps,
                                            backend=config.attn_backend)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def _check_inputs(self, input_ids, inputs_embeds, attention_mask, position_ids, output_attentions, past_length=0,
                      decoding=False):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("ReformerModel: pass exactly one of input_ids and inputs_embeds.")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"ReformerModel: expected inputs of shape (batch >= 1, length >= 1), got {tuple(shape)}.")
        if inputs_embeds is not None and inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"ReformerModel: inputs_embeds has last dimension {inputs_embeds.shape[-1]}; "
                f"expected hidden_size={self.config.hidden_size}."
            )
        if attention_mask is not None:
            check_attention_mask(attention_mask, shape, position_ids, past_length, decoding)
        if position_ids is not None and tuple(position_ids.shape[-1:]) != tuple(shape[-1:]):
            raise ValueError(
                f"ReformerModel: position_ids has shape {tuple(position_ids.shape)}; expected (batch, {shape[1]})."
            )
        if output_attentions:
            raise ValueError(
                "ReformerModel: output_attentions=True is not supported; LSH and local attention never "
                "build the full attention matrix."
            )
        return shape

    def _check_index_ranges(self, input_ids, position_ids, decoding):
        """input_ids in [0, vocab_size) and position_ids in [0, max_sequence_length), in one reduction.

        The answer is read on the host (one synchronisation) except in a decoding step off the CPU (a
        pass after a filled cache, on a GPU), where waiting for it would stall every token, and under
        torch.compile, where reading it would end the graph: there the device asserts it instead, and
        a bad index stops the run with this message as an assertion.
        """
        vocab_size, limit = self.config.vocab_size, self.config.max_sequence_length
        checks = [(position_ids.min() < 0) | (position_ids.max() >= limit)]
        if input_ids is not None:
            checks.append((input_ids.min() < 0) | (input_ids.max() >= vocab_size))
        out_of_range = torch.stack(checks)
        if torch.compiler.is_compiling() or (decoding and out_of_range.device.type != "cpu"):
            torch._assert_async(~out_of_range.any(), f"ReformerModel: input_ids must lie in [0, {vocab_size}) and "
                                                     f"position_ids in [0, {limit})")
            return
        bad_positions, *bad_ids = out_of_range.tolist()
        if bad_positions:
            raise ValueError(
                f"ReformerModel: position_ids hold values from {int(position_ids.min())} to {int(position_ids.max())}; "
                f"allowed are 0 to {limit - 1}, the positions the model covers (max_position_embeddings, and the "
                "product of axial_pos_shape with axial embeddings)."
            )
        if bad_ids and bad_ids[0]:
            raise ValueError(
                f"ReformerModel: input_ids hold values from {int(input_ids.min())} to {int(input_ids.max())}; "
                f"allowed are token ids 0 to {vocab_size - 1} (vocab_size={vocab_size})."
            )

    def _resolve_cache(self, past_key_values, use_cache, batch, length, cache_position, attention_mask):
        """The generation cache this pass fills or reads, or None; raises on one that cannot be used."""
        if past_key_values is not None and not isinstance(past_key_values, ReformerCache):
            raise ValueError(
                f"ReformerModel: past_key_values must be a ReformerCache (as returned by a previous call with "
                f"use_cache=True), got {type(past_key_values).__name__}."
            )
        wants_cache = past_key_values is not None or use_cache
        if wants_cache and not self.config.is_decoder:
            raise ValueError(
                f"ReformerModel: use_cache={use_cache} (past_key_values={type(past_key_values).__name__}) needs a "
                "causal model: a bidirectional one (is_decoder=False) changes earlier outputs with every new token."
            )
        if use_cache is None:
            wants_cache = past_key_values is not None or (
                self.config.use_cache and self.config.is_decoder and not self.training
            )
        if not wants_cache:
            return None
        cache = past_key_values if past_key_values is not None else ReformerCache(self.config)
        if cache.is_filled and cache.batch_size != batch:
            raise ValueError(
                f"ReformerModel: the inputs have batch size {batch} but past_key_values holds {cache.batch_size} rows."
            )
        check_cache_continuation(cache, length, cache_position, attention_mask)
        return cache

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        past_key_values=None,
        use_cache=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        cache=None,
        cache_position=None,
        return_residual_streams=False,
    ):
        """past_key_values (or `cache`, its name from transformers 5.25 on): a ReformerCache (see cache.py).  An empty one, or None with use_cache, is
        filled by this pass (the prefill); a filled one makes the inputs the positions that follow the
        cached ones, and then attention_mask covers the cached and the new positions (batch,
        past + length), or the new ones only (batch, length; position_ids are then required), and
        position_ids (batch, length) default to the count of real (non-padding) positions before each
        one (their sequence indices where nothing is padded).  A decoding step reads no number on
        the host that changes from step to step, so with a fixed-capacity cache and a mask of the new
        positions only it compiles into one graph that serves every step (cache.py).
        use_cache: return a cache; defaults to config.use_cache for a causal model in eval mode.
        cache_position: the positions of the inputs in the cached sequence, as generate() passes them
        (checked against the cache).
        return_residual_streams: return the two streams (y1, y2) as `residual_streams` and no
        last_hidden_state, for a head that applies `final_output` chunk by chunk.
        No **kwargs: an unknown keyword is refused by Python, and generate() hands the model, as a
        seq2seq encoder, only the arguments named here (it filters by the signature).
        """
        past_key_values = compat.merge_cache_arguments("ReformerModel", past_key_values, cache)
        decoding = isinstance(past_key_values, ReformerCache) and past_key_values.is_filled
        # The cached positions where the host knows them; None for a filled fixed-capacity cache.
        past_length = past_key_values.known_length() if isinstance(past_key_values, ReformerCache) else 0
        batch, length = self._check_inputs(
            input_ids, inputs_embeds, attention_mask, position_ids, output_attentions, past_length, decoding
        )
        cache = self._resolve_cache(past_key_values, use_cache, batch, length, cache_position, attention_mask)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        if position_ids is None:
            first_new = past_length if past_length is not None else cache.index.next
            position_ids = default_position_ids(attention_mask, first_new, batch, length, device)
        self._check_index_ranges(input_ids, position_ids, decoding=decoding)

        hidden = self.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds, position_ids=position_ids)
        pad_mask = None if attention_mask is None else attention_mask == 0  # (batch, past + length) or (batch, length)
        if decoding:
            new_is_pad = (pad_mask[:, -length:] if pad_mask is not None
                          else torch.zeros(batch, length, dtype=torch.bool, device=device))
            y1, y2, all_hidden = continue_from_cache(
                self.encoder, self.config, hidden, new_is_pad, cache, cache.layers, output_hidden_states
            )
        else:
            layer_caches = None
            if cache is not None:
                cache.begin_prefill(hidden, pad_mask)
                layer_caches = cache.layers
            y1, y2, all_hidden = run_padded_stack(
                self.encoder, self.config, hidden, pad_mask, layer_caches, output_hidden_states
            )
            if cache is not None:
                cache.advance(length)

        if return_residual_streams:
            # A head that normalises chunk by chunk (chunked_lm_loss): the (length, 2 * hidden)
            # concatenation and its normalised copy are never built for the whole sequence.
            return ReformerModelOutput(hidden_states=all_hidden, residual_streams=(y1, y2), **compat.cache_output(cache))
        sequence_output = self.final_output(y1, y2)
        if not return_dict:
            return tuple(v for v in (sequence_output, cache, all_hidden) if v is not None)
        return ReformerModelOutput(last_hidden_state=sequence_output, hidden_states=all_hidden,
                                   **compat.cache_output(cache))

    def final_output(self, y1, y2):
        """The two residual streams (batch, n, hidden) each -> normalised (batch, n, 2 * hidden),
        in the dtype `nn.LayerNorm` gives (float32 under autocast)."""
        return self.dropout(nn.LayerNorm.forward(self.layer_norm, torch.cat([y1, y2], dim=-1)))

    def head_input(self, y1, y2):
        """`final_output` as the linear layer of a head reads it: where the layer norm kernel runs
        (`ReformerLayerNorm`: CUDA autocast, long inputs) it is written in autocast's dtype, which
        that layer would cast it to, in one pass."""
        return self.dropout(self.layer_norm(torch.cat([y1, y2], dim=-1)))


class ReformerForCausalLM(ReformerPreTrainedModel, ReformerGenerationMixin):
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
        past_key_values=None,
        use_cache=None,
        labels=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        logits_to_keep=0,
        num_items_in_batch=None,
        cache=None,
        **kwargs,
    ):
        """labels: (batch, length) token ids aligned with the inputs (the model shifts them); -100 is ignored.

        With `chunk_size_lm_head` set and labels given, the loss is computed over chunks of that
        many positions, each chunk's logits rebuilt in the backward pass instead of kept, and
        `logits` is returned as None: the (length, vocab) logits are what that setting avoids.
        `logits_to_keep=n` computes logits for the last n positions only (generation).
        past_key_values, use_cache: the generation cache, as in ReformerModel.forward; with labels
        and no use_cache, no cache is built (scoring a text does not continue it).
        """
        refuse_unknown_keywords(self, kwargs)
        check_labels_batch(self, labels, input_ids, inputs_embeds, per_position=True)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        past_key_values = compat.merge_cache_arguments("ReformerForCausalLM", past_key_values, cache)
        if labels is not None and use_cache is None:
            use_cache = False
        chunk = self.config.chunk_size_lm_head
        chunked_loss = labels is not None and bool(chunk)
        outputs = self.reformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            cache_position=kwargs.get("cache_position"),
            return_residual_streams=True,
        )
        y1, y2 = outputs.residual_streams

        def head(y1, y2):
            return self.lm_head(self.reformer.head_input(y1, y2))

        loss, logits = None, None
        if chunked_loss:
            loss_sum, count = chunked_lm_loss(head, outputs.residual_streams, labels, chunk)
        else:
            # Positions are normalised one by one, so only those kept are.
            logits = head(y1, y2) if not logits_to_keep else head(y1[:, -logits_to_keep:], y2[:, -logits_to_keep:])
            if labels is not None:
                loss_sum, count = shifted_token_losses(logits, labels)
        if labels is not None:
            loss = mean_over_items(loss_sum, count, num_items_in_batch)

        cache = compat.output_cache(outputs)
        if not return_dict:
            return tuple(v for v in (loss, logits, cache, outputs.hidden_states) if v is not None)
        return ReformerCausalLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **compat.cache_output(cache)
        )


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
        """The first real position of each row (bidirectional) or the last (causal), wherever the
        padding sits."""
        if attention_mask is None:
            return hidden[:, 0] if not self.config.is_decoder else hidden[:, -1]
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        is_real = attention_mask != 0
        if not bool(is_real.any(dim=1).all()):
            logger.warning_once(
                "ReformerForSequenceClassification: a row of attention_mask is all zeros; its logits come from "
                "position 0, which is padding."
            )
        if self.config.is_decoder:
            chosen = (positions * is_real).argmax(dim=-1)
        else:
            chosen = torch.where(is_real, positions, hidden.shape[1]).argmin(dim=-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), chosen]

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
        num_items_in_batch=None,
        **kwargs,
    ):
        """labels: class ids (batch,), float targets (batch, num_labels) for multi-label, or values for
        regression; -100 ignores a class id.  The loss is the mean over the labels (class ids that are
        not -100, every target value); `num_items_in_batch` (Trainer, gradient accumulation) replaces
        that count with the step's."""
        refuse_unknown_keywords(self, kwargs)
        check_labels_batch(self, labels, input_ids, inputs_embeds, per_position=False)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.reformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        logits = self.classifier(self.pool(outputs.last_hidden_state, attention_mask))
        loss = None if labels is None else mean_over_items(*self.classification_loss(logits, labels),
                                                           num_items_in_batch)
        if not return_dict:
            return tuple(v for v in (loss, logits, outputs.hidden_states) if v is not None)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    def classification_loss(self, logits, labels):
        """The summed loss (float32) and the number of labels it counts."""
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
            targets = labels.float().view(logits.shape[0], -1).squeeze(-1)
            return nn.functional.mse_loss(logits.squeeze(-1).float(), targets, reduction="sum"), targets.numel()
        if problem_type == "single_label_classification":
            class_ids = labels.view(-1)
            loss_sum = nn.functional.cross_entropy(logits.float().view(-1, self.num_labels), class_ids,
                                                   ignore_index=-100, reduction="sum")
            return loss_sum, (class_ids != -100).sum()
        if problem_type == "multi_label_classification":
            return (nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum"),
                    labels.numel())
        raise ValueError(
            f"config.problem_type={problem_type!r}; expected 'regression', 'single_label_classification' "
            "or 'multi_label_classification'."
        )
