"""What the LSH and local kernels share (kernels_window.py): key tiles narrower than the query
blocks, and operands in different memory layouts."""

import pytest
import torch
from kernel_helpers import forward_backward, lsh_inputs, relative_error, upstream_grads

pytest.importorskip("triton", reason="the fused kernels need triton (the torch path is tested without it)")

from reformer_hf import attention_functions, kernels_launch, kernels_local, kernels_lsh  # noqa: E402


@pytest.mark.parametrize("mode", ["bucket_window", "chunk"])
def test_narrower_key_tiles_give_the_same_results(monkeypatch, mode):
    """kernels_launch.LAUNCH block_n 32 (what --tune may choose): key tiles of half a chunk, no fused
    own-chunk tile; LSH and local attention still equal the torch path."""
    for phase in ("forward", "backward"):
        monkeypatch.setitem(kernels_launch.LAUNCH, phase, {**kernels_launch.LAUNCH[phase], "block_n": 32})
    query_key, value, bucket_ids, pad_mask = lsh_inputs(1, 2, 128, 16, 2, 4, n_pad=5, seed=8)
    grad_out, grad_lse = upstream_grads(query_key.shape, None, seed=9)
    options = dict(n_buckets=4, chunk_length=64, causal=True, window_mode=mode, pad_mask=pad_mask)
    inputs = [query_key.float(), value.float()]
    expected = forward_backward(attention_functions.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    actual = forward_backward(kernels_lsh.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    for name, got, want in zip(("out", "lse", "d query_key", "d value"), actual, expected):
        assert relative_error(got, want) < 1e-5, name
    local_inputs = [query_key.float(), value.float(), grad_out.float()]
    local_options = dict(chunk_length=64, causal=True, pad_mask=pad_mask)
    expected = forward_backward(attention_functions.local_attention, local_inputs, grad_out, grad_lse, **local_options)
    actual = forward_backward(kernels_local.local_attention, local_inputs, grad_out, grad_lse, **local_options)
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), actual, expected):
        assert relative_error(got, want) < 1e-5, name



def test_operands_in_different_memory_layouts():
    """Heads split off a projection are (batch, length, heads, d_head) in memory; the kernels take
    one set of strides for the operands, so operands in another layout are copied into the first
    one's, and the output gradient is read in its own.  Results equal those of contiguous operands."""
    query_key, value, bucket_ids, pad_mask = lsh_inputs(1, 2, 16, 16, 2, 4, n_pad=2, seed=14)
    grad_out, grad_lse = upstream_grads(query_key.shape, pad_mask, seed=15)
    options = dict(n_buckets=4, chunk_length=4, causal=True, pad_mask=pad_mask)
    inputs = [query_key.float(), value.float()]
    expected = forward_backward(kernels_lsh.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    heads_last = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in inputs]  # same values, other layout
    mixed = forward_backward(kernels_lsh.lsh_attention, [heads_last[0], inputs[1]],
                             grad_out.transpose(1, 2).contiguous().transpose(1, 2), grad_lse, bucket_ids, **options)
    for got, want in zip(mixed, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    local = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (inputs[0], inputs[1], grad_out.float())]
    local_options = dict(chunk_length=4, causal=True, pad_mask=pad_mask)
    expected = forward_backward(attention_functions.local_attention, [inputs[0], inputs[1], grad_out.float()], grad_out,
                                grad_lse, **local_options)
    actual = forward_backward(kernels_local.local_attention, [local[0], inputs[1], local[2]], grad_out, grad_lse,
                              **local_options)
    for got, want in zip(actual, expected):
        assert relative_error(got, want) < 1e-5

