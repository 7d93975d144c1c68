"""Every place the package relies on transformers' internals, for the versions pyproject.toml allows.

Tested on transformers 5.17 (the oldest supported, the GPU machine's) and 5.25 (the newest when
written).  What moved between them:

- The generation cache.  ReformerForCausalLM creates its own in generate()'s
  `_prepare_cache_for_generation` hook (same signature in 5.17 and 5.25).  Up to at least 5.17
  `generate()` hands the cache to the model as `past_key_values=` and reads it back from the output
  field of that name; by 5.25 both are named `cache` (the old name is still accepted as a deprecated
  alias on the way in, and output classes keep a `past_key_values` property).  `CACHE_FIELD` is the
  installed version's name; the models take both names as arguments and fill the installed
  version's field.
- Compiling the decoding step.  generate() compiles the model's forward for the steps after the
  prefill (`get_compiled_call`, torch.compile with `generation_config.compile_config`, by default
  mode="reduce-overhead": CUDA graphs) when the cache says `is_compileable` and the device is an
  accelerator, or any device where the CompileConfig carries the private `_compile_all_devices`
  (`compile_on_every_device`); greedy and sampling steps use it, beam search runs eagerly.  5.17
  and 5.25 both tell `prepare_inputs_for_generation` how many positions a step feeds as
  `next_sequence_length` (`pop_next_sequence_length`), so a decoding step never asks the cache's
  device how long the sequence is.
- transformers' own Reformer LM head.  5.0-5.24 save `lm_head.bias` and apply no bias; 5.25 adds a
  bias to `lm_head.decoder` (saved as `lm_head.decoder.bias`, applied) and keeps the unused
  `lm_head.bias`; transformers 4 tied the two.  `source_lm_head_bias` and `lm_head_bias_names`
  read and write whichever the checkpoint or the installed version has.
- Config loading.  `from_pretrained` and `AutoConfig` build a config through `from_dict` and set
  their keyword arguments on it after `__init__`; `from_json_file` calls `__init__` directly.
  `config_json_dict` and `pop_config_source` let ReformerConfig name the file it refuses.
"""

import json

import torch
from transformers.generation import utils as generation_utils

# The cache's argument and output field name in the installed transformers: "cache" or "past_key_values".
CACHE_FIELD = "cache" if "cache" in generation_utils.ALL_CACHE_NAMES else "past_key_values"
CACHE_ARGUMENTS = ("past_key_values", "cache")

# Keyword arguments that transformers' generate() (5.17-5.25) and Trainer pass to a model's forward
# besides its named parameters; a head accepts these and refuses any other unknown keyword.
GENERATION_ONLY_ARGUMENTS = frozenset({"cache_position", "is_first_iteration", "next_sequence_length"})

APPLIED_HEAD_BIAS = "lm_head.decoder.bias"  # transformers 4 (tied to lm_head.bias) and 5.25+
LEGACY_HEAD_BIAS = "lm_head.bias"  # every version saves it; only transformers 4 applied it


def install_generation_cache(model_kwargs, make_cache):
    """In generate()'s `_prepare_cache_for_generation(generation_config, model_kwargs, generation_mode,
    batch_size, max_cache_length)` hook (that signature in 5.17-5.25): put `make_cache()` where the
    installed version passes the cache to the model, unless the caller gave one; returns the cache
    generate() will use."""
    given = given_cache(model_kwargs)
    if given is not None:
        return given
    model_kwargs[CACHE_FIELD] = make_cache()
    return model_kwargs[CACHE_FIELD]


def given_cache(model_kwargs):
    """The cache the caller passed to generate() under either version's name, or None."""
    return next((model_kwargs[name] for name in CACHE_ARGUMENTS if model_kwargs.get(name) is not None), None)


def pop_next_sequence_length(generation_kwargs):
    """How many positions generate() feeds the model in this step, removed from the keyword arguments
    of `prepare_inputs_for_generation`: transformers 5.17-5.25 pass `next_sequence_length` (1 in a
    decoding step with a cache, the unseen prompt's length or None in the prefill).  None where it is
    not given as an int."""
    value = generation_kwargs.pop("next_sequence_length", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def compile_on_every_device(compile_config):
    """`compile_config` (a transformers CompileConfig) made to compile generate()'s decoding step on any
    device, the CPU included: by default transformers 5.17-5.25 compile only on accelerators, and the
    switch is the private `_compile_all_devices` (what transformers' own tests set)."""
    compile_config._compile_all_devices = True
    return compile_config


def merge_cache_arguments(owner, past_key_values, cache):
    """The one cache given under either name (`past_key_values` up to 5.17's generate, `cache` from
    5.25's); both at once is refused, naming `owner`."""
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError(f"{owner}: pass the generation cache as past_key_values or as cache, not both "
                         f"(got {type(past_key_values).__name__} and {type(cache).__name__}).")
    return past_key_values if past_key_values is not None else cache


def cache_output(cache):
    """{field: cache} for a transformers output class of the installed version."""
    return {CACHE_FIELD: cache}


def output_cache(outputs):
    """The cache of a transformers model output, whichever version built it (None if it holds none)."""
    return outputs.get(CACHE_FIELD) if hasattr(outputs, "get") else getattr(outputs, CACHE_FIELD, None)


def source_lm_head_bias(state_dict):
    """The LM-head bias of a transformers Reformer checkpoint, as the model that saved it applies it.

    `lm_head.decoder.bias` where present (tied to `lm_head.bias` by transformers 4, the applied bias
    from 5.25 on, where `lm_head.bias` is a left-over that stays zero); otherwise `lm_head.bias` (5.0-5.24,
    the trax original's bias).  Both present, non-zero and different is ambiguous: ValueError.
    Returns None for a checkpoint without an LM head.
    """
    applied, legacy = state_dict.get(APPLIED_HEAD_BIAS), state_dict.get(LEGACY_HEAD_BIAS)
    if applied is None:
        return legacy
    if legacy is not None and legacy.any() and applied.any() and not torch.equal(applied, legacy):
        raise ValueError(f"the transformers checkpoint holds two different LM-head biases, {APPLIED_HEAD_BIAS!r} "
                         f"and {LEGACY_HEAD_BIAS!r}; expected them equal (transformers 4) or one of them zero "
                         "(transformers 5).")
    return applied


def lm_head_bias_names(target_state_dict):
    """The names under which an exported transformers Reformer of the installed version holds its LM-head
    bias (every one gets the bias), and whether that version applies it to the logits."""
    names = [name for name in (APPLIED_HEAD_BIAS, LEGACY_HEAD_BIAS) if name in target_state_dict]
    return names, APPLIED_HEAD_BIAS in target_state_dict


# transformers 5.17-5.25: `PreTrainedConfig.from_json_file` reads the file through the private
# `_dict_from_json_file` (which also turns the NaN / Infinity markers `to_json_string` writes back into
# floats) and lets json's JSONDecodeError out without the file's name; `from_pretrained` names it.
def config_json_dict(config_class, json_file):
    """The dict of a config JSON file as transformers reads it; OSError naming the file if it is not JSON."""
    try:
        return config_class._dict_from_json_file(json_file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OSError(f"The config file at '{json_file}' is not a valid JSON file: {error}.") from error


# transformers 5.17-5.25: `AutoConfig.from_pretrained` passes the folder, file or Hub id it reads to
# `from_dict` as the keyword `name_or_path`; `PreTrainedConfig.from_pretrained` passes keywords it does not
# know through `get_config_dict` to `from_dict` unchanged, which is how ReformerConfig.from_pretrained
# hands `CONFIG_SOURCE_KEYWORD` on (a private keyword, not `name_or_path`, which would become an attribute).
CONFIG_SOURCE_KEYWORD = "_reformer_config_source"


def pop_config_source(config_dict, from_dict_kwargs):
    """The folder, file or Hub id a config dict was read from (None when it was not read from one);
    removes CONFIG_SOURCE_KEYWORD from `from_dict_kwargs`."""
    source = from_dict_kwargs.pop(CONFIG_SOURCE_KEYWORD, None)
    return source or from_dict_kwargs.get("name_or_path") or config_dict.get("name_or_path") or None
