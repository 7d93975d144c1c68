"""The reversible encoder-decoder (translation): ReformerForConditionalGeneration.

    encoder  ReformerModel (bidirectional, config.attn_layers) -> (batch, src, 2 * d), layer-normed
    decoder  target embeddings (shared with the source) + positions
             -> reversible layers over two streams, y1 = x1 + F(x2, enc), y2 = x2 + G(y1),
                F = causal self-attention (config.decoder_attn_layers) then cross attention:
                    a = SelfAttention(x2);  F = a + CrossAttention(x2 + a, enc)
                (cross attention sees the self-attended state, as in a standard Transformer decoder;
                F is still a function of x2 and the encoder output only, so the layer is reversible)
             -> layer norm over the concatenated streams (2 * d)
    head     Linear(2 * d -> d), then Linear(d -> vocab) which `tie_word_embeddings` ties to the
             shared input embedding (the causal LM's head reads 2 * d features and cannot tie).

The encoder output enters every decoder layer's attention half as the reversible stack's
`context`, so its gradient is summed over the decoder layers without storing their activations.
Generation keeps a `ReformerSeq2SeqCache`: the decoder's self-attention cache (cache.py's
ReformerCache) and, per layer, the cross-attention keys and values, computed once from the
encoder output.
"""

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import Seq2SeqLMOutput

from . import compat
from .attention_functions import full_attention_sdpa
from .attention_rules import merge_heads, split_heads
from .blocks import AttentionBlock, FeedForwardBlock
from .cache import ReformerCache
from .configuration import ReformerConfig
from .embeddings import position_embeddings
from .forward_checks import refuse_unknown_keywords
from .layer_norm import ReformerLayerNorm
from .losses import mean_over_items
from .modeling import ReformerModel, ReformerModelOutput, ReformerPreTrainedModel
from .reversible import ReformerStack, ReversibleLayer
from .stack_running import continue_from_cache, default_position_ids, run_padded_stack
from .translation_pipeline import TRANSLATION_CUSTOM_PIPELINES

# ------------------------------------------------------------------------------------ presets

_WMT14_COMMON = dict(
    vocab_size=32000, attention_head_size=64, hidden_act="relu", axial_pos_embds=False,
    max_position_embeddings=1024, is_encoder_decoder=True, is_decoder=False, reversible=True,
    pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=0,
)

TRANSLATION_PRESETS = {
    # A model for tests and smoke runs: two encoder and two decoder layers of every kind.
    "tiny": dict(
        vocab_size=300, hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=64,
        attn_layers=["local", "full"], decoder_attn_layers=["local", "full"], local_attn_chunk_length=8,
        axial_pos_embds=False, max_position_embeddings=256, is_encoder_decoder=True, is_decoder=False,
        hidden_dropout_prob=0.0, local_attention_probs_dropout=0.0, full_attention_probs_dropout=0.0,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=0, tie_word_embeddings=True,
    ),
    # A few-minute model for small corpora (tens of thousands of short pairs): 3 + 3 layers of
    # d_model 256, heavy dropout against overfitting.
    "small": dict(
        _WMT14_COMMON, vocab_size=8000, hidden_size=256, num_attention_heads=4, feed_forward_size=1024,
        attn_layers=["full"] * 3, decoder_attn_layers=["full"] * 3, max_position_embeddings=512,
        hidden_dropout_prob=0.3, full_attention_probs_dropout=0.1, tie_word_embeddings=True,
    ),
    # The paper's reversible Transformer-base for WMT14 En-De (Kitaev et al. 2020, table 4: 27.6
    # BLEU after 100K steps): 6 + 6 layers, d_model 512, d_ff 2048, 8 heads, dropout 0.1, dense
    # attention (sentences are short), embedding and output projection shared.
    "wmt14-base": dict(
        _WMT14_COMMON, hidden_size=512, num_attention_heads=8, feed_forward_size=2048,
        attn_layers=["full"] * 6, decoder_attn_layers=["full"] * 6, hidden_dropout_prob=0.1,
        full_attention_probs_dropout=0.1, tie_word_embeddings=True,
    ),
    # The same model without weight sharing, as the paper trained it for 500K steps (28.0 BLEU):
    # reversible layers save enough memory that sharing the embedding and output weights is unnecessary.
    "wmt14-base-untied": dict(
        _WMT14_COMMON, hidden_size=512, num_attention_heads=8, feed_forward_size=2048,
        attn_layers=["full"] * 6, decoder_attn_layers=["full"] * 6, hidden_dropout_prob=0.1,
        full_attention_probs_dropout=0.1, tie_word_embeddings=False,
    ),
    # Transformer-big (the paper's 300K steps, 29.1 BLEU): d_model 1024, d_ff 4096, 16 heads, dropout 0.3.
    "wmt14-big": dict(
        _WMT14_COMMON, hidden_size=1024, num_attention_heads=16, feed_forward_size=4096,
        attn_layers=["full"] * 6, decoder_attn_layers=["full"] * 6, hidden_dropout_prob=0.3,
        full_attention_probs_dropout=0.3, tie_word_embeddings=False,
    ),
}


def translation_config(name="wmt14-base", **overrides):
    """The ReformerConfig of a named encoder-decoder preset (TRANSLATION_PRESETS), with field overrides.

    The positions are learned (the paper's Transformer used sinusoids); `vocab_size` should be set
    to the tokenizer's.
    """
    if name not in TRANSLATION_PRESETS:
        raise ValueError(f"name={name!r} is not a translation preset; expected one of {sorted(TRANSLATION_PRESETS)}.")
    unknown = sorted(set(overrides) - set(ReformerConfig().to_dict()))
    if unknown:
        raise ValueError(f"overrides {unknown} are not ReformerConfig fields.")
    return ReformerConfig(**{**TRANSLATION_PRESETS[name], **overrides})


def decoder_config(config):
    """The config the decoder's layers are built from: causal, over `decoder_attn_layers`.

    A decoder never looks at later chunks, and its local attention does not wrap around (a causal
    mask hides the wrapped keys anyway, and without the ring it can decode token by token).
    """
    fields = config.to_dict()
    for key in ("architectures", "auto_map", "custom_pipelines", "model_type", "transformers_version"):
        fields.pop(key, None)
    fields.update(
        attn_layers=list(config.decoder_attn_layers), decoder_attn_layers=None, is_decoder=True,
        is_encoder_decoder=False, lsh_num_chunks_after=0, local_num_chunks_after=0, local_attn_wrap_around=False,
        tie_word_embeddings=False,
    )
    return ReformerConfig(**fields)


def shift_tokens_right(labels, pad_token_id, decoder_start_token_id):
    """Decoder inputs from labels (batch, length): start token, then labels[:, :-1]; -100 becomes padding."""
    shifted = labels.new_empty(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


# ------------------------------------------------------------------------------------ decoder layers


class CrossAttentionBlock(nn.Module):
    """Layer norm -> dense attention of the decoder positions over the encoder output -> projection -> dropout.

    Queries come from the decoder stream (hidden_size), keys and values from the encoder output
    (2 * hidden_size, the encoder's concatenated streams).
    """

    def __init__(self, config):
        super().__init__()
        self.n_heads, self.d_head = config.num_attention_heads, config.head_size
        inner = self.n_heads * self.d_head
        self.dropout_p = config.full_attention_probs_dropout
        self.layer_norm = ReformerLayerNorm(config.hidden_size, eps=config.layer_norm_eps, backend=config.attn_backend)
        self.query = nn.Linear(config.hidden_size, inner, bias=False)
        self.key = nn.Linear(2 * config.hidden_size, inner, bias=False)
        self.value = nn.Linear(2 * config.hidden_size, inner, bias=False)
        self.output = nn.Linear(inner, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def project_context(self, context):
        """Encoder output (batch, src, 2 * hidden_size) -> keys, values (batch, heads, src, d_head)."""
        return (split_heads(self.key(context), self.n_heads, self.d_head),
                split_heads(self.value(context), self.n_heads, self.d_head))

    def forward(self, hidden, keys, values, context_mask):
        """hidden (batch, length, hidden_size); context_mask (batch, src), True = encoder padding."""
        query = split_heads(self.query(self.layer_norm(hidden)), self.n_heads, self.d_head)
        out = full_attention_sdpa(query, keys, values, pad_mask=context_mask, dropout_p=self.dropout_p,
                                  training=self.training)
        return self.dropout(self.output(merge_heads(out)))


class DecoderAttentionBlock(nn.Module):
    """F of a decoder layer: causal self-attention, then cross attention on the self-attended state."""

    def __init__(self, config, kind):
        super().__init__()
        self.self_attention = AttentionBlock(config, kind)
        self.cross_attention = CrossAttentionBlock(config)

    def cross_keys_values(self, context, layer_cache):
        """Keys and values of the encoder output, from the generation cache when it holds them."""
        if layer_cache is not None and layer_cache.keys is not None:
            return layer_cache.keys, layer_cache.values
        if context is None:
            raise ValueError("DecoderAttentionBlock: no encoder output (context) and no cached cross-attention keys.")
        keys, values = self.cross_attention.project_context(context)
        if layer_cache is not None:
            layer_cache.keys, layer_cache.values = keys, values
        return keys, values

    def forward(self, hidden, pad_mask=None, layer_cache=None, context=None, context_mask=None):
        """hidden (batch, length, hidden_size); context: encoder output (batch, src, 2 * hidden_size).

        layer_cache: this layer's DecoderLayerCache during generation, else None.
        """
        self_cache = layer_cache.self_attention if layer_cache is not None else None
        attended = self.self_attention(hidden, pad_mask, self_cache)
        keys, values = self.cross_keys_values(context, layer_cache)
        if layer_cache is not None:
            layer_cache.context_mask = context_mask
        return attended + self.cross_attention(hidden + attended, keys, values, context_mask)

    def decode_step(self, hidden, layer_cache, is_pad):
        """One new position (batch, 1, hidden_size) through the self-attention cache and the cached cross keys."""
        attended = self.self_attention.decode_step(hidden, layer_cache.self_attention, is_pad)
        return attended + self.cross_attention(hidden + attended, layer_cache.keys, layer_cache.values,
                                               layer_cache.context_mask)


# ------------------------------------------------------------------------------------ generation cache


class DecoderLayerCache:
    """One decoder layer's generation state: its self-attention cache (cache.py; None where the
    self-attention cache recomputes and keeps nothing for this layer) and the cross-attention keys,
    values (batch, heads, src, d_head) and encoder padding (batch, src) of the encoder output."""

    def __init__(self, self_attention):
        self.self_attention = self_attention
        self.keys = self.values = self.context_mask = None

    def reorder(self, batch_index):
        if self.keys is not None:
            self.keys, self.values = self.keys[batch_index], self.values[batch_index]
        if self.context_mask is not None:
            self.context_mask = self.context_mask[batch_index]


class ReformerSeq2SeqCache:
    """`past_key_values` of ReformerForConditionalGeneration.

    The first decoder pass that receives it (the prefill) fills it: the self-attention state of
    each layer and the cross-attention keys and values of the encoder output, which later passes
    reuse instead of recomputing.  `generate()` reads `get_seq_length` and reorders it for beam search.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, config):
        """config: the encoder-decoder's ReformerConfig (or the decoder's, see `decoder_config`)."""
        self.self_attention = ReformerCache(decoder_config(config) if config.is_encoder_decoder else config)
        self.layers = [DecoderLayerCache(layer) for layer in self.self_attention.layers]

    def __len__(self):
        return len(self.layers)

    @property
    def batch_size(self):
        return self.self_attention.batch_size

    def get_seq_length(self, layer_idx=0):
        """Decoder positions seen so far."""
        return self.self_attention.get_seq_length(layer_idx)

    def reorder_cache(self, beam_idx):
        """Keep batch rows `beam_idx` (beam search) of the self-attention state and of the cross keys."""
        self.self_attention.reorder_cache(beam_idx)
        for layer in self.layers:
            layer.reorder(beam_idx)
        return self


# ------------------------------------------------------------------------------------ decoder


class ReformerDecoder(nn.Module):
    """Target positions + reversible decoder layers + layer norm over the concatenated streams.

    Token embeddings are not owned here: the model embeds target tokens with the encoder's
    (shared) embedding and passes them in.
    """

    def __init__(self, config):
        """config: the decoder's config (`decoder_config`)."""
        super().__init__()
        self.config = config
        self.position_embeddings = position_embeddings(config)
        self.embedding_dropout = nn.Dropout(config.hidden_dropout_prob)
        layers = [ReversibleLayer(DecoderAttentionBlock(config, kind), FeedForwardBlock(config))
                  for kind in config.attn_layers]
        self.layers = ReformerStack(layers, config.reversible, config.reversible_stored_layers)
        self.layer_norm = nn.LayerNorm(2 * config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, inputs_embeds, position_ids, pad_mask, context, context_mask, cache=None,
                output_hidden_states=False):
        """inputs_embeds (batch, length, d) of the new target positions; pad_mask (batch, past + length)
        or None; context: encoder output (batch, src, 2d), projected to cross-attention keys once per
        cache; context_mask (batch, src), True = source padding, or None.

        Returns the layer-normed concatenated streams (batch, length, 2d) and the per-layer states.
        """
        hidden = self.embedding_dropout(inputs_embeds + self.position_embeddings(position_ids).to(inputs_embeds.dtype))
        batch, length = hidden.shape[:2]
        past_length = cache.get_seq_length() if cache is not None else 0
        layer_caches = cache.layers if cache is not None else None
        self_cache = cache.self_attention if cache is not None else None
        if past_length == 0:
            if cache is not None:
                self_cache.begin_prefill(hidden, pad_mask)
            y1, y2, all_hidden = run_padded_stack(self.layers, self.config, hidden, pad_mask, layer_caches,
                                                  output_hidden_states, context, context_mask)
            if cache is not None:
                self_cache.advance(length)
        else:
            new_is_pad = (pad_mask[:, past_length:] if pad_mask is not None
                          else hidden.new_zeros(batch, length, dtype=torch.bool))
            # The cached cross-attention keys stand for `context` when decoding position by position.
            y1, y2, all_hidden = continue_from_cache(self.layers, self.config, hidden, new_is_pad, self_cache,
                                                     layer_caches, output_hidden_states, context, context_mask)
        return self.dropout(self.layer_norm(torch.cat([y1, y2], dim=-1))), all_hidden


# ------------------------------------------------------------------------------------ the model


class ReformerForConditionalGeneration(ReformerPreTrainedModel, GenerationMixin):
    """Reversible encoder-decoder with shared source/target embeddings, for translation.

    `labels` (batch, target_length) give the loss (-100 ignored); without `decoder_input_ids` the
    decoder reads the labels shifted right behind `decoder_start_token_id`.
    """

    _tied_weights_keys = {"lm_head.weight": "encoder.embeddings.word_embeddings.weight"}
    # The cache cannot drop its last positions, which assisted generation needs.
    _is_stateful = True

    def __init__(self, config):
        if not config.is_encoder_decoder:
            raise ValueError(
                "ReformerForConditionalGeneration needs an encoder-decoder config: set "
                f"ReformerConfig(is_encoder_decoder=True) (got is_encoder_decoder={config.is_encoder_decoder})."
            )
        # pipeline("translation") was removed from transformers 5; the saved config names ours instead.
        config.custom_pipelines = {**TRANSLATION_CUSTOM_PIPELINES, **(getattr(config, "custom_pipelines", None) or {})}
        super().__init__(config)
        self.encoder = ReformerModel(config)
        self.decoder = ReformerDecoder(decoder_config(config))
        self.output_projection = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_encoder(self):
        return self.encoder

    def get_decoder(self):
        return self.decoder

    def get_input_embeddings(self):
        return self.encoder.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.encoder.embeddings.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls):
        """generate() must not create a DynamicCache: the model creates its own ReformerSeq2SeqCache."""
        return False

    def prepare_decoder_input_ids_from_labels(self, labels):
        """Used by DataCollatorForSeq2Seq."""
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def prepare_inputs_for_generation(
        self,
        input_ids,
        past_key_values=None,
        attention_mask=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        use_cache=None,
        **kwargs,
    ):
        """One generation step: `input_ids` are the decoder's tokens so far; only those the cache has
        not seen are passed on, with their positions, next to the (expanded) encoder output.  The
        cache comes as past_key_values (transformers up to 5.17) or cache (5.25)."""
        past_key_values = compat.merge_cache_arguments("generate", past_key_values, kwargs.get("cache"))
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        new_ids = input_ids[:, past_length:]
        positions = torch.arange(past_length, input_ids.shape[1], device=input_ids.device).expand(new_ids.shape)
        return {
            "encoder_outputs": encoder_outputs,
            "attention_mask": attention_mask,
            "decoder_input_ids": new_ids.contiguous(),
            "decoder_attention_mask": decoder_attention_mask,
            "decoder_position_ids": positions,
            "past_key_values": past_key_values,
            "use_cache": use_cache,
        }

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        decoder_position_ids=None,
        encoder_outputs=None,
        past_key_values=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        logits_to_keep=0,
        num_items_in_batch=None,
        cache=None,
        **kwargs,
    ):
        """input_ids / inputs_embeds, attention_mask (batch, src): the source (or `encoder_outputs`).
        decoder_input_ids / decoder_inputs_embeds (batch, length): the target positions after those
        in `past_key_values`; decoder_attention_mask covers the cached and the new ones (batch,
        past + length); decoder_position_ids default to the count of real positions before each
        (stack_running.default_position_ids).
        use_cache: return a ReformerSeq2SeqCache (default: config.use_cache in eval mode).
        `logits_to_keep=n` computes logits for the last n positions only.
        kwargs: only what generate() passes besides these (forward_checks.refuse_unknown_keywords).
        """
        refuse_unknown_keywords(self, kwargs)
        self._check_batch_sizes(input_ids=input_ids, inputs_embeds=inputs_embeds, encoder_outputs=encoder_outputs,
                                decoder_input_ids=decoder_input_ids, decoder_inputs_embeds=decoder_inputs_embeds,
                                labels=labels)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        past_key_values = compat.merge_cache_arguments("ReformerForConditionalGeneration", past_key_values, cache)
        if output_attentions:
            raise ValueError("ReformerForConditionalGeneration: output_attentions=True is not supported; LSH and "
                             "local attention never build the full attention matrix.")
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        if (decoder_input_ids is None) == (decoder_inputs_embeds is None):
            raise ValueError("ReformerForConditionalGeneration: pass exactly one of decoder_input_ids and "
                             "decoder_inputs_embeds (or labels, which are shifted right into decoder_input_ids).")
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds, use_cache=False,
                                           output_hidden_states=output_hidden_states, return_dict=True)
        elif not isinstance(encoder_outputs, ReformerModelOutput):
            encoder_outputs = ReformerModelOutput(last_hidden_state=encoder_outputs[0])
        encoder_hidden = encoder_outputs.last_hidden_state
        context_mask = self._context_mask(attention_mask, encoder_hidden)

        decoder_inputs_embeds = (decoder_inputs_embeds if decoder_inputs_embeds is not None
                                 else self.get_input_embeddings()(decoder_input_ids))
        batch, length = decoder_inputs_embeds.shape[:2]
        if labels is not None and tuple(labels.shape) != (batch, length):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; expected {(batch, length)}, one per decoder "
                             "position.")
        cache = self._resolve_cache(past_key_values, use_cache, batch)
        past_length = cache.get_seq_length() if cache is not None else 0
        decoder_pad_mask = self._decoder_pad_mask(decoder_attention_mask, batch, past_length + length)
        if decoder_position_ids is None:
            decoder_position_ids = default_position_ids(decoder_attention_mask, past_length, batch, length,
                                                        decoder_inputs_embeds.device)
        limit = self.config.max_sequence_length
        if int(decoder_position_ids.max()) + 1 > limit:
            raise ValueError(f"ReformerForConditionalGeneration: decoder position {int(decoder_position_ids.max())} is "
                             f"beyond the model's maximum of {limit} positions.")

        decoder_hidden, decoder_states = self.decoder(
            decoder_inputs_embeds, decoder_position_ids, decoder_pad_mask, encoder_hidden, context_mask, cache,
            bool(output_hidden_states),
        )
        if logits_to_keep:
            decoder_hidden = decoder_hidden[:, -logits_to_keep:]
        logits = self.lm_head(self.output_projection(decoder_hidden))

        loss = None
        if labels is not None:
            loss_sum = nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                   ignore_index=-100, reduction="sum")
            loss = mean_over_items(loss_sum, (labels != -100).sum(), num_items_in_batch)

        output = Seq2SeqLMOutput(
            loss=loss, logits=logits, **compat.cache_output(cache), decoder_hidden_states=decoder_states,
            encoder_last_hidden_state=encoder_hidden, encoder_hidden_states=encoder_outputs.hidden_states,
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _check_batch_sizes(**inputs):
        """Every source, decoder input and labels given holds the same number of rows, at least one
        (a source of 2 rows with 3 decoder rows broadcast in the cross attention); checked before the
        encoder runs.  encoder_outputs: a model output or a tuple whose first item is the encoder's
        last hidden state."""
        rows = {}
        for name, value in inputs.items():
            if value is None:
                continue
            tensor = value[0] if name == "encoder_outputs" else value
            if tensor.dim() < 2:
                raise ValueError(f"ReformerForConditionalGeneration: {name} has shape {tuple(tensor.shape)}; expected "
                                 "(batch, length, ...).")
            if tensor.shape[0] == 0:
                raise ValueError(f"ReformerForConditionalGeneration: {name} has batch size 0; expected at least one "
                                 "row.")
            rows[name] = tensor.shape[0]
        first = next(iter(rows), None)
        for name, count in rows.items():
            if count != rows[first]:
                raise ValueError(f"ReformerForConditionalGeneration: {name} has {count} rows but {first} has "
                                 f"{rows[first]}; every input needs one row per example.")

    def _context_mask(self, attention_mask, encoder_hidden):
        """Encoder padding (batch, src), True = padding, or None."""
        if attention_mask is None:
            return None
        expected = tuple(encoder_hidden.shape[:2])
        if tuple(attention_mask.shape) != expected:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected {expected}, one entry "
                             "per source position.")
        return attention_mask == 0

    @staticmethod
    def _decoder_pad_mask(decoder_attention_mask, batch, total_length):
        if decoder_attention_mask is None:
            return None
        if tuple(decoder_attention_mask.shape) != (batch, total_length):
            raise ValueError(f"decoder_attention_mask has shape {tuple(decoder_attention_mask.shape)}; expected "
                             f"{(batch, total_length)}, one entry per cached and new decoder position.")
        return decoder_attention_mask == 0

    def _resolve_cache(self, past_key_values, use_cache, batch):
        if past_key_values is not None and not isinstance(past_key_values, ReformerSeq2SeqCache):
            raise ValueError(
                "ReformerForConditionalGeneration: past_key_values must be a ReformerSeq2SeqCache (as returned by a "
                f"previous call with use_cache=True), got {type(past_key_values).__name__}."
            )
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if past_key_values is None and not use_cache:
            return None
        cache = past_key_values if past_key_values is not None else ReformerSeq2SeqCache(self.config)
        if cache.get_seq_length() and cache.batch_size != batch:
            raise ValueError(f"ReformerForConditionalGeneration: the decoder inputs have batch size {batch} but "
                             f"past_key_values holds {cache.batch_size} rows.")
        return cache
