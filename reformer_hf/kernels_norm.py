"""The blocks' layer norm (forward with an optional residual sum, backward) and the ReLU-bias gradient.

`_layer_norm_fwd_kernel`, grid (rows,): one program normalises one row, held whole in registers
(BLOCK_D = d rounded up to a power of two, d at most LAYER_NORM_MAX_WIDTH), in float32.
`_layer_norm_bwd_kernel`, grid (programs,): a program walks ROWS_PER_PROGRAM rows one after
another and writes one row of partial dw, db (and column sums), summed after.
`_relu_bias_grad_kernel`, grid (row programs, column blocks of 256): a program masks the gradient
of 1024 rows in 64 x 256 tiles and writes its float32 column sums, the bias gradient's share.
"""

import functools

import torch

from .kernels_device import _dot_mode, _narrow
from .kernels_launch import _cdiv, _jit, _launch, _pow2, _require_kernels, _rows_contiguous, tl

# The layer norm kernel holds a whole row in registers.
LAYER_NORM_MAX_WIDTH = 8192


def layer_norm(x, weight, bias, eps, out_dtype):
    """`F.layer_norm(x, (d,), weight, bias, eps).to(out_dtype)` for x (batch, length, d) in one
    kernel per pass: under autocast the float32 residual streams are normalised straight into the
    bf16 / fp16 operand of the next projection, and the backward takes that dtype's gradient."""
    _require_kernels("layer_norm", x, max_width=LAYER_NORM_MAX_WIDTH, width_name="d")
    return LayerNormFunction.apply(x, weight, bias, eps, out_dtype)


class LayerNormFunction(torch.autograd.Function):
    """Layer norm over the last dimension of x (batch, length, d), computed in float32 and written
    in `out_dtype`; the gradient of x comes back in x's dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        x, out, mean, rstd = layer_norm_forward(x, weight, bias, eps, out_dtype)
        ctx.save_for_backward(x, weight, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, rstd = ctx.saved_tensors
        grad_x, _, grad_weight, grad_bias, _ = layer_norm_backward(x, weight, mean, rstd, grad_out)
        return grad_x, grad_weight, grad_bias, None, None


def layer_norm_forward(x, weight, bias, eps, out_dtype, residual=None, subtract=False, with_stats=True):
    """`F.layer_norm(s, (d,), weight, bias, eps).to(out_dtype)` for s = x (batch, length, d), or
    with `residual`, s = x + residual (x - residual if `subtract`) added in x's dtype, in one pass.

    Returns (s (rows contiguous; x itself without a residual), the normalised s, mean, rstd),
    the last two float32 (batch * length,) for `layer_norm_backward`, or None unless `with_stats`.
    No autograd: `LayerNormFunction` and the reversible stack's fused path call it."""
    if x.dim() != 3:
        raise ValueError(f"kernels.layer_norm_forward: x has shape {tuple(x.shape)}; expected (batch, length, d)")
    if tuple(weight.shape) != (x.shape[-1],) or bias is None or tuple(bias.shape) != (x.shape[-1],):
        raise ValueError(f"kernels.layer_norm_forward: weight and bias must both have shape ({x.shape[-1]},)")
    batch, length, d_model = x.shape
    x = _rows_contiguous(x)
    out = torch.empty(batch, length, d_model, dtype=out_dtype, device=x.device)
    mean = rstd = summed = None
    if with_stats:
        mean = torch.empty(batch * length, dtype=torch.float32, device=x.device)
        rstd = torch.empty_like(mean)
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"kernels.layer_norm_forward: residual has shape {tuple(residual.shape)}; expected "
                             f"x's {tuple(x.shape)}")
        residual = _rows_contiguous(residual)
        summed = torch.empty_like(x, memory_format=torch.contiguous_format)
    _launch(_layer_norm_fwd_kernel, (batch * length,),
            (x, residual, summed, weight, bias, out, mean, rstd, x.stride(0), x.stride(1),
             0 if residual is None else residual.stride(0), 0 if residual is None else residual.stride(1),
             length, d_model, eps),
            dict(RESIDUAL=0 if residual is None else -1 if subtract else 1, STATS=with_stats,
                 DOT_MODE=_dot_mode(out_dtype), BLOCK_D=_pow2(d_model)))
    return (x if residual is None else summed), out, mean, rstd


def layer_norm_backward(x, weight, mean, rstd, grad_out, accumulate=None, low_dtype=None, column_sums=False):
    """Gradients of `layer_norm_forward`'s output with respect to x, weight and bias, given the
    output's gradient `grad_out` (batch, length, d).

    Returns (grad_x, grad_x_low, grad_weight, grad_bias, grad_x_sums): grad_x in x's dtype, plus
    `accumulate` (a gradient of x's shape and dtype, e.g. the residual stream's) when given;
    grad_x_low its copy in `low_dtype`, written by the same pass, or None; with `column_sums`,
    grad_x summed over positions (d,) in float32 (the bias gradient of whatever x's gradient is
    the output gradient of), else None."""
    if grad_out.shape != x.shape:
        raise ValueError(f"kernels.layer_norm_backward: grad_out has shape {tuple(grad_out.shape)}; expected x's "
                         f"{tuple(x.shape)}")
    batch, length, d_model = x.shape
    rows = batch * length
    grad_out = grad_out.contiguous()
    grad_x = torch.empty(batch, length, d_model, dtype=x.dtype, device=x.device)
    grad_x_low = None if low_dtype is None else torch.empty(batch, length, d_model, dtype=low_dtype, device=x.device)
    if accumulate is not None:
        if accumulate.shape != x.shape or accumulate.dtype != x.dtype:
            raise ValueError(f"kernels.layer_norm_backward: accumulate is {accumulate.dtype} {tuple(accumulate.shape)};"
                             f" expected x's {x.dtype} {tuple(x.shape)}")
        accumulate = accumulate.contiguous()
    rows_per_program = _layer_norm_rows_per_program(rows, x.device)
    n_programs = _cdiv(rows, rows_per_program)
    # dw's, db's (and grad_x's column sums) of every program: one reduction
    parts = torch.empty(3 if column_sums else 2, n_programs, d_model, dtype=torch.float32, device=x.device)
    _launch(_layer_norm_bwd_kernel, (n_programs,),
            (x, weight, grad_out, mean, rstd, accumulate, grad_x, grad_x_low, parts[0], parts[1], parts[-1],
             x.stride(0), x.stride(1), length, rows, d_model, rows_per_program),
            dict(ACCUMULATE=accumulate is not None, LOW_COPY=low_dtype is not None, COLUMN_SUMS=column_sums,
                 DOT_MODE=_dot_mode(low_dtype or x.dtype), BLOCK_D=_pow2(d_model)))
    sums = parts.sum(1)
    grad_weight, grad_bias = sums[:2].to(weight.dtype)
    return grad_x, grad_x_low, grad_weight, grad_bias, sums[2] if column_sums else None


# Rows per backward program (each program also writes one row of partial dw / db, summed after):
# at most 128, fewer where that would leave under LAYER_NORM_PROGRAMS_PER_SM programs per
# multiprocessor.  With 128 always, a 16K-token training step ran its layer-norm backwards on 128
# programs (H100: 132 multiprocessors) and took 83 ms against 73 ms with torch's layer norm.  A
# program walks its rows one after another, so more programs keep more rows in flight: at 64K x
# 1024 (with the stream gradient's add and the bf16 copy) 4 / 8 / 16 / 32 / 64 programs per
# multiprocessor took 0.446 / 0.440 / 0.414 / 0.424 / 0.438 ms on one H100 (4 warps; 2 or 8 warps
# were no faster at 16).
LAYER_NORM_ROWS_PER_PROGRAM = 128
LAYER_NORM_PROGRAMS_PER_SM = 16


@functools.cache
def _multiprocessors(device):
    if device.type != "cuda":  # the interpreter on the CPU: a small count, so tests still run several programs
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


def _layer_norm_rows_per_program(rows, device):
    return max(1, min(LAYER_NORM_ROWS_PER_PROGRAM, _cdiv(rows, LAYER_NORM_PROGRAMS_PER_SM * _multiprocessors(device))))


@_jit
def _layer_norm_fwd_kernel(
    X, R, S, W, B, Y, MEAN, RSTD, stride_xb, stride_xl, stride_rb, stride_rl, LENGTH, D, eps,
    RESIDUAL: tl.constexpr, STATS: tl.constexpr, DOT_MODE: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One row of x (batch, length, d), any dtype, normalised in float32 and written in Y's dtype.
    RESIDUAL 1 / -1: the row normalised is s = x + r / x - r (r: any dtype, added in float32, as
    torch promotes it), written to S (x's dtype, rows contiguous) too.  STATS: the row's mean and
    1/std are kept for the backward pass."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(X + (row // LENGTH) * stride_xb + (row % LENGTH) * stride_xl + cols, mask=mask, other=0.0)
    if RESIDUAL != 0:
        r = tl.load(R + (row // LENGTH) * stride_rb + (row % LENGTH) * stride_rl + cols, mask=mask, other=0.0)
        if RESIDUAL > 0:
            x = x + r.to(x.dtype)
        else:
            x = x - r.to(x.dtype)
        tl.store(S + row * D + cols, x, mask=mask)
    x = x.to(tl.float32)
    mean = tl.sum(x, 0) / D
    centered = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, 0) / D + eps)
    weight = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    bias = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    y = centered * rstd * weight + bias
    tl.store(Y + row * D + cols, _narrow(y, Y.dtype.element_ty, DOT_MODE), mask=mask)
    if STATS:
        tl.store(MEAN + row, mean)
        tl.store(RSTD + row, rstd)


@_jit
def _layer_norm_bwd_kernel(
    X, W, DY, MEAN, RSTD, ACC, DX, DX_LOW, DW_PART, DB_PART, DS_PART, stride_xb, stride_xl, LENGTH, ROWS, D,
    ROWS_PER_PROGRAM, ACCUMULATE: tl.constexpr, LOW_COPY: tl.constexpr, COLUMN_SUMS: tl.constexpr,
    DOT_MODE: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dx of ROWS_PER_PROGRAM rows (float32, x's dtype), and this program's share of dw and db.
    ACCUMULATE: DX = ACC + dx (ACC: x's dtype, rows contiguous).  LOW_COPY: DX is also written
    in DX_LOW's dtype.  COLUMN_SUMS: this program's share of DX's column sums too."""
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    weight = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], tl.float32)
    db = tl.zeros([BLOCK_D], tl.float32)
    ds = tl.zeros([BLOCK_D], tl.float32)
    for offset in range(0, ROWS_PER_PROGRAM):
        row = (program * ROWS_PER_PROGRAM + offset).to(tl.int64)
        if row < ROWS:
            x = tl.load(X + (row // LENGTH) * stride_xb + (row % LENGTH) * stride_xl + cols, mask=mask, other=0.0)
            dy = tl.load(DY + row * D + cols, mask=mask, other=0.0).to(tl.float32)
            xhat = tl.where(mask, (x.to(tl.float32) - tl.load(MEAN + row)) * tl.load(RSTD + row), 0.0)
            g = dy * weight
            dx = (g - tl.sum(g, 0) / D - xhat * (tl.sum(g * xhat, 0) / D)) * tl.load(RSTD + row)
            dx = dx.to(DX.dtype.element_ty)
            if ACCUMULATE:
                dx = tl.load(ACC + row * D + cols, mask=mask, other=0.0) + dx
            tl.store(DX + row * D + cols, dx, mask=mask)
            if LOW_COPY:
                tl.store(DX_LOW + row * D + cols, _narrow(dx, DX_LOW.dtype.element_ty, DOT_MODE), mask=mask)
            dw += dy * xhat
            db += dy
            if COLUMN_SUMS:
                ds += dx.to(tl.float32)
    tl.store(DW_PART + program * D + cols, dw, mask=mask)
    tl.store(DB_PART + program * D + cols, db, mask=mask)
    if COLUMN_SUMS:
        tl.store(DS_PART + program * D + cols, ds, mask=mask)


# At 64K x 4096 on one H100: 0.578 ms (2.78 TB/s) against 0.599 with 512 rows per program and
# 32 x 256 tiles, the fastest of 36 settings (16-64 rows x 128-512 columns per tile, 256-1024
# rows per program, 4 or 8 warps).
RELU_GRAD_ROWS_PER_PROGRAM = 1024
RELU_GRAD_BLOCK = {"block_r": 64, "block_c": 256}


def relu_bias_grad(grad_out, out):
    """(threshold_backward(grad_out, out, 0), its sum over rows) for a ReLU's output `out` and its
    gradient, both (rows, cols): the masked gradient and the bias gradient in one pass over them
    instead of two.  The sum is taken in float32 and returned in out's dtype, as torch's is."""
    if grad_out.shape != out.shape or grad_out.dim() != 2:
        raise ValueError(f"kernels.relu_bias_grad: grad_out {tuple(grad_out.shape)} and out {tuple(out.shape)} must "
                         "be one (rows, cols) shape")
    _require_kernels("relu_bias_grad", out, max_width=2**31)
    grad_out, out = grad_out.contiguous(), out.contiguous()
    rows, cols = out.shape
    rows_per_program = min(RELU_GRAD_ROWS_PER_PROGRAM, _pow2(rows, RELU_GRAD_BLOCK["block_r"]))
    n_row_programs = _cdiv(rows, rows_per_program)
    grad = torch.empty_like(out)
    bias_part = torch.empty(n_row_programs, cols, dtype=torch.float32, device=out.device)
    _launch(_relu_bias_grad_kernel, (n_row_programs, _cdiv(cols, RELU_GRAD_BLOCK["block_c"])),
            (grad_out, out, grad, bias_part, rows, cols, rows_per_program),
            dict(BLOCK_R=RELU_GRAD_BLOCK["block_r"], BLOCK_C=RELU_GRAD_BLOCK["block_c"]))
    return grad, bias_part.sum(0).to(out.dtype)


@_jit
def _relu_bias_grad_kernel(
    DY, OUT, DX, DB_PART, ROWS, COLS, ROWS_PER_PROGRAM, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx = dy where out > 0, else 0 (ReLU's gradient from its output, as threshold_backward), over
    ROWS_PER_PROGRAM rows x BLOCK_C columns of (rows, cols) tensors, and this program's float32
    column sums of dx (its share of the bias gradient)."""
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < COLS
    first = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM
    column_sums = tl.zeros([BLOCK_C], tl.float32)
    for start in range(0, ROWS_PER_PROGRAM, BLOCK_R):
        rows = first + start + tl.arange(0, BLOCK_R)
        mask = (rows < ROWS)[:, None] & col_ok[None, :]
        offsets = rows[:, None] * COLS + cols[None, :]
        dy = tl.load(DY + offsets, mask=mask, other=0.0)
        out = tl.load(OUT + offsets, mask=mask, other=0.0)
        dx = tl.where(out <= 0, 0.0, dy.to(tl.float32))  # exact: dy's values or zeros
        tl.store(DX + offsets, dx.to(DX.dtype.element_ty), mask=mask)
        column_sums += tl.sum(dx, 0)
    tl.store(DB_PART + tl.program_id(0) * COLS + cols, column_sums, mask=col_ok)

