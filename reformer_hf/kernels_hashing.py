"""Angular LSH hashing fused: bucket = argmax([xR; -xR]) per bucket factor and round, without storing xR.

Grid (position blocks, batch x heads): a program reads BLOCK_L rows of one head (the whole head,
BLOCK_D wide; BLOCK_L at most 128 and the tile at most 32 KB) once and hashes them for every
round, taking each factor's rotation BLOCK_H (at most 64) columns at a time and keeping only the
running maximum and minimum and their columns.  The rotation's product has float32 accuracy
(HASH_PRECISION), as the reference (`attention_functions.hash_vectors`) has for float32 inputs.
"""

import functools

import torch

from .attention_rules import bucket_factors
from .kernels_device import _dot, _dot_mode, _narrow, _position_block
from .kernels_launch import LAUNCH, _cdiv, _jit, _jit_helper, _launch, _pow2, _require_kernels, _rows_contiguous, tl

# The hashing rotation's dot.  "ieee" float32 runs on the FMA units and took 1.07 of the 5.8 ms
# of an LSH step at 64K tokens on one H100; "tf32x3" runs three tf32 products on the tensor cores
# and keeps float32's accuracy (a bfloat16 or float16 x splits exactly, so only the rotation's
# low bits are rounded, at 2^-21), so only near-tied argmaxes can differ from the reference.
# "bf16x3" (bfloat16 x; other dtypes take "tf32x3") keeps x as it is and splits the rotation into
# three bfloat16 parts: three bfloat16 products, each exact in float32.
HASH_PRECISION = "bf16x3"


def hash_vectors(vectors, rotations, num_buckets):
    """`attention_functions.hash_vectors` fused: the rotated vectors are never stored.

    vectors (batch, heads, length, d_head) of any supported dtype are rotated at float32 accuracy
    (HASH_PRECISION), as the reference does for float32 inputs; one program hashes its rows for
    every round.  Returns bucket_ids (batch, heads, n_hashes, length) int64.
    """
    factors = bucket_factors(num_buckets)
    if len(factors) > 2:
        raise ValueError(f"hash_vectors: num_buckets={num_buckets!r}; the kernel supports one or two factors")
    _require_kernels("hash_vectors", vectors)
    batch, heads, length, d_head = vectors.shape
    n_hashes = rotations.shape[2]
    if tuple(rotations.shape) != (heads, d_head, n_hashes, sum(f // 2 for f in factors)):
        raise ValueError(f"hash_vectors: rotations have shape {tuple(rotations.shape)}; expected "
                         f"(heads, d_head, n_hashes, rotation_size) = ({heads}, {d_head}, n_hashes, "
                         f"{sum(f // 2 for f in factors)})")
    vectors = _rows_contiguous(vectors)
    rotations = rotations.to(device=vectors.device, dtype=torch.float32).contiguous()
    halves = [f // 2 for f in factors] + [0]
    precision = HASH_PRECISION
    if precision == "bf16x3" and vectors.dtype != torch.bfloat16:
        precision = "tf32x3"
    out = torch.empty(batch, heads, n_hashes, length, dtype=torch.long, device=vectors.device)
    # 128 positions of d_head 128 per program asked for 256 KB of shared memory on the H100 (it
    # has 227 KB): the tile is capped at 32 KB (8K float32 elements).
    block_l = min(LAUNCH["hash"]["block_l"], (16384 if precision == "bf16x3" else 8192) // _pow2(d_head))
    grid = (_cdiv(length, block_l), batch * heads)
    _launch(_hash_kernel, grid,
            (vectors, rotations, out, *vectors.stride()[:3], *rotations.stride()[:3], *out.stride()[:3], heads, length,
             n_hashes),
            _hash_constexprs(d_head, halves[0], halves[1], precision, _dot_mode(vectors.dtype), block_l),
            LAUNCH["hash"]["num_warps"])
    return out


@functools.cache
def _hash_constexprs(d_head, half0, half1, precision, dot_mode, block_l):
    return dict(D=d_head, HALF0=half0, HALF1=half1, BLOCK_H0=min(_pow2(half0), 64),
                BLOCK_H1=min(_pow2(max(half1, 1)), 64), PRECISION=precision, DOT_MODE=dot_mode, BLOCK_L=block_l,
                BLOCK_D=_pow2(d_head))


@_jit
def _hash_kernel(
    X, ROT, OUT,
    stride_xb, stride_xh, stride_xl,
    stride_rh, stride_rd, stride_rn,
    stride_ob, stride_oh, stride_on,
    H, LENGTH, N_HASHES,
    D: tl.constexpr, HALF0: tl.constexpr, HALF1: tl.constexpr, BLOCK_H0: tl.constexpr, BLOCK_H1: tl.constexpr,
    PRECISION: tl.constexpr, DOT_MODE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """bucket = argmax([xR; -xR]) per factor of the bucket count and per round, without keeping xR.
    PRECISION "bf16x3": x is bfloat16 and is used as it is, against the rotation split into three
    bfloat16 parts; otherwise x is read as float32 and the dot has that input precision."""
    b, h, pos, pos_ok, d_offs, d_ok = _position_block(H, LENGTH, D, BLOCK_L, BLOCK_D)
    x = tl.load(X + b * stride_xb + h * stride_xh + pos[:, None] * stride_xl + d_offs[None, :],
                mask=pos_ok[:, None] & d_ok[None, :], other=0.0)
    if PRECISION != "bf16x3":
        x = x.to(tl.float32)
    for hash_round in range(N_HASHES):
        rot_base = ROT + h * stride_rh + hash_round * stride_rn
        bucket = _hash_factor(x, rot_base, stride_rd, d_offs, d_ok, 0, HALF0, BLOCK_H0, PRECISION, DOT_MODE)
        if HALF1 > 0:
            bucket += 2 * HALF0 * _hash_factor(x, rot_base, stride_rd, d_offs, d_ok, HALF0, HALF1, BLOCK_H1, PRECISION,
                                               DOT_MODE)
        tl.store(OUT + b * stride_ob + h * stride_oh + hash_round * stride_on + pos, bucket.to(tl.int64), mask=pos_ok)


@_jit_helper
def _rotate(x, rotation, PRECISION: tl.constexpr, DOT_MODE: tl.constexpr):
    """x @ rotation at float32 accuracy.  "bf16x3": the float32 rotation is split into three
    bfloat16 parts (8 + 8 + 8 significant bits, all of float32's 24), each product of bfloat16
    numbers is exact in float32, and the tensor cores accumulate them in float32."""
    if PRECISION == "bf16x3":
        high = _narrow(rotation, tl.bfloat16, DOT_MODE)
        rest = rotation - high.to(tl.float32)
        middle = _narrow(rest, tl.bfloat16, DOT_MODE)
        low = _narrow(rest - middle.to(tl.float32), tl.bfloat16, DOT_MODE)
        rotated = _dot(x, low, DOT_MODE) + _dot(x, middle, DOT_MODE) + _dot(x, high, DOT_MODE)
    else:
        rotated = tl.dot(x, rotation, input_precision=PRECISION)
    return rotated


@_jit_helper
def _hash_factor(x, rot_base, stride_rd, d_offs, d_ok, first_column, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                 PRECISION: tl.constexpr, DOT_MODE: tl.constexpr):
    """argmax over [xR, -xR] for one factor's HALF columns, BLOCK_H columns at a time."""
    best_high = tl.full([x.shape[0]], float("-inf"), tl.float32)
    best_low = tl.full([x.shape[0]], float("inf"), tl.float32)
    arg_high = tl.zeros([x.shape[0]], tl.int32)
    arg_low = tl.zeros([x.shape[0]], tl.int32)
    for start in range(0, HALF, BLOCK_H):
        columns = start + tl.arange(0, BLOCK_H)
        column_ok = columns < HALF
        rotation = tl.load(rot_base + d_offs[:, None] * stride_rd + first_column + columns[None, :],
                           mask=d_ok[:, None] & column_ok[None, :], other=0.0).to(tl.float32)
        rotated = _rotate(x, rotation, PRECISION, DOT_MODE)
        highest = tl.where(column_ok[None, :], rotated, float("-inf"))
        lowest = tl.where(column_ok[None, :], rotated, float("inf"))
        # one reduction gives each extreme and its first column, as torch.argmax picks on a tie
        block_high, column_high = tl.max(highest, 1, return_indices=True)
        block_low, column_low = tl.min(lowest, 1, return_indices=True)
        # strict comparisons: on a tie the earlier block wins
        arg_high = tl.where(block_high > best_high, column_high + start, arg_high)
        arg_low = tl.where(block_low < best_low, column_low + start, arg_low)
        best_high = tl.maximum(best_high, block_high)
        best_low = tl.minimum(best_low, block_low)
    # argmax over [xR, -xR] takes the first maximum, so a tie goes to the positive half.
    return tl.where(best_high >= -best_low, arg_high, HALF + arg_low)

