"""Sorting the hash rounds by (bucket, position): the sorted slot -> position map the window kernels read.

Rows of at most SORT_KERNEL_MAX_LENGTH positions are sorted by `_sort_rows_kernel`, grid (batch x
heads x rounds,): one program sorts one round's row, padded to a power of two, as unique
bucket * BLOCK + position keys (tl.sort); longer rows go to torch.sort on int16 or int32 keys.
"""

import functools

import torch

from .kernels_launch import _interpreting, _jit, _launch, _next_pow2, tl, triton
from .kernels_window import _pad_bytes


def sort_by_bucket(bucket_ids, n_buckets, pad_mask=None, with_buckets=True):
    """`attention_functions.sort_by_bucket` as the kernels read it: the sorted slot -> position map and the
    slots' buckets offset by round * (n_buckets + 1) (None unless `with_buckets`: only the
    "bucket_window" mode reads them), both (batch, heads, n_hashes * length) int32.  pad_mask:
    (batch, length), bool or int8 (nonzero: padding), or None.

    Each round is sorted on its own (the same order as sorting round-offset keys), so the
    positions come out of torch.sort without index arithmetic, and the round offsets are added
    to the sorted buckets only where they are read: three to four small operations per step
    fewer than before, which at 8K tokens is CPU time the step waits for.

    The keys are sorted as int16 whenever the bucket ids and the padding's sentinel (n_buckets)
    fit in it (with 2L / 64 buckets, every length up to 512K tokens): torch.sort's radix passes
    follow the key width, and on the H100 sorting (1, 8, 4, 64K) keys took 0.154 ms and 128 us
    of CPU as int16 against 0.210 ms and 187 us as int32.  Rows of up to SORT_KERNEL_MAX_LENGTH
    positions are sorted by one kernel instead."""
    if _sorts_in_kernel(bucket_ids, n_buckets):
        batch, _, _, length = bucket_ids.shape
        return _sort_rows(bucket_ids, n_buckets, _pad_bytes(pad_mask, batch, length), with_buckets)
    keys = bucket_ids.to(torch.int16 if n_buckets <= torch.iinfo(torch.int16).max else torch.int32)
    if pad_mask is not None:
        keys = keys.masked_fill(pad_mask.bool()[:, None, None, :], n_buckets)
    sorted_buckets, order = torch.sort(keys, dim=-1, stable=True)
    if with_buckets:  # int32 from here on: the round offsets reach n_hashes * (n_buckets + 1)
        sorted_buckets = (sorted_buckets + _round_offsets(keys.shape[2], n_buckets, keys.device)).flatten(2)
    return order.to(torch.int32).flatten(2), sorted_buckets if with_buckets else None


def _sorts_in_kernel(bucket_ids, n_buckets):
    length = bucket_ids.shape[-1]
    return (
        triton is not None
        and (bucket_ids.is_cuda or _interpreting())
        and length <= SORT_KERNEL_MAX_LENGTH
        and (n_buckets + 1) * _next_pow2(length) < 2**31
    )


def _sort_rows(bucket_ids, n_buckets, pad, with_buckets):
    batch, heads, n_hashes, length = bucket_ids.shape
    bucket_ids = bucket_ids.contiguous()
    positions = torch.empty(batch, heads, n_hashes * length, dtype=torch.int32, device=bucket_ids.device)
    buckets = torch.empty_like(positions) if with_buckets else None
    block = _next_pow2(length)
    _launch(_sort_rows_kernel, (batch * heads * n_hashes,),
            (bucket_ids, pad, positions, buckets, heads, n_hashes, length, n_buckets),
            dict(HAS_PAD=pad is not None, WITH_BUCKETS=with_buckets, BLOCK=block, LOG_BLOCK=block.bit_length() - 1),
            8 if block >= 4096 else 4)
    return positions, buckets


def _round_offsets(n_hashes, n_buckets, device):
    """(n_hashes, 1) int32: round r's bucket offset r * (n_buckets + 1).  Kept once made, except
    while a CUDA graph is being captured: a tensor made then holds its values only after the
    graph's first replay."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return _make_round_offsets(n_hashes, n_buckets, device)
    return _cached_round_offsets(n_hashes, n_buckets, device)


def _make_round_offsets(n_hashes, n_buckets, device):
    return (torch.arange(n_hashes, dtype=torch.int32, device=device) * (n_buckets + 1))[:, None]


_cached_round_offsets = functools.lru_cache(maxsize=64)(_make_round_offsets)


# Rows of at most this many positions are sorted by `_sort_rows_kernel`, one launch in place of
# torch.sort and its conversions.  On one H100 it sorted (1, 8, 4, L) bucket ids in 0.045 ms at
# 1K and 0.15 ms at 8K, where torch.sort's own kernels take less (0.01 ms at 8K), but the call
# took 39 us of CPU against 94 us for torch.sort's path, and steps of that length wait for the
# CPU; at 16K the kernel took 0.35 ms and 23-40 s to compile (10-15 s at 8K), so longer rows
# keep torch.sort.
SORT_KERNEL_MAX_LENGTH = 8192


@_jit
def _sort_rows_kernel(
    BKT, PAD, POS_OUT, BKT_OUT, H, N_HASHES, LENGTH, N_BUCKETS,
    HAS_PAD: tl.constexpr, WITH_BUCKETS: tl.constexpr, BLOCK: tl.constexpr, LOG_BLOCK: tl.constexpr,
):
    """One (batch, head, round) row of contiguous bucket ids, sorted by (bucket, position) in one
    program.  Each position's key bucket * BLOCK + position is unique, so sorting the keys gives
    the stable order by bucket; the key's low bits are the position, its high bits the bucket.
    Padding takes bucket N_BUCKETS; the slots past LENGTH (BLOCK is a power of two) sort last and
    are not stored."""
    row = tl.program_id(0)
    b = row // (H * N_HASHES)
    hash_round = row % N_HASHES
    pos = tl.arange(0, BLOCK)
    pos_ok = pos < LENGTH
    offsets = row.to(tl.int64) * LENGTH + pos  # the input's (b, h, round) row and the output's slots
    bucket = tl.load(BKT + offsets, mask=pos_ok, other=0).to(tl.int32)
    if HAS_PAD:
        bucket = tl.where(tl.load(PAD + b * LENGTH + pos, mask=pos_ok, other=0) != 0, N_BUCKETS, bucket)
    keys = tl.sort(tl.where(pos_ok, bucket * BLOCK + pos, 2**31 - 1))
    tl.store(POS_OUT + offsets, keys & (BLOCK - 1), mask=pos_ok)
    if WITH_BUCKETS:
        tl.store(BKT_OUT + offsets, (keys >> LOG_BLOCK) + hash_round * (N_BUCKETS + 1), mask=pos_ok)

