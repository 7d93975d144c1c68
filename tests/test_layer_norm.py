"""ReformerLayerNorm and its fused kernel (`kernels.layer_norm`) against torch's layer norm.

On a machine without a GPU the kernel runs under Triton's interpreter at tiny sizes; the module's
fused branch needs CUDA autocast and is checked at full size by `bench/model.py --check`.
"""

import pytest
import torch

from reformer_hf.layer_norm import ReformerLayerNorm
from tests.tiny_models import tiny_config

pytest.importorskip("triton", reason="the fused kernel needs triton")

from reformer_hf import kernels  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(x, weight, bias, eps):
    return torch.nn.functional.layer_norm(x.double(), (x.shape[-1],), weight.double(), bias.double(), eps)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("width", [48, 64])
def test_fused_layer_norm_equals_torch_forward_and_backward(out_dtype, width):
    generator = torch.Generator().manual_seed(width)
    # Rows of a position slice of a longer sequence: not one uniform stride (as the chunked
    # feed-forward block passes them).
    streams = torch.randn(2, 20, width, generator=generator).to(DEVICE).requires_grad_(True)
    weight = (1 + 0.1 * torch.randn(width, generator=generator)).to(DEVICE).requires_grad_(True)
    bias = (0.1 * torch.randn(width, generator=generator)).to(DEVICE).requires_grad_(True)
    grad_out = torch.randn(2, 10, width, generator=generator).to(DEVICE).to(out_dtype)

    out = kernels.layer_norm(streams[:, 5:15], weight, bias, 1e-12, out_dtype)
    expected = reference(streams[:, 5:15].detach(), weight.detach(), bias.detach(), 1e-12)
    assert out.dtype == out_dtype and out.shape == (2, 10, width)
    rounded = expected.float().to(out_dtype)
    if out_dtype != torch.float32:
        # What autocast gives: the float32 result rounded once to out_dtype, so all but near
        # ties round to the same value, and none is more than one unit in the last place away.
        assert (out == rounded).float().mean() > 0.99
    torch.testing.assert_close(out, rounded, rtol=torch.finfo(out_dtype).eps, atol=1e-6)

    grads = torch.autograd.grad(out, (streams, weight, bias), grad_out)
    leaves = [t.detach().double().requires_grad_(True) for t in (streams, weight, bias)]
    expected_grads = torch.autograd.grad(reference(leaves[0][:, 5:15], leaves[1], leaves[2], 1e-12), leaves,
                                         grad_out.double())
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(grads[0][:, :5]) == 0 and torch.count_nonzero(grads[0][:, 15:]) == 0


def test_fused_layer_norm_refuses_other_shapes():
    # On the kernels' device: on a GPU machine CPU tensors are refused first, for their device.
    weight, bias = torch.ones(8, device=DEVICE), torch.zeros(8, device=DEVICE)
    with pytest.raises(ValueError, match=r"x has shape \(4, 8\)"):
        kernels.layer_norm(torch.randn(4, 8, device=DEVICE), weight, bias, 1e-12, torch.bfloat16)
    with pytest.raises(ValueError, match="weight and bias must both have shape"):
        kernels.layer_norm(torch.randn(1, 4, 8, device=DEVICE), torch.ones(6, device=DEVICE), bias, 1e-12,
                           torch.bfloat16)


def test_reformer_layer_norm_keeps_nn_layer_norm_parameters_and_results_off_cuda():
    config = tiny_config()
    module = ReformerLayerNorm(config.hidden_size, eps=config.layer_norm_eps, backend="auto")
    plain = torch.nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
    plain.load_state_dict(module.state_dict())
    assert sorted(module.state_dict()) == ["bias", "weight"]
    hidden = torch.randn(2, 5, config.hidden_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not module.runs_kernel(hidden)  # CPU autocast: nn.LayerNorm's own path
        torch.testing.assert_close(module(hidden), plain(hidden), rtol=0, atol=0)


@pytest.mark.parametrize("subtract", [False, True])
def test_layer_norm_forward_with_residual_writes_the_sum_and_its_norm(subtract):
    generator = torch.Generator().manual_seed(3)
    stream = torch.randn(2, 12, 48, generator=generator).to(DEVICE)
    residual = torch.randn(2, 12, 48, generator=generator).to(DEVICE).to(torch.bfloat16)
    weight = (1 + 0.1 * torch.randn(48, generator=generator)).to(DEVICE)
    bias = (0.1 * torch.randn(48, generator=generator)).to(DEVICE)

    summed, normed, mean, rstd = kernels.layer_norm_forward(stream, weight, bias, 1e-12, torch.bfloat16, residual,
                                                            subtract=subtract)
    expected_sum = stream - residual if subtract else stream + residual  # torch promotes bf16 to float32
    assert summed.dtype == torch.float32 and torch.equal(summed, expected_sum)
    torch.testing.assert_close(normed, reference(expected_sum, weight, bias, 1e-12).float().to(torch.bfloat16),
                               rtol=torch.finfo(torch.bfloat16).eps, atol=1e-6)
    torch.testing.assert_close(mean, expected_sum.mean(-1).flatten(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd, expected_sum.var(-1, unbiased=False).add(1e-12).rsqrt().flatten(), rtol=1e-5,
                               atol=0)
    with pytest.raises(ValueError, match=r"residual has shape \(2, 11, 48\)"):
        kernels.layer_norm_forward(stream, weight, bias, 1e-12, torch.bfloat16, residual[:, 1:])


def test_layer_norm_backward_adds_the_stream_gradient_and_writes_its_low_copy():
    generator = torch.Generator().manual_seed(4)
    stream = torch.randn(2, 12, 48, generator=generator).to(DEVICE)
    weight = (1 + 0.1 * torch.randn(48, generator=generator)).to(DEVICE)
    bias = (0.1 * torch.randn(48, generator=generator)).to(DEVICE)
    grad_normed = torch.randn(2, 12, 48, generator=generator).to(DEVICE).to(torch.bfloat16)
    stream_grad = torch.randn(2, 12, 48, generator=generator).to(DEVICE)

    _, _, mean, rstd = kernels.layer_norm_forward(stream, weight, bias, 1e-12, torch.bfloat16)
    grad_x, grad_x_low, grad_weight, grad_bias, grad_x_sums = kernels.layer_norm_backward(
        stream, weight, mean, rstd, grad_normed, accumulate=stream_grad, low_dtype=torch.bfloat16, column_sums=True)

    leaves = [t.double().requires_grad_(True) for t in (stream, weight, bias)]
    expected = torch.autograd.grad(reference(*leaves, 1e-12), leaves, grad_normed.double())
    torch.testing.assert_close(grad_x.double(), stream_grad.double() + expected[0], rtol=1e-5, atol=1e-5)
    assert grad_x_low.dtype == torch.bfloat16 and torch.equal(grad_x_low, grad_x.to(torch.bfloat16))
    torch.testing.assert_close(grad_weight.double(), expected[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_bias.double(), expected[2], rtol=1e-5, atol=1e-5)
    # the summed gradient's column sums: the bias gradient of the body whose output it is
    assert grad_x_sums.dtype == torch.float32 and grad_x_sums.shape == (48,)
    torch.testing.assert_close(grad_x_sums.double(), grad_x.double().sum((0, 1)), rtol=1e-5, atol=1e-5)
    alone = kernels.layer_norm_backward(stream, weight, mean, rstd, grad_normed)
    assert alone[1] is None and alone[4] is None
    # The same sum, up to the GPU contracting the last product and the addition into one FMA.
    torch.testing.assert_close(alone[0] + stream_grad, grad_x, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="accumulate is torch.bfloat16"):
        kernels.layer_norm_backward(stream, weight, mean, rstd, grad_normed, accumulate=stream_grad.bfloat16())
