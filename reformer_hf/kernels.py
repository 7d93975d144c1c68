"""Fused Triton kernels for LSH attention, local attention, LSH hashing and the blocks' layer norm.

The attention functions have the signature and semantics of their torch references in
`attention.py` (`lsh_attention`, `local_attention`, `hash_vectors`), which the tests compare them
against; `layer_norm` is torch's layer norm written in another dtype (see `layer_norm.py`).  What
the attention kernels do differently is where the work happens:

- no sorted copy of queries, keys or values is ever built: the kernels read rows through the
  sorted-slot -> position map, and write outputs and gradients back to positions;
- a query chunk attends to its own and neighbouring chunks with an online softmax, so the
  (chunk x window) logits live in registers only;
- the shared-QK key normalisation is recomputed inside the kernels, forward and backward;
- the hash rounds are combined by their log-sum-exp weights in one extra pass, and the backward
  never needs the per-round outputs: the rounds together are one softmax over the union of
  their keys, so its gradient only needs the combined output and log-sum-exp.

Attention dropout is not implemented here: `attention.lsh_attention_dispatch` sends a call
with `dropout_p > 0` in training to the torch path.  Triton is imported in a `try` block so
that this file imports (and is copied into saved model folders) on machines without it.
"""

import dataclasses
import functools
import inspect
import math
import os
from types import SimpleNamespace

import torch

from . import attention
from .attention import KEY_NORM_EPS, MASK_VALUE, SELF_MASK_VALUE, bucket_factors

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path in attention.py needs nothing from this module
    triton = None
    tl = SimpleNamespace(constexpr=None)  # lets the kernel signatures below be defined

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_D_HEAD = 256
# The layer norm kernel holds a whole row in registers.
LAYER_NORM_MAX_WIDTH = 8192


def _jit(fn=None, *, do_not_specialize=()):
    if fn is None:
        return functools.partial(_jit, do_not_specialize=do_not_specialize)
    return triton.jit(fn, do_not_specialize=list(do_not_specialize)) if triton is not None else fn


def _jit_helper(fn):
    """A device function called by the kernels.  Under TRITON_INTERPRET=1 it stays a plain Python
    function: the interpreter runs kernels as Python anyway, and it re-patches the whole language
    module on every call of a jitted helper, which made the CPU tests ten times slower."""
    return fn if _interpreting() else _jit(fn)


def triton_unusable_reason(*tensors, max_width=MAX_D_HEAD, width_name="d_head"):
    """Why the kernels cannot run on these tensors (the last dimension of the first one at most
    `max_width`), or None when they can."""
    if triton is None:
        return "triton is not installed"
    for tensor in tensors:
        if tensor.device.type != "cuda" and not _interpreting():
            return f"tensors on {tensor.device.type} (the kernels need CUDA, or TRITON_INTERPRET=1 on the CPU)"
        if tensor.dtype not in SUPPORTED_DTYPES:
            return f"dtype {tensor.dtype} (the kernels support float16, bfloat16 and float32)"
    if tensors and tensors[0].shape[-1] > max_width:
        return f"{width_name}={tensors[0].shape[-1]} (the kernel supports {width_name} <= {max_width})"
    return None


def _interpreting():
    """Whether Triton runs kernels in its interpreter: read once, at import, as Triton reads it
    when the kernels below are decorated (a constant: torch 2.11's dynamo ends the graph at a
    functools.cache)."""
    return _INTERPRETING


_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _require_kernels(name, *tensors, **limits):
    reason = triton_unusable_reason(*tensors, **limits)
    if reason is not None:
        raise RuntimeError(f"kernels.{name}: the Triton kernel cannot run here: {reason}.")


def _refuse_dropout(name, dropout_p, training):
    if dropout_p > 0.0 and training:
        raise ValueError(
            f"kernels.{name}: dropout_p={dropout_p} in training is not implemented by the Triton kernel; "
            "use the torch path (attention.lsh_attention_dispatch does so automatically)."
        )


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


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
def _unit_rows(x, D, key_scale, EPS: tl.constexpr):
    """Shared-QK keys from float32 rows: x * rsqrt(mean(x^2) + eps) / sqrt(d)."""
    variance = tl.sum(x * x, 1) / D
    return x * ((1.0 / tl.sqrt(variance + EPS)) * key_scale)[:, None]


@_jit_helper
def _visible(q_slot, q_pos, q_bkt, k_slot, k_pos, k_bkt, k_pad, exists, CHUNK,
             NB: tl.constexpr, NA: tl.constexpr, CAUSAL: tl.constexpr, BUCKET_WINDOW: tl.constexpr,
             HAS_PAD: tl.constexpr):
    """Which (query, key) pairs the reference leaves unmasked.

    Query and key operands come already broadcast against each other ((n, 1) and (1, m), or the
    other way round), so the same rules give the logits or their transpose.
    """
    vis = (q_pos >= 0) & (k_pos >= 0) & exists
    if HAS_PAD:
        vis = vis & (k_pad == 0)
    if CAUSAL:
        vis = vis & (k_pos <= q_pos)
    if BUCKET_WINDOW:
        distance = q_slot - k_slot
        vis = vis & (distance <= NB * CHUNK) & (distance >= -NA * CHUNK) & (k_bkt == q_bkt)
    return vis


@_jit_helper
def _mask_logits(logits, vis, same_position, SELF_MASK: tl.constexpr, MASK: tl.constexpr, SELF_VALUE: tl.constexpr):
    """The reference's masking: logits it hides become MASK and, with SELF_MASK, a visible query-key
    pair at the same position becomes SELF_VALUE.  Returns the logits and where gradient flows
    (visible and not self: the constants pass none)."""
    logits = tl.where(vis, logits, MASK)
    grad_flows = vis
    if SELF_MASK:
        is_self = vis & same_position
        logits = tl.where(is_self, SELF_VALUE, logits)
        grad_flows = vis & ~is_self
    return logits, grad_flows


@_jit_helper
def _window_chunk(chunk, w, n_chunks, NB: tl.constexpr, CIRCULAR: tl.constexpr):
    """The chunk `w` places into `chunk`'s window (w = NB is `chunk` itself), clamped into range,
    and whether it exists (on a ring every neighbour does)."""
    key_chunk = chunk + (w - NB)
    if CIRCULAR:
        exists = key_chunk == key_chunk
        key_chunk = (key_chunk + NB * n_chunks) % n_chunks
    else:
        exists = (key_chunk >= 0) & (key_chunk < n_chunks)
        key_chunk = tl.minimum(tl.maximum(key_chunk, 0), n_chunks - 1)
    return key_chunk, exists


@_jit_helper
def _slots(POS, BKT, slot_base, chunk, offsets, CHUNK, SORTED: tl.constexpr, BUCKET_WINDOW: tl.constexpr,
           MISSING_BUCKET: tl.constexpr):
    """Slots `offsets` of sorted `chunk`: which lie inside the chunk, the slots, their positions
    (-1 outside) and buckets (MISSING_BUCKET outside; without BUCKET_WINDOW, the positions)."""
    inside = offsets < CHUNK
    slot = chunk * CHUNK + offsets
    if SORTED:
        pos = tl.load(POS + slot_base + slot, mask=inside, other=-1)
    else:
        pos = tl.where(inside, slot, -1)
    bkt = pos
    if BUCKET_WINDOW:
        bkt = tl.load(BKT + slot_base + slot, mask=inside, other=MISSING_BUCKET)
    return inside, slot, pos, bkt


@_jit_helper
def _rows(X, b, h, pos, stride_b, stride_h, stride_l, d_offs):
    """Pointers to the rows `pos` (feature offsets `d_offs`) of head h of batch row b of a
    (batch, heads, length, d_head) operand."""
    return X + b * stride_b + h * stride_h + pos.to(tl.int64)[:, None] * stride_l + d_offs[None, :]


@_jit_helper
def _keys_values(Q, K, V, b, h, pos, mask, stride_b, stride_h, stride_l, d_offs, D, key_scale, queries,
                 NORM_KEYS: tl.constexpr, HAVE_QUERIES: tl.constexpr, DOT_MODE: tl.constexpr, EPS: tl.constexpr):
    """The keys and values of the rows `pos`: shared-QK keys are the rows' queries normalised
    (`queries`, already loaded, with HAVE_QUERIES; read from Q otherwise), other keys K's rows."""
    if NORM_KEYS:
        if HAVE_QUERIES:
            raw = queries
        else:
            raw = tl.load(_rows(Q, b, h, pos, stride_b, stride_h, stride_l, d_offs), mask=mask, other=0.0)
        k = _narrow(_unit_rows(raw.to(tl.float32), D, key_scale, EPS), raw.dtype, DOT_MODE)
    else:
        k = tl.load(_rows(K, b, h, pos, stride_b, stride_h, stride_l, d_offs), mask=mask, other=0.0)
    v = tl.load(_rows(V, b, h, pos, stride_b, stride_h, stride_l, d_offs), mask=mask, other=0.0)
    return k, v


@_jit_helper
def _key_block(
    Q, K, V, POS, BKT, PAD, stride_b, stride_h, stride_l, b, h, slot_base, key_chunk, start, d_offs, d_ok, LENGTH,
    CHUNK, D,
    key_scale, own_rows, SORTED: tl.constexpr, BUCKET_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr,
    NORM_KEYS: tl.constexpr, OWN_ROWS: tl.constexpr, DOT_MODE: tl.constexpr, EPS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """BLOCK_N key slots of `key_chunk` from `start`: their slots, positions, buckets and padding
    flags, which of them exist, and their keys and values, read through the slot -> position map
    (shared-QK keys normalised from the queries here).  With OWN_ROWS these slots are the
    program's own rows, already loaded as `own_rows`: shared-QK keys come from them."""
    col_ok, k_slot, k_pos, k_bkt = _slots(POS, BKT, slot_base, key_chunk, start + tl.arange(0, BLOCK_N), CHUNK,
                                          SORTED, BUCKET_WINDOW, -2)
    k_pad = k_pos
    if HAS_PAD:
        k_pad = tl.load(PAD + b * LENGTH + k_pos, mask=col_ok, other=1)
    k, v = _keys_values(Q, K, V, b, h, k_pos, col_ok[:, None] & d_ok[None, :], stride_b, stride_h, stride_l, d_offs, D,
                        key_scale, own_rows, NORM_KEYS, OWN_ROWS, DOT_MODE, EPS)
    return k_slot, k_pos, k_bkt, k_pad, col_ok, k, v


@_jit(do_not_specialize=("first_chunk",))
def _window_fwd_kernel(
    Q, K, V, POS, BKT, PAD, OUT, LSE, ROUND_OUT, ROUND_LSE,
    stride_b, stride_h, stride_l,
    stride_ob, stride_oh, stride_or, stride_ol,
    stride_lb, stride_lh, stride_lr,
    stride_rob, stride_roh, stride_ror, stride_rol,
    stride_rlb, stride_rlh, stride_rlr,
    H, LENGTH, N_SLOTS, first_chunk,
    CHUNK: tl.constexpr, D: tl.constexpr, SCALE: tl.constexpr, KEY_SCALE: tl.constexpr,
    NB: tl.constexpr, NA: tl.constexpr, CAUSAL: tl.constexpr, CIRCULAR: tl.constexpr,
    BUCKET_WINDOW: tl.constexpr, SELF_MASK: tl.constexpr, NORM_KEYS: tl.constexpr, SORTED: tl.constexpr,
    HAS_PAD: tl.constexpr, DOT_MODE: tl.constexpr, MASK: tl.constexpr, SELF_VALUE: tl.constexpr,
    EPS: tl.constexpr, ONE_BLOCK: tl.constexpr, COMBINE: tl.constexpr, PREFETCH_ROUNDS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One block of query rows of one sorted chunk (from `first_chunk` on) against its window of
    chunks.  ONE_BLOCK: the chunk fits one block, so its own keys are the program's rows and are
    not read again.

    Without COMBINE the block's output and log-sum-exp go to its round's place in OUT and LSE.
    With COMBINE (the last round, launched after the others) the earlier rounds' outputs and
    log-sum-exps at the block's positions are read from ROUND_OUT and ROUND_LSE and combined with
    this round's, still in float32, into the final OUT and LSE (no round dimension):
    out = sum_r exp(lse_r - logsumexp_r lse_r) * out_r.  PREFETCH_ROUNDS asks for those rows at
    the start, so that they are in L2 by the end."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    m_blocks = tl.cdiv(CHUNK, BLOCK_M)
    chunk = first_chunk + pid_m // m_blocks
    n_chunks = N_SLOTS // CHUNK
    rows = (pid_m % m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    d_offs = tl.arange(0, BLOCK_D)
    d_ok = d_offs < D

    slot_base = (b * H + h) * N_SLOTS
    row_ok, q_slot, q_pos, q_bkt = _slots(POS, BKT, slot_base, chunk, rows, CHUNK, SORTED, BUCKET_WINDOW, -1)
    q = tl.load(_rows(Q, b, h, q_pos, stride_b, stride_h, stride_l, d_offs), mask=row_ok[:, None] & d_ok[None, :],
                other=0.0)
    round_id = (chunk // (LENGTH // CHUNK)).to(tl.int64)
    if COMBINE and PREFETCH_ROUNDS:
        lines = ROUND_OUT + b * stride_rob + h * stride_roh + tl.where(row_ok, q_pos, 0).to(tl.int64) * stride_rol
        for prior in range(round_id):
            for column in tl.static_range(0, D, 1024 // ROUND_OUT.dtype.element_ty.primitive_bitwidth):  # 128 bytes
                _prefetch_l2(lines + prior * stride_ror + column)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for w in tl.static_range(NB + NA + 1):
        key_chunk, exists = _window_chunk(chunk, w, n_chunks, NB, CIRCULAR)
        for start in range(0, CHUNK, BLOCK_N):
            k_slot, k_pos, k_bkt, k_pad, col_ok, k, v = _key_block(
                Q, K, V, POS, BKT, PAD, stride_b, stride_h, stride_l, b, h, slot_base, key_chunk, start, d_offs, d_ok,
                LENGTH, CHUNK, D,
                KEY_SCALE, q, SORTED, BUCKET_WINDOW, HAS_PAD, NORM_KEYS, ONE_BLOCK and w == NB, DOT_MODE, EPS,
                BLOCK_N,
            )

            logits = _dot(q, tl.trans(k), DOT_MODE) * SCALE
            vis = _visible(q_slot[:, None], q_pos[:, None], q_bkt[:, None], k_slot[None, :], k_pos[None, :],
                           k_bkt[None, :], k_pad[None, :], exists, CHUNK, NB, NA, CAUSAL, BUCKET_WINDOW, HAS_PAD)
            logits, _ = _mask_logits(logits, vis, k_pos[None, :] == q_pos[:, None], SELF_MASK, MASK, SELF_VALUE)
            logits = tl.where(col_ok[None, :], logits, float("-inf"))

            m_new = tl.maximum(m_i, tl.max(logits, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(logits - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _dot(_narrow(p, v.dtype, DOT_MODE), v, DOT_MODE)
            m_i = m_new

    # out = acc * exp(m - lse) rather than acc / l: the reference normalises by exp(-lse) with lse
    # rounded in float32, which matters where lse is huge (-1e5 when a query sees only itself,
    # -1e9 when it sees nothing at all and the window's values are summed).
    lse = m_i + tl.log(tl.where(row_ok, l_i, 1.0))
    if COMBINE:
        prior_lse = ROUND_LSE + b * stride_rlb + h * stride_rlh + q_pos
        top = lse
        for prior in range(round_id):
            top = tl.maximum(top, tl.load(prior_lse + prior * stride_rlr, mask=row_ok, other=0.0))
        total = tl.exp(lse - top)
        for prior in range(round_id):
            total += tl.exp(tl.load(prior_lse + prior * stride_rlr, mask=row_ok, other=0.0) - top)
        lse = top + tl.log(total)
        out = acc * tl.exp(m_i - lse)[:, None]
        for prior in range(round_id):
            weight = tl.exp(tl.load(prior_lse + prior * stride_rlr, mask=row_ok, other=0.0) - lse)
            part_rows = _rows(ROUND_OUT + prior * stride_ror, b, h, q_pos, stride_rob, stride_roh, stride_rol, d_offs)
            part = tl.load(part_rows, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            out += part.to(tl.float32) * weight[:, None]
    else:
        out = acc * tl.exp(m_i - lse)[:, None]
    out_ptrs = (OUT + b * stride_ob + h * stride_oh + round_id * stride_or + q_pos.to(tl.int64)[:, None] * stride_ol
                + d_offs[None, :])
    tl.store(out_ptrs, _narrow(out, OUT.dtype.element_ty, DOT_MODE), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + b * stride_lb + h * stride_lh + round_id * stride_lr + q_pos, lse, mask=row_ok)


@_jit_helper
def _position_block(H, LENGTH, D, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """The (batch, head) and BLOCK_L positions of a program on grid (position blocks, batch x
    heads): b, h, the positions, which lie inside the sequence, the feature offsets and which lie
    inside d_head."""
    pid_bh = tl.program_id(1)
    pos = (tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)
    d_offs = tl.arange(0, BLOCK_D)
    return (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64), pos, pos < LENGTH, d_offs, d_offs < D


@_jit
def _delta_kernel(
    OUT, DOUT, DLSE, DELTA,
    stride_ob, stride_oh, stride_ol,
    stride_gb, stride_gh, stride_gl,
    H, LENGTH, D,
    HAS_DLSE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """delta = rowsum(dout * out) - dlse: the softmax backward's per-query offset."""
    b, h, pos, pos_ok, d_offs, d_ok = _position_block(H, LENGTH, D, BLOCK_L, BLOCK_D)
    mask = pos_ok[:, None] & d_ok[None, :]
    out = tl.load(OUT + b * stride_ob + h * stride_oh + pos[:, None] * stride_ol + d_offs[None, :], mask=mask, other=0.0)
    dout = tl.load(DOUT + b * stride_gb + h * stride_gh + pos[:, None] * stride_gl + d_offs[None, :], mask=mask,
                   other=0.0)
    delta = tl.sum(out.to(tl.float32) * dout.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + (b * H + h) * LENGTH + pos, mask=pos_ok, other=0.0)
    tl.store(DELTA + (b * H + h) * LENGTH + pos, delta, mask=pos_ok)


@_jit(do_not_specialize=("first_chunk", "add_to_grad"))
def _window_bwd_kernel(
    Q, K, V, DO, POS, BKT, PAD, LSE, DELTA, DQ, DK, DV,
    stride_b, stride_h, stride_l,
    stride_dob, stride_doh, stride_dol,
    H, LENGTH, N_SLOTS, first_chunk, add_to_grad,
    CHUNK: tl.constexpr, D: tl.constexpr, SCALE: tl.constexpr, KEY_SCALE: tl.constexpr,
    NB: tl.constexpr, NA: tl.constexpr, CAUSAL: tl.constexpr, CIRCULAR: tl.constexpr,
    BUCKET_WINDOW: tl.constexpr, SELF_MASK: tl.constexpr, NORM_KEYS: tl.constexpr, SORTED: tl.constexpr,
    HAS_PAD: tl.constexpr, DOT_MODE: tl.constexpr, MASK: tl.constexpr, SELF_VALUE: tl.constexpr,
    EPS: tl.constexpr, ACCUMULATE: tl.constexpr, PREFETCH_GRAD: tl.constexpr, ONE_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Gradients for one block of rows of one sorted chunk, which are keys of the query chunks
    that see this chunk (dk, dv) and queries of their own window (dq).

    P = exp(logit - lse) with the lse of all rounds together, so each round's share of the
    combined output is handled without any per-round output.  Masked logits are constants in
    the reference, so they pass no gradient to q or k, but their (usually zero) probability
    still weighs the values.  ONE_BLOCK: the chunk fits one block, so the chunk against itself
    is one (keys x queries) tile that gives dk, dv and dq at once from the rows in registers.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    m_blocks = tl.cdiv(CHUNK, BLOCK_M)
    chunk = first_chunk + pid_m // m_blocks
    n_chunks = N_SLOTS // CHUNK
    rows = (pid_m % m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < CHUNK
    d_offs = tl.arange(0, BLOCK_D)
    d_ok = d_offs < D
    row_mask = row_ok[:, None] & d_ok[None, :]
    slot_base = (b * H + h) * N_SLOTS
    seq_base = (b * H + h) * LENGTH

    # This block's rows, in both of their roles.
    _, my_slot, my_pos, my_bkt = _slots(POS, BKT, slot_base, chunk, rows, CHUNK, SORTED, BUCKET_WINDOW, -1)
    my_pad = my_pos
    if HAS_PAD:
        my_pad = tl.load(PAD + b * LENGTH + my_pos, mask=row_ok, other=1)
    q_me = tl.load(_rows(Q, b, h, my_pos, stride_b, stride_h, stride_l, d_offs), mask=row_mask, other=0.0)
    k_me, v_me = _keys_values(Q, K, V, b, h, my_pos, row_mask, stride_b, stride_h, stride_l, d_offs, D, KEY_SCALE,
                              q_me, NORM_KEYS, True, DOT_MODE, EPS)
    do_me = tl.load(_rows(DO, b, h, my_pos, stride_dob, stride_doh, stride_dol, d_offs), mask=row_mask, other=0.0)
    lse_me = tl.load(LSE + seq_base + my_pos, mask=row_ok, other=0.0)
    delta_me = tl.load(DELTA + seq_base + my_pos, mask=row_ok, other=0.0)
    if PREFETCH_GRAD and ACCUMULATE:
        if add_to_grad:
            # The rounds before wrote this block's rows of dq and dv, which it read-modify-writes
            # at the very end: asked for now, they are in L2 by then instead of a DRAM round trip away.
            lines = tl.where(row_ok, b * stride_b + h * stride_h + my_pos.to(tl.int64) * stride_l, 0)
            for column in tl.static_range(0, D, 1024 // DQ.dtype.element_ty.primitive_bitwidth):  # 128-byte lines
                _prefetch_l2(DV + lines + column)
                _prefetch_l2(DQ + lines + column)

    # Keys: every query chunk whose window holds this chunk.
    dk = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for w in tl.static_range(NB + NA + 1):
        if not (ONE_BLOCK and w == NB):  # the own-chunk tile, below
            query_chunk = chunk - (w - NB)
            if CIRCULAR:
                pair_ok = query_chunk == query_chunk
                query_chunk = (query_chunk + (NA + 1) * n_chunks) % n_chunks
            else:
                pair_ok = (query_chunk >= 0) & (query_chunk < n_chunks)
                query_chunk = tl.minimum(tl.maximum(query_chunk, 0), n_chunks - 1)
            for start in range(0, CHUNK, BLOCK_N):
                col_ok, q_slot, q_pos, q_bkt = _slots(POS, BKT, slot_base, query_chunk, start + tl.arange(0, BLOCK_N),
                                                      CHUNK, SORTED, BUCKET_WINDOW, -2)
                col_mask = col_ok[:, None] & d_ok[None, :]
                q = tl.load(_rows(Q, b, h, q_pos, stride_b, stride_h, stride_l, d_offs), mask=col_mask, other=0.0)
                do = tl.load(_rows(DO, b, h, q_pos, stride_dob, stride_doh, stride_dol, d_offs), mask=col_mask,
                             other=0.0)
                lse = tl.load(LSE + seq_base + q_pos, mask=col_ok, other=0.0)
                delta = tl.load(DELTA + seq_base + q_pos, mask=col_ok, other=0.0)

                # Transposed problem: rows are this block's keys, columns the queries.
                logits_t = _dot(k_me, tl.trans(q), DOT_MODE) * SCALE
                vis_t = _visible(q_slot[None, :], q_pos[None, :], q_bkt[None, :], my_slot[:, None],
                                 my_pos[:, None], my_bkt[:, None], my_pad[:, None], pair_ok, CHUNK, NB, NA, CAUSAL,
                                 BUCKET_WINDOW, HAS_PAD)
                logits_t, grad_flows = _mask_logits(logits_t, vis_t, my_pos[:, None] == q_pos[None, :], SELF_MASK, MASK,
                                                    SELF_VALUE)
                p_t = tl.exp(logits_t - lse[None, :])
                p_t = tl.where(row_ok[:, None] & col_ok[None, :] & pair_ok, p_t, 0.0)
                dv += _dot(_narrow(p_t, do.dtype, DOT_MODE), do, DOT_MODE)
                dp_t = _dot(v_me, tl.trans(do), DOT_MODE)
                ds_t = tl.where(grad_flows, p_t * (dp_t - delta[None, :]), 0.0)
                dk += _dot(_narrow(ds_t, q.dtype, DOT_MODE), q, DOT_MODE)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if ONE_BLOCK:
        # The chunk against itself, transposed as above: rows are this block's keys, columns its
        # queries.  dq's share is ds^T k, the query loop's product for this tile.
        logits_t = _dot(k_me, tl.trans(q_me), DOT_MODE) * SCALE
        vis_t = _visible(my_slot[None, :], my_pos[None, :], my_bkt[None, :], my_slot[:, None], my_pos[:, None],
                         my_bkt[:, None], my_pad[:, None], True, CHUNK, NB, NA, CAUSAL, BUCKET_WINDOW, HAS_PAD)
        logits_t, grad_flows = _mask_logits(logits_t, vis_t, my_pos[:, None] == my_pos[None, :], SELF_MASK, MASK,
                                            SELF_VALUE)
        p_t = tl.exp(logits_t - lse_me[None, :])
        p_t = tl.where(row_ok[:, None] & row_ok[None, :], p_t, 0.0)
        dv += _dot(_narrow(p_t, do_me.dtype, DOT_MODE), do_me, DOT_MODE)
        dp_t = _dot(v_me, tl.trans(do_me), DOT_MODE)
        ds_t = tl.where(grad_flows, p_t * (dp_t - delta_me[None, :]), 0.0)
        dk += _dot(_narrow(ds_t, q_me.dtype, DOT_MODE), q_me, DOT_MODE)
        dq += _dot(_narrow(tl.trans(ds_t * SCALE), k_me.dtype, DOT_MODE), k_me, DOT_MODE)

    if not CIRCULAR:
        # Window slots off either end of the sorted sequence are clamped onto its first or last
        # chunk and fully masked.  Their probability is exp(MASK - lse): zero, except for a query
        # that sees no key at all (padding), whose window values the reference sums.
        for w in tl.static_range(NB + NA):
            if w < NB:
                count = tl.where(chunk == 0, tl.minimum(NB - w, n_chunks), 0)
                first = 0
            else:
                count = tl.where(chunk == n_chunks - 1, tl.minimum(w - NB + 1, n_chunks), 0)
                first = n_chunks - count
            for query_chunk in range(first, first + count):
                for start in range(0, CHUNK, BLOCK_N):
                    col_ok, q_slot, q_pos, q_bkt = _slots(POS, BKT, slot_base, query_chunk,
                                                          start + tl.arange(0, BLOCK_N), CHUNK, SORTED, False, -2)
                    do = tl.load(_rows(DO, b, h, q_pos, stride_dob, stride_doh, stride_dol, d_offs),
                                 mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                    lse = tl.load(LSE + seq_base + q_pos, mask=col_ok, other=0.0)
                    p_t = tl.zeros([BLOCK_M, BLOCK_N], tl.float32) + tl.exp(MASK - lse)[None, :]
                    p_t = tl.where(row_ok[:, None] & col_ok[None, :], p_t, 0.0)
                    dv += _dot(_narrow(p_t, do.dtype, DOT_MODE), do, DOT_MODE)

    # dv and dk are final here; store dv and fold dk into dq now, so that the query loop below
    # runs with one accumulator live instead of three.
    _add_round(_rows(DV, b, h, my_pos, stride_b, stride_h, stride_l, d_offs), dv, row_mask, add_to_grad, ACCUMULATE,
               DOT_MODE)
    dk = dk * SCALE
    if NORM_KEYS:
        # Through k = q * r / sqrt(d), r = rsqrt(mean(q^2) + eps):
        # dq = (r / sqrt(d)) * (dk - (r^2 / d) * q * <dk, q>) + (the queries' own gradient, below).
        qf = q_me.to(tl.float32)
        r = 1.0 / tl.sqrt(tl.sum(qf * qf, 1) / D + EPS)
        dq += (r * KEY_SCALE)[:, None] * (dk - ((r * r / D) * tl.sum(dk * qf, 1))[:, None] * qf)
    else:
        tl.store(_rows(DK, b, h, my_pos, stride_b, stride_h, stride_l, d_offs),
                 _narrow(dk, DK.dtype.element_ty, DOT_MODE), mask=row_mask)

    # Queries: this block against its own window.
    for w in tl.static_range(NB + NA + 1):
        if not (ONE_BLOCK and w == NB):  # done with the keys above
            key_chunk, exists = _window_chunk(chunk, w, n_chunks, NB, CIRCULAR)
            for start in range(0, CHUNK, BLOCK_N):
                k_slot, k_pos, k_bkt, k_pad, col_ok, k, v = _key_block(
                    Q, K, V, POS, BKT, PAD, stride_b, stride_h, stride_l, b, h, slot_base, key_chunk, start, d_offs,
                    d_ok, LENGTH, CHUNK, D,
                    KEY_SCALE, q_me, SORTED, BUCKET_WINDOW, HAS_PAD, NORM_KEYS, False, DOT_MODE, EPS, BLOCK_N,
                )

                logits = _dot(q_me, tl.trans(k), DOT_MODE) * SCALE
                vis = _visible(my_slot[:, None], my_pos[:, None], my_bkt[:, None], k_slot[None, :], k_pos[None, :],
                               k_bkt[None, :], k_pad[None, :], exists, CHUNK, NB, NA, CAUSAL, BUCKET_WINDOW, HAS_PAD)
                logits, grad_flows = _mask_logits(logits, vis, k_pos[None, :] == my_pos[:, None], SELF_MASK, MASK,
                                                  SELF_VALUE)
                p = tl.exp(logits - lse_me[:, None])
                p = tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)
                dp = _dot(do_me, tl.trans(v), DOT_MODE)
                ds = tl.where(grad_flows, p * (dp - delta_me[:, None]), 0.0) * SCALE
                dq += _dot(_narrow(ds, k.dtype, DOT_MODE), k, DOT_MODE)

    _add_round(_rows(DQ, b, h, my_pos, stride_b, stride_h, stride_l, d_offs), dq, row_mask, add_to_grad, ACCUMULATE,
               DOT_MODE)


@_jit_helper
def _prefetch_l2(pointers):
    """Ask for the 128-byte lines at `pointers` to be brought into L2 (PTX `prefetch`: NVIDIA GPUs
    only, not the interpreter).  Nothing is returned or waited for."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [pointers], dtype=tl.int32,
                              is_pure=False, pack=1)


@_jit_helper
def _add_round(grad_ptrs, grad, mask, add_to_grad, ACCUMULATE: tl.constexpr, DOT_MODE: tl.constexpr):
    """Write one round's gradient rows, or with ACCUMULATE and add_to_grad (a run-time value, so
    that every round runs the same compiled kernel) add them to what the rounds before wrote
    there.  The running sum is kept in the gradient's own dtype, as autograd sums the torch path's
    rounds: in bfloat16 no accumulators are read and written, and the full-size checks keep the
    kernel's error below the torch path's (bench/attention.py --check)."""
    if ACCUMULATE:
        if add_to_grad:
            grad += tl.load(grad_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(grad_ptrs, _narrow(grad, grad_ptrs.dtype.element_ty, DOT_MODE), mask=mask)


@_jit
def _hash_kernel(
    X, ROT, OUT,
    stride_xb, stride_xh, stride_xl,
    stride_rh, stride_rd, stride_rn,
    stride_ob, stride_oh, stride_on,
    H, LENGTH, N_HASHES,
    D: tl.constexpr, HALF0: tl.constexpr, HALF1: tl.constexpr, BLOCK_H0: tl.constexpr, BLOCK_H1: tl.constexpr,
    PRECISION: tl.constexpr, DOT_MODE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """bucket = argmax([xR; -xR]) per factor of the bucket count and per round, without keeping xR.
    PRECISION "bf16x3": x is bfloat16 and is used as it is, against the rotation split into three
    bfloat16 parts; otherwise x is read as float32 and the dot has that input precision."""
    b, h, pos, pos_ok, d_offs, d_ok = _position_block(H, LENGTH, D, BLOCK_L, BLOCK_D)
    x = tl.load(X + b * stride_xb + h * stride_xh + pos[:, None] * stride_xl + d_offs[None, :],
                mask=pos_ok[:, None] & d_ok[None, :], other=0.0)
    if PRECISION != "bf16x3":
        x = x.to(tl.float32)
    for hash_round in range(N_HASHES):
        rot_base = ROT + h * stride_rh + hash_round * stride_rn
        bucket = _hash_factor(x, rot_base, stride_rd, d_offs, d_ok, 0, HALF0, BLOCK_H0, PRECISION, DOT_MODE)
        if HALF1 > 0:
            bucket += 2 * HALF0 * _hash_factor(x, rot_base, stride_rd, d_offs, d_ok, HALF0, HALF1, BLOCK_H1, PRECISION,
                                               DOT_MODE)
        tl.store(OUT + b * stride_ob + h * stride_oh + hash_round * stride_on + pos, bucket.to(tl.int64), mask=pos_ok)


@_jit_helper
def _rotate(x, rotation, PRECISION: tl.constexpr, DOT_MODE: tl.constexpr):
    """x @ rotation at float32 accuracy.  "bf16x3": the float32 rotation is split into three
    bfloat16 parts (8 + 8 + 8 significant bits, all of float32's 24), each product of bfloat16
    numbers is exact in float32, and the tensor cores accumulate them in float32."""
    if PRECISION == "bf16x3":
        high = _narrow(rotation, tl.bfloat16, DOT_MODE)
        rest = rotation - high.to(tl.float32)
        middle = _narrow(rest, tl.bfloat16, DOT_MODE)
        low = _narrow(rest - middle.to(tl.float32), tl.bfloat16, DOT_MODE)
        rotated = _dot(x, low, DOT_MODE) + _dot(x, middle, DOT_MODE) + _dot(x, high, DOT_MODE)
    else:
        rotated = tl.dot(x, rotation, input_precision=PRECISION)
    return rotated


@_jit_helper
def _hash_factor(x, rot_base, stride_rd, d_offs, d_ok, first_column, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                 PRECISION: tl.constexpr, DOT_MODE: tl.constexpr):
    """argmax over [xR, -xR] for one factor's HALF columns, BLOCK_H columns at a time."""
    best_high = tl.full([x.shape[0]], float("-inf"), tl.float32)
    best_low = tl.full([x.shape[0]], float("inf"), tl.float32)
    arg_high = tl.zeros([x.shape[0]], tl.int32)
    arg_low = tl.zeros([x.shape[0]], tl.int32)
    for start in range(0, HALF, BLOCK_H):
        columns = start + tl.arange(0, BLOCK_H)
        column_ok = columns < HALF
        rotation = tl.load(rot_base + d_offs[:, None] * stride_rd + first_column + columns[None, :],
                           mask=d_ok[:, None] & column_ok[None, :], other=0.0).to(tl.float32)
        rotated = _rotate(x, rotation, PRECISION, DOT_MODE)
        highest = tl.where(column_ok[None, :], rotated, float("-inf"))
        lowest = tl.where(column_ok[None, :], rotated, float("inf"))
        # one reduction gives each extreme and its first column, as torch.argmax picks on a tie
        block_high, column_high = tl.max(highest, 1, return_indices=True)
        block_low, column_low = tl.min(lowest, 1, return_indices=True)
        # strict comparisons: on a tie the earlier block wins
        arg_high = tl.where(block_high > best_high, column_high + start, arg_high)
        arg_low = tl.where(block_low < best_low, column_low + start, arg_low)
        best_high = tl.maximum(best_high, block_high)
        best_low = tl.minimum(best_low, block_low)
    # argmax over [xR, -xR] takes the first maximum, so a tie goes to the positive half.
    return tl.where(best_high >= -best_low, arg_high, HALF + arg_low)


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


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _launch(kernel, grid, args, constexprs, num_warps=4, num_stages=3):
    """kernel[grid](*args, num_warps=num_warps, num_stages=num_stages, **constexprs) (Triton's
    defaults: 4 warps, 3 stages).

    A launch through Triton binds and specialises every argument again, which took 50-70 us of
    the H100 host's CPU per launch, and an 8K-token LSH step launches nine kernels while the GPU
    waits for them.  So the compiled kernel is kept, keyed on the device, the launch settings,
    the constants, each tensor's dtype and 16-byte alignment and every other argument's type and
    value (which determines all Triton specialises on: an integer being 1, a multiple of 16, its
    range), and a later launch with the same key goes straight to the compiled kernel's runner
    (`_Launcher`).  Returns that launcher, which a caller relaunching the kernel with only
    integer arguments changed may call itself without building the key again.  Under
    TRITON_INTERPRET=1 there is no compiled kernel (None) and every launch goes through Triton."""
    if _interpreting():
        kernel[grid](*args, num_warps=num_warps, num_stages=num_stages, **constexprs)
        return None
    device = torch.cuda.current_device()
    key = (kernel, device, num_warps, num_stages, *constexprs.values(),
           *[arg if type(arg) is int else (arg.dtype, arg.data_ptr() % 16 == 0) if isinstance(arg, torch.Tensor)
             else (type(arg), arg) for arg in args])
    launcher = _COMPILED.get(key)
    if launcher is None:
        if len(_COMPILED) >= MAX_KEPT_LAUNCHERS:  # e.g. a run over many different lengths
            _COMPILED.clear()
        compiled = kernel[grid](*args, num_warps=num_warps, num_stages=num_stages, **constexprs)
        constants = tuple(constexprs[name] for name in _parameter_names(kernel)[len(args):])
        launcher = _COMPILED[key] = _Launcher(compiled, constants)
        return launcher
    launcher(grid, args, device)
    return launcher


class _Launcher:
    """A compiled kernel launched straight through its runner: the arguments it was compiled for
    (changed only where Triton does not specialise), then the constants, cached here."""

    __slots__ = ("compiled", "constants")

    def __init__(self, compiled, constants):
        self.compiled, self.constants = compiled, constants

    def __call__(self, grid, args, device=None):
        """Launch on the current stream of `device` (the current CUDA device if None)."""
        compiled = self.compiled
        device = torch.cuda.current_device() if device is None else device
        stream = triton.runtime.driver.active.get_current_stream(device)
        hooks = triton.knobs.runtime
        enter_hook = hooks.launch_enter_hook
        values = (*args, *self.constants)
        grid = (*grid, 1, 1)[:3]
        # Triton's launch metadata is only read by a launch hook (profilers set one).
        metadata = None if enter_hook is None else compiled.launch_metadata(grid, stream, *values)
        compiled.run(*grid, stream, compiled.function, compiled.packed_metadata, metadata, enter_hook,
                     hooks.launch_exit_hook, *values)


_COMPILED = {}
MAX_KEPT_LAUNCHERS = 4096


@functools.cache
def _parameter_names(kernel):
    return tuple(inspect.signature(kernel.fn).parameters)


def _dot_mode(dtype):
    if dtype == torch.float32:
        return 3 if FLOAT32_PRECISION == "tf32x3" else 1
    return 2 if dtype == torch.bfloat16 and _interpreting() else 0


def _pow2(value, floor=16):
    return max(floor, _next_pow2(value))


def _next_pow2(value):
    """The smallest power of two >= value (value >= 1); `triton.next_power_of_2` without its
    constexpr wrapper, which costs more than the arithmetic on every launch."""
    return 1 << (value - 1).bit_length()


def _cdiv(numerator, denominator):
    return -(-numerator // denominator)


# Launch settings per kernel: warps per program, rows per block (block_m, at most 64), key
# columns per tile (block_n, at most block_m) and positions per hashing program (block_l).
# `bench/attention.py --tune` times the alternatives at 64K tokens, n_hashes 4, on one H100
# (bench/results/attention_h100_tune.jsonl): forward 0.99 ms with 4 warps and 32-key tiles
# against 1.79 / 2.23 / 1.88 ms for the other three; forward + backward 3.88 ms with 4 warps and
# 64-key tiles (the fused own-chunk tile) against 4.23 / 5.97 / 6.73 ms; hashing 0.49 ms with 128
# positions per program against 0.53 (64) and 1.27 (32) (bf16x3 hashing: 0.27-0.30 ms against
# 0.33 (64) and 0.29 (256)).  With compile-time chunk and d_head, 32-row blocks and 8-warp
# backward programs were slower again (4.07 and 4.24 ms against 2.74 ms, forward + backward):
# more programs per multiprocessor hide the row gathers better.
LAUNCH = {
    "forward": {"num_warps": 4, "block_m": 64, "block_n": 32},
    "backward": {"num_warps": 4, "block_m": 64, "block_n": 64},
    "hash": {"num_warps": 4, "block_l": 128},
}
# float32 rows take twice the registers of 16-bit ones: compiled for sm_90 with the 16-bit
# settings and "ieee" products, the float32 backward spilled 17 KB per thread to local memory and
# took 55 ms per round at batch 64 x 4 heads x 1024 on the H100 (the torch path's whole training
# step of that model took 40 ms).  With tf32x3 products and 32-key tiles the op (forward +
# backward, 4 rounds) takes 8.7 ms there, against 11.5 ms with 64-key tiles or 8 warps, 20.6 ms
# with "ieee" products, and 19.9 ms for the torch path.
LAUNCH_FLOAT32 = {
    "forward": {"num_warps": 4, "block_m": 64, "block_n": 32},
    "backward": {"num_warps": 4, "block_m": 64, "block_n": 32},
}


def _launch_settings(phase, dtype):
    return LAUNCH_FLOAT32[phase] if dtype == torch.float32 else LAUNCH[phase]


def _tiles(chunk_length, d_head, block_m, block_n):
    block_m = min(_pow2(chunk_length), block_m)
    block_n = min(block_m, block_n)
    if d_head > 64:
        # The tuning ran at d_head 64; wider heads keep the full-width tiles that the full-size
        # checks (bench/attention.py --check, d_head 128) passed with.
        block_n = block_m
    return block_m, block_n, _pow2(d_head)

# The hashing rotation's dot.  "ieee" float32 runs on the FMA units and took 1.07 of the 5.8 ms
# of an LSH step at 64K tokens on one H100; "tf32x3" runs three tf32 products on the tensor cores
# and keeps float32's accuracy (a bfloat16 or float16 x splits exactly, so only the rotation's
# low bits are rounded, at 2^-21), so only near-tied argmaxes can differ from the reference.
# "bf16x3" (bfloat16 x; other dtypes take "tf32x3") keeps x as it is and splits the rotation into
# three bfloat16 parts: three bfloat16 products, each exact in float32.
HASH_PRECISION = "bf16x3"
# The attention products of float32 operands: "ieee" on the FMA units, or "tf32x3", three tf32
# products on the tensor cores (float32's accuracy up to the rounding of the low parts: at the
# shapes above the gradient's error against float64 is 4.2e-7, the torch path's 2.9e-7).
FLOAT32_PRECISION = "tf32x3"


@dataclasses.dataclass(frozen=True)
class _Window:
    """Static description of a chunked-window attention problem, shared by forward and backward."""

    chunk_length: int
    n_before: int
    n_after: int
    causal: bool
    circular: bool
    bucket_window: bool
    self_mask: bool
    norm_keys: bool
    sorted_slots: bool
    scale: float

    def constexprs(self, dtype, d_head, phase, has_pad, accumulate=False):
        """The compile-time arguments of the `phase` ("forward" or "backward") kernel; `accumulate`:
        the backward adds the rounds' gradients up (more than one round)."""
        settings = _launch_settings(phase, dtype)
        return _window_constexprs(self, _dot_mode(dtype), d_head, settings["block_m"], settings["block_n"], has_pad,
                                  accumulate if phase == "backward" else None)


@functools.cache
def _window_constexprs(window, dot_mode, d_head, block_m, block_n, has_pad, accumulate):
    """The kernels' compile-time arguments for `window` (cached: built once per problem kind, not
    on every launch); `accumulate` None for the forward kernel, which takes no accumulation flags."""
    block_m, block_n, block_d = _tiles(window.chunk_length, d_head, block_m, block_n)
    constexprs = dict(
        CHUNK=window.chunk_length, D=d_head, SCALE=window.scale, KEY_SCALE=1.0 / math.sqrt(d_head),
        NB=window.n_before, NA=window.n_after, CAUSAL=window.causal, CIRCULAR=window.circular,
        BUCKET_WINDOW=window.bucket_window, SELF_MASK=window.self_mask, NORM_KEYS=window.norm_keys,
        SORTED=window.sorted_slots, HAS_PAD=has_pad, DOT_MODE=dot_mode, MASK=MASK_VALUE, SELF_VALUE=SELF_MASK_VALUE,
        EPS=KEY_NORM_EPS, ONE_BLOCK=window.chunk_length <= block_m and block_n == block_m, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_D=block_d,
    )
    if accumulate is not None:
        constexprs.update(ACCUMULATE=accumulate, PREFETCH_GRAD=_can_prefetch())
    else:
        constexprs.update(PREFETCH_ROUNDS=_can_prefetch())
    return constexprs


def _window_forward(window, query, key, value, positions, buckets, pad, n_rounds):
    """out (batch, heads, length, d_head), a view of (batch, length, heads, d_head) storage so that
    merging heads afterwards is free, and lse (batch, heads, length), the rounds combined.

    Every round but the last runs in one launch that writes per-round outputs (round_out
    (batch, heads, n_rounds - 1, length, d_head), round_lse (batch, heads, n_rounds - 1, length));
    the last round's launch combines them with its own (COMBINE).  A window may reach across
    rounds (the "chunk" mode's ring over all sorted slots), so both launches see all
    n_rounds * length slots."""
    batch, heads, length, d_head = query.shape
    n_slots = n_rounds * length
    out = torch.empty(batch, length, heads, d_head, dtype=value.dtype, device=query.device).transpose(1, 2)
    lse = torch.empty(batch, heads, length, dtype=torch.float32, device=query.device)
    final = (out, lse, out.stride(0), out.stride(1), 0, out.stride(2), lse.stride(0), lse.stride(1), 0)
    consts = window.constexprs(query.dtype, d_head, "forward", pad is not None)
    m_blocks = _cdiv(window.chunk_length, consts["BLOCK_M"])
    chunks_per_round = length // window.chunk_length
    num_warps = _launch_settings("forward", query.dtype)["num_warps"]

    def launch(destination, earlier, n_launch_rounds, first_round):
        """Rounds first_round.. of the slots into `destination`, combining `earlier` if it is not None."""
        grid = (n_launch_rounds * chunks_per_round * m_blocks, batch * heads)
        # Without COMBINE the kernel never reads ROUND_OUT / ROUND_LSE; the destination fills those slots.
        read = earlier if earlier is not None else destination
        args = (query, key, value, positions, buckets, pad, *destination[:2], *read[:2], *query.stride()[:3],
                *destination[2:], *read[2:], heads, length, n_slots, first_round * chunks_per_round)
        _launch(_window_fwd_kernel, grid, args, {**consts, "COMBINE": earlier is not None}, num_warps, 1)

    earlier = None
    if n_rounds > 1:
        round_out = torch.empty(batch, heads, n_rounds - 1, length, d_head, dtype=value.dtype, device=query.device)
        round_lse = torch.empty(batch, heads, n_rounds - 1, length, dtype=torch.float32, device=query.device)
        earlier = (round_out, round_lse, *round_out.stride()[:4], *round_lse.stride()[:3])
        launch(earlier, None, n_rounds - 1, 0)
    launch(final, earlier, 1, n_rounds - 1)
    return out, lse


def _delta(out, grad_out, grad_lse):
    batch, heads, length, d_head = out.shape
    delta = torch.empty(batch, heads, length, dtype=torch.float32, device=out.device)
    block_l = 64
    grid = (_cdiv(length, block_l), batch * heads)
    if grad_lse is not None:
        grad_lse = grad_lse.float().contiguous()
    _launch(_delta_kernel, grid,
            (out, grad_out, grad_lse, delta, *out.stride()[:3], *grad_out.stride()[:3], heads, length, d_head),
            dict(HAS_DLSE=grad_lse is not None, BLOCK_L=block_l, BLOCK_D=_pow2(d_head)))
    return delta


def _window_backward(window, query, key, value, positions, buckets, pad, out, lse, grad_out, grad_lse, n_rounds,
                     grads=None):
    """dq, dk, dv; with shared QK (window.norm_keys) dk is folded into dq and returned as None.

    grads: where to write them (views with the operands' strides, such as the parts of one packed
    projection gradient; dk None with shared QK); new tensors like the operands otherwise."""
    batch, heads, length, d_head = query.shape
    n_slots = n_rounds * length
    grad_out = _rows_contiguous(grad_out)
    delta = _delta(out, grad_out, grad_lse)
    if grads is None:
        grads = torch.empty_like(query), None if window.norm_keys else torch.empty_like(key), torch.empty_like(value)
    dq, dk, dv = grads
    consts = window.constexprs(query.dtype, d_head, "backward", pad is not None, n_rounds > 1)
    m_blocks = _cdiv(window.chunk_length, consts["BLOCK_M"])
    chunks_per_round = length // window.chunk_length
    grid = (chunks_per_round * m_blocks, batch * heads)
    dk_arg = dk if dk is not None else dq
    num_warps = _launch_settings("backward", query.dtype)["num_warps"]
    shared_args = (query, key, value, grad_out, positions, buckets, pad, lse, delta, dq, dk_arg, dv,
                   *query.stride()[:3], *grad_out.stride()[:3], heads, length, n_slots)
    launcher = None
    for round_id in range(n_rounds):
        # Rounds run one after another: a position appears once per round, so within one launch
        # every program owns its rows and the rounds' sum needs no atomics.
        args = (*shared_args, round_id * chunks_per_round, int(round_id > 0))
        if launcher is None:
            launcher = _launch(_window_bwd_kernel, grid, args, consts, num_warps, 1)
        else:  # only the unspecialised round index and add_to_grad differ from the launch before
            launcher(grid, args)
    return dq, dk, dv


def _can_prefetch():
    """Whether the kernels may issue PTX prefetches: on NVIDIA GPUs, not under the interpreter."""
    return not _interpreting() and torch.version.hip is None


# ----------------------------------------------------------------------------------------------
# Autograd functions (plain signatures) and the reference-compatible entry points
# ----------------------------------------------------------------------------------------------


@functools.cache
def _lsh_window(sorted_slots, chunk_length, n_chunks_before, n_chunks_after, causal, window_mode):
    return _Window(
        chunk_length=chunk_length, n_before=n_chunks_before, n_after=n_chunks_after,
        causal=causal, circular=window_mode == "chunk", bucket_window=window_mode == "bucket_window",
        self_mask=True, norm_keys=True, sorted_slots=sorted_slots, scale=1.0,
    )


def _lsh_forward(window, query_key, value, sorted_positions, sorted_buckets, pad):
    """(out, lse, n_rounds) of shared-QK LSH attention, the rounds combined."""
    n_rounds = sorted_positions.shape[-1] // query_key.shape[2] if window.sorted_slots else 1
    out, lse = _window_forward(window, query_key, query_key, value, sorted_positions, sorted_buckets, pad, n_rounds)
    return out, lse, n_rounds


class LSHAttentionFunction(torch.autograd.Function):
    """Shared-QK LSH attention over an already sorted sequence.

    query_key, value: (batch, heads, length, d_head); sorted_positions, sorted_buckets:
    (batch, heads, n_hashes * length) int32 from `sort_by_bucket` (the buckets may be None in
    "chunk" mode, which does not read them), or both None for one round in sequence order;
    pad: (batch, length) int8 or None.
    Returns out (batch, heads, length, d_head) and lse (batch, heads, length).
    """

    @staticmethod
    def forward(ctx, query_key, value, sorted_positions, sorted_buckets, pad, chunk_length, n_chunks_before,
                n_chunks_after, causal, window_mode):
        window = _lsh_window(sorted_positions is not None, chunk_length, n_chunks_before, n_chunks_after, causal,
                             window_mode)
        out, lse, ctx.n_rounds = _lsh_forward(window, query_key, value, sorted_positions, sorted_buckets, pad)
        ctx.window = window
        ctx.save_for_backward(query_key, value, sorted_positions, sorted_buckets, pad, out, lse)
        ctx.set_materialize_grads(False)  # an unused lse needs no zero gradient
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        query_key, value, sorted_positions, sorted_buckets, pad, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        dqk, _, dv = _window_backward(ctx.window, query_key, query_key, value, sorted_positions, sorted_buckets, pad,
                                      out, lse, grad_out, grad_lse, ctx.n_rounds)
        return dqk, dv, None, None, None, None, None, None, None, None


class PackedLSHAttentionFunction(torch.autograd.Function):
    """`LSHAttentionFunction` over one projection's output: query_key_value (batch, length,
    2 * n_heads * d_head), the query-keys then the values of every position side by side, given
    with its two heads-split views (`attention.unpack_heads`).  Its gradient comes back as one
    tensor of that shape, written by the kernel in place, so the projection's backward is one
    product, with no sum of two input gradients and no copy."""

    @staticmethod
    def forward(ctx, query_key_value, query_key, value, sorted_positions, sorted_buckets, pad, chunk_length,
                n_chunks_before, n_chunks_after, causal, window_mode):
        window = _lsh_window(sorted_positions is not None, chunk_length, n_chunks_before, n_chunks_after, causal,
                             window_mode)
        out, lse, ctx.n_rounds = _lsh_forward(window, query_key, value, sorted_positions, sorted_buckets, pad)
        ctx.window = window
        ctx.save_for_backward(query_key_value, query_key, value, sorted_positions, sorted_buckets, pad, out, lse)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        query_key_value, query_key, value, sorted_positions, sorted_buckets, pad, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        grad = torch.empty_like(query_key_value)
        dqk, dv = attention.unpack_heads(grad, 2, query_key.shape[1])
        _window_backward(ctx.window, query_key, query_key, value, sorted_positions, sorted_buckets, pad, out, lse,
                         grad_out, grad_lse, ctx.n_rounds, grads=(dqk, None, dv))
        return grad, None, None, None, None, None, None, None, None, None, None


@functools.cache
def _local_window(d_head, chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around):
    return _Window(
        chunk_length=chunk_length, n_before=n_chunks_before, n_after=n_chunks_after,
        causal=causal, circular=wrap_around, bucket_window=False, self_mask=False, norm_keys=False,
        sorted_slots=False, scale=1.0 / math.sqrt(d_head),
    )


class LocalAttentionFunction(torch.autograd.Function):
    """Chunk-aligned sliding-window attention; query, key, value (batch, heads, length, d_head)."""

    @staticmethod
    def forward(ctx, query, key, value, pad, chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around):
        window = _local_window(query.shape[-1], chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around)
        out, lse = _window_forward(window, query, key, value, None, None, pad, 1)
        ctx.window = window
        ctx.save_for_backward(query, key, value, pad, out, lse)
        ctx.set_materialize_grads(False)  # an unused lse needs no zero gradient
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        query, key, value, pad, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        dq, dk, dv = _window_backward(ctx.window, query, key, value, None, None, pad, out, lse, grad_out, grad_lse, 1)
        return dq, dk, dv, None, None, None, None, None, None


class PackedLocalAttentionFunction(torch.autograd.Function):
    """`LocalAttentionFunction` over one projection's output: query_key_value (batch, length,
    3 * n_heads * d_head), queries, keys and values side by side, given with its three
    heads-split views; one gradient of that shape."""

    @staticmethod
    def forward(ctx, query_key_value, query, key, value, pad, chunk_length, n_chunks_before, n_chunks_after, causal,
                wrap_around):
        window = _local_window(query.shape[-1], chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around)
        out, lse = _window_forward(window, query, key, value, None, None, pad, 1)
        ctx.window = window
        ctx.save_for_backward(query_key_value, query, key, value, pad, out, lse)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        query_key_value, query, key, value, pad, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        grad = torch.empty_like(query_key_value)
        _window_backward(ctx.window, query, key, value, None, None, pad, out, lse, grad_out, grad_lse, 1,
                         grads=attention.unpack_heads(grad, 3, query.shape[1]))
        return grad, None, None, None, None, None, None, None, None, None


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


def layer_norm(x, weight, bias, eps, out_dtype):
    """`F.layer_norm(x, (d,), weight, bias, eps).to(out_dtype)` for x (batch, length, d) in one
    kernel per pass: under autocast the float32 residual streams are normalised straight into the
    bf16 / fp16 operand of the next projection, and the backward takes that dtype's gradient."""
    _require_kernels("layer_norm", x, max_width=LAYER_NORM_MAX_WIDTH, width_name="d")
    return LayerNormFunction.apply(x, weight, bias, eps, out_dtype)


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


def _rows_contiguous(tensor):
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _common_layout(first, *others):
    """(batch, heads, length, d_head) operands in one memory layout, so that the kernels take one
    set of strides for all of them (and their gradients, allocated like the first): the first
    keeps its layout when it is dense ((b, h, l, d) or the (b, l, h, d) that splitting heads off a
    projection gives), the others are copied only where theirs differs."""
    if not (first.is_contiguous() or first.transpose(1, 2).is_contiguous()):
        first = first.contiguous()
    return (first, *(_like_layout(tensor, first) for tensor in others))


def _like_layout(tensor, like):
    if tensor.stride() == like.stride():
        return tensor
    return torch.empty_like(like, dtype=tensor.dtype).copy_(tensor)


def _pad_bytes(pad_mask, batch, length):
    if pad_mask is None:
        return None
    if tuple(pad_mask.shape) != (batch, length):
        raise ValueError(f"pad_mask has shape {tuple(pad_mask.shape)}; expected (batch, length) = {(batch, length)}")
    return pad_mask.to(torch.int8).contiguous()


@_jit
def _sort_rows_kernel(
    BKT, PAD, POS_OUT, BKT_OUT, H, N_HASHES, LENGTH, N_BUCKETS,
    HAS_PAD: tl.constexpr, WITH_BUCKETS: tl.constexpr, BLOCK: tl.constexpr, LOG_BLOCK: tl.constexpr,
):
    """One (batch, head, round) row of contiguous bucket ids, sorted by (bucket, position) in one
    program.  Each position's key bucket * BLOCK + position is unique, so sorting the keys gives
    the stable order by bucket; the key's low bits are the position, its high bits the bucket.
    Padding takes bucket N_BUCKETS; the slots past LENGTH (BLOCK is a power of two) sort last and
    are not stored."""
    row = tl.program_id(0)
    b = row // (H * N_HASHES)
    hash_round = row % N_HASHES
    pos = tl.arange(0, BLOCK)
    pos_ok = pos < LENGTH
    offsets = row.to(tl.int64) * LENGTH + pos  # the input's (b, h, round) row and the output's slots
    bucket = tl.load(BKT + offsets, mask=pos_ok, other=0).to(tl.int32)
    if HAS_PAD:
        bucket = tl.where(tl.load(PAD + b * LENGTH + pos, mask=pos_ok, other=0) != 0, N_BUCKETS, bucket)
    keys = tl.sort(tl.where(pos_ok, bucket * BLOCK + pos, 2**31 - 1))
    tl.store(POS_OUT + offsets, keys & (BLOCK - 1), mask=pos_ok)
    if WITH_BUCKETS:
        tl.store(BKT_OUT + offsets, (keys >> LOG_BLOCK) + hash_round * (N_BUCKETS + 1), mask=pos_ok)


# Rows of at most this many positions are sorted by `_sort_rows_kernel`, one launch in place of
# torch.sort and its conversions.  On one H100 it sorted (1, 8, 4, L) bucket ids in 0.045 ms at
# 1K and 0.15 ms at 8K, where torch.sort's own kernels take less (0.01 ms at 8K), but the call
# took 39 us of CPU against 94 us for torch.sort's path, and steps of that length wait for the
# CPU; at 16K the kernel took 0.35 ms and 23-40 s to compile (10-15 s at 8K), so longer rows
# keep torch.sort.
SORT_KERNEL_MAX_LENGTH = 8192


def _sorts_in_kernel(bucket_ids, n_buckets):
    length = bucket_ids.shape[-1]
    return (
        triton is not None
        and (bucket_ids.is_cuda or _interpreting())
        and length <= SORT_KERNEL_MAX_LENGTH
        and (n_buckets + 1) * _next_pow2(length) < 2**31
    )


def _sort_rows(bucket_ids, n_buckets, pad, with_buckets):
    batch, heads, n_hashes, length = bucket_ids.shape
    bucket_ids = bucket_ids.contiguous()
    positions = torch.empty(batch, heads, n_hashes * length, dtype=torch.int32, device=bucket_ids.device)
    buckets = torch.empty_like(positions) if with_buckets else None
    block = _next_pow2(length)
    _launch(_sort_rows_kernel, (batch * heads * n_hashes,),
            (bucket_ids, pad, positions, buckets, heads, n_hashes, length, n_buckets),
            dict(HAS_PAD=pad is not None, WITH_BUCKETS=with_buckets, BLOCK=block, LOG_BLOCK=block.bit_length() - 1),
            8 if block >= 4096 else 4)
    return positions, buckets


def sort_by_bucket(bucket_ids, n_buckets, pad_mask=None, with_buckets=True):
    """`attention.sort_by_bucket` as the kernels read it: the sorted slot -> position map and the
    slots' buckets offset by round * (n_buckets + 1) (None unless `with_buckets`: only the
    "bucket_window" mode reads them), both (batch, heads, n_hashes * length) int32.  pad_mask:
    (batch, length), bool or int8 (nonzero: padding), or None.

    Each round is sorted on its own (the same order as sorting round-offset keys), so the
    positions come out of torch.sort without index arithmetic, and the round offsets are added
    to the sorted buckets only where they are read: three to four small operations per step
    fewer than before, which at 8K tokens is CPU time the step waits for.

    The keys are sorted as int16 whenever the bucket ids and the padding's sentinel (n_buckets)
    fit in it (with 2L / 64 buckets, every length up to 512K tokens): torch.sort's radix passes
    follow the key width, and on the H100 sorting (1, 8, 4, 64K) keys took 0.154 ms and 128 us
    of CPU as int16 against 0.210 ms and 187 us as int32.  Rows of up to SORT_KERNEL_MAX_LENGTH
    positions are sorted by one kernel instead."""
    if _sorts_in_kernel(bucket_ids, n_buckets):
        batch, _, _, length = bucket_ids.shape
        return _sort_rows(bucket_ids, n_buckets, _pad_bytes(pad_mask, batch, length), with_buckets)
    keys = bucket_ids.to(torch.int16 if n_buckets <= torch.iinfo(torch.int16).max else torch.int32)
    if pad_mask is not None:
        keys = keys.masked_fill(pad_mask.bool()[:, None, None, :], n_buckets)
    sorted_buckets, order = torch.sort(keys, dim=-1, stable=True)
    if with_buckets:  # int32 from here on: the round offsets reach n_hashes * (n_buckets + 1)
        sorted_buckets = (sorted_buckets + _round_offsets(keys.shape[2], n_buckets, keys.device)).flatten(2)
    return order.to(torch.int32).flatten(2), sorted_buckets if with_buckets else None


def _round_offsets(n_hashes, n_buckets, device):
    """(n_hashes, 1) int32: round r's bucket offset r * (n_buckets + 1).  Kept once made, except
    while a CUDA graph is being captured: a tensor made then holds its values only after the
    graph's first replay."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return _make_round_offsets(n_hashes, n_buckets, device)
    return _cached_round_offsets(n_hashes, n_buckets, device)


def _make_round_offsets(n_hashes, n_buckets, device):
    return (torch.arange(n_hashes, dtype=torch.int32, device=device) * (n_buckets + 1))[:, None]


_cached_round_offsets = functools.lru_cache(maxsize=64)(_make_round_offsets)


def lsh_attention(
    query_key,
    value,
    bucket_ids,
    *,
    n_buckets,
    chunk_length,
    n_chunks_before=1,
    n_chunks_after=0,
    causal=False,
    window_mode="bucket_window",
    pad_mask=None,
    dropout_p=0.0,
    training=False,
):
    """`attention.lsh_attention` as fused kernels: same arguments, same results (out, lse)."""
    return _lsh_attention(LSHAttentionFunction, _common_layout(query_key, value), query_key, value, bucket_ids,
                          n_buckets, chunk_length, n_chunks_before, n_chunks_after, causal, window_mode, pad_mask,
                          dropout_p, training)


def lsh_attention_packed(query_key_value, bucket_ids, *, n_heads, n_buckets, chunk_length, n_chunks_before=1,
                         n_chunks_after=0, causal=False, window_mode="bucket_window", pad_mask=None, dropout_p=0.0,
                         training=False):
    """`attention.lsh_attention_packed` as fused kernels: the gradient of query_key_value is
    written by the backward kernel as one tensor."""
    query_key_value = query_key_value.contiguous()
    query_key, value = attention.unpack_heads(query_key_value, 2, n_heads)
    return _lsh_attention(PackedLSHAttentionFunction, (query_key_value, query_key, value), query_key, value,
                          bucket_ids, n_buckets, chunk_length, n_chunks_before, n_chunks_after, causal, window_mode,
                          pad_mask, dropout_p, training)


def _lsh_attention(function, operands, query_key, value, bucket_ids, n_buckets, chunk_length, n_chunks_before,
                   n_chunks_after, causal, window_mode, pad_mask, dropout_p, training, sort=None):
    """Checks, sorting, and `function` (LSHAttentionFunction or its packed twin) applied to
    `operands` (what it takes in place of query_key and value).  sort: `sort_by_bucket` or a
    function of its signature (kernel_ops.py's operator)."""
    attention.check_lsh_arguments(query_key, value, bucket_ids, chunk_length, window_mode)
    batch, heads, length, d_head = query_key.shape
    _refuse_dropout("lsh_attention", dropout_p, training)
    _require_kernels("lsh_attention", query_key, value)
    pad = _pad_bytes(pad_mask, batch, length)
    if window_mode == "chunk" and length == chunk_length:
        # As in the reference: one chunk per round means every query sees the whole sequence,
        # so the rounds are n_hashes copies of dense shared-QK attention, each key shown once.
        out, lse = function.apply(*operands, None, None, pad, length, 0, 0, causal, "chunk")
        return out, lse + math.log(bucket_ids.shape[2])
    sorted_positions, sorted_buckets = (sort or sort_by_bucket)(bucket_ids, n_buckets, pad,
                                                                with_buckets=window_mode == "bucket_window")
    return function.apply(*operands, sorted_positions, sorted_buckets, pad, chunk_length, n_chunks_before,
                          n_chunks_after, causal, window_mode)


def local_attention(
    query,
    key,
    value,
    *,
    chunk_length,
    n_chunks_before=1,
    n_chunks_after=0,
    causal=False,
    wrap_around=False,
    pad_mask=None,
    dropout_p=0.0,
    training=False,
):
    """`attention.local_attention` as a fused kernel: same arguments, same results (out, lse)."""
    return _local_attention(LocalAttentionFunction, _common_layout(query, key, value), query, key, value,
                            chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around, pad_mask, dropout_p,
                            training)


def local_attention_packed(query_key_value, *, n_heads, chunk_length, n_chunks_before=1, n_chunks_after=0,
                           causal=False, wrap_around=False, pad_mask=None, dropout_p=0.0, training=False):
    """`attention.local_attention_packed` as a fused kernel: the gradient of query_key_value is
    written by the backward kernel as one tensor."""
    query_key_value = query_key_value.contiguous()
    query, key, value = attention.unpack_heads(query_key_value, 3, n_heads)
    return _local_attention(PackedLocalAttentionFunction, (query_key_value, query, key, value), query, key, value,
                            chunk_length, n_chunks_before, n_chunks_after, causal, wrap_around, pad_mask, dropout_p,
                            training)


def _local_attention(function, operands, query, key, value, chunk_length, n_chunks_before, n_chunks_after, causal,
                     wrap_around, pad_mask, dropout_p, training):
    attention.check_local_arguments(query, key, value, chunk_length)
    batch, heads, length, d_head = query.shape
    _refuse_dropout("local_attention", dropout_p, training)
    _require_kernels("local_attention", query, key, value)
    return function.apply(*operands, _pad_bytes(pad_mask, batch, length), chunk_length, n_chunks_before,
                          n_chunks_after, causal, wrap_around)


def hash_vectors(vectors, rotations, num_buckets):
    """`attention.hash_vectors` fused: the rotated vectors are never stored.

    vectors (batch, heads, length, d_head) of any supported dtype are rotated at float32 accuracy
    (HASH_PRECISION), as the reference does for float32 inputs; one program hashes its rows for
    every round.  Returns bucket_ids (batch, heads, n_hashes, length) int64.
    """
    factors = bucket_factors(num_buckets)
    if len(factors) > 2:
        raise ValueError(f"hash_vectors: num_buckets={num_buckets!r}; the kernel supports one or two factors")
    _require_kernels("hash_vectors", vectors)
    batch, heads, length, d_head = vectors.shape
    n_hashes = rotations.shape[2]
    if tuple(rotations.shape) != (heads, d_head, n_hashes, sum(f // 2 for f in factors)):
        raise ValueError(f"hash_vectors: rotations have shape {tuple(rotations.shape)}; expected "
                         f"(heads, d_head, n_hashes, rotation_size) = ({heads}, {d_head}, n_hashes, "
                         f"{sum(f // 2 for f in factors)})")
    vectors = _rows_contiguous(vectors)
    rotations = rotations.to(device=vectors.device, dtype=torch.float32).contiguous()
    halves = [f // 2 for f in factors] + [0]
    precision = HASH_PRECISION
    if precision == "bf16x3" and vectors.dtype != torch.bfloat16:
        precision = "tf32x3"
    out = torch.empty(batch, heads, n_hashes, length, dtype=torch.long, device=vectors.device)
    # 128 positions of d_head 128 per program asked for 256 KB of shared memory on the H100 (it
    # has 227 KB): the tile is capped at 32 KB (8K float32 elements).
    block_l = min(LAUNCH["hash"]["block_l"], (16384 if precision == "bf16x3" else 8192) // _pow2(d_head))
    grid = (_cdiv(length, block_l), batch * heads)
    _launch(_hash_kernel, grid,
            (vectors, rotations, out, *vectors.stride()[:3], *rotations.stride()[:3], *out.stride()[:3], heads, length,
             n_hashes),
            _hash_constexprs(d_head, halves[0], halves[1], precision, _dot_mode(vectors.dtype), block_l),
            LAUNCH["hash"]["num_warps"])
    return out


@functools.cache
def _hash_constexprs(d_head, half0, half1, precision, dot_mode, block_l):
    return dict(D=d_head, HALF0=half0, HALF1=half1, BLOCK_H0=min(_pow2(half0), 64),
                BLOCK_H1=min(_pow2(max(half1, 1)), 64), PRECISION=precision, DOT_MODE=dot_mode, BLOCK_L=block_l,
                BLOCK_D=_pow2(d_head))
