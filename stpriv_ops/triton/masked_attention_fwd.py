"""Forward kernel of ``stpriv.masked_attention`` (flash-attention-2 structure).

Math (docs in ``stpriv_ops/masked_attention.py``): ``S = scale * q k^T``, ``m_i = max_j S_ij`` over
ALL keys, ``e_ij = exp(S_ij - m_i)``, ``w_ij = 1 if i == j else keep_j``,
``Z_i = sum_j w_ij e_ij + eps``, ``out_i = (sum_j w_ij e_ij v_j + eps/N sum_j v_j) / Z_i``.

One program per (query block, batch*head) streams the key blocks once. Everything runs in log2
units (``qk_scale = scale * log2(e)``, so each probability is one ``exp2``). The online softmax
keeps ``acc`` and ``z`` relative to the running max of ``t_ij = s_ij qk_scale + log2 w_ij`` (the
weighted scores: a dropped key has ``t = -inf`` and weighs exactly 0), so the largest weighted
probability is 1 and fp16 never sees the subnormals it would if a dropped key, out-scoring every
kept one, set the reference. Beside it runs the plain max of the raw products ``q.k`` over all
keys: the op's ``m_i``, which the absolute eps terms need. After the loop both are brought to
``m_i`` and the eps terms added once. Never N x N.

The loop is split into key ranges so that the per-score masks (the diagonal ``w_ii = 1`` and the
keys past N) are compiled only into the one or two blocks holding diagonal entries and into the
tail block (``EDGE``); every other block is two matrix products, one fused multiply-add, two row
maxima, one ``exp2`` and one row sum per score.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .attention_tiles import LOG2E_C, load_keep, load_tile, query_block, store_tile, tile_ptrs


@triton.jit
def _fwd_steps(
    acc, z_i, m_i, smax_i, q, k_ptrs, v_ptrs, keep_ptrs, offs_m, offs_d, N, qk_scale, lo, hi,
    stride_kn, stride_vn, stride_keepn,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    EDGE: tl.constexpr, SCALE_NEGATIVE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Online-softmax steps over the key blocks in [lo, hi).

    ``smax_i`` is the running max (min when the scale is negative) of the raw products, so that
    ``scale * smax_i`` is ``max_j S_ij`` without a multiply per score.
    """
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = load_tile(k_ptrs + start_n * stride_kn, cols, N, offs_d, HEAD_DIM, BLOCK_D, EDGE)
        v = load_tile(v_ptrs + start_n * stride_vn, cols, N, offs_d, HEAD_DIM, BLOCK_D, EDGE)
        log2_keep = tl.log2(load_keep(keep_ptrs + start_n * stride_keepn, cols, N, EDGE))  # -inf: dropped
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if EDGE:
            t = s * qk_scale + tl.where(offs_m[:, None] == cols[None, :], 0.0, log2_keep[None, :])
            # keys past N must not move the op's max: the eps term is never rescaled
            if SCALE_NEGATIVE:
                smax_i = tl.minimum(smax_i, tl.min(tl.where((cols < N)[None, :], s, float("inf")), 1))
            else:
                smax_i = tl.maximum(smax_i, tl.max(tl.where((cols < N)[None, :], s, float("-inf")), 1))
        else:
            t = s * qk_scale + log2_keep[None, :]
            if SCALE_NEGATIVE:
                smax_i = tl.minimum(smax_i, tl.min(s, 1))
            else:
                smax_i = tl.maximum(smax_i, tl.max(s, 1))
        m_new = tl.maximum(m_i, tl.max(t, 1))
        p = tl.exp2(t - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        z_i = z_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, z_i, m_i, smax_i


@triton.jit
def masked_attention_fwd_kernel(
    Q_ptr, K_ptr, V_ptr, Keep_ptr, VSum_ptr, Out_ptr, RowMax_ptr, RowSum_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_keepb, stride_keepn,
    H, N, scale, qk_scale, eps, eps_over_n,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_EPS: tl.constexpr, SCALE_NEGATIVE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    start_m, off_bh, off_b, off_h, offs_m, offs_n, offs_d = query_block(H, BLOCK_M, BLOCK_N, BLOCK_D)

    q_ptrs = tile_ptrs(Q_ptr, off_b, off_h, offs_m, offs_d, stride_qb, stride_qh, stride_qn, stride_qd)
    q = load_tile(q_ptrs, offs_m, N, offs_d, HEAD_DIM, BLOCK_D, True)
    k_ptrs = tile_ptrs(K_ptr, off_b, off_h, offs_n, offs_d, stride_kb, stride_kh, stride_kn, stride_kd)
    v_ptrs = tile_ptrs(V_ptr, off_b, off_h, offs_n, offs_d, stride_vb, stride_vh, stride_vn, stride_vd)
    keep_ptrs = Keep_ptr + off_b * stride_keepb + offs_n * stride_keepn

    # m_i starts finite: a block in which every key of a row is dropped (t = -inf) then leaves the
    # row alone (alpha = 1, p = 0) instead of computing exp2(-inf - (-inf)).
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    if SCALE_NEGATIVE:
        smax_i = tl.full([BLOCK_M], float("inf"), dtype=tl.float32)
    else:
        smax_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    z_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Key blocks [diag_lo, diag_hi) hold this query block's diagonal; [n_full, N) is the tail.
    diag_lo = (start_m // BLOCK_N) * BLOCK_N
    diag_hi = tl.cdiv(start_m + BLOCK_M, BLOCK_N) * BLOCK_N
    n_full = (N // BLOCK_N) * BLOCK_N
    acc, z_i, m_i, smax_i = _fwd_steps(
        acc, z_i, m_i, smax_i, q, k_ptrs, v_ptrs, keep_ptrs, offs_m, offs_d, N, qk_scale, 0, diag_lo,
        stride_kn, stride_vn, stride_keepn, HEAD_DIM, BLOCK_D, BLOCK_N, False, SCALE_NEGATIVE, DOT_PRECISION)
    acc, z_i, m_i, smax_i = _fwd_steps(
        acc, z_i, m_i, smax_i, q, k_ptrs, v_ptrs, keep_ptrs, offs_m, offs_d, N, qk_scale,
        diag_lo, tl.minimum(diag_hi, N),
        stride_kn, stride_vn, stride_keepn, HEAD_DIM, BLOCK_D, BLOCK_N, True, SCALE_NEGATIVE, DOT_PRECISION)
    acc, z_i, m_i, smax_i = _fwd_steps(
        acc, z_i, m_i, smax_i, q, k_ptrs, v_ptrs, keep_ptrs, offs_m, offs_d, N, qk_scale, diag_hi, n_full,
        stride_kn, stride_vn, stride_keepn, HEAD_DIM, BLOCK_D, BLOCK_N, False, SCALE_NEGATIVE, DOT_PRECISION)
    acc, z_i, m_i, smax_i = _fwd_steps(
        acc, z_i, m_i, smax_i, q, k_ptrs, v_ptrs, keep_ptrs, offs_m, offs_d, N, qk_scale,
        tl.maximum(diag_hi, n_full), N,
        stride_kn, stride_vn, stride_keepn, HEAD_DIM, BLOCK_D, BLOCK_N, True, SCALE_NEGATIVE, DOT_PRECISION)

    # The op's m_i, in natural units (one rounding), and the same float32 value in log2 units that
    # the backward will recompute from it: both sides then share one reference point exactly.
    row_max = smax_i * scale
    m2 = row_max * LOG2E_C
    # r <= 1; if it underflows, Z_i = eps and out_i = mean_j v_j, the exact limit.
    r = tl.exp2(m_i - m2)
    z_total = r * z_i + eps
    acc = acc * r[:, None]
    if HAS_EPS:
        # The eps/N term is absolute, not relative to any running max: added once, here.
        v_sum = tl.load(VSum_ptr + off_bh * HEAD_DIM + offs_d, mask=offs_d < HEAD_DIM, other=0.0)
        acc += eps_over_n * v_sum[None, :]
    row_valid = offs_m < N
    out = acc / tl.where(row_valid, z_total, 1.0)[:, None]  # rows past N may have Z = 0 when eps = 0
    out_ptrs = tile_ptrs(Out_ptr, off_b, off_h, offs_m, offs_d, stride_ob, stride_oh, stride_on, stride_od)
    store_tile(out_ptrs, out, offs_m, N, offs_d, HEAD_DIM)
    stats = off_bh * N + offs_m
    tl.store(RowMax_ptr + stats, row_max, mask=row_valid)
    tl.store(RowSum_ptr + stats, z_total, mask=row_valid)
