"""ReformerConfig: every option of the model, validated with errors that name the field."""

import math
import os

from transformers import PreTrainedConfig

from .compat import CONFIG_SOURCE_KEYWORD, config_json_dict, pop_config_source
from .tokenization import BOS_ID, BYTE_VOCAB_SIZE, EOS_ID, PAD_ID

ATTENTION_KINDS = ("lsh", "local", "full")
LSH_WINDOW_MODES = ("bucket_window", "chunk")
ATTENTION_BACKENDS = ("auto", "torch", "triton")
HIDDEN_ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu", "swish", "tanh")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

# Fields whose default, standing in for a value missing from a config file, would build a different
# network or compute different outputs from the same weights.  Every config this package saves writes
# them (transformers writes each field it does not know itself), so a file without one is damaged.
# `is_encoder_decoder` is not here: transformers writes it only when True, and False is its meaning
# when absent; an encoder-decoder's file must also hold ENCODER_DECODER_FIELDS.
ARCHITECTURE_FIELDS = (
    "vocab_size", "hidden_size", "num_attention_heads", "attention_head_size", "feed_forward_size", "hidden_act",
    "attn_layers", "is_decoder", "reversible", "tie_word_embeddings", "layer_norm_eps",
    "num_hashes", "num_buckets", "hash_seed", "lsh_attn_chunk_length", "lsh_num_chunks_before",
    "lsh_num_chunks_after", "lsh_window_mode",
    "local_attn_chunk_length", "local_num_chunks_before", "local_num_chunks_after", "local_attn_wrap_around",
    "axial_pos_embds", "axial_pos_shape", "axial_pos_embds_dim", "max_position_embeddings",
)
ENCODER_DECODER_FIELDS = ("decoder_attn_layers", "decoder_start_token_id")

# Flags that must be True or False (a string such as "False" is truthy and would silently mean True).
BOOLEAN_FIELDS = ("is_decoder", "is_encoder_decoder", "reversible", "tie_word_embeddings", "axial_pos_embds",
                  "local_attn_wrap_around", "use_cache")
# transformers' own output flags: True, False or None (None defers to the model's default).
OPTIONAL_BOOLEAN_FIELDS = ("output_hidden_states", "return_dict")
TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
DROPOUT_FIELDS = ("hidden_dropout_prob", "lsh_attention_probs_dropout", "local_attention_probs_dropout",
                  "full_attention_probs_dropout")
# torch.Generator.manual_seed takes seeds in [0, 2**64); the rotations are drawn from one seeded with hash_seed.
HASH_SEED_LIMIT = 2**64


def _fail(field, value, allowed):
    raise ValueError(f"ReformerConfig.{field}={value!r} is invalid: {allowed}.")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(field, value, minimum):
    if not _is_int(value) or value < minimum:
        _fail(field, value, f"expected an integer >= {minimum}")


def _check_bool(field, value, optional=False):
    if not isinstance(value, bool) and not (optional and value is None):
        _fail(field, value, "expected True or False" + (" (or None)" if optional else "")
              + f", not a {type(value).__name__}")


def _check_number(field, value, minimum, allow_minimum):
    """A finite real number (not a bool) above `minimum`, or equal to it when `allow_minimum`."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value < minimum or (value == minimum and not allow_minimum):
        relation = ">=" if allow_minimum else ">"
        _fail(field, value, f"expected a finite number {relation} {minimum}")


def _check_probability(field, value):
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not 0.0 <= value < 1.0:
        _fail(field, value, "expected a probability in [0, 1)")


def _check_problem_type(value):
    if value is not None and value not in PROBLEM_TYPES:
        _fail("problem_type", value, f"expected None or one of {PROBLEM_TYPES}")


def _check_token_id(field, value, vocab_size):
    """None, a token id in [0, vocab_size), or (eos_token_id only) a non-empty list of them."""
    if value is None:
        return
    ids = value if field == "eos_token_id" and isinstance(value, list) else [value]
    allowed = f"expected None or a token id in [0, vocab_size={vocab_size})" + (
        ", or a non-empty list of them" if field == "eos_token_id" else "")
    if not ids or any(not _is_int(token_id) or not 0 <= token_id < vocab_size for token_id in ids):
        _fail(field, value, allowed)


def _check_int_list(field, value, minimum_length):
    if not isinstance(value, list) or len(value) < minimum_length:
        _fail(field, value, f"expected a list of at least {minimum_length} positive integers")
    for item in value:
        _check_int(field, item, 1)


def _check_num_buckets(value):
    if value is None:
        return
    factors = value if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and len(value) != 2:
        _fail("num_buckets", value, "expected an even integer >= 2, a pair of even factors [a, b], or None")
    for factor in factors:
        if not _is_int(factor) or factor < 2 or factor % 2:
            _fail("num_buckets", value, "every bucket count (or factor) must be an even integer >= 2")


def _config_file_name(source):
    if source is None:
        return "the config dict"
    source = str(source)
    return source if source.endswith(".json") else os.path.join(source, "config.json")


def _check_saved_fields(config_dict, keyword_fields, source):
    """Refuse a config read from a file that lacks fields whose defaults would change the model."""
    present = set(config_dict) | set(keyword_fields)
    required = list(ARCHITECTURE_FIELDS)
    if config_dict.get("is_encoder_decoder", keyword_fields.get("is_encoder_decoder")) is True:
        required += ENCODER_DECODER_FIELDS
    missing = [name for name in required if name not in present]
    if missing:
        raise ValueError(
            f"{_config_file_name(source)} is damaged: it lacks {missing}, which every ReformerConfig saves and "
            "whose defaults would build a different model than the one the file describes.  Restore the file "
            "(or pass the missing fields as keyword arguments to from_pretrained)."
        )


class ReformerConfig(PreTrainedConfig):
    r"""Configuration of a Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020).

    Field names follow transformers' built-in `ReformerConfig` wherever that model has the
    concept, so converted checkpoints and HF users find what they expect.  New concepts:

    - `attn_layers` may also hold `"full"` (dense attention, for short inputs and tests).
    - `lsh_window_mode`: `"bucket_window"` (default) lets a query see only keys of its own
      hash bucket among the `lsh_num_chunks_before * lsh_attn_chunk_length` sorted positions
      before it (and `lsh_num_chunks_after * ...` after it).  That is strictly causal and can be
      decoded token by token from a per-bucket cache.  `"chunk"` is the paper's (and trax's and
      transformers') rule: a query sees every key of its own and the neighbouring sorted
      chunks, whatever their bucket; for a causal model later tokens move the chunk boundaries,
      so a position's view depends on the future.  Use it for converted checkpoints.
    - `local_attn_wrap_around`: False (default) makes local attention a true sliding window:
      the first chunk has no previous chunk.  True treats the chunks as a ring, as transformers'
      and trax's Reformer do, so the first chunk also sees the last one (and the last chunk the
      first one when `local_num_chunks_after` > 0).  Only a bidirectional model can see the
      wrapped keys (a causal mask hides them); converted bidirectional checkpoints set it.
    - `reversible`: reversible residual layers (activations kept once for the whole stack) or
      plain residuals.
    - `reversible_stored_layers` (default 0): with `reversible`, the top this-many layers of a
      stack keep their activations for the backward pass instead of rebuilding them from their
      outputs: a forward pass less per layer, for one layer's activations each (at 64K tokens,
      d_model 1024, d_ff 4096, 0.6-1.4 GiB per layer).  They are freed as the backward pass
      reaches them, and the memory does not grow with depth.  A stack shallower than the value
      stores all its layers (an encoder-decoder's two stacks may differ in depth).
    - `attn_backend`: `"auto"` (fused Triton kernel on CUDA when installed, else torch),
      `"torch"` or `"triton"`.
    - `hash_seed`: None draws fresh hash rotations on every forward pass (the paper's setup; a
      generation cache keeps the rotations of its prefill); an integer draws the same rotations
      on every pass (deterministic evaluation; the same rotations transformers draws for that
      seed on the CPU).
    - `axial_norm_std` (default 0.02, transformers uses 1.0): the initial scale of the axial
      position tables.  At 1.0 the positions drown the token embeddings (std 0.02) after the
      first layer norm, and the hashes and the loss barely see the tokens for hundreds of steps.
    - `num_buckets=None` chooses, per forward pass, the power of two nearest to
      `2 * length / lsh_attn_chunk_length` (at least 2), as the paper does.

    Encoder-decoder (translation, `ReformerForConditionalGeneration`): one config describes both
    halves.  `is_encoder_decoder=True` makes `attn_layers` the bidirectional encoder's layers and
    `decoder_attn_layers` (default: the same kinds) the causal decoder's self-attention layers;
    every decoder layer also attends to the encoder output with dense cross attention.  The chunk
    settings are shared, except that the decoder never looks at later chunks (its
    `*_num_chunks_after` are 0 and local attention does not wrap around).  Generation starts the
    decoder with `decoder_start_token_id` (default: `pad_token_id`).  `tie_word_embeddings=True`
    shares the output projection with the (shared source/target) input embedding.

    Defaults: `vocab_size` and `pad/bos/eos_token_id` are the byte tokenizer's (260 ids; 0, 1, 2),
    so a default model's every id decodes with `ReformerByteTokenizer`.

    Validation: every field's type and range is checked at construction (flags must be True or
    False, not "False"; token ids within `[0, vocab_size)`; ...), again after `from_pretrained`'s
    keyword arguments, and again when a model is built, so a config edited after construction is
    checked too.  A config file (`from_pretrained`, `AutoConfig`, `from_json_file`, `from_dict`)
    must hold every field of `ARCHITECTURE_FIELDS` (an encoder-decoder's also
    `ENCODER_DECODER_FIELDS`): a file without one is damaged and refused, naming the file and the
    fields, rather than silently built with the default.  Fields this class does not know are kept
    as attributes, as transformers does (configs of other tools carry their own keys).
    """

    model_type = "reformer_hf"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=BYTE_VOCAB_SIZE,
        hidden_size=256,
        num_attention_heads=2,
        attention_head_size=64,
        feed_forward_size=512,
        hidden_act="relu",
        attn_layers=("local", "lsh", "local", "lsh", "local", "lsh"),
        num_hashes=1,
        num_buckets=None,
        lsh_attn_chunk_length=64,
        lsh_num_chunks_before=1,
        lsh_num_chunks_after=0,
        lsh_window_mode="bucket_window",
        local_attn_chunk_length=64,
        local_num_chunks_before=1,
        local_num_chunks_after=0,
        local_attn_wrap_around=False,
        chunk_size_feed_forward=0,
        chunk_size_lm_head=0,
        axial_pos_embds=True,
        axial_pos_shape=(64, 64),
        axial_pos_embds_dim=(64, 192),
        axial_norm_std=0.02,
        max_position_embeddings=4096,
        hidden_dropout_prob=0.05,
        lsh_attention_probs_dropout=0.0,
        local_attention_probs_dropout=0.05,
        full_attention_probs_dropout=0.0,
        hash_seed=None,
        is_decoder=False,
        layer_norm_eps=1e-12,
        initializer_range=0.02,
        tie_word_embeddings=False,
        reversible=True,
        reversible_stored_layers=0,
        attn_backend="auto",
        classifier_dropout=None,
        use_cache=True,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        is_encoder_decoder=False,
        decoder_attn_layers=None,
        decoder_start_token_id=None,
        **kwargs,
    ):
        kwargs.pop("num_hidden_layers", None)  # derived from attn_layers; present in old config.json files
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = attention_head_size
        self.feed_forward_size = feed_forward_size
        self.hidden_act = hidden_act
        self.attn_layers = list(attn_layers) if isinstance(attn_layers, (list, tuple)) else attn_layers
        self.num_hashes = num_hashes
        self.num_buckets = list(num_buckets) if isinstance(num_buckets, tuple) else num_buckets
        self.lsh_attn_chunk_length = lsh_attn_chunk_length
        self.lsh_num_chunks_before = lsh_num_chunks_before
        self.lsh_num_chunks_after = lsh_num_chunks_after
        self.lsh_window_mode = lsh_window_mode
        self.local_attn_chunk_length = local_attn_chunk_length
        self.local_num_chunks_before = local_num_chunks_before
        self.local_num_chunks_after = local_num_chunks_after
        self.local_attn_wrap_around = local_attn_wrap_around
        self.chunk_size_feed_forward = chunk_size_feed_forward
        self.chunk_size_lm_head = chunk_size_lm_head
        self.axial_pos_embds = axial_pos_embds
        self.axial_pos_shape = list(axial_pos_shape) if isinstance(axial_pos_shape, tuple) else axial_pos_shape
        self.axial_pos_embds_dim = (
            list(axial_pos_embds_dim) if isinstance(axial_pos_embds_dim, tuple) else axial_pos_embds_dim
        )
        self.axial_norm_std = axial_norm_std
        self.max_position_embeddings = max_position_embeddings
        self.hidden_dropout_prob = hidden_dropout_prob
        self.lsh_attention_probs_dropout = lsh_attention_probs_dropout
        self.local_attention_probs_dropout = local_attention_probs_dropout
        self.full_attention_probs_dropout = full_attention_probs_dropout
        self.hash_seed = hash_seed
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.reversible = reversible
        self.reversible_stored_layers = reversible_stored_layers
        self.attn_backend = attn_backend
        self.classifier_dropout = classifier_dropout
        self.use_cache = use_cache
        if is_encoder_decoder is True:
            if decoder_attn_layers is None and isinstance(self.attn_layers, list):
                decoder_attn_layers = list(self.attn_layers)
            if decoder_start_token_id is None:
                decoder_start_token_id = pad_token_id
        self.decoder_attn_layers = (
            list(decoder_attn_layers) if isinstance(decoder_attn_layers, (list, tuple)) else decoder_attn_layers
        )
        self.decoder_start_token_id = decoder_start_token_id
        # transformers' own fields, checked before its __init__ sees them, so that every version refuses them
        # with the same ValueError (5.17's dataclass checks would raise huggingface_hub's own error class).
        _check_bool("is_encoder_decoder", is_encoder_decoder)
        for field in OPTIONAL_BOOLEAN_FIELDS:
            _check_bool(field, kwargs.get(field), optional=True)
        _check_problem_type(kwargs.get("problem_type"))
        # PreTrainedConfig owns chunk_size_feed_forward too and would reset it to 0: pass it through.
        super().__init__(
            chunk_size_feed_forward=chunk_size_feed_forward,
            is_decoder=is_decoder,
            is_encoder_decoder=is_encoder_decoder,
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )
        self.validate_reformer()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """transformers' from_pretrained; the folder or file goes along so that errors can name it."""
        kwargs[CONFIG_SOURCE_KEYWORD] = str(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """transformers' from_dict (the way from_pretrained and AutoConfig build a config), refusing a dict
        that lacks an architecture field, and validating again after the keyword arguments, which
        transformers sets on the config after __init__."""
        source = pop_config_source(config_dict, kwargs)
        _check_saved_fields(config_dict, kwargs, source)
        loaded = super().from_dict(config_dict, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        config.validate_reformer()
        return loaded

    @classmethod
    def from_json_file(cls, json_file):
        """The config saved in `json_file`, checked as from_pretrained checks a folder's config.json."""
        return cls.from_dict(config_json_dict(cls, json_file), **{CONFIG_SOURCE_KEYWORD: str(json_file)})

    def to_diff_dict(self):
        """transformers' fields that differ from the defaults, plus every field a loaded file must hold
        (whatever a transformers version leaves out as default, from_dict would refuse it)."""
        fields = self.to_dict()
        required = ARCHITECTURE_FIELDS + (ENCODER_DECODER_FIELDS if self.is_encoder_decoder else ())
        return {**super().to_diff_dict(), **{name: fields[name] for name in required}}

    @property
    def num_hidden_layers(self):
        """transformers' generation utilities size caches with this."""
        return len(self.attn_layers)

    @property
    def head_size(self):
        """`attention_head_size`, or `hidden_size // num_attention_heads` when it is None."""
        if self.attention_head_size is not None:
            return self.attention_head_size
        return self.hidden_size // self.num_attention_heads

    @property
    def n_buckets_total(self):
        """Total bucket count for a fixed `num_buckets` (product of the factors), else None."""
        if self.num_buckets is None:
            return None
        if isinstance(self.num_buckets, list):
            return math.prod(self.num_buckets)
        return self.num_buckets

    @property
    def max_sequence_length(self):
        """The longest input the position embeddings cover."""
        if self.axial_pos_embds:
            return min(self.max_position_embeddings, math.prod(self.axial_pos_shape))
        return self.max_position_embeddings

    def validate_reformer(self):
        """Raise ValueError naming the first invalid field or combination.

        Runs at construction, after from_pretrained's keyword arguments, and again when a model is built,
        so a config edited after construction (`config.num_buckets = 5`) is refused before any layer exists.
        """
        self._validate_types()
        if self.attention_head_size is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"ReformerConfig.hidden_size={self.hidden_size} is not divisible by "
                    f"num_attention_heads={self.num_attention_heads}; set attention_head_size explicitly "
                    "or choose a hidden_size that is a multiple of num_attention_heads."
                )
        if self.hidden_act not in HIDDEN_ACTIVATIONS:
            _fail("hidden_act", self.hidden_act, f"expected one of {HIDDEN_ACTIVATIONS}")
        for kind in self.attn_layers:
            if kind not in ATTENTION_KINDS:
                _fail("attn_layers", self.attn_layers, f"unknown attention kind {kind!r}; allowed: {ATTENTION_KINDS}")
        _check_num_buckets(self.num_buckets)
        if self.lsh_window_mode not in LSH_WINDOW_MODES:
            _fail("lsh_window_mode", self.lsh_window_mode, f"expected one of {LSH_WINDOW_MODES}")
        if self.attn_backend not in ATTENTION_BACKENDS:
            _fail("attn_backend", self.attn_backend, f"expected one of {ATTENTION_BACKENDS}")
        if self.hash_seed is not None and self.hash_seed >= HASH_SEED_LIMIT:
            _fail("hash_seed", self.hash_seed, "expected None or an integer in [0, 2**64) (a torch generator seed)")
        if self.is_decoder and "lsh" in self.attn_layers and self.lsh_num_chunks_after:
            _fail("lsh_num_chunks_after", self.lsh_num_chunks_after,
                  "a causal model (is_decoder=True) cannot look at later chunks; expected 0")
        if self.is_decoder and "local" in self.attn_layers and self.local_num_chunks_after:
            _fail("local_num_chunks_after", self.local_num_chunks_after,
                  "a causal model (is_decoder=True) cannot look at later chunks; expected 0")
        for field in TOKEN_ID_FIELDS:
            _check_token_id(field, getattr(self, field, None), self.vocab_size)
        if self.id2label is not None and self.num_labels < 1:
            _fail("num_labels", self.num_labels, "a classification head needs at least one label; expected >= 1")
        _check_problem_type(self.problem_type)
        self._validate_encoder_decoder()
        depth = max(len(self.attn_layers), len(self.decoder_attn_layers or []))
        if self.reversible_stored_layers > depth:
            _fail("reversible_stored_layers", self.reversible_stored_layers,
                  f"expected at most the number of layers ({depth})")
        if self.tie_word_embeddings and not self.is_encoder_decoder:
            _fail("tie_word_embeddings", self.tie_word_embeddings,
                  "the LM head reads the 2 * hidden_size concatenated residual streams, so it cannot share "
                  "the (vocab_size, hidden_size) input embedding; expected False (an encoder-decoder, "
                  "is_encoder_decoder=True, projects to hidden_size first and can tie)")
        if self.axial_pos_embds:
            self._validate_axial()

    def _validate_types(self):
        """Every field's type (and the ranges that need no other field), before any rule combines them."""
        for field in BOOLEAN_FIELDS:
            _check_bool(field, getattr(self, field))
        for field in OPTIONAL_BOOLEAN_FIELDS:
            _check_bool(field, getattr(self, field), optional=True)
        for field in ("vocab_size", "hidden_size", "num_attention_heads", "feed_forward_size", "num_hashes",
                      "lsh_attn_chunk_length", "local_attn_chunk_length", "max_position_embeddings"):
            _check_int(field, getattr(self, field), 1)
        for field in ("lsh_num_chunks_before", "lsh_num_chunks_after", "local_num_chunks_before",
                      "local_num_chunks_after", "chunk_size_feed_forward", "chunk_size_lm_head",
                      "reversible_stored_layers"):
            _check_int(field, getattr(self, field), 0)
        if self.attention_head_size is not None:
            _check_int("attention_head_size", self.attention_head_size, 1)
        if self.hash_seed is not None:
            _check_int("hash_seed", self.hash_seed, 0)
        if not isinstance(self.attn_layers, list) or not self.attn_layers:
            _fail("attn_layers", self.attn_layers, f"expected a non-empty list of {ATTENTION_KINDS}")
        _check_int_list("axial_pos_shape", self.axial_pos_shape, 2)
        _check_int_list("axial_pos_embds_dim", self.axial_pos_embds_dim, 1)
        for field in DROPOUT_FIELDS:
            _check_probability(field, getattr(self, field))
        if self.classifier_dropout is not None:
            _check_probability("classifier_dropout", self.classifier_dropout)
        _check_number("layer_norm_eps", self.layer_norm_eps, 0, allow_minimum=False)
        _check_number("initializer_range", self.initializer_range, 0, allow_minimum=True)
        _check_number("axial_norm_std", self.axial_norm_std, 0, allow_minimum=True)

    def _validate_encoder_decoder(self):
        if not self.is_encoder_decoder:
            if self.decoder_attn_layers is not None:
                _fail("decoder_attn_layers", self.decoder_attn_layers,
                      "only an encoder-decoder (is_encoder_decoder=True) has decoder layers; expected None")
            return
        if self.is_decoder:
            _fail("is_decoder", self.is_decoder,
                  "with is_encoder_decoder=True, attn_layers are the bidirectional encoder's and the decoder is "
                  "causal by construction; expected False")
        layers = self.decoder_attn_layers
        if not isinstance(layers, list) or not layers or any(kind not in ATTENTION_KINDS for kind in layers):
            _fail("decoder_attn_layers", layers, f"expected a non-empty list of {ATTENTION_KINDS}")
        if self.decoder_start_token_id is None:
            _fail("decoder_start_token_id", None,
                  "an encoder-decoder starts decoding from this token; expected a token id (it defaults to "
                  "pad_token_id, which is None here)")

    def _validate_axial(self):
        shape, dims = self.axial_pos_shape, self.axial_pos_embds_dim
        if len(dims) != len(shape):
            _fail("axial_pos_embds_dim", dims, f"expected a list of {len(shape)} integers, one per axis of axial_pos_shape")
        if sum(dims) != self.hidden_size:
            _fail("axial_pos_embds_dim", dims, f"the axial dimensions must sum to hidden_size={self.hidden_size}")
        if self.max_position_embeddings > math.prod(shape):
            _fail("max_position_embeddings", self.max_position_embeddings,
                  f"axial_pos_shape={shape} covers only {math.prod(shape)} positions; "
                  "expected at most the product of axial_pos_shape")
