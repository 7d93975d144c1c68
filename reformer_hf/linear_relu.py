"""relu(x @ W^T + b) as one matrix product: the bias and the ReLU in the product's epilogue.

`nn.Linear` followed by `torch.relu` writes the product and then reads and writes it again for
the ReLU; in the feed-forward blocks that is a (tokens, d_ff) tensor per pass.
`torch._addmm_activation` asks the BLAS library for the product with the bias and the ReLU
applied as the result is written (cuBLASLt's epilogue on CUDA; addmm and relu elsewhere).  It has
no autograd formula, so `LinearReLUFunction` supplies the backward: the ReLU's mask from the
saved output, then the product's gradients.  Where the layer norm kernel of the blocks runs (at
least `layer_norm.FUSED_FROM_ROWS` positions, triton, `attn_backend` not "torch"), the masked
gradient and the bias gradient (its column sums) come from one kernel pass
(`kernels.relu_bias_grad`) instead of threshold_backward and a sum over the (tokens, d_ff)
tensor.  ReLU commutes with rounding to a narrower dtype and with dropout's zeroing and positive
scaling, so the result equals `relu(dropout(linear(x)))` with the same dropout mask, value for
value.
"""

import torch

from . import layer_norm
from .attention import is_plain_linear
from .attention_dispatch import kernels_module
from .replay import autocast_available


class LinearReLUFunction(torch.autograd.Function):
    """x (..., d_in), weight (d_out, d_in), bias (d_out,), one dtype -> relu(x @ weight^T + bias)."""

    @staticmethod
    def forward(ctx, x, weight, bias, fused_bias_grad):
        rows = x.reshape(-1, x.shape[-1])
        out = torch._addmm_activation(bias, rows, weight.t()).view(*x.shape[:-1], weight.shape[0])
        ctx.save_for_backward(x, weight, out)
        ctx.fused_bias_grad = fused_bias_grad
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, out = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.fused_bias_grad and ctx.needs_input_grad[2]:
            width = out.shape[-1]
            grad, grad_bias = kernels_module().relu_bias_grad(grad_out.reshape(-1, width), out.reshape(-1, width))
        else:
            grad = torch.ops.aten.threshold_backward(grad_out, out, 0).reshape(-1, out.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t() @ x.reshape(-1, x.shape[-1])
        if ctx.needs_input_grad[2] and grad_bias is None:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias, None


def linear_relu(hidden, linear, backend="auto"):
    """relu(linear(hidden)), for a plain `nn.Linear` with a bias in one product, in the dtype
    autocast would run `linear` in (its casts stay ordinary autograd operations, so float32 weights
    get float32 gradients).  backend: "torch" keeps the backward in torch operations.  Any other
    layer (`attention.is_plain_linear`: an adapter such as PEFT's LoRA, a quantised layer, a layer
    with hooks) or one without a bias is called, then the ReLU applied."""
    if not is_plain_linear(linear) or linear.bias is None:
        return torch.relu(linear(hidden))
    device_type = hidden.device.type
    dtype = hidden.dtype
    autocast = autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    if autocast and dtype != torch.float64:  # autocast leaves float64 alone
        dtype = torch.get_autocast_dtype(device_type)
    fused_bias_grad = dtype != torch.float64 and layer_norm.kernels_run(backend, hidden.numel() // hidden.shape[-1],
                                                                        hidden.device)
    return LinearReLUFunction.apply(hidden.to(dtype), linear.weight.to(dtype), linear.bias.to(dtype), fused_bias_grad)
