"""The window attention forward pass: out and log-sum-exp of every query, hash rounds combined.

Grid (rounds x chunks per round x row blocks per chunk, batch x heads): a program takes BLOCK_M
query rows of one sorted chunk and walks the NB + NA + 1 chunks of its window, BLOCK_N key slots
at a time, with an online softmax, so the (chunk x window) logits live in registers only.
Every round but the last runs in one launch writing per-round outputs; the last round's launch
reads them back at its rows and combines all rounds by their log-sum-exp weights (COMBINE), in
float32, into the final output (batch, heads, length, d_head) and log-sum-exp.
"""

import torch

from .kernels_device import _dot, _narrow, _prefetch_l2
from .kernels_launch import _cdiv, _jit, _launch, _launch_settings, tl
from .kernels_window import _key_block, _mask_logits, _rows, _slots, _visible, _window_chunk


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

