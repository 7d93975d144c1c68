"""relu(x @ W^T + b) as one matrix product: the bias and the ReLU in the product's epilogue.

`nn.Linear` followed by `torch.relu` writes the product and then reads and writes it again for
the ReLU; in the feed-forward blocks that is a (tokens, d_ff) tensor per pass.
`torch._addmm_activation` asks the BLAS library for the product with the bias and the ReLU
applied as the result is written (cuBLASLt's epilogue on CUDA; addmm and relu elsewhere).  It has
no autograd formula, so `LinearReLUFunction` supplies the backward: the ReLU's mask from the
saved output, then the product's gradients.  ReLU commutes with rounding to a narrower dtype
and with dropout's zeroing and positive scaling, so the result equals
`relu(dropout(linear(x)))` with the same dropout mask, value for value.
"""

import torch


class LinearReLUFunction(torch.autograd.Function):
    """x (..., d_in), weight (d_out, d_in), bias (d_out,), one dtype -> relu(x @ weight^T + bias)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        rows = x.reshape(-1, x.shape[-1])
        out = torch._addmm_activation(bias, rows, weight.t()).view(*x.shape[:-1], weight.shape[0])
        ctx.save_for_backward(x, weight, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, out = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad_out, out, 0).reshape(-1, out.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t() @ x.reshape(-1, x.shape[-1])
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def linear_relu(hidden, linear):
    """relu(linear(hidden)) for an `nn.Linear` with a bias, in the dtype autocast would run
    `linear` in (its casts stay ordinary autograd operations, so float32 weights get float32
    gradients)."""
    device_type = hidden.device.type
    dtype = hidden.dtype
    if torch.is_autocast_enabled(device_type) and dtype != torch.float64:  # autocast leaves float64 alone
        dtype = torch.get_autocast_dtype(device_type)
    return LinearReLUFunction.apply(hidden.to(dtype), linear.weight.to(dtype), linear.bias.to(dtype))
