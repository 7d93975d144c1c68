"""The blocks' layer norm: under CUDA autocast, one Triton kernel per pass.

Autocast runs `nn.LayerNorm` in float32 and casts its output again for the projection that
follows; with the residual streams in float32 that is a float32 write, a read and a bf16 write
per call, and the backward converts the bf16 gradient back first.  `ReformerLayerNorm` keeps
`nn.LayerNorm`'s parameters and results, and where the kernels can run (CUDA, autocast to
bfloat16 or float16, triton installed, `attn_backend` not "torch") on at least FUSED_FROM_ROWS
positions it normalises straight into autocast's dtype (`kernels.layer_norm`); everywhere else
it is `nn.LayerNorm`.
"""

import torch
from torch import nn

from .attention_dispatch import _triton_installed, kernels_module
from .replay import autocast_available

# batch x length from which the kernel runs.  On one H100 (bench/results/model_h100.md, 12 layers,
# d_model 1024) it took a training step at 64K tokens from 245 to 211 ms (1M: 4.54 -> 3.78 s); at
# 4K tokens the step, bound by the CPU there, went from 53 to 83 ms, so shorter inputs keep
# torch's layer norm.
FUSED_FROM_ROWS = 2**14


def kernels_run(backend, rows, device):
    """Whether the blocks' fused passes (this layer norm, the ReLU gradient of linear_relu.py) run
    for `rows` positions on `device`: not the "torch" backend, at least FUSED_FROM_ROWS positions,
    triton installed, and CUDA or Triton's interpreter (tests)."""
    return (backend != "torch" and rows >= FUSED_FROM_ROWS and _triton_installed()
            and (device.type == "cuda" or kernels_module()._interpreting()))


class ReformerLayerNorm(nn.LayerNorm):
    def __init__(self, hidden_size, eps, backend="auto"):
        super().__init__(hidden_size, eps=eps)
        self.backend = backend

    def forward(self, hidden):
        if self.runs_kernel(hidden):
            return kernels_module().LayerNormFunction.apply(hidden, self.weight, self.bias, self.eps,
                                                            torch.get_autocast_dtype(hidden.device.type))
        return super().forward(hidden)

    def runs_kernel(self, hidden):
        """Whether `hidden` is normalised by the kernel (into autocast's dtype) rather than by
        nn.LayerNorm.  The kernel runs on CUDA, or on the CPU under Triton's interpreter (tests)."""
        device_type = hidden.device.type
        return (
            hidden.dim() == 3
            and hidden.dtype == torch.float32
            and autocast_available(device_type)
            and torch.is_autocast_enabled(device_type)
            and torch.get_autocast_dtype(device_type) in (torch.bfloat16, torch.float16)
            and kernels_run(self.backend, hidden.shape[0] * hidden.shape[1], hidden.device)
            and hidden.shape[-1] <= kernels_module().LAYER_NORM_MAX_WIDTH
        )
