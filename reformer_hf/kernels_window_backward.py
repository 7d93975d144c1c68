"""The window attention backward pass: dq, dk, dv (dk folded into dq for shared-QK keys).

The rounds together are one softmax over the union of their keys, so the gradient needs only
the combined output and log-sum-exp, never a per-round output.  `_delta_kernel` (grid (position
blocks of 64, batch x heads)) computes each query's delta = rowsum(dout * out) - dlse.  Then
`_window_bwd_kernel` runs once per round, on grid (chunks per round x row blocks, batch x
heads): a program takes BLOCK_M rows of one sorted chunk as keys of every query chunk that sees
it (dk, dv, BLOCK_N queries at a time, the problem transposed) and then as queries of their own
window (dq, BLOCK_N keys at a time).  Within one launch each position is one program's, so the
rounds' sum needs no atomics: each round adds to what the rounds before wrote.
"""

import torch

from .kernels_device import _dot, _narrow, _position_block, _prefetch_l2
from .kernels_launch import _cdiv, _jit, _jit_helper, _launch, _launch_settings, _pow2, _rows_contiguous, tl
from .kernels_window import _key_block, _keys_values, _mask_logits, _rows, _slots, _visible, _window_chunk


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

