"""Device functions that every kernel file shares, and the host-side choices they depend on.

`_dot` is a tile product in one of four modes (`_dot_mode` picks it from the operands' dtype:
tensor cores, exact float32, float32 as three tf32 products, or upcast under the interpreter);
`_narrow` rounds float32 to a narrower dtype as the GPU does; `_prefetch_l2` asks for 128-byte
lines to be brought into L2 (`_can_prefetch`: NVIDIA GPUs only); `_position_block` gives a
program on a (position blocks, batch x heads) grid its batch row, head and BLOCK_L positions.
"""

import torch

from .kernels_launch import _interpreting, _jit_helper, tl

# The attention products of float32 operands: "ieee" on the FMA units, or "tf32x3", three tf32
# products on the tensor cores (float32's accuracy up to the rounding of the low parts: at the
# shapes of LAUNCH_FLOAT32's note in kernels_launch.py the gradient's error against float64 is
# 4.2e-7, the torch path's 2.9e-7).
FLOAT32_PRECISION = "tf32x3"


def _dot_mode(dtype):
    if dtype == torch.float32:
        return 3 if FLOAT32_PRECISION == "tf32x3" else 1
    return 2 if dtype == torch.bfloat16 and _interpreting() else 0


def _can_prefetch():
    """Whether the kernels may issue PTX prefetches: on NVIDIA GPUs, not under the interpreter."""
    return not _interpreting() and torch.version.hip is None


@_jit_helper
def _dot(a, b, DOT_MODE: tl.constexpr):
    """DOT_MODE 0: tensor cores; 1: exact float32 (float32 inputs, like torch's matmul); 3: float32
    inputs as three tf32 products on the tensor cores (FLOAT32_PRECISION); 2: upcast
    first (bfloat16 under TRITON_INTERPRET=1, whose dot misreads bfloat16; the products of
    bfloat16 numbers are exact in float32, so this computes what the tensor cores do)."""
    if DOT_MODE == 0:
        return tl.dot(a, b)
    elif DOT_MODE == 1:
        return tl.dot(a, b, input_precision="ieee")
    elif DOT_MODE == 3:
        return tl.dot(a, b, input_precision="tf32x3")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@_jit_helper
def _narrow(x, dtype: tl.constexpr, DOT_MODE: tl.constexpr):
    """float32 -> dtype, rounding to nearest even.  The GPU does that itself; TRITON_INTERPRET=1
    truncates bfloat16, so under DOT_MODE 2 the rounding is done on the bits first."""
    if DOT_MODE == 2:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@_jit_helper
def _prefetch_l2(pointers):
    """Ask for the 128-byte lines at `pointers` to be brought into L2 (PTX `prefetch`: NVIDIA GPUs
    only, not the interpreter).  Nothing is returned or waited for."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [pointers], dtype=tl.int32,
                              is_pure=False, pack=1)


@_jit_helper
def _position_block(H, LENGTH, D, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """The (batch, head) and BLOCK_L positions of a program on grid (position blocks, batch x
    heads): b, h, the positions, which lie inside the sequence, the feature offsets and which lie
    inside d_head."""
    pid_bh = tl.program_id(1)
    pos = (tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)
    d_offs = tl.arange(0, BLOCK_D)
    return (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64), pos, pos < LENGTH, d_offs, d_offs < D

