"""Shared-QK LSH attention through the window kernels: `lsh_attention` and its packed twin.

Same arguments and results (out, lse) as `attention_functions.lsh_attention`; the arguments are checked by
the same function (attention_rules.py).  The positions are sorted by bucket per round
(kernels_sorting.py), and the window kernels (kernels_window_forward.py,
kernels_window_backward.py) read rows through the sorted slot -> position map, normalising the
keys from the queries, with one query chunk per program and its window of neighbouring chunks
(the grid and tiling are described there).  Attention dropout is not implemented here:
`attention_dispatch.lsh_attention_dispatch` sends a call with `dropout_p > 0` in training to the torch path.
"""

import functools
import math

import torch

from .attention_rules import check_lsh_arguments, unpack_heads
from .kernels_launch import _refuse_dropout, _require_kernels
from .kernels_sorting import sort_by_bucket
from .kernels_window import _common_layout, _pad_bytes, _Window
from .kernels_window_backward import _window_backward
from .kernels_window_forward import _window_forward


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
    """`attention_functions.lsh_attention` as fused kernels: same arguments, same results (out, lse)."""
    return _lsh_attention(LSHAttentionFunction, _common_layout(query_key, value), query_key, value, bucket_ids,
                          n_buckets, chunk_length, n_chunks_before, n_chunks_after, causal, window_mode, pad_mask,
                          dropout_p, training)


def lsh_attention_packed(query_key_value, bucket_ids, *, n_heads, n_buckets, chunk_length, n_chunks_before=1,
                         n_chunks_after=0, causal=False, window_mode="bucket_window", pad_mask=None, dropout_p=0.0,
                         training=False):
    """`attention_functions.lsh_attention_packed` as fused kernels: the gradient of query_key_value is
    written by the backward kernel as one tensor."""
    query_key_value = query_key_value.contiguous()
    query_key, value = unpack_heads(query_key_value, 2, n_heads)
    return _lsh_attention(PackedLSHAttentionFunction, (query_key_value, query_key, value), query_key, value,
                          bucket_ids, n_buckets, chunk_length, n_chunks_before, n_chunks_after, causal, window_mode,
                          pad_mask, dropout_p, training)


def _lsh_attention(function, operands, query_key, value, bucket_ids, n_buckets, chunk_length, n_chunks_before,
                   n_chunks_after, causal, window_mode, pad_mask, dropout_p, training, sort=None):
    """Checks, sorting, and `function` (LSHAttentionFunction or its packed twin) applied to
    `operands` (what it takes in place of query_key and value).  sort: `sort_by_bucket` or a
    function of its signature (kernel_ops.py's operator)."""
    check_lsh_arguments(query_key, value, bucket_ids, chunk_length, window_mode)
    batch, heads, length, d_head = query_key.shape
    _refuse_dropout("lsh_attention", dropout_p, training)
    _require_kernels("lsh_attention", query_key, value)
    pad = _pad_bytes(pad_mask, batch, length)
    if window_mode == "chunk" and length == chunk_length:
        # As in the reference: one chunk per round means every query sees the whole sequence,
        # so the rounds are n_hashes copies of dense shared-QK attention, each key shown once.
        out, lse = function.apply(*operands, None, None, pad, length, 0, 0, causal, "chunk")
        return out, lse + math.log(bucket_ids.shape[2])
    sorted_positions, sorted_buckets = (sort or sort_by_bucket)(bucket_ids, n_buckets, pad,
                                                                with_buckets=window_mode == "bucket_window")
    return function.apply(*operands, sorted_positions, sorted_buckets, pad, chunk_length, n_chunks_before,
                          n_chunks_after, causal, window_mode)


@functools.cache
def _lsh_window(sorted_slots, chunk_length, n_chunks_before, n_chunks_after, causal, window_mode):
    return _Window(
        chunk_length=chunk_length, n_before=n_chunks_before, n_after=n_chunks_after,
        causal=causal, circular=window_mode == "chunk", bucket_window=window_mode == "bucket_window",
        self_mask=True, norm_keys=True, sorted_slots=sorted_slots, scale=1.0,
    )


def _lsh_forward(window, query_key, value, sorted_positions, sorted_buckets, pad):
    """(out, lse, n_rounds) of shared-QK LSH attention, the rounds combined."""
    n_rounds = sorted_positions.shape[-1] // query_key.shape[2] if window.sorted_slots else 1
    out, lse = _window_forward(window, query_key, query_key, value, sorted_positions, sorted_buckets, pad, n_rounds)
    return out, lse, n_rounds


class LSHAttentionFunction(torch.autograd.Function):
    """Shared-QK LSH attention over an already sorted sequence.

    query_key, value: (batch, heads, length, d_head); sorted_positions, sorted_buckets:
    (batch, heads, n_hashes * length) int32 from `sort_by_bucket` (the buckets may be None in
    "chunk" mode, which does not read them), or both None for one round in sequence order;
    pad: (batch, length) int8 or None.
    Returns out (batch, heads, length, d_head) and lse (batch, heads, length).
    """

    @staticmethod
    def forward(ctx, query_key, value, sorted_positions, sorted_buckets, pad, chunk_length, n_chunks_before,
                n_chunks_after, causal, window_mode):
        window = _lsh_window(sorted_positions is not None, chunk_length, n_chunks_before, n_chunks_after, causal,
                             window_mode)
        out, lse, ctx.n_rounds = _lsh_forward(window, query_key, value, sorted_positions, sorted_buckets, pad)
        ctx.window = window
        ctx.save_for_backward(query_key, value, sorted_positions, sorted_buckets, pad, out, lse)
        ctx.set_materialize_grads(False)  # an unused lse needs no zero gradient
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        query_key, value, sorted_positions, sorted_buckets, pad, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        dqk, _, dv = _window_backward(ctx.window, query_key, query_key, value, sorted_positions, sorted_buckets, pad,
                                      out, lse, grad_out, grad_lse, ctx.n_rounds)
        return dqk, dv, None, None, None, None, None, None, None, None


class PackedLSHAttentionFunction(torch.autograd.Function):
    """`LSHAttentionFunction` over one projection's output: query_key_value (batch, length,
    2 * n_heads * d_head), the query-keys then the values of every position side by side, given
    with its two heads-split views (`attention_rules.unpack_heads`).  Its gradient comes back as one
    tensor of that shape, written by the kernel in place, so the projection's backward is one
    product, with no sum of two input gradients and no copy."""

    @staticmethod
    def forward(ctx, query_key_value, query_key, value, sorted_positions, sorted_buckets, pad, chunk_length,
                n_chunks_before, n_chunks_after, causal, window_mode):
        window = _lsh_window(sorted_positions is not None, chunk_length, n_chunks_before, n_chunks_after, causal,
                             window_mode)
        out, lse, ctx.n_rounds = _lsh_forward(window, query_key, value, sorted_positions, sorted_buckets, pad)
        ctx.window = window
        ctx.save_for_backward(query_key_value, query_key, value, sorted_positions, sorted_buckets, pad, out, lse)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        query_key_value, query_key, value, sorted_positions, sorted_buckets, pad, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        grad = torch.empty_like(query_key_value)
        dqk, dv = unpack_heads(grad, 2, query_key.shape[1])
        _window_backward(ctx.window, query_key, query_key, value, sorted_positions, sorted_buckets, pad, out, lse,
                         grad_out, grad_lse, ctx.n_rounds, grads=(dqk, None, dv))
        return grad, None, None, None, None, None, None, None, None, None, None

