"""Chunk-aligned sliding-window (local) attention through the window kernels.

`local_attention` and its packed twin have the arguments and results (out, lse) of
`attention_functions.local_attention`.  Positions are read in sequence order (no slot map), keys are K's
rows, and a query chunk attends to its own and its neighbouring chunks: the window kernels of
kernels_window_forward.py and kernels_window_backward.py, one round, one block of a chunk's
query rows per program (grid and tiling described there).  No attention dropout (see
`attention_dispatch.local_attention_dispatch`).
"""

import functools
import math

import torch

from .attention_rules import check_local_arguments, unpack_heads
from .kernels_launch import _refuse_dropout, _require_kernels
from .kernels_window import _common_layout, _pad_bytes, _Window
from .kernels_window_backward import _window_backward
from .kernels_window_forward import _window_forward


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
    """`attention_functions.local_attention` as a fused kernel: same arguments, same results (out, lse)."""
    return _local_attention(LocalAttentionFunction, _common_layout(query, key, value), query, key, value,
                            chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around, pad_mask, dropout_p,
                            training)


def local_attention_packed(query_key_value, *, n_heads, chunk_length, n_chunks_before=1, n_chunks_after=0,
                           causal=False, wrap_around=False, pad_mask=None, dropout_p=0.0, training=False):
    """`attention_functions.local_attention_packed` as a fused kernel: the gradient of query_key_value is
    written by the backward kernel as one tensor."""
    query_key_value = query_key_value.contiguous()
    query, key, value = unpack_heads(query_key_value, 3, n_heads)
    return _local_attention(PackedLocalAttentionFunction, (query_key_value, query, key, value), query, key, value,
                            chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around, pad_mask, dropout_p,
                            training)


def _local_attention(function, operands, query, key, value, chunk_length, n_chunks_before, n_chunks_after, causal,
                     wrap_around, pad_mask, dropout_p, training):
    check_local_arguments(query, key, value, chunk_length)
    batch, heads, length, d_head = query.shape
    _refuse_dropout("local_attention", dropout_p, training)
    _require_kernels("local_attention", query, key, value)
    return function.apply(*operands, _pad_bytes(pad_mask, batch, length), chunk_length, n_chunks_before,
                          n_chunks_after, causal, wrap_around)


@functools.cache
def _local_window(d_head, chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around):
    return _Window(
        chunk_length=chunk_length, n_before=n_chunks_before, n_after=n_chunks_after,
        causal=causal, circular=wrap_around, bucket_window=False, self_mask=False, norm_keys=False,
        sorted_slots=False, scale=1.0 / math.sqrt(d_head),
    )


class LocalAttentionFunction(torch.autograd.Function):
    """Chunk-aligned sliding-window attention; query, key, value (batch, heads, length, d_head)."""

    @staticmethod
    def forward(ctx, query, key, value, pad, chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around):
        window = _local_window(query.shape[-1], chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around)
        out, lse = _window_forward(window, query, key, value, None, None, pad, 1)
        ctx.window = window
        ctx.save_for_backward(query, key, value, pad, out, lse)
        ctx.set_materialize_grads(False)  # an unused lse needs no zero gradient
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        query, key, value, pad, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        dq, dk, dv = _window_backward(ctx.window, query, key, value, None, None, pad, out, lse, grad_out, grad_lse, 1)
        return dq, dk, dv, None, None, None, None, None, None


class PackedLocalAttentionFunction(torch.autograd.Function):
    """`LocalAttentionFunction` over one projection's output: query_key_value (batch, length,
    3 * n_heads * d_head), queries, keys and values side by side, given with its three
    heads-split views; one gradient of that shape."""

    @staticmethod
    def forward(ctx, query_key_value, query, key, value, pad, chunk_length, n_chunks_before, n_chunks_after, causal,
                wrap_around):
        window = _local_window(query.shape[-1], chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around)
        out, lse = _window_forward(window, query, key, value, None, None, pad, 1)
        ctx.window = window
        ctx.save_for_backward(query_key_value, query, key, value, pad, out, lse)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        query_key_value, query, key, value, pad, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        grad = torch.empty_like(query_key_value)
        _window_backward(ctx.window, query, key, value, None, None, pad, out, lse, grad_out, grad_lse, 1,
                         grads=unpack_heads(grad, 3, query.shape[1]))
        return grad, None, None, None, None, None, None, None, None, None

