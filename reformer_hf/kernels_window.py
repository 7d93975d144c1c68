"""The chunked-window attention problem that LSH and local attention share, forward and backward.

`_Window` describes it statically (chunk length, neighbouring chunks before and after, causal,
ring or not, bucket windows, self mask, shared-QK key normalisation, whether slots are read
through a sorted slot -> position map, scale); `_window_constexprs` turns it into the kernels'
compile-time arguments, with the tiling of `_tiles`: BLOCK_M query rows of one chunk per
program (the chunk rounded up to a power of two, at most the launch settings' block_m),
BLOCK_N key slots per tile (at most BLOCK_M; the whole block for d_head > 64) and the whole head,
BLOCK_D = d_head rounded up to a power of two, per row.

The device functions below read a tile of rows through the slot -> position map (no sorted copy
of queries, keys or values is ever built), normalise shared-QK keys on the fly, and mask logits
exactly as the torch reference (`attention_functions.lsh_attention`, `attention_functions.local_attention`) does,
with its constants from attention_rules.py.  The host helpers bring operands into one memory
layout and padding masks into int8.
"""

import dataclasses
import functools
import math

import torch

from .attention_rules import KEY_NORM_EPS, MASK_VALUE, SELF_MASK_VALUE
from .kernels_device import _can_prefetch, _dot_mode, _narrow
from .kernels_launch import _jit_helper, _launch_settings, _pow2, tl


@dataclasses.dataclass(frozen=True)
class _Window:
    """Static description of a chunked-window attention problem, shared by forward and backward."""

    chunk_length: int
    n_before: int
    n_after: int
    causal: bool
    circular: bool
    bucket_window: bool
    self_mask: bool
    norm_keys: bool
    sorted_slots: bool
    scale: float

    def constexprs(self, dtype, d_head, phase, has_pad, accumulate=False):
        """The compile-time arguments of the `phase` ("forward" or "backward") kernel; `accumulate`:
        the backward adds the rounds' gradients up (more than one round)."""
        settings = _launch_settings(phase, dtype)
        return _window_constexprs(self, _dot_mode(dtype), d_head, settings["block_m"], settings["block_n"], has_pad,
                                  accumulate if phase == "backward" else None)


@functools.cache
def _window_constexprs(window, dot_mode, d_head, block_m, block_n, has_pad, accumulate):
    """The kernels' compile-time arguments for `window` (cached: built once per problem kind, not
    on every launch); `accumulate` None for the forward kernel, which takes no accumulation flags."""
    block_m, block_n, block_d = _tiles(window.chunk_length, d_head, block_m, block_n)
    constexprs = dict(
        CHUNK=window.chunk_length, D=d_head, SCALE=window.scale, KEY_SCALE=1.0 / math.sqrt(d_head),
        NB=window.n_before, NA=window.n_after, CAUSAL=window.causal, CIRCULAR=window.circular,
        BUCKET_WINDOW=window.bucket_window, SELF_MASK=window.self_mask, NORM_KEYS=window.norm_keys,
        SORTED=window.sorted_slots, HAS_PAD=has_pad, DOT_MODE=dot_mode, MASK=MASK_VALUE, SELF_VALUE=SELF_MASK_VALUE,
        EPS=KEY_NORM_EPS, ONE_BLOCK=window.chunk_length <= block_m and block_n == block_m, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_D=block_d,
    )
    if accumulate is not None:
        constexprs.update(ACCUMULATE=accumulate, PREFETCH_GRAD=_can_prefetch())
    else:
        constexprs.update(PREFETCH_ROUNDS=_can_prefetch())
    return constexprs


def _tiles(chunk_length, d_head, block_m, block_n):
    block_m = min(_pow2(chunk_length), block_m)
    block_n = min(block_m, block_n)
    if d_head > 64:
        # The tuning ran at d_head 64; wider heads keep the full-width tiles that the full-size
        # checks (bench/attention.py --check, d_head 128) passed with.
        block_n = block_m
    return block_m, block_n, _pow2(d_head)


def _common_layout(first, *others):
    """(batch, heads, length, d_head) operands in one memory layout, so that the kernels take one
    set of strides for all of them (and their gradients, allocated like the first): the first
    keeps its layout when it is dense ((b, h, l, d) or the (b, l, h, d) that splitting heads off a
    projection gives), the others are copied only where theirs differs."""
    if not (first.is_contiguous() or first.transpose(1, 2).is_contiguous()):
        first = first.contiguous()
    return (first, *(_like_layout(tensor, first) for tensor in others))


def _like_layout(tensor, like):
    if tensor.stride() == like.stride():
        return tensor
    return torch.empty_like(like, dtype=tensor.dtype).copy_(tensor)


def _pad_bytes(pad_mask, batch, length):
    if pad_mask is None:
        return None
    if tuple(pad_mask.shape) != (batch, length):
        raise ValueError(f"pad_mask has shape {tuple(pad_mask.shape)}; expected (batch, length) = {(batch, length)}")
    return pad_mask.to(torch.int8).contiguous()


@_jit_helper
def _unit_rows(x, D, key_scale, EPS: tl.constexpr):
    """Shared-QK keys from float32 rows: x * rsqrt(mean(x^2) + eps) / sqrt(d)."""
    variance = tl.sum(x * x, 1) / D
    return x * ((1.0 / tl.sqrt(variance + EPS)) * key_scale)[:, None]


@_jit_helper
def _visible(q_slot, q_pos, q_bkt, k_slot, k_pos, k_bkt, k_pad, exists, CHUNK,
             NB: tl.constexpr, NA: tl.constexpr, CAUSAL: tl.constexpr, BUCKET_WINDOW: tl.constexpr,
             HAS_PAD: tl.constexpr):
    """Which (query, key) pairs the reference leaves unmasked.

    Query and key operands come already broadcast against each other ((n, 1) and (1, m), or the
    other way round), so the same rules give the logits or their transpose.
    """
    vis = (q_pos >= 0) & (k_pos >= 0) & exists
    if HAS_PAD:
        vis = vis & (k_pad == 0)
    if CAUSAL:
        vis = vis & (k_pos <= q_pos)
    if BUCKET_WINDOW:
        distance = q_slot - k_slot
        vis = vis & (distance <= NB * CHUNK) & (distance >= -NA * CHUNK) & (k_bkt == q_bkt)
    return vis


@_jit_helper
def _mask_logits(logits, vis, same_position, SELF_MASK: tl.constexpr, MASK: tl.constexpr, SELF_VALUE: tl.constexpr):
    """The reference's masking: logits it hides become MASK and, with SELF_MASK, a visible query-key
    pair at the same position becomes SELF_VALUE.  Returns the logits and where gradient flows
    (visible and not self: the constants pass none)."""
    logits = tl.where(vis, logits, MASK)
    grad_flows = vis
    if SELF_MASK:
        is_self = vis & same_position
        logits = tl.where(is_self, SELF_VALUE, logits)
        grad_flows = vis & ~is_self
    return logits, grad_flows


@_jit_helper
def _window_chunk(chunk, w, n_chunks, NB: tl.constexpr, CIRCULAR: tl.constexpr):
    """The chunk `w` places into `chunk`'s window (w = NB is `chunk` itself), clamped into range,
    and whether it exists (on a ring every neighbour does)."""
    key_chunk = chunk + (w - NB)
    if CIRCULAR:
        exists = key_chunk == key_chunk
        key_chunk = (key_chunk + NB * n_chunks) % n_chunks
    else:
        exists = (key_chunk >= 0) & (key_chunk < n_chunks)
        key_chunk = tl.minimum(tl.maximum(key_chunk, 0), n_chunks - 1)
    return key_chunk, exists


@_jit_helper
def _slots(POS, BKT, slot_base, chunk, offsets, CHUNK, SORTED: tl.constexpr, BUCKET_WINDOW: tl.constexpr,
           MISSING_BUCKET: tl.constexpr):
    """Slots `offsets` of sorted `chunk`: which lie inside the chunk, the slots, their positions
    (-1 outside) and buckets (MISSING_BUCKET outside; without BUCKET_WINDOW, the positions)."""
    inside = offsets < CHUNK
    slot = chunk * CHUNK + offsets
    if SORTED:
        pos = tl.load(POS + slot_base + slot, mask=inside, other=-1)
    else:
        pos = tl.where(inside, slot, -1)
    bkt = pos
    if BUCKET_WINDOW:
        bkt = tl.load(BKT + slot_base + slot, mask=inside, other=MISSING_BUCKET)
    return inside, slot, pos, bkt


@_jit_helper
def _rows(X, b, h, pos, stride_b, stride_h, stride_l, d_offs):
    """Pointers to the rows `pos` (feature offsets `d_offs`) of head h of batch row b of a
    (batch, heads, length, d_head) operand."""
    return X + b * stride_b + h * stride_h + pos.to(tl.int64)[:, None] * stride_l + d_offs[None, :]


@_jit_helper
def _keys_values(Q, K, V, b, h, pos, mask, stride_b, stride_h, stride_l, d_offs, D, key_scale, queries,
                 NORM_KEYS: tl.constexpr, HAVE_QUERIES: tl.constexpr, DOT_MODE: tl.constexpr, EPS: tl.constexpr):
    """The keys and values of the rows `pos`: shared-QK keys are the rows' queries normalised
    (`queries`, already loaded, with HAVE_QUERIES; read from Q otherwise), other keys K's rows."""
    if NORM_KEYS:
        if HAVE_QUERIES:
            raw = queries
        else:
            raw = tl.load(_rows(Q, b, h, pos, stride_b, stride_h, stride_l, d_offs), mask=mask, other=0.0)
        k = _narrow(_unit_rows(raw.to(tl.float32), D, key_scale, EPS), raw.dtype, DOT_MODE)
    else:
        k = tl.load(_rows(K, b, h, pos, stride_b, stride_h, stride_l, d_offs), mask=mask, other=0.0)
    v = tl.load(_rows(V, b, h, pos, stride_b, stride_h, stride_l, d_offs), mask=mask, other=0.0)
    return k, v


@_jit_helper
def _key_block(
    Q, K, V, POS, BKT, PAD, stride_b, stride_h, stride_l, b, h, slot_base, key_chunk, start, d_offs, d_ok, LENGTH,
    CHUNK, D,
    key_scale, own_rows, SORTED: tl.constexpr, BUCKET_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr,
    NORM_KEYS: tl.constexpr, OWN_ROWS: tl.constexpr, DOT_MODE: tl.constexpr, EPS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """BLOCK_N key slots of `key_chunk` from `start`: their slots, positions, buckets and padding
    flags, which of them exist, and their keys and values, read through the slot -> position map
    (shared-QK keys normalised from the queries here).  With OWN_ROWS these slots are the
    program's own rows, already loaded as `own_rows`: shared-QK keys come from them."""
    col_ok, k_slot, k_pos, k_bkt = _slots(POS, BKT, slot_base, key_chunk, start + tl.arange(0, BLOCK_N), CHUNK,
                                          SORTED, BUCKET_WINDOW, -2)
    k_pad = k_pos
    if HAS_PAD:
        k_pad = tl.load(PAD + b * LENGTH + k_pos, mask=col_ok, other=1)
    k, v = _keys_values(Q, K, V, b, h, k_pos, col_ok[:, None] & d_ok[None, :], stride_b, stride_h, stride_l, d_offs, D,
                        key_scale, own_rows, NORM_KEYS, OWN_ROWS, DOT_MODE, EPS)
    return k_slot, k_pos, k_bkt, k_pad, col_ok, k, v

