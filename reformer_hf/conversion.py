"""Checkpoints of transformers' built-in Reformer (`transformers.models.reformer`) as reformer_hf models.

transformers' Reformer is a port of Google's trax Reformer, and Google's pretrained checkpoints
(`google/reformer-enwik8`, `google/reformer-crime-and-punishment`) are in its format.  Conversion
maps the config field by field and renames (and, for axial position embeddings, reshapes) the
weights.  The converted model computes what the source computes: the same logits for the same
`hash_seed`, the same loss and gradients.  What has no faithful counterpart here is refused
with an error naming it, before anything is written.  docs/parity.md lists the semantics that
differ on purpose and the options that reproduce transformers' behaviour.
"""

import copy
import logging
import math
import re
import shutil
from pathlib import Path

import torch

from . import compat
from .configuration import HIDDEN_ACTIVATIONS, ReformerConfig
from .modeling import ReformerForCausalLM, ReformerForSequenceClassification, ReformerModel

logger = logging.getLogger(__name__)

# transformers' class name -> the reformer_hf class that computes the same thing.
TARGET_CLASSES = {
    "ReformerModel": ReformerModel,
    "ReformerModelWithLMHead": ReformerForCausalLM,
    "ReformerForSequenceClassification": ReformerForSequenceClassification,
}

# Fields of transformers' ReformerConfig that mean the same thing under the same name here.
SAME_FIELDS = (
    "attention_head_size", "attn_layers", "axial_norm_std", "axial_pos_embds", "axial_pos_shape",
    "axial_pos_embds_dim", "chunk_size_lm_head", "feed_forward_size", "hash_seed", "hidden_act",
    "hidden_dropout_prob", "hidden_size", "initializer_range", "is_decoder", "layer_norm_eps",
    "local_num_chunks_before", "local_num_chunks_after", "local_attn_chunk_length",
    "lsh_attn_chunk_length", "lsh_num_chunks_before", "lsh_num_chunks_after", "max_position_embeddings",
    "num_attention_heads", "num_buckets", "num_hashes", "vocab_size", "tie_word_embeddings", "use_cache",
    "classifier_dropout", "bos_token_id", "eos_token_id", "pad_token_id",
)
RENAMED_FIELDS = {
    "lsh_attention_probs_dropout_prob": "lsh_attention_probs_dropout",
    "local_attention_probs_dropout_prob": "local_attention_probs_dropout",
}
# Every field of transformers' Reformer that has a counterpart here.
MAPPED_FIELDS = frozenset(SAME_FIELDS) | frozenset(RENAMED_FIELDS)
# Written by transformers about the source folder, or derived from other fields: not carried over.
SOURCE_METADATA = ("model_type", "architectures", "transformers_version", "_name_or_path", "num_hidden_layers")

# Weight names inside the shared stack: transformers' name -> ours (regular expressions on the
# name without the task model's "reformer." prefix).  Axial tables are reshaped as well.
STACK_RENAMES = (
    (r"embeddings\.word_embeddings\.weight", r"embeddings.word_embeddings.weight"),
    (r"embeddings\.position_embeddings\.weights\.(\d+)", r"embeddings.position_embeddings.weight_\1"),
    (r"embeddings\.position_embeddings\.embedding\.weight", r"embeddings.position_embeddings.embedding.weight"),
    (r"encoder\.layers\.(\d+)\.attention\.layer_norm\.(weight|bias)", r"encoder.layers.\1.attention.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.attention\.self_attention\.(query_key|query|key|value)\.weight",
     r"encoder.layers.\1.attention.self_attention.\2.weight"),
    (r"encoder\.layers\.(\d+)\.attention\.output\.dense\.weight", r"encoder.layers.\1.attention.output.weight"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.layer_norm\.(weight|bias)",
     r"encoder.layers.\1.feed_forward.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.dense\.dense\.(weight|bias)", r"encoder.layers.\1.feed_forward.dense_in.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.output\.dense\.(weight|bias)",
     r"encoder.layers.\1.feed_forward.dense_out.\2"),
    (r"encoder\.layer_norm\.(weight|bias)", r"layer_norm.\1"),
)
HEAD_RENAMES = (
    (r"lm_head\.decoder\.weight", r"lm_head.weight"),
    (r"lm_head\.(decoder\.)?bias", r"lm_head.bias"),
    (r"classifier\.(dense|out_proj)\.(weight|bias)", r"classifier.\1.\2"),
)
# The LM head's bias is saved under one or two names depending on the transformers version (compat.py).
HEAD_BIAS_NAMES = (compat.APPLIED_HEAD_BIAS, compat.LEGACY_HEAD_BIAS)
# Copied along so that AutoTokenizer loads from the converted folder as it did from the source.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
                   "added_tokens.json", "vocab.json", "merges.txt")


def config_from_transformers(source_config, architecture="ReformerModel", num_buckets=None):
    """A reformer_hf `ReformerConfig` computing what transformers' `source_config` computes.

    architecture: the transformers class the weights come from (a key of TARGET_CLASSES).
    num_buckets: only for a source with `num_buckets=None`: pins the bucket count (an even integer
    or a pair of even factors).  transformers fixes it at the first forward pass from that pass's
    length; reformer_hf chooses it per pass (docs/parity.md), so pin it to keep one bucket count.
    """
    if architecture not in TARGET_CLASSES:
        raise ValueError(f"architecture={architecture!r} cannot be converted: expected one of {sorted(TARGET_CLASSES)}.")
    source = source_config.to_dict()
    if source.get("model_type") != "reformer":
        raise ValueError(f"model_type={source.get('model_type')!r} is not transformers' Reformer: expected 'reformer'.")
    _refuse_unmappable(source, architecture)

    fields = {name: source[name] for name in SAME_FIELDS if name in source}
    fields.update({ours: source[theirs] for theirs, ours in RENAMED_FIELDS.items() if theirs in source})
    handled = MAPPED_FIELDS | set(SOURCE_METADATA)
    # Everything else is a generic transformers field (labels, problem_type, dtype, ...) or an extra
    # attribute that transformers' Reformer never reads: carried over unchanged.
    fields.update({name: value for name, value in source.items() if name not in handled})

    if isinstance(fields.get("num_buckets"), list) and len(fields["num_buckets"]) == 1:
        fields["num_buckets"] = fields["num_buckets"][0]  # one factor hashes exactly like the plain integer
    if num_buckets is not None:
        if fields.get("num_buckets") is not None and fields["num_buckets"] != num_buckets:
            raise ValueError(
                f"num_buckets={num_buckets!r} conflicts with the checkpoint's num_buckets={fields['num_buckets']!r}: "
                "the override only fills in a checkpoint saved with num_buckets=None."
            )
        fields["num_buckets"] = list(num_buckets) if isinstance(num_buckets, tuple) else num_buckets
    if fields.get("axial_pos_embds", True):
        # transformers accepts a max_position_embeddings above the axial grid but cannot embed
        # positions beyond it, so the grid's size is the same effective limit.
        grid = math.prod(fields.get("axial_pos_shape", ()))
        if fields.get("max_position_embeddings", 0) > grid:
            logger.info("max_position_embeddings=%s exceeds the axial grid %s; using %s, the positions transformers "
                        "can embed.", fields["max_position_embeddings"], fields["axial_pos_shape"], grid)
            fields["max_position_embeddings"] = grid

    fields["lsh_window_mode"] = "chunk"
    # transformers' local attention treats the chunks as a ring; only a bidirectional model can
    # see the wrapped keys, so a causal model keeps the plain (cache-friendly) window.
    fields["local_attn_wrap_around"] = not fields.get("is_decoder", False)
    try:
        return ReformerConfig(**fields)
    except ValueError as error:
        raise ValueError(f"transformers' Reformer config cannot be converted: {error}") from error


def _refuse_unmappable(source, architecture):
    """Raise, naming the field, for settings transformers supports that have no equivalent here."""
    for name in _source_field_names():
        if name not in MAPPED_FIELDS:
            raise ValueError(
                f"transformers' ReformerConfig field {name!r} (value {source.get(name)!r}) has no counterpart in "
                "reformer_hf; this converter was written for transformers' Reformer as of version 5.23."
            )
    if source.get("num_hidden_layers") not in (None, len(source["attn_layers"])):
        raise ValueError(f"num_hidden_layers={source['num_hidden_layers']!r} disagrees with attn_layers "
                         f"({len(source['attn_layers'])} layers); expected them to match.")
    if not isinstance(source.get("hidden_act"), str) or source["hidden_act"] not in HIDDEN_ACTIVATIONS:
        raise ValueError(f"hidden_act={source.get('hidden_act')!r} cannot be converted: expected one of "
                         f"{HIDDEN_ACTIVATIONS}.")
    for name in ("lsh_attn_chunk_length", "lsh_num_chunks_before", "lsh_num_chunks_after"):
        if source.get(name) is None and "lsh" in source["attn_layers"]:
            raise ValueError(f"{name}=None cannot be converted: reformer_hf's LSH attention needs an integer.")
    num_buckets = source.get("num_buckets")
    if isinstance(num_buckets, (list, tuple)) and len(num_buckets) > 2:
        raise ValueError(f"num_buckets={list(num_buckets)!r} cannot be converted: reformer_hf factorises the "
                         "buckets into at most two factors.")
    if source.get("output_attentions"):
        raise ValueError("output_attentions=True cannot be converted: reformer_hf's LSH and local attention never "
                         "build the attention matrix; save the source with output_attentions=False.")
    if architecture == "ReformerForSequenceClassification" and source.get("is_decoder"):
        raise ValueError(
            "is_decoder=True cannot be converted for ReformerForSequenceClassification: transformers classifies "
            "from the first position, which a causal model has not let see the rest of the sequence; reformer_hf "
            "pools the last non-padding position of a causal classifier instead.  Expected is_decoder=False."
        )


def _source_field_names():
    """The Reformer-specific fields transformers' ReformerConfig declares."""
    from transformers import ReformerConfig as SourceConfig

    return [name for name in SourceConfig.__annotations__ if not name.startswith("_")]


def state_dict_from_transformers(source_state_dict, architecture, config):
    """transformers' Reformer weights renamed (and axial tables reshaped) for the reformer_hf class.

    Raises ValueError naming any weight it does not know.
    """
    converted = {}
    head_bias = compat.source_lm_head_bias(source_state_dict)
    if head_bias is not None:
        converted["lm_head.bias"] = head_bias
    for name, tensor in source_state_dict.items():
        if name in HEAD_BIAS_NAMES:
            continue
        target = target_weight_name(name, architecture)
        axial = re.fullmatch(r".*position_embeddings\.weight_(\d+)", target)
        if axial and config.axial_pos_embds:
            # transformers keeps axis i's table broadcastable over the grid: ones everywhere but
            # axis i and the last dimension.
            axis = int(axial.group(1))
            tensor = tensor.reshape(config.axial_pos_shape[axis], config.axial_pos_embds_dim[axis])
        converted[target] = tensor
    return converted


def target_weight_name(name, architecture):
    """Our name for weight `name` of transformers' `architecture`; ValueError naming an unknown weight."""
    prefix = "" if architecture == "ReformerModel" else "reformer."
    if name.startswith(prefix):
        for pattern, replacement in STACK_RENAMES:
            if re.fullmatch(pattern, name[len(prefix):]):
                return prefix + re.sub(pattern, replacement, name[len(prefix):])
    for pattern, replacement in HEAD_RENAMES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    raise ValueError(f"weight {name!r} of the transformers checkpoint has no counterpart in reformer_hf.")


def convert_transformers_model(source_model, num_buckets=None):
    """A reformer_hf model with `source_model`'s config and weights (a transformers Reformer instance).

    Returns a ReformerModel, ReformerForCausalLM or ReformerForSequenceClassification on the
    source's device, in its dtype and train/eval mode.
    """
    architecture = type(source_model).__name__
    config = config_from_transformers(source_model.config, architecture, num_buckets=num_buckets)
    model = TARGET_CLASSES[architecture](config)
    state_dict = state_dict_from_transformers(source_model.state_dict(), architecture, config)
    missing, unexpected = _key_differences(model.state_dict(), state_dict)
    if missing or unexpected:
        raise ValueError(f"the converted weights do not fit {type(model).__name__}: missing {missing}, "
                         f"unexpected {unexpected}.")
    model.load_state_dict(state_dict, strict=True)
    dtypes = {p.dtype for p in source_model.parameters() if p.is_floating_point()}
    model.to(device=next(source_model.parameters()).device, dtype=dtypes.pop() if len(dtypes) == 1 else None)
    if architecture == "ReformerModelWithLMHead" and source_model.generation_config is not None:
        model.generation_config = copy.deepcopy(source_model.generation_config)
    return model.train(source_model.training)


def _key_differences(expected, given):
    return sorted(set(expected) - set(given)), sorted(set(given) - set(expected))


def source_architecture(source_config, architecture=None):
    """The transformers class to load a checkpoint with: `architecture` if given, else the one its config names."""
    if architecture is None:
        named = source_config.architectures or []
        if len(named) != 1:
            raise ValueError(f"the checkpoint's config lists architectures={named!r}; pass architecture= one of "
                             f"{sorted(TARGET_CLASSES)}.")
        architecture = named[0]
    if architecture not in TARGET_CLASSES:
        raise ValueError(f"architecture={architecture!r} cannot be converted: expected one of {sorted(TARGET_CLASSES)} "
                         "(transformers' ReformerForMaskedLM and ReformerForQuestionAnswering have no reformer_hf head).")
    return architecture


def load_transformers_checkpoint(source_dir, architecture=None):
    """transformers' Reformer model saved in `source_dir`, refusing a folder that misses weights.

    architecture: the transformers class to read it as, when its config names none (or
    "ReformerModel" to keep only the encoder of a task model).
    """
    import transformers

    source_dir = Path(source_dir)
    if not (source_dir / "config.json").is_file():
        raise FileNotFoundError(f"source_dir={str(source_dir)!r} has no config.json: expected a folder saved by "
                                "transformers' Reformer save_pretrained.")
    source_config = transformers.AutoConfig.from_pretrained(source_dir)
    if source_config.model_type != "reformer":
        raise ValueError(f"source_dir={str(source_dir)!r} holds model_type={source_config.model_type!r}; expected "
                         "transformers' 'reformer'.")
    architecture = source_architecture(source_config, architecture)
    source_class = getattr(transformers, architecture)
    source_model, loading_info = source_class.from_pretrained(source_dir, output_loading_info=True)
    _adopt_legacy_head_bias(source_model, loading_info)
    _refuse_incomplete(loading_info, architecture, source_dir)
    return source_model


def _adopt_legacy_head_bias(source_model, loading_info):
    """A checkpoint of transformers 5.0-5.24 (only `lm_head.bias`) read by a version whose head applies
    `lm_head.decoder.bias`: that bias is not missing but saved under the older name, which transformers
    4 tied to it; the loaded model applies it as transformers 4 and the trax original did."""
    missing = loading_info.get("missing_keys") or ()
    if compat.APPLIED_HEAD_BIAS not in missing or compat.LEGACY_HEAD_BIAS in missing:
        return
    with torch.no_grad():
        source_model.lm_head.decoder.bias.copy_(source_model.lm_head.bias)
    loading_info["missing_keys"] = type(missing)(name for name in missing if name != compat.APPLIED_HEAD_BIAS)


def save_converted(model, source_dir, output_dir):
    """`model.save_pretrained(output_dir)`, with the tokenizer files of `source_dir` copied along."""
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    _check_output_dir(source_dir, output_dir)
    model.save_pretrained(output_dir)
    for tokenizer_file in TOKENIZER_FILES:
        if (source_dir / tokenizer_file).is_file():
            shutil.copy2(source_dir / tokenizer_file, output_dir / tokenizer_file)


def _check_output_dir(source_dir, output_dir):
    if Path(output_dir).resolve() == Path(source_dir).resolve():
        raise ValueError(f"output_dir={str(output_dir)!r} is the source folder: expected a different folder.")


def convert_transformers_checkpoint(source_dir, output_dir, architecture=None, num_buckets=None):
    """Convert a folder saved by transformers' Reformer into a reformer_hf folder; returns the converted model.

    The weights are those of transformers' ReformerModel, ReformerModelWithLMHead or
    ReformerForSequenceClassification (see `load_transformers_checkpoint` for `architecture`);
    `num_buckets` as in `config_from_transformers`.  Everything is checked before anything is written.
    """
    _check_output_dir(source_dir, output_dir)  # before the (slow) load, not only before the write
    source_model = load_transformers_checkpoint(source_dir, architecture)
    model = convert_transformers_model(source_model, num_buckets=num_buckets)
    save_converted(model, source_dir, output_dir)
    return model


def _refuse_incomplete(loading_info, architecture, source_dir):
    """A checkpoint that misses weights would convert random initial values: refuse it."""
    problems = {kind: sorted(loading_info.get(kind) or ()) for kind in ("missing_keys", "mismatched_keys", "error_msgs")}
    unexpected = sorted(set(loading_info.get("unexpected_keys") or ()) - set(HEAD_BIAS_NAMES))
    if architecture == "ReformerModel":
        # Reading a task model's folder as the bare model leaves its head out, as asked.
        unexpected = [name for name in unexpected if not name.startswith(("lm_head.", "classifier.", "qa_outputs."))]
    problems["unexpected_keys"] = unexpected
    problems = {kind: names for kind, names in problems.items() if names}
    if problems:
        details = "; ".join(f"{kind}: {names}" for kind, names in problems.items())
        raise ValueError(f"source_dir={str(source_dir)!r} does not hold a complete {architecture}: {details}.")


def max_output_difference(source_model, model, length=None, batch_size=2, seed=0):
    """Largest absolute difference between the first outputs (logits, or hidden states for the bare
    model) of a transformers Reformer and its conversion, in eval mode on random tokens.

    length: defaults to two multiples of every chunk length, within the position limit.
    LSH hashing is random unless `hash_seed` is set, so a model without one is compared through
    copies of both models with hash_seed=0, and with the bucket count this length gets here where
    num_buckets is None; nothing else changes.
    """
    from .attention_functions import buckets_for_length
    from .stack_running import padding_multiple

    config = model.config
    if length is None:
        length = min(2 * padding_multiple(config), config.max_sequence_length)
    if "lsh" in config.attn_layers and (config.hash_seed is None or config.num_buckets is None):
        pinned = {
            "hash_seed": 0 if config.hash_seed is None else config.hash_seed,
            "num_buckets": config.num_buckets or buckets_for_length(length, config.lsh_attn_chunk_length),
        }
        source_model, model = _copy_with(source_model, pinned), _copy_with(model, pinned)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size, (batch_size, length), generator=generator)
    device = next(model.parameters()).device
    was_training = source_model.training, model.training
    source_model.eval(), model.eval()
    try:
        with torch.no_grad():
            expected = source_model(input_ids.to(next(source_model.parameters()).device))[0]
            converted = model(input_ids.to(device))[0]
    finally:
        source_model.train(was_training[0]), model.train(was_training[1])
    return (expected.float().cpu() - converted.float().cpu()).abs().max().item()


def _copy_with(model, changes):
    """A copy of `model` whose config has `changes`, with the same weights."""
    config = copy.deepcopy(model.config)
    for name, value in changes.items():
        setattr(config, name, value)
    duplicate = type(model)(config)
    duplicate.load_state_dict(model.state_dict())
    param = next(model.parameters())
    return duplicate.to(device=param.device, dtype=param.dtype)


# Our fields that change nothing transformers computes: how the stack runs, which kernel runs it,
# and the dropout of "full" layers (which an exported model cannot have).
EXPORT_IRRELEVANT_FIELDS = ("reversible", "attn_backend", "full_attention_probs_dropout")
# Ours, with the value transformers' semantics need (None: any value works).
EXPORT_REQUIRED_FIELDS = ("lsh_window_mode", "local_attn_wrap_around")


def config_to_transformers(config):
    """transformers' `ReformerConfig` computing what reformer_hf's `config` computes.

    Raises ValueError naming the field for what transformers' Reformer cannot express: "full"
    layers, "bucket_window" LSH, a bidirectional local window without wrap-around, axial grids
    of other than two axes, and any other field set away from its default.
    """
    import transformers

    ours = config.to_dict()
    if "full" in config.attn_layers:
        raise ValueError(f"attn_layers={config.attn_layers!r}: transformers' Reformer has no 'full' layers.")
    if "lsh" in config.attn_layers and config.lsh_window_mode != "chunk":
        raise ValueError(f"lsh_window_mode={config.lsh_window_mode!r}: transformers' LSH attention is 'chunk' mode.")
    if "local" in config.attn_layers and not config.is_decoder and not config.local_attn_wrap_around:
        raise ValueError("local_attn_wrap_around=False: transformers' bidirectional local attention wraps around; "
                         "expected True.")
    if config.axial_pos_embds and len(config.axial_pos_shape) != 2:
        raise ValueError(f"axial_pos_shape={config.axial_pos_shape!r}: transformers' axial embeddings take two axes.")
    defaults = ReformerConfig().to_dict()
    renamed = {ours_name: theirs for theirs, ours_name in RENAMED_FIELDS.items()}
    known = set(SAME_FIELDS) | set(renamed) | set(EXPORT_IRRELEVANT_FIELDS) | set(EXPORT_REQUIRED_FIELDS)
    generic = set(transformers.PreTrainedConfig().to_dict()) - set(SOURCE_METADATA)
    fields = {name: ours[name] for name in SAME_FIELDS}
    fields.update({theirs: ours[name] for name, theirs in renamed.items()})
    for name, value in ours.items():
        if name in known or name in SOURCE_METADATA or name == "auto_map":
            continue
        if name in generic or name not in defaults:
            fields[name] = value  # generic transformers fields, and extra attributes, as in the other direction
        elif value != defaults[name]:
            raise ValueError(f"{name}={value!r} has no counterpart in transformers' Reformer; expected the default "
                             f"{defaults[name]!r}.")
    fields["attention_head_size"] = config.head_size
    return transformers.ReformerConfig(**fields)


def convert_to_transformers_model(model):
    """transformers' Reformer with `model`'s config and weights (reformer_hf's ReformerModel,
    ReformerForCausalLM or ReformerForSequenceClassification), in its dtype and train/eval mode."""
    import transformers

    architectures = {ours.__name__: theirs for theirs, ours in TARGET_CLASSES.items()}
    architecture = architectures.get(type(model).__name__)
    if architecture is None:
        raise ValueError(f"model of type {type(model).__name__} cannot be exported: expected one of "
                         f"{sorted(architectures)}.")
    if architecture == "ReformerForSequenceClassification" and model.config.is_decoder:
        raise ValueError("is_decoder=True cannot be exported for ReformerForSequenceClassification: transformers "
                         "pools the first position; expected is_decoder=False.")
    target = getattr(transformers, architecture)(config_to_transformers(model.config))
    ours = model.state_dict()
    shapes = {name: tensor.shape for name, tensor in target.state_dict().items()}
    names = {name: target_weight_name(name, architecture) for name in shapes}  # theirs -> ours
    left_out, not_ours = _key_differences(ours, set(names.values()))
    if left_out or not_ours:
        raise ValueError(f"the weights of {type(model).__name__} do not fit transformers' {architecture}: "
                         f"{left_out} have no place there, {not_ours} are missing here.")
    state_dict = {name: ours[source].reshape(shapes[name]) for name, source in names.items()}
    head = getattr(target, "lm_head", None)
    bias_names, bias_applied = compat.lm_head_bias_names(shapes)
    if bias_names and not bias_applied and ours["lm_head.bias"].any():
        raise ValueError(
            "lm_head.bias is non-zero, and the installed transformers leaves its Reformer's lm_head.bias out of "
            "the logits (transformers 5.0-5.24; transformers 4 and 5.25 apply it): the exported model would "
            "not compute the same logits."
        )
    target.load_state_dict(state_dict, strict=True)
    if head is not None:
        target.generation_config = copy.deepcopy(model.generation_config)
    return target.to(next(model.parameters()).dtype).train(model.training)
