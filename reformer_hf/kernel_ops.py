"""The Triton kernels (kernels*.py) as custom operators (`torch.library.custom_op`), for torch.compile.

Dynamo cannot trace a kernel launch through the launcher cache (kernels_launch.py), so a compiled model
ended its graph at every kernel.  Here each pass of a kernel (forward, backward, sorting,
hashing, layer norm, the ReLU gradient) is one operator with a fake implementation giving its
outputs' shapes, dtypes and strides, and the differentiable ones carry their backward
(`register_autograd`); a compiled graph calls them as opaque nodes.  The implementations call
the kernels modules' own passes, so a compiled model computes what the eager one does.

This module offers the entry points of kernels.py that the model reaches through
`attention_dispatch.kernels_module()`, with their signatures; that function returns it in place of
kernels.py while dynamo traces.  The operators live in the package's namespace
(`replay.OPERATOR_NAMESPACE`, e.g. `torch.ops.reformer_hf.lsh_forward`).
"""

import sys

import torch

from .attention_rules import bucket_factors, merge_heads, unpack_heads
from .kernels_hashing import hash_vectors as kernel_hash_vectors
from .kernels_launch import (  # noqa: F401  (read through attention_dispatch.kernels_module(), as from kernels.py)
    _interpreting,
    _require_kernels,
    _rows_contiguous,
    triton_unusable_reason,
)
from .kernels_local import _local_attention
from .kernels_local import _local_window as kernel_local_window
from .kernels_lsh import _lsh_attention, _lsh_forward
from .kernels_lsh import _lsh_window as kernel_lsh_window
from .kernels_norm import (  # noqa: F401  (read through attention_dispatch.kernels_module(), as from kernels.py)
    LAYER_NORM_MAX_WIDTH,
    layer_norm_backward,
    layer_norm_forward,
)
from .kernels_norm import relu_bias_grad as kernel_relu_bias_grad
from .kernels_sorting import sort_by_bucket as kernel_sort_by_bucket
from .kernels_window_backward import _window_backward
from .kernels_window_forward import _window_forward
from .replay import OPERATOR_NAMESPACE


def _define(name, implementation, fake, backward=None, setup_context=None):
    operator = torch.library.custom_op(f"{OPERATOR_NAMESPACE}::{name}", implementation, mutates_args=())
    operator.register_fake(fake)
    if backward is not None:
        operator.register_autograd(backward, setup_context=setup_context)
    return getattr(getattr(torch.ops, OPERATOR_NAMESPACE), name).default


def _empty_like_transposed_heads(batch, heads, length, d_head, like):
    """(batch, heads, length, d_head) over (batch, length, heads, d_head) storage, as the window
    kernels write their output."""
    return torch.empty(batch, length, heads, d_head, dtype=like.dtype, device=like.device).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Sorting and hashing (no gradient)
# ----------------------------------------------------------------------------------------------


def _sort_impl(bucket_ids: torch.Tensor, n_buckets: int, pad: torch.Tensor | None,
               with_buckets: bool) -> tuple[torch.Tensor, torch.Tensor]:
    positions, buckets = kernel_sort_by_bucket(bucket_ids, n_buckets, pad, with_buckets)
    return positions, buckets if buckets is not None else positions.new_empty(0)


def _sort_fake(bucket_ids, n_buckets, pad, with_buckets):
    batch, heads, n_hashes, length = bucket_ids.shape
    positions = bucket_ids.new_empty(batch, heads, n_hashes * length, dtype=torch.int32)
    return positions, torch.empty_like(positions) if with_buckets else positions.new_empty(0)


_SORT = _define("sort_by_bucket", _sort_impl, _sort_fake)


def sort_by_bucket(bucket_ids, n_buckets, pad_mask=None, with_buckets=True):
    """`kernels.sort_by_bucket` as an operator."""
    positions, buckets = _SORT(bucket_ids, n_buckets, pad_mask, with_buckets)
    return positions, buckets if with_buckets else None


def _hash_impl(vectors: torch.Tensor, rotations: torch.Tensor, factors: list[int]) -> torch.Tensor:
    return kernel_hash_vectors(vectors, rotations, factors if len(factors) > 1 else factors[0])


def _hash_fake(vectors, rotations, factors):
    batch, heads, length, _ = vectors.shape
    return vectors.new_empty(batch, heads, rotations.shape[2], length, dtype=torch.long)


_HASH = _define("hash_vectors", _hash_impl, _hash_fake)


def hash_vectors(vectors, rotations, num_buckets):
    """`kernels.hash_vectors` as an operator."""
    return _HASH(vectors, rotations, bucket_factors(num_buckets))


# ----------------------------------------------------------------------------------------------
# LSH attention over a packed projection
# ----------------------------------------------------------------------------------------------


def _lsh_window(sorted_positions, chunk_length, n_chunks_before, n_chunks_after, causal, window_mode):
    return kernel_lsh_window(sorted_positions is not None, chunk_length, n_chunks_before, n_chunks_after, causal,
                               window_mode)


def _lsh_forward_impl(query_key_value: torch.Tensor, sorted_positions: torch.Tensor | None,
                      sorted_buckets: torch.Tensor | None, pad: torch.Tensor | None, n_heads: int, chunk_length: int,
                      n_chunks_before: int, n_chunks_after: int, causal: bool,
                      window_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    query_key, value = unpack_heads(query_key_value.contiguous(), 2, n_heads)
    window = _lsh_window(sorted_positions, chunk_length, n_chunks_before, n_chunks_after, causal, window_mode)
    out, lse, _ = _lsh_forward(window, query_key, value, sorted_positions, sorted_buckets, pad)
    return out, lse


def _lsh_forward_fake(query_key_value, sorted_positions, sorted_buckets, pad, n_heads, chunk_length,
                      n_chunks_before, n_chunks_after, causal, window_mode):
    batch, length, width = query_key_value.shape
    out = _empty_like_transposed_heads(batch, n_heads, length, width // (2 * n_heads), query_key_value)
    return out, query_key_value.new_empty(batch, n_heads, length, dtype=torch.float32)


def _lsh_setup(ctx, inputs, output):
    query_key_value, sorted_positions, sorted_buckets, pad, *ctx.options = inputs
    ctx.save_for_backward(query_key_value, sorted_positions, sorted_buckets, pad, *output)


def _lsh_backward(ctx, grad_out, grad_lse):
    return (_LSH_BACKWARD(grad_out, grad_lse, *ctx.saved_tensors, *ctx.options),) + (None,) * 9


def _lsh_backward_impl(grad_out: torch.Tensor, grad_lse: torch.Tensor | None, query_key_value: torch.Tensor,
                       sorted_positions: torch.Tensor | None, sorted_buckets: torch.Tensor | None,
                       pad: torch.Tensor | None, out: torch.Tensor, lse: torch.Tensor, n_heads: int,
                       chunk_length: int, n_chunks_before: int, n_chunks_after: int, causal: bool,
                       window_mode: str) -> torch.Tensor:
    query_key_value = query_key_value.contiguous()
    query_key, value = unpack_heads(query_key_value, 2, n_heads)
    window = _lsh_window(sorted_positions, chunk_length, n_chunks_before, n_chunks_after, causal, window_mode)
    n_rounds = sorted_positions.shape[-1] // query_key.shape[2] if window.sorted_slots else 1
    grad = torch.empty_like(query_key_value)
    grad_query_key, grad_value = unpack_heads(grad, 2, n_heads)
    _window_backward(window, query_key, query_key, value, sorted_positions, sorted_buckets, pad, out, lse,
                             grad_out, grad_lse, n_rounds, grads=(grad_query_key, None, grad_value))
    return grad


def _backward_fake(grad_out, grad_lse, query_key_value, *unused):
    return torch.empty_like(query_key_value, memory_format=torch.contiguous_format)


_LSH_FORWARD = _define("lsh_forward", _lsh_forward_impl, _lsh_forward_fake, _lsh_backward, _lsh_setup)
_LSH_BACKWARD = _define("lsh_backward", _lsh_backward_impl, _backward_fake)


class _PackedLSHOperator:
    """`kernels_lsh.PackedLSHAttentionFunction`'s place in `kernels_lsh._lsh_attention`: its operands
    are the packed projection and the head count."""

    @staticmethod
    def apply(query_key_value, n_heads, sorted_positions, sorted_buckets, pad, chunk_length, n_chunks_before,
              n_chunks_after, causal, window_mode):
        return _LSH_FORWARD(query_key_value, sorted_positions, sorted_buckets, pad, n_heads, chunk_length,
                            n_chunks_before, n_chunks_after, causal, window_mode)


def lsh_attention_packed(query_key_value, bucket_ids, *, n_heads, n_buckets, chunk_length, n_chunks_before=1,
                         n_chunks_after=0, causal=False, window_mode="bucket_window", pad_mask=None, dropout_p=0.0,
                         training=False):
    """`kernels.lsh_attention_packed` through the operators."""
    query_key_value = query_key_value.contiguous()
    query_key, value = unpack_heads(query_key_value, 2, n_heads)
    return _lsh_attention(_PackedLSHOperator, (query_key_value, n_heads), query_key, value, bucket_ids,
                                  n_buckets, chunk_length, n_chunks_before, n_chunks_after, causal, window_mode,
                                  pad_mask, dropout_p, training, sort=sort_by_bucket)


def lsh_attention(query_key, value, bucket_ids, **options):
    """`kernels.lsh_attention` through the operators: the two operands packed side by side as
    one projection's output (`attention.unpack_heads`)."""
    packed = torch.cat([merge_heads(query_key), merge_heads(value)], dim=-1)
    return lsh_attention_packed(packed, bucket_ids, n_heads=query_key.shape[1], **options)


# ----------------------------------------------------------------------------------------------
# Local attention over a packed projection
# ----------------------------------------------------------------------------------------------


def _local_window(query_key_value, n_heads, chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around):
    d_head = query_key_value.shape[-1] // (3 * n_heads)
    return kernel_local_window(d_head, chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around)


def _local_forward_impl(query_key_value: torch.Tensor, pad: torch.Tensor | None, n_heads: int, chunk_length: int,
                        n_chunks_before: int, n_chunks_after: int, causal: bool,
                        wrap_around: bool) -> tuple[torch.Tensor, torch.Tensor]:
    query, key, value = unpack_heads(query_key_value.contiguous(), 3, n_heads)
    window = _local_window(query_key_value, n_heads, chunk_length, n_chunks_before, n_chunks_after, causal,
                           wrap_around)
    return _window_forward(window, query, key, value, None, None, pad, 1)


def _local_forward_fake(query_key_value, pad, n_heads, chunk_length, n_chunks_before, n_chunks_after, causal,
                        wrap_around):
    batch, length, width = query_key_value.shape
    out = _empty_like_transposed_heads(batch, n_heads, length, width // (3 * n_heads), query_key_value)
    return out, query_key_value.new_empty(batch, n_heads, length, dtype=torch.float32)


def _local_setup(ctx, inputs, output):
    query_key_value, pad, *ctx.options = inputs
    ctx.save_for_backward(query_key_value, pad, *output)


def _local_backward(ctx, grad_out, grad_lse):
    return (_LOCAL_BACKWARD(grad_out, grad_lse, *ctx.saved_tensors, *ctx.options),) + (None,) * 7


def _local_backward_impl(grad_out: torch.Tensor, grad_lse: torch.Tensor | None, query_key_value: torch.Tensor,
                         pad: torch.Tensor | None, out: torch.Tensor, lse: torch.Tensor, n_heads: int,
                         chunk_length: int, n_chunks_before: int, n_chunks_after: int, causal: bool,
                         wrap_around: bool) -> torch.Tensor:
    query_key_value = query_key_value.contiguous()
    query, key, value = unpack_heads(query_key_value, 3, n_heads)
    window = _local_window(query_key_value, n_heads, chunk_length, n_chunks_before, n_chunks_after, causal,
                           wrap_around)
    grad = torch.empty_like(query_key_value)
    _window_backward(window, query, key, value, None, None, pad, out, lse, grad_out, grad_lse, 1,
                             grads=unpack_heads(grad, 3, n_heads))
    return grad


_LOCAL_FORWARD = _define("local_forward", _local_forward_impl, _local_forward_fake, _local_backward, _local_setup)
_LOCAL_BACKWARD = _define("local_backward", _local_backward_impl, _backward_fake)


class _PackedLocalOperator:
    """`kernels_local.PackedLocalAttentionFunction`'s place in `kernels_local._local_attention`."""

    @staticmethod
    def apply(query_key_value, n_heads, pad, chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around):
        return _LOCAL_FORWARD(query_key_value, pad, n_heads, chunk_length, n_chunks_before, n_chunks_after, causal,
                              wrap_around)


def local_attention_packed(query_key_value, *, n_heads, chunk_length, n_chunks_before=1, n_chunks_after=0,
                           causal=False, wrap_around=False, pad_mask=None, dropout_p=0.0, training=False):
    """`kernels.local_attention_packed` through the operators."""
    query_key_value = query_key_value.contiguous()
    query, key, value = unpack_heads(query_key_value, 3, n_heads)
    return _local_attention(_PackedLocalOperator, (query_key_value, n_heads), query, key, value,
                                    chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around, pad_mask,
                                    dropout_p, training)


def local_attention(query, key, value, **options):
    """`kernels.local_attention` through the operators, the three operands packed side by side."""
    packed = torch.cat([merge_heads(part) for part in (query, key, value)], dim=-1)
    return local_attention_packed(packed, n_heads=query.shape[1], **options)


# ----------------------------------------------------------------------------------------------
# The blocks' layer norm and the feed-forward's ReLU gradient
# ----------------------------------------------------------------------------------------------


def _layer_norm_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                     out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, out, mean, rstd = layer_norm_forward(x, weight, bias, eps, out_dtype)
    return out, mean, rstd


def _layer_norm_fake(x, weight, bias, eps, out_dtype):
    rows = x.shape[0] * x.shape[1]
    stats = x.new_empty(rows, dtype=torch.float32)
    return x.new_empty(x.shape, dtype=out_dtype), stats, torch.empty_like(stats)


def _layer_norm_setup(ctx, inputs, output):
    x, weight = inputs[:2]
    ctx.save_for_backward(x, weight, *output[1:])


def _layer_norm_backward(ctx, grad_out, grad_mean, grad_rstd):
    grad_x, grad_weight, grad_bias = _LAYER_NORM_BACKWARD(grad_out, *ctx.saved_tensors)
    return grad_x, grad_weight, grad_bias, None, None


def _layer_norm_backward_impl(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                              rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_x, _, grad_weight, grad_bias, _ = layer_norm_backward(_rows_contiguous(x), weight, mean,
                                                                       rstd, grad_out)
    # Two views of one tensor of sums, where an operator's outputs must not share storage.
    return grad_x, grad_weight.clone(), grad_bias


def _layer_norm_backward_fake(grad_out, x, weight, mean, rstd):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(weight), torch.empty_like(weight)


_LAYER_NORM = _define("layer_norm", _layer_norm_impl, _layer_norm_fake, _layer_norm_backward, _layer_norm_setup)
_LAYER_NORM_BACKWARD = _define("layer_norm_backward", _layer_norm_backward_impl, _layer_norm_backward_fake)


class LayerNormFunction:
    """`kernels.LayerNormFunction` through the operators (layer_norm.py calls its `apply`)."""

    @staticmethod
    def apply(x, weight, bias, eps, out_dtype):
        return _LAYER_NORM(x, weight, bias, eps, out_dtype)[0]


def layer_norm(x, weight, bias, eps, out_dtype):
    """`kernels.layer_norm` through the operators."""
    _require_kernels("layer_norm", x, max_width=LAYER_NORM_MAX_WIDTH, width_name="d")
    return LayerNormFunction.apply(x, weight, bias, eps, out_dtype)


def _relu_bias_grad_impl(grad_out: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return kernel_relu_bias_grad(grad_out, out)


def _relu_bias_grad_fake(grad_out, out):
    return torch.empty(out.shape, dtype=out.dtype, device=out.device), out.new_empty(out.shape[-1])


_RELU_BIAS_GRAD = _define("relu_bias_grad", _relu_bias_grad_impl, _relu_bias_grad_fake)


def relu_bias_grad(grad_out, out):
    """`kernels.relu_bias_grad` as an operator (linear_relu.py's backward calls it)."""
    return _RELU_BIAS_GRAD(grad_out, out)


# This module, as `attention_dispatch.kernels_module()` imports it while dynamo traces (by a name, so that
# save_pretrained copies this file into a saved folder).
ENTRY_POINTS = sys.modules[__name__]
