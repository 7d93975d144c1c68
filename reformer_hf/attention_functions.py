"""The attention math as pure tensor functions on (batch, heads, length, d_head) tensors.

Hashing (`hash_vectors`), the sort by bucket, LSH, local and full attention, the combination of
hash rounds and the one-position decoding steps; each attention returns `(out, logsumexp)` (or
`out` alone, `full_attention_sdpa`).  They are the reference path that the fused kernels in
`kernels.py` are tested against, and they never build a length x length tensor on the LSH and
local paths.  What both sides must agree on (masking constants, argument checks, the heads'
layout) is in `attention_rules.py`.
"""

import math

import torch
from torch import nn

from .attention_rules import (
    KEY_NORM_EPS,
    MASK_VALUE,
    SELF_MASK_VALUE,
    bucket_factors,
    check_local_arguments,
    check_lsh_arguments,
    unpack_heads,
)


def upcast(tensor):
    """Half precision to float32 for logits and softmax; float32 and float64 stay as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def attention_logits(query, keys):
    """query (..., n, d) x keys (..., m, d) -> float32 logits (..., n, m).  Under autocast the
    product runs in autocast's dtype like every other product of the model, so its result is
    brought back to float32 before any mask replaces a logit: MASK_VALUE and SELF_MASK_VALUE lie
    outside float16's range."""
    return upcast(torch.matmul(upcast(query), upcast(keys).transpose(-1, -2)))


def normalize_keys(query_key):
    """Shared-QK keys: each vector scaled to unit length (root-mean-square norm, then 1/sqrt(d))."""
    d_head = query_key.shape[-1]
    variance = upcast(query_key).pow(2).mean(dim=-1, keepdim=True)
    return (upcast(query_key) * torch.rsqrt(variance + KEY_NORM_EPS) / math.sqrt(d_head)).to(query_key.dtype)


def rotation_size(num_buckets):
    """Columns of a hash rotation: half of each bucket factor."""
    return sum(factor // 2 for factor in bucket_factors(num_buckets))


def buckets_for_length(length, chunk_length):
    """The paper's bucket count for a length: the power of two nearest 2 * length / chunk_length, >= 2."""
    target = max(2.0, 2.0 * length / chunk_length)
    return 2 ** max(1, round(math.log2(target)))


def hash_vectors(vectors, rotations, num_buckets):
    """Angular LSH: bucket = argmax([xR; -xR]) per hash round, one argmax per bucket factor.

    vectors:   (batch, heads, length, d_head)
    rotations: (heads, d_head, n_hashes, rotation_size(num_buckets))
    returns bucket_ids (batch, heads, n_hashes, length) in [0, prod(factors)).
    """
    rotated = torch.einsum("bhld,hdnr->bhnlr", vectors, rotations.to(vectors.dtype))
    bucket_ids = torch.zeros(rotated.shape[:-1], dtype=torch.long, device=vectors.device)
    column, stride = 0, 1
    for factor in bucket_factors(num_buckets):
        part = rotated[..., column : column + factor // 2]
        bucket_ids = bucket_ids + stride * torch.cat([part, -part], dim=-1).argmax(dim=-1)
        column += factor // 2
        stride *= factor
    return bucket_ids


def neighbour_chunks(n_chunks, n_before, n_after, circular, device):
    """Chunk ids each chunk attends to, (n_chunks, window), and whether each one exists.

    With `circular`, the first chunk's "previous" chunk is the last one (the paper's sorted
    sequence is treated as a ring); otherwise chunks off either end are marked missing.
    """
    offsets = torch.arange(-n_before, n_after + 1, device=device)
    chunk_ids = torch.arange(n_chunks, device=device)[:, None] + offsets[None, :]
    if circular:
        return chunk_ids % n_chunks, torch.ones_like(chunk_ids, dtype=torch.bool)
    exists = (chunk_ids >= 0) & (chunk_ids < n_chunks)
    return chunk_ids.clamp(0, n_chunks - 1), exists


def _chunk(tensor, chunk_length):
    """(batch, heads, length, ...) -> (batch, heads, n_chunks, chunk_length, ...)."""
    b, h, length = tensor.shape[:3]
    return tensor.reshape(b, h, length // chunk_length, chunk_length, *tensor.shape[3:])


def _gather_neighbours(chunked, chunk_ids):
    """(batch, heads, n_chunks, chunk_length, ...) -> (batch, heads, n_chunks, window * chunk_length, ...)."""
    gathered = chunked[:, :, chunk_ids]  # (b, h, n_chunks, window, chunk_length, ...)
    b, h, n_chunks, window, chunk_length = gathered.shape[:5]
    return gathered.reshape(b, h, n_chunks, window * chunk_length, *gathered.shape[5:])


def _softmax_attend(logits, value, dropout_p, training):
    """Row softmax of float32 logits with its log-sum-exp; dropout on the probabilities."""
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    probs = torch.exp(logits - lse)
    if dropout_p > 0.0 and training:
        probs = nn.functional.dropout(probs, p=dropout_p, training=True)
    out = torch.matmul(probs.to(value.dtype), value)
    return out, lse.squeeze(-1)


def shared_qk_full_attention(query_key, value, *, causal=False, pad_mask=None, dropout_p=0.0, training=False):
    """Dense shared-QK attention under LSH attention's rules, without hashing.

    Keys are the unit-length query_keys and a query sees itself only when nothing else is
    visible.  query_key, value: (batch, heads, length, d_head); pad_mask: (batch, length), True =
    padding.  Returns out (batch, heads, length, d_head) and log-sum-exp (batch, heads, length).
    """
    length = query_key.shape[2]
    logits = attention_logits(query_key, normalize_keys(query_key))
    visible = torch.ones(length, length, dtype=torch.bool, device=query_key.device)
    if causal:
        visible = visible.tril()
    visible = visible[None, None]
    if pad_mask is not None:
        visible = visible & ~pad_mask[:, None, None, :]
    logits = torch.where(visible, logits, MASK_VALUE)
    is_self = torch.eye(length, dtype=torch.bool, device=query_key.device)
    logits = torch.where(is_self & visible, SELF_MASK_VALUE, logits)
    return _softmax_attend(logits, value, dropout_p, training)


def sort_by_bucket(bucket_ids, n_buckets, pad_mask=None):
    """The hash rounds laid end to end, each sorted by (bucket, position).

    bucket_ids (batch, heads, n_hashes, length) in [0, n_buckets) -> sorted_order, the index of
    each sorted slot into the rounds laid end to end, and sorted_buckets, its bucket offset by
    round * (n_buckets + 1); both (batch, heads, n_hashes * length).  Padding goes to the extra
    last bucket of its round.  A stable sort by bucket keeps each bucket's positions in order.
    """
    n_hashes = bucket_ids.shape[2]
    if pad_mask is not None:
        bucket_ids = bucket_ids.masked_fill(pad_mask[:, None, None, :], n_buckets)
    round_stride = n_buckets + 1
    offsets = torch.arange(0, n_hashes * round_stride, round_stride, device=bucket_ids.device, dtype=bucket_ids.dtype)
    round_buckets = (bucket_ids + offsets.view(1, 1, n_hashes, 1)).flatten(2)
    sorted_buckets, sorted_order = torch.sort(round_buckets, dim=-1, stable=True)
    return sorted_order, sorted_buckets


def lsh_attention(
    query_key,
    value,
    bucket_ids,
    *,
    n_buckets,
    chunk_length,
    n_chunks_before=1,
    n_chunks_after=0,
    causal=False,
    window_mode="bucket_window",
    pad_mask=None,
    dropout_p=0.0,
    training=False,
):
    """Shared-QK attention among positions that hash alike.

    query_key, value: (batch, heads, length, d_head), length a multiple of chunk_length.
    bucket_ids:       (batch, heads, n_hashes, length) in [0, n_buckets).
    pad_mask:         (batch, length) bool, True where the position is padding, or None.
    Returns out (batch, heads, length, d_head) combined over the hash rounds by their
    log-sum-exp weights, and that combined log-sum-exp (batch, heads, length).

    Every round sorts positions by (bucket, position); padding goes to an extra last bucket.
    The rounds are laid end to end and cut into chunks of `chunk_length`.  In "chunk" mode a
    query sees every key of its own chunk and its neighbours (a ring, as in the paper); in
    "bucket_window" mode it sees only keys of its own round and bucket that lie at most
    `n_chunks_before * chunk_length` sorted places before it (or `n_chunks_after * ...`
    after it).  A query sees itself only when nothing else is visible.
    """
    check_lsh_arguments(query_key, value, bucket_ids, chunk_length, window_mode)
    batch, heads, length, d_head = query_key.shape
    n_hashes = bucket_ids.shape[2]
    if window_mode == "chunk" and length == chunk_length:
        # Every round is a single chunk, so every query sees the whole sequence whatever the
        # hashing.  The ring would show each key several times, which changes nothing but the
        # float32 rounding of a log-sum-exp near SELF_MASK_VALUE (a query that sees only itself
        # would weight its own value 0.998); dense attention shows each key once, as
        # transformers' Reformer does for a sequence no longer than a chunk.  The n_hashes
        # identical rounds combine to the same output and add log(n_hashes) to the log-sum-exp.
        out, lse = shared_qk_full_attention(
            query_key, value, causal=causal, pad_mask=pad_mask, dropout_p=dropout_p, training=training
        )
        return out, lse + math.log(n_hashes)
    device = query_key.device

    sorted_order, sorted_buckets = sort_by_bucket(bucket_ids, n_buckets, pad_mask)
    sorted_positions = sorted_order % length

    def gather_positions(tensor):
        return tensor.gather(2, sorted_positions[..., None].expand(-1, -1, -1, d_head))

    query = _chunk(gather_positions(query_key), chunk_length)  # (b, h, C, c, d)
    keys = _chunk(gather_positions(normalize_keys(query_key)), chunk_length)
    values = _chunk(gather_positions(value), chunk_length)
    n_chunks = query.shape[2]
    circular = window_mode == "chunk"
    chunk_ids, chunk_exists = neighbour_chunks(n_chunks, n_chunks_before, n_chunks_after, circular, device)

    keys = _gather_neighbours(keys, chunk_ids)  # (b, h, C, W*c, d)
    values = _gather_neighbours(values, chunk_ids)
    query_positions = _chunk(sorted_positions, chunk_length)  # (b, h, C, c)
    key_positions = _gather_neighbours(query_positions, chunk_ids)  # (b, h, C, W*c)

    visible = chunk_exists.repeat_interleave(chunk_length, dim=1)[None, None, :, None, :]
    if pad_mask is not None:
        key_is_pad = pad_mask.gather(1, sorted_positions.flatten(1)).view(batch, heads, -1)
        key_is_pad = _gather_neighbours(_chunk(key_is_pad, chunk_length), chunk_ids)
        visible = visible & ~key_is_pad[:, :, :, None, :]
    if causal:
        visible = visible & (key_positions[:, :, :, None, :] <= query_positions[..., None])
    if window_mode == "bucket_window":
        query_buckets = _chunk(sorted_buckets, chunk_length)
        key_buckets = _gather_neighbours(query_buckets, chunk_ids)
        query_slots = _chunk(torch.arange(n_hashes * length, device=device).view(1, 1, -1), chunk_length)
        key_slots = _gather_neighbours(query_slots, chunk_ids)
        distance = query_slots[..., None] - key_slots[:, :, :, None, :]  # sorted places from key to query
        in_window = (distance <= n_chunks_before * chunk_length) & (distance >= -n_chunks_after * chunk_length)
        visible = visible & in_window & (key_buckets[:, :, :, None, :] == query_buckets[..., None])

    logits = attention_logits(query, keys)  # (b, h, C, c, W*c)
    logits = torch.where(visible, logits, MASK_VALUE)
    is_self = key_positions[:, :, :, None, :] == query_positions[..., None]
    logits = torch.where(is_self & visible, SELF_MASK_VALUE, logits)
    out, lse = _softmax_attend(logits, values, dropout_p, training)

    out = out.reshape(batch, heads, n_hashes * length, d_head)
    lse = lse.reshape(batch, heads, n_hashes * length)
    # Sorted slot i came from round-major index sorted_order[i]: scatter the results back there
    # (sorted_order is a permutation, so this is its inverse without a second sort).
    out = out.new_empty(out.shape).scatter(2, sorted_order[..., None].expand(-1, -1, -1, d_head), out)
    lse = lse.new_empty(lse.shape).scatter(2, sorted_order, lse)
    return combine_hash_rounds(out.view(batch, heads, n_hashes, length, d_head), lse.view(batch, heads, n_hashes, length))


def combine_hash_rounds(round_out, round_lse):
    """Weight each round's output by its share of the total softmax mass.

    round_out: (batch, heads, n_hashes, length, d_head); round_lse: (batch, heads, n_hashes, length).
    """
    total_lse = torch.logsumexp(round_lse, dim=2)
    weights = torch.exp(round_lse - total_lse[:, :, None])
    out = (upcast(round_out) * weights[..., None]).sum(dim=2)
    return out.to(round_out.dtype), total_lse


def local_attention(
    query,
    key,
    value,
    *,
    chunk_length,
    n_chunks_before=1,
    n_chunks_after=0,
    causal=False,
    wrap_around=False,
    pad_mask=None,
    dropout_p=0.0,
    training=False,
):
    """Sliding-window attention with a chunk-aligned window.

    query, key, value: (batch, heads, length, d_head), length a multiple of chunk_length.
    A query in chunk i sees the keys of chunks i - n_chunks_before .. i + n_chunks_after;
    with `wrap_around` those chunk ids are taken modulo the number of chunks (transformers'
    semantics), otherwise chunks off either end are missing.
    Returns out (batch, heads, length, d_head) and log-sum-exp (batch, heads, length).
    """
    check_local_arguments(query, key, value, chunk_length)
    batch, heads, length, d_head = query.shape
    device = query.device
    n_chunks = length // chunk_length
    chunk_ids, chunk_exists = neighbour_chunks(n_chunks, n_chunks_before, n_chunks_after, wrap_around, device)

    queries = _chunk(query, chunk_length)
    keys = _gather_neighbours(_chunk(key, chunk_length), chunk_ids)
    values = _gather_neighbours(_chunk(value, chunk_length), chunk_ids)
    positions = torch.arange(length, device=device).view(n_chunks, chunk_length)
    key_positions = positions[chunk_ids].reshape(n_chunks, -1)  # (C, W*c)

    visible = chunk_exists.repeat_interleave(chunk_length, dim=1)[:, None, :]  # (C, 1, W*c)
    if causal:
        visible = visible & (key_positions[:, None, :] <= positions[..., None])
    visible = visible[None, None]
    if pad_mask is not None:
        key_is_pad = pad_mask[:, key_positions.flatten()].view(batch, 1, n_chunks, 1, -1)
        visible = visible & ~key_is_pad

    logits = attention_logits(queries, keys) / math.sqrt(d_head)
    logits = torch.where(visible, logits, MASK_VALUE)
    out, lse = _softmax_attend(logits, values, dropout_p, training)
    return out.reshape(batch, heads, length, d_head), lse.reshape(batch, heads, length)


def lsh_attention_packed(query_key_value, bucket_ids, *, n_heads, **options):
    """`lsh_attention` over one projection's output (batch, length, 2 * n_heads * d_head): each
    position's query-key and value side by side (`unpack_heads`).  The fused kernel returns the
    gradient of that one tensor directly, so the projection's backward is one product."""
    return lsh_attention(*unpack_heads(query_key_value, 2, n_heads), bucket_ids, **options)


def local_attention_packed(query_key_value, *, n_heads, **options):
    """`local_attention` over one projection's output (batch, length, 3 * n_heads * d_head):
    each position's query, key and value side by side (`unpack_heads`)."""
    return local_attention(*unpack_heads(query_key_value, 3, n_heads), **options)


def full_visible_keys(q_length, k_length, causal, pad_mask, device):
    """Which keys each query of dense attention sees: (batch or 1, 1, q_length, k_length) bool.

    With `causal`, query i sees keys j <= i + (k_length - q_length), so a query block that
    continues a cached prefix lines up with its end.  pad_mask: (batch, k_length), True = padding.
    """
    visible = torch.ones(q_length, k_length, dtype=torch.bool, device=device)
    if causal:
        visible = visible.tril(diagonal=k_length - q_length)
    visible = visible[None, None]
    if pad_mask is not None:
        visible = visible & ~pad_mask[:, None, None, :]
    return visible


def full_attention(query, key, value, *, causal=False, pad_mask=None, dropout_p=0.0, training=False):
    """Dense attention written out: the reference for `full_attention_sdpa`, and the path for
    callers that need the log-sum-exp.  It materialises (q_length x k_length) float32 logits.

    query: (batch, heads, q_length, d_head); key, value: (batch, heads, k_length, d_head);
    causal and pad_mask as in `full_visible_keys`.
    Returns out (batch, heads, q_length, d_head) and log-sum-exp (batch, heads, q_length).
    """
    q_length, k_length, d_head = query.shape[2], key.shape[2], query.shape[3]
    logits = attention_logits(query, key) / math.sqrt(d_head)
    visible = full_visible_keys(q_length, k_length, causal, pad_mask, query.device)
    logits = torch.where(visible, logits, MASK_VALUE)
    return _softmax_attend(logits, value, dropout_p, training)


def full_attention_sdpa(query, key, value, *, causal=False, pad_mask=None, dropout_p=0.0, training=False):
    """`full_attention`'s output through torch's scaled_dot_product_attention (FlashAttention,
    cuDNN or memory-efficient kernels on a GPU), without the log-sum-exp, which no module reads.

    Shapes, causal and pad_mask as in `full_attention`; returns out (batch, heads, q_length, d_head).
    Without padding, a causal square block passes `is_causal` and no mask, so the flash kernel can
    run; otherwise the visible keys go in as a boolean mask.  A query that sees no key at all gets
    what the reference gives it (SDPA would give NaN or zero there): `unseen_key_weight` on every
    value.  Under torch.compile with dropout active the reference runs instead: a compiled sub-layer
    draws its dropout masks through reformer_hf.replay, which replays F.dropout's draws, not SDPA's.
    """
    dropout_p = dropout_p if training else 0.0
    if dropout_p > 0.0 and torch.compiler.is_compiling():
        return full_attention(query, key, value, causal=causal, pad_mask=pad_mask, dropout_p=dropout_p,
                              training=True)[0]
    q_length, k_length = query.shape[2], key.shape[2]
    if pad_mask is None and (not causal or q_length == k_length):
        return nn.functional.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, is_causal=causal)
    visible = full_visible_keys(q_length, k_length, causal, pad_mask, query.device)
    sees_nothing = ~visible.any(dim=-1, keepdim=True)  # (batch or 1, 1, q_length, 1)
    out = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=visible | sees_nothing,
                                                     dropout_p=dropout_p)
    logits_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32  # as attention_logits gives
    weight = unseen_key_weight(k_length, logits_dtype, query.device)
    unseen = (weight * upcast(value).sum(dim=-2, keepdim=True)).to(out.dtype)  # (batch, heads, 1, d_head)
    return torch.where(sees_nothing, unseen, out)


def unseen_key_weight(k_length, logits_dtype, device):
    """The weight the reference gives each of the k_length values for a query that sees no key.

    Every logit of its row is MASK_VALUE, and `_softmax_attend` weighs a key by exp(logit - lse)
    with lse = MASK_VALUE + log(k_length) rounded to the logits' dtype: 1 / k_length in float64,
    but 1 in float32, where that sum rounds back to MASK_VALUE (the values are summed).
    """
    logits = torch.full((k_length,), MASK_VALUE, dtype=logits_dtype, device=device)
    return torch.exp(logits[0] - torch.logsumexp(logits, dim=0))


def lsh_decode_step(query_key, value, bucket_keys, bucket_values, bucket_valid, *, dropout_p=0.0, training=False):
    """One new position of causal "bucket_window" LSH attention, from the keys its buckets kept.

    In "bucket_window" mode a causal query sees, per hash round, only the `window` latest earlier
    positions of its own bucket (and itself, at SELF_MASK_VALUE), so those are all a decoder keeps.
    query_key, value: (batch, heads, 1, d_head), the new position (query_key not normalised).
    bucket_keys, bucket_values: (batch, heads, n_hashes, window, d_head), per round the normalised
        keys and the values of the latest earlier positions in the new position's bucket.
    bucket_valid: (batch, heads, n_hashes, window) bool, False for slots that hold nothing yet.
    Returns out (batch, heads, 1, d_head) and log-sum-exp (batch, heads, 1), rounds combined
    exactly as `lsh_attention` combines them.
    """
    n_hashes = bucket_keys.shape[2]
    logits = attention_logits(query_key[:, :, None], bucket_keys)  # (b, h, n_hashes, 1, window)
    logits = torch.where(bucket_valid[:, :, :, None, :], logits, MASK_VALUE)
    self_logit = logits.new_full((*logits.shape[:-1], 1), SELF_MASK_VALUE)
    logits = torch.cat([logits, self_logit], dim=-1)
    own_value = value[:, :, None].expand(-1, -1, n_hashes, -1, -1)
    values = torch.cat([bucket_values, own_value], dim=3)  # (b, h, n_hashes, window + 1, d)
    round_out, round_lse = _softmax_attend(logits, values, dropout_p, training)  # (b, h, n, 1, d), (b, h, n, 1)
    return combine_hash_rounds(round_out, round_lse)


def local_window_visible(slot_positions, position, is_pad, chunk_length, n_chunks_before):
    """Which slots of a local layer's window the query of a new position sees: (batch, slots) bool.

    slot_positions: (batch, slots) real position held by each slot (the new one's included), -1 where
    it holds none; position: (batch,) the new position's real position; is_pad: (batch,).
    A real position sees what `local_attention` shows it: every position from the start of the chunk
    `n_chunks_before` chunks before its own, up to itself.  A padding position's output is never
    read: it sees every slot, so that its row of attention is never empty.
    """
    first_visible = ((position // chunk_length - n_chunks_before) * chunk_length).clamp(min=0)
    first_visible = torch.where(is_pad, -1, first_visible)
    return (slot_positions >= first_visible[:, None]) & (slot_positions <= position[:, None])


def local_decode_step(query, window_keys, window_values, attend_bias, *, dropout_p=0.0, training=False):
    """One new position of causal local attention, from a buffer of the latest keys.

    query: (batch, heads, 1, d_head); window_keys, window_values: (batch, heads, slots, d_head) (a
    ring buffer: the order of the slots does not matter); attend_bias: (batch, slots) in the query's
    dtype, 0 on the slots `local_window_visible` shows the query (at least one per row), -inf elsewhere.
    Returns out (batch, heads, 1, d_head), through torch's scaled_dot_product_attention: one kernel
    where the written-out attention takes a dozen.  Under torch.compile with dropout active the
    reference runs instead (see `full_attention_sdpa`).
    """
    dropout_p = dropout_p if training else 0.0
    if dropout_p > 0.0 and torch.compiler.is_compiling():
        return full_attention(query, window_keys, window_values, pad_mask=attend_bias.isinf(), dropout_p=dropout_p,
                              training=True)[0]
    return nn.functional.scaled_dot_product_attention(query, window_keys, window_values,
                                                      attn_mask=attend_bias[:, None, None, :], dropout_p=dropout_p)
