"""What a forward refuses before any work: keywords it does not take, labels whose shape does not
match the inputs, and an attention mask or cache positions that do not continue the cache."""

import inspect

import torch

from . import compat


def refuse_unknown_keywords(model, keywords):
    """A forward's **kwargs may hold only what transformers' generate() passes besides the named
    parameters (compat.GENERATION_ONLY_ARGUMENTS); any other keyword, misspelt or meant for another
    model, would be ignored without a word: ValueError naming it and what the forward takes."""
    unknown = sorted(set(keywords) - compat.GENERATION_ONLY_ARGUMENTS)
    if unknown:
        named = [name for name in inspect.signature(model.forward).parameters if name != "kwargs"]
        raise ValueError(
            f"{type(model).__name__}.forward got unexpected keyword argument(s) {unknown}; it takes {named}, and "
            f"the generation keywords {sorted(compat.GENERATION_ONLY_ARGUMENTS)}."
        )


def check_labels_batch(model, labels, input_ids, inputs_embeds, per_position):
    """Before any work: labels hold one row per example (and, per_position, one entry per input
    position: (batch, length)); ValueError naming their shape and the expected one."""
    inputs = input_ids if input_ids is not None else inputs_embeds
    if labels is None or inputs is None:
        return
    batch, length = inputs.shape[:2]
    if per_position and tuple(labels.shape) != (batch, length):
        raise ValueError(f"{type(model).__name__}: labels has shape {tuple(labels.shape)}; expected {(batch, length)}, "
                         "one token id (or -100) per input position.")
    if not per_position and (labels.dim() == 0 or labels.shape[0] != batch):
        raise ValueError(f"{type(model).__name__}: labels has shape {tuple(labels.shape)}; expected {batch} rows, one "
                         f"per example: class ids ({batch},) or targets ({batch}, num_labels).")


def check_attention_mask(attention_mask, shape, position_ids, past_length, decoding):
    """attention_mask (batch, cached + new positions) for inputs of `shape` (batch, length).

    Continuing a filled cache (`decoding`) it may instead cover the new positions only (batch,
    length): the shape every step of a compiled decoding loop has (the cache holds the earlier
    positions' padding); position_ids must then come with it, since the number of real positions
    before the new ones is not in the mask.  past_length: the cached positions, or None for a
    fixed-capacity cache, whose length only its device knows (ReformerCache.confirm_positions then
    checks a longer mask).  ValueError naming the shape and the allowed ones.
    """
    batch, length = shape
    width = attention_mask.shape[-1]
    if not decoding:
        allowed = width == length
    elif past_length is None:
        allowed = width >= length
    else:
        allowed = width in (length, past_length + length)
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or not allowed:
        if not decoding:
            expected = f"{(batch, length)}, one entry for each of the inputs"
        else:
            total = past_length + length if past_length is not None else f"cached + {length}"
            cached = past_length if past_length is not None else "cached"
            expected = (f"({batch}, {total}), one entry for each of the {cached} cached positions and the new inputs, "
                        f"or {(batch, length)}, the new inputs only")
        raise ValueError(f"ReformerModel: attention_mask has shape {tuple(attention_mask.shape)}; expected {expected}.")
    if decoding and width == length and position_ids is None:
        raise ValueError(
            f"ReformerModel: attention_mask of shape {tuple(attention_mask.shape)} covers only the new positions after "
            "the cached ones; pass position_ids with it (the count of real positions before each new one), or a mask "
            "that covers the cached positions too."
        )


def check_cache_continuation(cache, length, cache_position, attention_mask):
    """The inputs continue `cache` (a ReformerCache): `cache_position` (length,), where given, holds the
    sequence indices of its next positions, and a mask longer than the new inputs covers exactly the
    cached positions (checked here for a fixed-capacity cache, whose length the host does not know).
    ValueError where the host can tell at no cost (the CPU outside torch.compile); elsewhere the
    device asserts it and a wrong call stops the run."""
    if cache_position is not None and cache.confirm_positions(
            cache_position, "ReformerModel: cache_position does not continue the cache") is False:
        past_length = cache.get_seq_length()
        raise ValueError(
            f"ReformerModel: cache_position={cache_position.tolist()} does not continue the cache; expected "
            f"positions {past_length}..{past_length + length - 1} (the cache already holds {past_length})."
        )
    if not cache.is_filled or cache.known_length() is not None or attention_mask is None:
        return
    width = attention_mask.shape[-1]
    if width == length:
        return
    covered = torch.arange(width - length, width, device=attention_mask.device)
    if cache.confirm_positions(covered, "ReformerModel: attention_mask does not cover the cached positions") is False:
        past_length = cache.get_seq_length()
        raise ValueError(
            f"ReformerModel: attention_mask has shape {tuple(attention_mask.shape)}; expected "
            f"{(attention_mask.shape[0], past_length + length)}, one entry for each of the {past_length} cached "
            f"positions and the new inputs, or {(attention_mask.shape[0], length)}, the new inputs only."
        )
