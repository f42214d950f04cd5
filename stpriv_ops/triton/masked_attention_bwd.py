"""Backward kernels of ``stpriv.masked_attention``: two launches, no atomics, bitwise deterministic.

With ``P_ij = (w_ij e_ij + eps/N) / Z_i``, ``D_i = dout_i . out_i`` and ``g_ij = (dout_i . v_j - D_i) / Z_i``:
``dv_j = sum_i P_ij dout_i``, ``dS_ij = w_ij e_ij g_ij``, ``dq_i = scale sum_j dS_ij k_j``,
``dk_j = scale sum_i dS_ij q_i`` and ``dkeep_j = sum_h sum_{i != j} e_ij g_ij`` (nonzero for dropped
keys too). Both kernels recompute ``e_ij / Z_i = exp2(s_ij qk_scale - m2_i - log2 Z_i)`` from the
forward's statistics, like the Triton fused-attention tutorial.

1. ``masked_attention_bwd_dq_kernel``: one program per (query block, batch*head). It first
   computes ``D_i`` for its rows from ``out`` and ``dout`` and stores it for launch 2: the
   tutorial's separate preprocess pass, fused. Then, if dq is wanted, it loops over key blocks.
2. ``masked_attention_bwd_dkdv_kernel``: one program per (key block, batch) loops over the heads
   and, per head, over query blocks. It owns dk and dv of its keys and sums ``dkeep`` over heads
   in registers: the head sum needs neither a partial buffer and a second pass nor atomics.

The keep weight multiplies ``e / Z`` before anything is rounded to the input dtype: ``e_ij / Z_i``
alone is unbounded for a dropped key (it can out-score every kept one) and would overflow fp16,
while ``w_ij e_ij / Z_i <= 1``. As in the forward, per-score masks are compiled only into the
diagonal and tail blocks (``EDGE``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .attention_tiles import load_keep, load_row_stats, load_tile, query_block, store_tile, tile_ptrs


@triton.jit
def _dq_steps(
    dq, q, do, m2, log2_z, delta, k_ptrs, v_ptrs, keep_ptrs, offs_m, offs_d, N, qk_scale, lo, hi,
    stride_kn, stride_vn, stride_keepn,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, EDGE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dq steps over the key blocks in [lo, hi)."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = load_tile(k_ptrs + start_n * stride_kn, cols, N, offs_d, HEAD_DIM, BLOCK_D, EDGE)
        v = load_tile(v_ptrs + start_n * stride_vn, cols, N, offs_d, HEAD_DIM, BLOCK_D, EDGE)
        keep = load_keep(keep_ptrs + start_n * stride_keepn, cols, N, EDGE)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        # (s qk_scale - m2) is one fused multiply-add, exact before its rounding: the reference
        # point comes off before the large scores are rounded.
        x = s * qk_scale - m2[:, None]
        if EDGE:
            # a key past N has s = 0, which may be far above m_i: exp2 would overflow, 0 * inf = NaN
            e_over_z = tl.exp2(tl.where((cols < N)[None, :], x, float("-inf")) - log2_z[:, None])
            p = e_over_z * tl.where(offs_m[:, None] == cols[None, :], 1.0, keep[None, :])
        else:
            p = tl.exp2(x - log2_z[:, None]) * keep[None, :]
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def masked_attention_bwd_dq_kernel(
    Q_ptr, K_ptr, V_ptr, Keep_ptr, Out_ptr, DO_ptr, RowMax_ptr, RowSum_ptr, Delta_ptr, DQ_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    stride_keepb, stride_keepn,
    H, N, scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    NEED_DQ: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    start_m, off_bh, off_b, off_h, offs_m, offs_n, offs_d = query_block(H, BLOCK_M, BLOCK_N, BLOCK_D)
    stats = off_bh * N + offs_m

    do = load_tile(tile_ptrs(DO_ptr, off_b, off_h, offs_m, offs_d, stride_dob, stride_doh, stride_don, stride_dod),
                   offs_m, N, offs_d, HEAD_DIM, BLOCK_D, True)
    o = load_tile(tile_ptrs(Out_ptr, off_b, off_h, offs_m, offs_d, stride_ob, stride_oh, stride_on, stride_od),
                  offs_m, N, offs_d, HEAD_DIM, BLOCK_D, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta_ptr + stats, delta, mask=offs_m < N)
    if NEED_DQ:
        q = load_tile(tile_ptrs(Q_ptr, off_b, off_h, offs_m, offs_d, stride_qb, stride_qh, stride_qn, stride_qd),
                      offs_m, N, offs_d, HEAD_DIM, BLOCK_D, True)
        m2, log2_z = load_row_stats(RowMax_ptr, RowSum_ptr, stats, offs_m, N, True)
        k_ptrs = tile_ptrs(K_ptr, off_b, off_h, offs_n, offs_d, stride_kb, stride_kh, stride_kn, stride_kd)
        v_ptrs = tile_ptrs(V_ptr, off_b, off_h, offs_n, offs_d, stride_vb, stride_vh, stride_vn, stride_vd)
        keep_ptrs = Keep_ptr + off_b * stride_keepb + offs_n * stride_keepn

        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        # Key blocks [diag_lo, diag_hi) hold this query block's diagonal; [n_full, N) is the tail.
        diag_lo = (start_m // BLOCK_N) * BLOCK_N
        diag_hi = tl.cdiv(start_m + BLOCK_M, BLOCK_N) * BLOCK_N
        n_full = (N // BLOCK_N) * BLOCK_N
        dq = _dq_steps(dq, q, do, m2, log2_z, delta, k_ptrs, v_ptrs, keep_ptrs, offs_m, offs_d, N, qk_scale,
                       0, diag_lo, stride_kn, stride_vn, stride_keepn,
                       HEAD_DIM, BLOCK_D, BLOCK_N, False, DOT_PRECISION)
        dq = _dq_steps(dq, q, do, m2, log2_z, delta, k_ptrs, v_ptrs, keep_ptrs, offs_m, offs_d, N, qk_scale,
                       diag_lo, tl.minimum(diag_hi, N), stride_kn, stride_vn, stride_keepn,
                       HEAD_DIM, BLOCK_D, BLOCK_N, True, DOT_PRECISION)
        dq = _dq_steps(dq, q, do, m2, log2_z, delta, k_ptrs, v_ptrs, keep_ptrs, offs_m, offs_d, N, qk_scale,
                       diag_hi, n_full, stride_kn, stride_vn, stride_keepn,
                       HEAD_DIM, BLOCK_D, BLOCK_N, False, DOT_PRECISION)
        dq = _dq_steps(dq, q, do, m2, log2_z, delta, k_ptrs, v_ptrs, keep_ptrs, offs_m, offs_d, N, qk_scale,
                       tl.maximum(diag_hi, n_full), N, stride_kn, stride_vn, stride_keepn,
                       HEAD_DIM, BLOCK_D, BLOCK_N, True, DOT_PRECISION)
        dq_ptrs = tile_ptrs(DQ_ptr, off_b, off_h, offs_m, offs_d, stride_dqb, stride_dqh, stride_dqn, stride_dqd)
        store_tile(dq_ptrs, dq * scale, offs_m, N, offs_d, HEAD_DIM)


@triton.jit
def _dkdv_steps(
    dk, dv, dkeep, k, v, keep, q_ptrs, do_ptrs, RowMax_ptr, RowSum_ptr, Delta_ptr, stats_base,
    offs_n, offs_d, N, qk_scale, eps_over_n, lo, hi, stride_qn, stride_don,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, EDGE: tl.constexpr,
    HAS_EPS: tl.constexpr, NEED_DK: tl.constexpr, NEED_DV: tl.constexpr, NEED_DKEEP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Accumulates over the query blocks in [lo, hi), in the transposed frame (a row per key).

    Rows past N load q = dout = 0, D = 0, m2 = 0 and Z = 1: they add exact zeros.
    """
    offs_m = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        q = load_tile(q_ptrs + start_m * stride_qn, rows, N, offs_d, HEAD_DIM, BLOCK_D, EDGE)
        do = load_tile(do_ptrs + start_m * stride_don, rows, N, offs_d, HEAD_DIM, BLOCK_D, EDGE)
        m2, log2_z = load_row_stats(RowMax_ptr, RowSum_ptr, stats_base + rows, rows, N, EDGE)
        if EDGE:
            delta = tl.load(Delta_ptr + stats_base + rows, mask=rows < N, other=0.0)
        else:
            delta = tl.load(Delta_ptr + stats_base + rows)

        sT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        e_over_zT = tl.exp2((sT * qk_scale - m2[None, :]) - log2_z[None, :])  # float32: unbounded
        if EDGE:
            wT = tl.where(offs_n[:, None] == rows[None, :], 1.0, keep[:, None])
        else:
            wT = keep[:, None]
        if NEED_DV:
            pT = e_over_zT * wT  # P_ij without its eps/N share
            if HAS_EPS:
                # P_ij in full, eps/(N Z_i) included: the eps term of dv rides on the same product
                pT += eps_over_n * tl.exp2(-log2_z)[None, :]
            dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        if NEED_DK or NEED_DKEEP:
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            # e_ij g_ij = (e_ij / Z_i)(Z_i g_ij); only e/Z lived across the dpT product (pT is dead)
            e_gT = e_over_zT * (dpT - delta[None, :])
            if NEED_DKEEP:
                if EDGE:
                    dkeep += tl.sum(tl.where(offs_n[:, None] == rows[None, :], 0.0, e_gT), 1)
                else:
                    dkeep += tl.sum(e_gT, 1)
            if NEED_DK:
                dk = tl.dot((e_gT * wT).to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv, dkeep


@triton.jit
def masked_attention_bwd_dkdv_kernel(
    Q_ptr, K_ptr, V_ptr, Keep_ptr, DO_ptr, RowMax_ptr, RowSum_ptr, Delta_ptr, DK_ptr, DV_ptr, DKeep_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_keepb, stride_keepn, stride_dkeepb, stride_dkeepn,
    H, N, scale, qk_scale, eps_over_n,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_EPS: tl.constexpr, NEED_DK: tl.constexpr, NEED_DV: tl.constexpr, NEED_DKEEP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    off_b = tl.program_id(1).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    # Keys past N compute garbage (inf or NaN too) that stays in their own rows, never stored.
    keep = load_keep(Keep_ptr + off_b * stride_keepb + offs_n * stride_keepn, offs_n, N, True)
    # Query blocks [diag_lo, diag_hi) hold this key block's diagonal; [m_full, N) is the tail.
    diag_lo = (start_n // BLOCK_M) * BLOCK_M
    diag_hi = tl.cdiv(start_n + BLOCK_N, BLOCK_M) * BLOCK_M
    m_full = (N // BLOCK_M) * BLOCK_M

    dkeep = tl.zeros([BLOCK_N], dtype=tl.float32)
    for h in range(0, H):
        off_bh = off_b * H + h  # int64, like every base offset
        off_h = off_bh - off_b * H
        k = load_tile(tile_ptrs(K_ptr, off_b, off_h, offs_n, offs_d, stride_kb, stride_kh, stride_kn, stride_kd),
                      offs_n, N, offs_d, HEAD_DIM, BLOCK_D, True)
        v = load_tile(tile_ptrs(V_ptr, off_b, off_h, offs_n, offs_d, stride_vb, stride_vh, stride_vn, stride_vd),
                      offs_n, N, offs_d, HEAD_DIM, BLOCK_D, True)
        q_ptrs = tile_ptrs(Q_ptr, off_b, off_h, offs_m, offs_d, stride_qb, stride_qh, stride_qn, stride_qd)
        do_ptrs = tile_ptrs(DO_ptr, off_b, off_h, offs_m, offs_d, stride_dob, stride_doh, stride_don, stride_dod)
        stats_base = off_bh * N
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dk, dv, dkeep = _dkdv_steps(dk, dv, dkeep, k, v, keep, q_ptrs, do_ptrs, RowMax_ptr, RowSum_ptr, Delta_ptr,
                                    stats_base, offs_n, offs_d, N, qk_scale, eps_over_n, 0, diag_lo,
                                    stride_qn, stride_don, HEAD_DIM, BLOCK_D, BLOCK_M, False,
                                    HAS_EPS, NEED_DK, NEED_DV, NEED_DKEEP, DOT_PRECISION)
        dk, dv, dkeep = _dkdv_steps(dk, dv, dkeep, k, v, keep, q_ptrs, do_ptrs, RowMax_ptr, RowSum_ptr, Delta_ptr,
                                    stats_base, offs_n, offs_d, N, qk_scale, eps_over_n, diag_lo,
                                    tl.minimum(diag_hi, N), stride_qn, stride_don, HEAD_DIM, BLOCK_D, BLOCK_M, True,
                                    HAS_EPS, NEED_DK, NEED_DV, NEED_DKEEP, DOT_PRECISION)
        dk, dv, dkeep = _dkdv_steps(dk, dv, dkeep, k, v, keep, q_ptrs, do_ptrs, RowMax_ptr, RowSum_ptr, Delta_ptr,
                                    stats_base, offs_n, offs_d, N, qk_scale, eps_over_n, diag_hi, m_full,
                                    stride_qn, stride_don, HEAD_DIM, BLOCK_D, BLOCK_M, False,
                                    HAS_EPS, NEED_DK, NEED_DV, NEED_DKEEP, DOT_PRECISION)
        dk, dv, dkeep = _dkdv_steps(dk, dv, dkeep, k, v, keep, q_ptrs, do_ptrs, RowMax_ptr, RowSum_ptr, Delta_ptr,
                                    stats_base, offs_n, offs_d, N, qk_scale, eps_over_n,
                                    tl.maximum(diag_hi, m_full), N, stride_qn, stride_don,
                                    HEAD_DIM, BLOCK_D, BLOCK_M, True, HAS_EPS, NEED_DK, NEED_DV, NEED_DKEEP, DOT_PRECISION)
        if NEED_DK:
            dk_ptrs = tile_ptrs(DK_ptr, off_b, off_h, offs_n, offs_d, stride_dkb, stride_dkh, stride_dkn, stride_dkd)
            store_tile(dk_ptrs, dk * scale, offs_n, N, offs_d, HEAD_DIM)
        if NEED_DV:
            dv_ptrs = tile_ptrs(DV_ptr, off_b, off_h, offs_n, offs_d, stride_dvb, stride_dvh, stride_dvn, stride_dvd)
            store_tile(dv_ptrs, dv, offs_n, N, offs_d, HEAD_DIM)
    if NEED_DKEEP:
        dkeep_ptrs = DKeep_ptr + off_b * stride_dkeepb + offs_n * stride_dkeepn
        tl.store(dkeep_ptrs, dkeep.to(DKeep_ptr.dtype.element_ty), mask=offs_n < N)
