"""The anchors our attention kernels are measured against in bench/attention.py (issue 26).

- Dense: SDPA held to one backend (flash or cuDNN, common.sdpa_backend); the faster one per length
  is the anchor.
- Local: FlexAttention with a block mask whose visible keys are exactly those of this package's
  `local` layers: a query in chunk i sees the keys of chunks i - n_chunks_before .. i +
  n_chunks_after (chunks off either end are missing), and with `causal` only keys at or before
  it; no self masking (queries and keys are separate projections); logits scaled by 1/sqrt(d_head).
- LSH, "what a user could write in an afternoon": the package's hashing, a torch sort by bucket,
  FlexAttention over the bucket-sorted sequence with the windows of the `lsh` layers, un-sorted,
  the hash rounds combined by their log-sum-exp.  The rules are the package's: shared-QK keys
  (`normalize_keys`, which holds the 1/sqrt(d_head)), a query sees itself only when nothing else
  is visible (its self logit replaced by SELF_MASK_VALUE), causal by original positions; "chunk"
  windows are a query's sorted chunk and its neighbours on a ring over the rounds laid end to end,
  "bucket_window" windows the keys of its own round and bucket at most n_chunks_before *
  chunk_length sorted places before it (n_chunks_after * chunk_length after it).

The block masks are built from the windows' structure (which key blocks a query block's chunk
window touches, and which of those every query sees whole) instead of create_block_mask's
evaluation of every (query, key) pair, which at 256K tokens and 4 hash rounds would be 8 x 1M x 1M
evaluations per step; the LSH windows' blocks are the same at every step, so they are built once
and each step's copy carries that step's mask_mod.  Inside those blocks the mask_mod decides.
tests/bench/test_bench_anchors.py checks both anchors against the package's torch references.
"""

import copy

import torch
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention

from reformer_hf.attention_functions import normalize_keys
from reformer_hf.attention_rules import SELF_MASK_VALUE

# ---------------------------------------------------------------------------------------------
# Block masks from chunk windows
# ---------------------------------------------------------------------------------------------


def chunk_window_blocks(n_slots, chunk_length, n_before, n_after, *, circular, block_size, device, full_pair=None):
    """The key blocks each query block's chunk window touches, as BlockMask.from_kv_blocks takes them.

    The window of query chunk i is chunks i - n_before .. i + n_after, taken modulo the number of
    chunks when `circular`, missing off either end otherwise.  full_pair(query_chunk, key_chunk)
    says for chunk pairs of a window whether every query of the one sees every key of the other
    (None: no pair is sure to); a block pair is full when all its chunk pairs are.  Returns
    (kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices), shaped (1, 1, n_blocks) and
    (1, 1, n_blocks, n_blocks), int32 (a block mask's layout: each row's blocks first, ascending);
    the full blocks are not among the partial ones.
    """
    if block_size % chunk_length or n_slots % block_size:
        raise ValueError(f"chunk_window_blocks: block_size={block_size} must be a multiple of chunk_length="
                         f"{chunk_length} and divide n_slots={n_slots}")
    n_chunks, n_blocks, per_block = n_slots // chunk_length, n_slots // block_size, block_size // chunk_length
    if n_chunks <= n_before + n_after:
        raise ValueError(f"chunk_window_blocks: {n_chunks} chunks cannot hold a window of n_before={n_before} + "
                         f"n_after={n_after} other chunks without showing a chunk twice")
    query_chunks = torch.arange(n_chunks, device=device)[:, None]  # (C, 1)
    key_chunks = query_chunks + torch.arange(-n_before, n_after + 1, device=device)[None, :]  # (C, W)
    exists = torch.ones_like(key_chunks, dtype=torch.bool)
    if circular:
        key_chunks = key_chunks % n_chunks
    else:
        exists = (key_chunks >= 0) & (key_chunks < n_chunks)
    query_chunks = query_chunks.expand_as(key_chunks)
    pair_keys = (query_chunks // per_block) * n_blocks + key_chunks // per_block  # (query block, key block)
    touched = torch.unique(pair_keys[exists])
    full = touched[:0]
    if full_pair is not None:
        is_full = exists & full_pair(query_chunks, key_chunks)
        full_keys, counts = torch.unique(pair_keys[is_full], return_counts=True)
        full = full_keys[counts == per_block * per_block]
    partial = touched[~torch.isin(touched, full)]
    return (*_block_rows(partial, n_blocks), *_block_rows(full, n_blocks))


def _block_rows(pair_keys, n_blocks):
    """Sorted (query block * n_blocks + key block) keys -> (1, 1, n_blocks) counts and
    (1, 1, n_blocks, n_blocks) key blocks, int32."""
    rows, columns = pair_keys // n_blocks, pair_keys % n_blocks
    counts = torch.bincount(rows, minlength=n_blocks)
    starts = torch.cumsum(counts, 0) - counts
    indices = torch.zeros(n_blocks, n_blocks, dtype=torch.int32, device=pair_keys.device)
    indices[rows, torch.arange(len(rows), device=pair_keys.device) - starts[rows]] = columns.to(torch.int32)
    return counts.to(torch.int32)[None, None], indices[None, None]


# ---------------------------------------------------------------------------------------------
# Local: FlexAttention sliding window
# ---------------------------------------------------------------------------------------------


def local_mask_mod(chunk_length, n_chunks_before, n_chunks_after, causal):
    """The keys a query of a `local` layer sees (wrap_around off, the layers' default)."""

    def mask_mod(batch, head, query_index, key_index):
        query_chunk, key_chunk = query_index // chunk_length, key_index // chunk_length
        visible = (key_chunk >= query_chunk - n_chunks_before) & (key_chunk <= query_chunk + n_chunks_after)
        return visible & (key_index <= query_index) if causal else visible

    return mask_mod


def local_block_mask(length, *, chunk_length, n_chunks_before=1, n_chunks_after=0, causal=False, block_size=128,
                     device="cpu"):
    """The BlockMask of a `local` layer's window over `length` positions; built once, used by every step."""
    # A whole key chunk is seen by a whole query chunk when it lies strictly before it (causal), or always;
    # with `causal` the chunks after a query's own hold no key it sees.
    full_pair = (lambda query_chunk, key_chunk: key_chunk < query_chunk) if causal else (
        lambda query_chunk, key_chunk: torch.ones_like(key_chunk, dtype=torch.bool))
    blocks = chunk_window_blocks(length, chunk_length, n_chunks_before, 0 if causal else n_chunks_after,
                                 circular=False, block_size=block_size, device=device, full_pair=full_pair)
    return BlockMask.from_kv_blocks(*blocks, BLOCK_SIZE=block_size,
                                    mask_mod=local_mask_mod(chunk_length, n_chunks_before, n_chunks_after, causal),
                                    seq_lengths=(length, length))


def flex_local_attention(query, key, value, block_mask, flex=flex_attention):
    """`local_attention`'s output and log-sum-exp through FlexAttention (`flex`: flex_attention or
    its compiled form).  query, key, value: (batch, heads, length, d_head)."""
    out, aux = flex(query, key, value, block_mask=block_mask, return_aux=AuxRequest(lse=True))
    return out, aux.lse


# ---------------------------------------------------------------------------------------------
# LSH: FlexAttention over the bucket-sorted sequence
# ---------------------------------------------------------------------------------------------


def lsh_window_block_mask(n_slots, *, chunk_length, n_chunks_before=1, n_chunks_after=0,
                          window_mode="bucket_window", block_size=128, device="cpu"):
    """The key blocks of each query block's window over `n_slots` sorted places (n_hashes x length):
    a ring of chunks in "chunk" mode, chunks off the ends missing in "bucket_window" mode.  Every
    block is partial: which keys a query sees depends on the hashing, so `flex_lsh_attention`
    gives each step's copy its own mask_mod.  Built once per length, used by every step."""
    blocks = chunk_window_blocks(n_slots, chunk_length, n_chunks_before, n_chunks_after,
                                 circular=window_mode == "chunk", block_size=block_size, device=device)
    return BlockMask.from_kv_blocks(*blocks[:2], BLOCK_SIZE=block_size, seq_lengths=(n_slots, n_slots))


def sort_rounds_by_bucket(bucket_ids, n_buckets):
    """The hash rounds laid end to end, each sorted by (bucket, position): (batch, heads, n_hashes,
    length) bucket ids -> the index of each sorted place into the rounds laid end to end and its
    bucket offset by round * n_buckets, both (batch, heads, n_hashes * length)."""
    n_hashes = bucket_ids.shape[2]
    offsets = torch.arange(n_hashes, device=bucket_ids.device).view(1, 1, n_hashes, 1) * n_buckets
    round_buckets = (bucket_ids + offsets).flatten(2)
    order = torch.argsort(round_buckets, dim=-1, stable=True)
    return order, round_buckets.gather(-1, order)


def lsh_mask_mod(positions, buckets, *, chunk_length, n_chunks_before, n_chunks_after, causal, window_mode):
    """The keys a sorted query sees: positions, buckets (batch, heads, n_slots) of each sorted place."""
    n_chunks = positions.shape[-1] // chunk_length

    def mask_mod(batch, head, query_index, key_index):
        if window_mode == "chunk":
            behind = (query_index // chunk_length - key_index // chunk_length) % n_chunks  # chunks back on the ring
            visible = (behind <= n_chunks_before) | (behind >= n_chunks - n_chunks_after)
        else:
            distance = query_index - key_index
            visible = (distance <= n_chunks_before * chunk_length) & (distance >= -n_chunks_after * chunk_length)
            visible = visible & (buckets[batch, head, query_index] == buckets[batch, head, key_index])
        if causal:
            visible = visible & (positions[batch, head, key_index] <= positions[batch, head, query_index])
        return visible

    return mask_mod


def self_score_mod(positions):
    """A query's logit for its own position (in any round) replaced by SELF_MASK_VALUE."""

    def score_mod(score, batch, head, query_index, key_index):
        is_self = positions[batch, head, query_index] == positions[batch, head, key_index]
        return torch.where(is_self, SELF_MASK_VALUE, score)

    return score_mod


def flex_lsh_attention(query_key, value, bucket_ids, window_mask, *, n_buckets, chunk_length, n_chunks_before=1,
                       n_chunks_after=0, causal=False, window_mode="bucket_window", flex=flex_attention):
    """`lsh_attention` (no padding, no dropout) as sort + FlexAttention + un-sort + combine.

    query_key, value: (batch, heads, length, d_head); bucket_ids: (batch, heads, n_hashes, length)
    in [0, n_buckets); window_mask: `lsh_window_block_mask` of n_hashes * length places.  Returns out
    (batch, heads, length, d_head) and the combined log-sum-exp (batch, heads, length).
    """
    batch, heads, length, d_head = query_key.shape
    n_hashes = bucket_ids.shape[2]
    if window_mode == "chunk" and length == chunk_length:
        raise ValueError("flex_lsh_attention: length == chunk_length in 'chunk' mode, where lsh_attention attends "
                         "densely; expected a longer sequence")
    order, buckets = sort_rounds_by_bucket(bucket_ids, n_buckets)
    positions = order % length

    def sorted_rows(tensor):  # (batch, heads, length, d_head) -> (batch, heads, n_slots, d_head)
        return tensor.gather(2, positions[..., None].expand(-1, -1, -1, d_head))

    mask_mod = lsh_mask_mod(positions, buckets, chunk_length=chunk_length, n_chunks_before=n_chunks_before,
                            n_chunks_after=n_chunks_after, causal=causal, window_mode=window_mode)
    block_mask = copy.copy(window_mask)  # the same blocks, this step's mask_mod
    block_mask.mask_mod = mask_mod
    out, aux = flex(sorted_rows(query_key), sorted_rows(normalize_keys(query_key)), sorted_rows(value),
                    score_mod=self_score_mod(positions), block_mask=block_mask, scale=1.0,
                    return_aux=AuxRequest(lse=True))
    # The sorted place of each (round, position): order's inverse permutation, without a second sort.
    places = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    unsort = torch.empty_like(order).scatter_(-1, order, places)
    round_out = out.gather(2, unsort[..., None].expand(-1, -1, -1, d_head)).view(batch, heads, n_hashes, length, d_head)
    round_lse = aux.lse.gather(2, unsort).view(batch, heads, n_hashes, length)
    total_lse = torch.logsumexp(round_lse, dim=2)
    weights = torch.exp(round_lse - total_lse[:, :, None])
    return (round_out.float() * weights[..., None]).sum(dim=2).to(value.dtype), total_lse
