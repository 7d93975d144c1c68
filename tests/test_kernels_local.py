"""The local attention kernel (kernels_local.py) against the torch reference, attention_functions.local_attention
(tolerances: see kernel_helpers.py)."""

import pytest
import torch
from kernel_helpers import DEVICE, forward_backward, packed_inputs, relative_error, upstream_grads

pytest.importorskip("triton", reason="the fused kernels need triton (the torch path is tested without it)")

from reformer_hf import attention_functions, kernels_local  # noqa: E402


@pytest.mark.parametrize("causal, wrap_around, before, after, n_pad", [
    (True, False, 1, 0, 5),
    (False, False, 1, 1, 5),
    (False, True, 2, 1, 0),
])
def test_local_kernel_equals_torch_path(causal, wrap_around, before, after, n_pad):
    generator = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 1, 18, 32, generator=generator).to(DEVICE) for _ in range(3))
    pad_mask = None
    if n_pad:
        pad_mask = torch.zeros(2, 18, dtype=torch.bool, device=DEVICE)
        pad_mask[1, -n_pad:] = True
    options = dict(chunk_length=6, n_chunks_before=before, n_chunks_after=after, causal=causal,
                   wrap_around=wrap_around, pad_mask=pad_mask)
    grad_out = torch.randn(q.shape, generator=generator).to(DEVICE)
    grad_lse = torch.randn(q.shape[:3], generator=generator).to(DEVICE)
    expected = forward_backward(attention_functions.local_attention, [q, k, v], grad_out, grad_lse, **options)
    actual = forward_backward(kernels_local.local_attention, [q, k, v], grad_out, grad_lse, **options)
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), actual, expected):
        assert relative_error(got, want) < 1e-5, name



def test_local_kernel_bfloat16_error_is_within_twice_the_torch_paths():
    generator = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 1, 32, 64, generator=generator).bfloat16().to(DEVICE) for _ in range(3))
    options = dict(chunk_length=8, causal=True)
    grad_out, grad_lse = upstream_grads(q.shape, None, seed=9)
    exact = forward_backward(attention_functions.local_attention, [q.double(), k.double(), v.double()], grad_out,
                             grad_lse.double(), **options)
    torch_low = forward_backward(attention_functions.local_attention, [q, k, v], grad_out, grad_lse, **options)
    kernel_low = forward_backward(kernels_local.local_attention, [q, k, v], grad_out, grad_lse, **options)
    for name, got, ref, want in zip(("out", "lse", "dq", "dk", "dv"), kernel_low, torch_low, exact):
        assert relative_error(got, want) <= 2 * relative_error(ref, want) + 1e-6, name



def test_packed_local_kernel_gradient_is_the_torch_paths_through_the_views():
    heads, length, d_head = 2, 18, 32
    packed = packed_inputs(3, 2, heads, length, d_head, seed=23)
    pad_mask = torch.zeros(2, length, dtype=torch.bool, device=DEVICE)
    pad_mask[1, -4:] = True
    grad_out, grad_lse = upstream_grads((2, heads, length, d_head), pad_mask, seed=24)
    options = dict(n_heads=heads, chunk_length=6, causal=True, pad_mask=pad_mask)
    expected = forward_backward(attention_functions.local_attention_packed, [packed], grad_out, grad_lse, **options)
    actual = forward_backward(kernels_local.local_attention_packed, [packed], grad_out, grad_lse, **options)
    for name, got, want in zip(("out", "lse", "d query_key_value"), actual, expected):
        assert relative_error(got, want) < 1e-5, name

