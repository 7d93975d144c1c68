"""Running a ReformerStack over whole sequences: padded internally to the chunk multiple
(`padding_multiple`), each row's real positions moved before its padding and back again, and the
positions after a filled generation cache, decoded one at a time or recomputed."""

import math

import torch
from torch import nn


def padding_multiple(config):
    """Inputs are padded to a multiple of every chunk length the stack uses."""
    multiple = 1
    if "lsh" in config.attn_layers:
        multiple = math.lcm(multiple, config.lsh_attn_chunk_length)
    if "local" in config.attn_layers:
        multiple = math.lcm(multiple, config.local_attn_chunk_length)
    return multiple


def run_padded_stack(stack, config, hidden, pad_mask, layer_caches, output_hidden_states, context=None,
                     context_mask=None):
    """`stack` (a ReformerStack) over whole sequences, padded internally to the chunk multiple and stripped again.

    Padding anywhere in a row is first moved behind the row's real positions (`real_positions_first`)
    and the outputs moved back, so local attention's chunks count real positions: every real position
    gets the outputs it gets without the padding, whether a batch pads on the left, on the right or
    not at all.  (LSH and full attention do not depend on where padding sits.)
    """
    batch, length = hidden.shape[:2]
    order = real_positions_first(pad_mask)
    if order is not None:
        hidden = hidden.gather(1, order[..., None].expand_as(hidden))
        pad_mask = pad_mask.gather(1, order)
    multiple = padding_multiple(config)
    padded_length = -(-length // multiple) * multiple
    if padded_length != length:
        hidden = nn.functional.pad(hidden, (0, 0, 0, padded_length - length))
        if pad_mask is None:
            pad_mask = torch.zeros(batch, length, dtype=torch.bool, device=hidden.device)
        pad_mask = nn.functional.pad(pad_mask, (0, padded_length - length), value=True)
    if pad_mask is not None and not torch.compiler.is_compiling() and not pad_mask.any():
        pad_mask = None
    y1, y2, all_hidden = stack(hidden, pad_mask, output_hidden_states, layer_caches, context, context_mask,
                               kept_length=length)
    y1, y2 = y1[:, :length], y2[:, :length]
    if order is not None:
        y1, y2 = restore_order(y1, order), restore_order(y2, order)
        all_hidden = None if all_hidden is None else tuple(restore_order(h, order) for h in all_hidden)
    return y1, y2, all_hidden


def default_position_ids(attention_mask, past_length, batch, length, device):
    """(batch, length) position ids of the new positions: with a mask (covering the cached and the new
    positions) the count of real positions before each, so padding shifts no real position (padding
    gets the position of the real one before it, 0 at the front); without one, the sequence indices.
    past_length: an int, or a (1,) device tensor (a fixed-capacity cache's count, kept on the device)."""
    if attention_mask is None:
        return (torch.arange(length, device=device) + past_length).expand(batch, length)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]


def real_positions_first(pad_mask):
    """(batch, length) padding flags -> (batch, length) indices that put each row's real positions first,
    in order, and its padding after them; None where no row has padding before a real position (not
    asked under torch.compile, where reading the answer would end the graph: the indices are then
    built whatever the padding)."""
    if pad_mask is None:
        return None
    if not torch.compiler.is_compiling() and not bool((pad_mask[:, :-1] & ~pad_mask[:, 1:]).any()):
        return None
    return torch.sort(pad_mask.to(torch.uint8), dim=1, stable=True).indices


def restore_order(tensor, order):
    """(batch, length, ...) rows gathered by `order` -> the rows in their original order."""
    index = order.view(*order.shape, *([1] * (tensor.dim() - 2))).expand_as(tensor)
    return torch.empty_like(tensor).scatter(1, index, tensor)


def continue_from_cache(stack, config, hidden, new_is_pad, self_cache, layer_caches, output_hidden_states,
                        context=None, context_mask=None):
    """The positions after a filled ReformerCache `self_cache`: one at a time through every layer's
    cache, or, for a cache that recomputes (cache.py says when), the whole sequence again keeping
    the new part; the cache is advanced past them (position by position: each layer writes the
    next one at the cache's sequence index).  layer_caches: what the stack's layers read
    (`self_cache.layers`, or per-layer caches that hold them); context is only read by a
    recomputing pass."""
    length = hidden.shape[1]
    if self_cache.recomputes:
        sequence, pad_mask = self_cache.extend_sequence(hidden, new_is_pad)
        y1, y2, all_hidden = run_padded_stack(stack, config, sequence, pad_mask, layer_caches, output_hidden_states,
                                              context, context_mask)
        self_cache.advance(length)
        if all_hidden is not None:
            all_hidden = tuple(h[:, -length:] for h in all_hidden)
        return y1[:, -length:], y2[:, -length:], all_hidden
    self_cache.check_room(length)
    steps = []
    for t in range(length):
        self_cache.begin_step(new_is_pad[:, t])
        steps.append(stack.decode_step(hidden[:, t : t + 1], layer_caches, new_is_pad[:, t], output_hidden_states))
        self_cache.advance(1)
    return join_decode_steps(steps, output_hidden_states)


def join_decode_steps(steps, output_hidden_states):
    """Per-position (y1, y2, hidden states per layer) decode steps -> the same along the sequence."""
    y1 = torch.cat([step[0] for step in steps], dim=1)
    y2 = torch.cat([step[1] for step in steps], dim=1)
    all_hidden = None
    if output_hidden_states:
        all_hidden = tuple(torch.cat(per_layer, dim=1) for per_layer in zip(*(step[2] for step in steps)))
    return y1, y2, all_hidden
