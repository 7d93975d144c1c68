"""The LSH attention kernels (kernels_lsh.py) against the torch reference, attention_functions.lsh_attention
(tolerances: see kernel_helpers.py)."""

import pytest
import torch
from kernel_helpers import DEVICE, forward_backward, lsh_inputs, packed_inputs, relative_error, upstream_grads

pytest.importorskip("triton", reason="the fused kernels need triton (the torch path is tested without it)")

from reformer_hf import attention_functions, kernels_lsh  # noqa: E402

LSH_CASES = [
    # (window_mode, causal, n_chunks_before, n_chunks_after, n_hashes, batch, heads, length, chunk, n_pad, d_head)
    ("bucket_window", True, 1, 0, 1, 1, 2, 16, 8, 0, 64),
    ("bucket_window", True, 1, 0, 4, 2, 1, 8, 4, 3, 128),
    ("bucket_window", False, 1, 1, 2, 1, 1, 8, 4, 3, 64),
    ("chunk", True, 1, 0, 8, 1, 1, 8, 4, 0, 64),
    ("chunk", True, 1, 0, 2, 1, 1, 8, 4, 3, 128),
    ("chunk", False, 1, 1, 3, 1, 1, 12, 6, 2, 32),
    # chunks of 128 span two blocks of 64 rows: the path without the fused own-chunk tile
    ("bucket_window", True, 1, 0, 2, 1, 1, 256, 128, 5, 16),
    ("chunk", False, 1, 1, 2, 1, 1, 256, 128, 0, 16),
]



@pytest.mark.parametrize("mode, causal, before, after, n_hashes, batch, heads, length, chunk, n_pad, d_head", LSH_CASES)
def test_lsh_kernel_equals_torch_path_in_float32(mode, causal, before, after, n_hashes, batch, heads, length, chunk,
                                                 n_pad, d_head):
    """Outputs, lse and both gradients at every position, padding included."""
    query_key, value, bucket_ids, pad_mask = lsh_inputs(batch, heads, length, d_head, n_hashes, 4, n_pad, seed=n_hashes)
    options = dict(n_buckets=4, chunk_length=chunk, n_chunks_before=before, n_chunks_after=after, causal=causal,
                   window_mode=mode, pad_mask=pad_mask)
    generator = torch.Generator().manual_seed(1)
    grad_out = torch.randn(query_key.shape, generator=generator).to(DEVICE)
    grad_lse = torch.randn(query_key.shape[:3], generator=generator).to(DEVICE)
    inputs = [query_key.float(), value.float()]
    expected = forward_backward(attention_functions.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    actual = forward_backward(kernels_lsh.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    for name, got, want in zip(("out", "lse", "d query_key", "d value"), actual, expected):
        assert relative_error(got, want) < 1e-5, name



@pytest.mark.parametrize("n_pad", [0, 3])
def test_lsh_kernel_keeps_a_bucket_of_one_round_apart_from_the_same_bucket_of_the_round_before(n_pad):
    """Every position in one bucket in every round: the first chunk of round 1 looks back at the
    last chunk of round 0, whose keys have the same bucket id there but must stay hidden."""
    query_key, value, _, pad_mask = lsh_inputs(1, 2, 16, 32, 3, 4, n_pad, seed=9)
    bucket_ids = torch.full((1, 2, 3, 16), 2, dtype=torch.long, device=DEVICE)
    options = dict(n_buckets=4, chunk_length=4, causal=False, window_mode="bucket_window", pad_mask=pad_mask)
    grad_out, grad_lse = upstream_grads(query_key.shape, pad_mask, seed=10)
    inputs = [query_key.float(), value.float()]
    expected = forward_backward(attention_functions.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    actual = forward_backward(kernels_lsh.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    for name, got, want in zip(("out", "lse", "d query_key", "d value"), actual, expected):
        assert relative_error(got, want) < 1e-5, name



@pytest.mark.parametrize("dtype, mode, n_hashes", [
    (torch.bfloat16, "bucket_window", 2),
    (torch.bfloat16, "chunk", 2),
    (torch.float16, "bucket_window", 2),
])
def test_lsh_kernel_half_precision_error_is_within_twice_the_torch_paths(dtype, mode, n_hashes):
    query_key, value, bucket_ids, pad_mask = lsh_inputs(1, 1, 16, 64, n_hashes, 4, n_pad=3, seed=3)
    options = dict(n_buckets=4, chunk_length=4, causal=True, window_mode=mode, pad_mask=pad_mask)
    grad_out, grad_lse = upstream_grads(query_key.shape, pad_mask, seed=4)
    low = [query_key.to(dtype), value.to(dtype)]
    exact = forward_backward(attention_functions.lsh_attention, [t.double() for t in low], grad_out, grad_lse.double(),
                             bucket_ids, **options)
    torch_low = forward_backward(attention_functions.lsh_attention, low, grad_out, grad_lse, bucket_ids, **options)
    kernel_low = forward_backward(kernels_lsh.lsh_attention, low, grad_out, grad_lse, bucket_ids, **options)
    real = (~pad_mask)[:, None, :].expand(query_key.shape[:3])  # the model strips padding queries' outputs
    for index, name in enumerate(("out", "lse", "d query_key", "d value")):
        pick = (lambda t: t[real]) if index < 2 else (lambda t: t)  # noqa: E731
        kernel_error = relative_error(pick(kernel_low[index]), pick(exact[index]))
        torch_error = relative_error(pick(torch_low[index]), pick(exact[index]))
        assert kernel_error <= 2 * torch_error + 1e-6, (name, kernel_error, torch_error)



def test_lsh_kernel_single_chunk_is_dense_like_the_reference():
    """In 'chunk' mode a sequence of one chunk attends densely and adds log(n_hashes) to the lse."""
    query_key, value, bucket_ids, pad_mask = lsh_inputs(1, 1, 16, 32, 3, 4, n_pad=3, seed=5)
    options = dict(n_buckets=4, chunk_length=16, causal=True, window_mode="chunk", pad_mask=pad_mask)
    grad_out, grad_lse = upstream_grads(query_key.shape, None, seed=6)
    inputs = [query_key.float(), value.float()]
    expected = forward_backward(attention_functions.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    actual = forward_backward(kernels_lsh.lsh_attention, inputs, grad_out, grad_lse, bucket_ids, **options)
    for got, want in zip(actual, expected):
        assert relative_error(got, want) < 1e-5



def test_gradients_when_only_one_output_is_used():
    """The autograd functions do not materialise zero gradients: an unused lse (the model's case)
    or an unused output must give the gradients of a zero upstream gradient for it."""
    query_key, value, bucket_ids, _ = lsh_inputs(1, 2, 16, 16, 2, 4, n_pad=0, seed=12)
    options = dict(n_buckets=4, chunk_length=4, causal=True)
    grad_out, grad_lse = upstream_grads(query_key.shape, None, seed=13)
    inputs = [query_key.float().requires_grad_(), value.float().requires_grad_()]
    for use_out in (True, False):
        out, lse = kernels_lsh.lsh_attention(*inputs, bucket_ids, **options)
        used, upstream = (out, grad_out.float()) if use_out else (lse, grad_lse)
        got = torch.autograd.grad(used, inputs, upstream)
        zeros = (grad_out, torch.zeros_like(grad_lse)) if use_out else (torch.zeros_like(grad_out), grad_lse)
        want = forward_backward(attention_functions.lsh_attention, [t.detach() for t in inputs], *zeros, bucket_ids, **options)
        for actual, expected in zip(got, want[2:]):  # d value is exactly zero when only lse is used
            torch.testing.assert_close(actual, expected.to(actual.dtype), atol=1e-6, rtol=1e-5)



@pytest.mark.parametrize("mode, causal, n_hashes, n_pad", [
    ("bucket_window", True, 2, 3),
    ("chunk", False, 3, 0),
    ("chunk", True, 1, 2),
])
def test_packed_lsh_kernel_gradient_is_the_torch_paths_through_the_views(mode, causal, n_hashes, n_pad):
    """One (batch, length, 2 * heads * d_head) projection output: the kernel writes its gradient
    as one tensor; the torch path differentiates through `unpack_heads`' views.  The output
    gradient comes in the (batch, length, heads, d_head) layout that merging heads gives."""
    heads, length, d_head = 2, 16, 16
    packed = packed_inputs(2, 2, heads, length, d_head, seed=20)
    _, _, bucket_ids, pad_mask = lsh_inputs(2, heads, length, d_head, n_hashes, 4, n_pad, seed=21)
    grad_out, grad_lse = upstream_grads((2, heads, length, d_head), pad_mask, seed=22)
    grad_out = grad_out.transpose(1, 2).contiguous().transpose(1, 2)
    options = dict(n_heads=heads, n_buckets=4, chunk_length=4, causal=causal, window_mode=mode, pad_mask=pad_mask)
    expected = forward_backward(attention_functions.lsh_attention_packed, [packed], grad_out, grad_lse, bucket_ids, **options)
    actual = forward_backward(kernels_lsh.lsh_attention_packed, [packed], grad_out, grad_lse, bucket_ids, **options)
    for name, got, want in zip(("out", "lse", "d query_key_value"), actual, expected):
        assert got.shape == want.shape, name
        assert relative_error(got, want) < 1e-5, name

