"""Triton kernels of ``stpriv.masked_attention``: flash-style forward and a deterministic backward.

Math (docs/ops.md, "masked_attention"): ``S = scale * q k^T``, ``m_i = max_j S_ij`` over ALL keys,
``e_ij = exp(S_ij - m_i)``, ``w_ij = 1 if i == j else keep_j``, ``Z_i = sum_j w_ij e_ij + eps``,
``P_ij = (w_ij e_ij + eps/N) / Z_i``, ``out_i = sum_j P_ij v_j``.

Forward: one program per (query block, batch*head); an online softmax over key blocks keeps the
weighted sum ``z`` and the accumulator relative to the running max of ``S_ij + log w_ij`` (so the
largest weighted probability is 1, which fp16 needs), and a second running max over all scores,
the op's ``m_i``, which the absolute eps term needs. After the loop both are brought to ``m_i`` and
the eps terms added once: ``out = (acc + eps/N * sum_j v_j) / (z + eps)``. Never N x N.

Backward, three launches, no atomics anywhere (bitwise deterministic):
  1. ``_masked_attention_bwd_preprocess_kernel``: ``delta_i = dout_i . out_i`` and, for the eps
     term of dv, per-block partial sums of ``dout_i / Z_i``.
  2. ``_masked_attention_bwd_dkdv_kernel``: one program per (key block, batch*head) loops over query
     blocks and owns dk, dv and the per-head partial of dkeep for its keys.
  3. ``_masked_attention_bwd_dq_kernel``: one program per (query block, batch*head) loops over key
     blocks and owns dq (recomputing the scores, like the Triton fused-attention tutorial).
dkeep sums over heads: each dkdv program writes its head's partial ``[B, H, N]`` and
``partial.sum(dim=1)`` reduces them in a fixed order. We chose that over looping heads inside one
program: it keeps B*H*N/BLOCK_N programs in flight (B*N/BLOCK_N would leave an H100's 132 SMs
under-filled at B32 N392) for the price of a [B, H, N] float32 buffer and a tiny reduction.

Diagonal and tails. The diagonal (``w_ii = 1``) and the last, partial key block need per-element
masks; flash attention's cost is dominated by such per-score element-wise work, so each kernel
splits its loop into ranges and compiles the masks (``EDGE``/``DIAG``) only into the one or two
blocks that hold diagonal entries and into the tail block. The keep weight is applied to e before
any rounding to the input dtype: ``e_ij / Z_i`` and ``e_ij g_ij`` are unbounded for a dropped key
(it can outscore every kept one), ``w_ij e_ij / Z_i = P_ij`` is not.

Precision: float32 accumulation; probabilities and ``dS`` enter the second matmul in the input
dtype, as in flash attention. float32 inputs use 3xTF32 products (about fp32's accuracy, on tensor
cores) when ``torch.get_float32_matmul_precision() == "highest"`` (PyTorch's default) and one TF32
product otherwise, so ``torch.set_float32_matmul_precision("high")`` speeds them up the way it
does ``torch.matmul``.
float64 inputs, which only gradcheck-style checks use, run the PyTorch reference instead.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import reference
from .._checks import check_shape
from ..masked_attention import check_inputs as check_masked_attention_inputs

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Kernels may read globals only when they are constexpr.
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(LN2)
MAX_HEAD_DIM = 128
# Under Triton's interpreter every tl op is a numpy call: one small configuration, no autotuning.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Distinct block shapes (BLOCK_M != BLOCK_N) so the interpreter tests exercise the diagonal ranges.
INTERPRETER_BLOCKS = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16), "preprocess": 32}


@triton.jit
def _row_ptrs(X_ptr, off_b, off_h, rows, offs_d, stride_b, stride_h, stride_n, stride_d):
    """Pointers to ``X[off_b, off_h, rows, :]`` of a ``[B, H, N, d]`` tensor: a [rows, d] tile."""
    return X_ptr + off_b * stride_b + off_h * stride_h + rows[:, None] * stride_n + offs_d[None, :] * stride_d


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _fwd_inner(
    acc, z_i, m_i, mx_i, q, k_ptrs, v_ptrs, keep_ptrs, offs_m, N, qk_scale, lo, hi,
    stride_kn, stride_vn, stride_keepn,
    BLOCK_N: tl.constexpr, EDGE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Online-softmax steps over key blocks [lo, hi); EDGE compiles the diagonal and tail masks.

    All in log2 units. ``mx_i`` is the running max of the scores over every key (the op's m_i);
    ``m_i`` the running max of ``t_ij = s_ij + log2 w_ij``, the reference point of ``acc`` and
    ``z_i``. Scaling by the kept keys' max, not by mx_i, matters for fp16: when a dropped key
    outscores every kept one by ~10 nats, w e / exp(mx) falls into fp16's subnormals and the
    rounded probabilities lose the output; relative to max(t) the largest probability is 1.
    """
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if EDGE:
            col_valid = cols < N
            k = tl.load(k_ptrs + start_n * stride_kn, mask=col_valid[:, None], other=0.0)
            v = tl.load(v_ptrs + start_n * stride_vn, mask=col_valid[:, None], other=0.0)
            # padded keys load keep = 0, so t = -inf: they weigh nothing
            keep = tl.load(keep_ptrs + start_n * stride_keepn, mask=col_valid, other=0.0).to(tl.float32)
        else:
            k = tl.load(k_ptrs + start_n * stride_kn)
            v = tl.load(v_ptrs + start_n * stride_vn)
            keep = tl.load(keep_ptrs + start_n * stride_keepn).to(tl.float32)
        log2_keep = tl.log2(keep)  # -inf for a dropped key: exp2 gives an exact 0
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if EDGE:
            t = s * qk_scale + tl.where(offs_m[:, None] == cols[None, :], 0.0, log2_keep[None, :])
            # padded keys must not raise the max: the eps term is not rescaled, so mx_i is exact
            mx_i = tl.maximum(mx_i, tl.max(tl.where(col_valid[None, :], s, float("-inf")), 1) * qk_scale)
        else:
            t = s * qk_scale + log2_keep[None, :]
            # qk_scale >= 0 (the launcher folds a negative scale into q), so max commutes with it
            mx_i = tl.maximum(mx_i, tl.max(s, 1) * qk_scale)
        m_new = tl.maximum(m_i, tl.max(t, 1))
        p = tl.exp2(t - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        z_i = z_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, z_i, m_i, mx_i


@triton.jit
def _masked_attention_fwd_kernel(
    Q_ptr, K_ptr, V_ptr, Keep_ptr, VSum_ptr, Out_ptr, RowMax_ptr, RowSum_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_keepb, stride_keepn,
    H, N, qk_scale, eps, eps_over_n,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_EPS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < N

    q_ptrs = _row_ptrs(Q_ptr, off_b, off_h, offs_m, offs_d, stride_qb, stride_qh, stride_qn, stride_qd)
    q = tl.load(q_ptrs, mask=row_valid[:, None], other=0.0)
    k_ptrs = _row_ptrs(K_ptr, off_b, off_h, offs_n, offs_d, stride_kb, stride_kh, stride_kn, stride_kd)
    v_ptrs = _row_ptrs(V_ptr, off_b, off_h, offs_n, offs_d, stride_vb, stride_vh, stride_vn, stride_vd)
    keep_ptrs = Keep_ptr + off_b * stride_keepb + offs_n * stride_keepn

    # m_i starts finite: a step in which every key of a row is dropped (t = -inf) then leaves it
    # alone (alpha = 1, p = 0) instead of computing exp2(-inf - (-inf)).
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    mx_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    z_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Key blocks [diag_lo, diag_hi) hold this query block's diagonal; [n_full, N) is the tail.
    diag_lo = (start_m // BLOCK_N) * BLOCK_N
    diag_hi = ((start_m + BLOCK_M + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    n_full = (N // BLOCK_N) * BLOCK_N
    acc, z_i, m_i, mx_i = _fwd_inner(acc, z_i, m_i, mx_i, q, k_ptrs, v_ptrs, keep_ptrs, offs_m, N, qk_scale,
                                     0, diag_lo, stride_kn, stride_vn, stride_keepn,
                                     BLOCK_N, False, DOT_PRECISION)
    acc, z_i, m_i, mx_i = _fwd_inner(acc, z_i, m_i, mx_i, q, k_ptrs, v_ptrs, keep_ptrs, offs_m, N, qk_scale,
                                     diag_lo, tl.minimum(diag_hi, N), stride_kn, stride_vn, stride_keepn,
                                     BLOCK_N, True, DOT_PRECISION)
    acc, z_i, m_i, mx_i = _fwd_inner(acc, z_i, m_i, mx_i, q, k_ptrs, v_ptrs, keep_ptrs, offs_m, N, qk_scale,
                                     diag_hi, n_full, stride_kn, stride_vn, stride_keepn,
                                     BLOCK_N, False, DOT_PRECISION)
    acc, z_i, m_i, mx_i = _fwd_inner(acc, z_i, m_i, mx_i, q, k_ptrs, v_ptrs, keep_ptrs, offs_m, N, qk_scale,
                                     tl.maximum(diag_hi, n_full), N, stride_kn, stride_vn, stride_keepn,
                                     BLOCK_N, True, DOT_PRECISION)

    # Back to the op's reference point mx_i: e_ij = exp(S_ij - mx_i). r <= 1; if it underflows,
    # Z_i = eps and out_i = mean_j v_j, the exact limit.
    r = tl.exp2(m_i - mx_i)
    z_total = r * z_i + eps
    acc = acc * r[:, None]
    if HAS_EPS:
        # The eps/N term is absolute, not relative to any running max: added once, here.
        v_sum = tl.load(VSum_ptr + off_bh.to(tl.int64) * HEAD_DIM + offs_d)
        acc += eps_over_n * v_sum[None, :]
    out = acc / tl.where(row_valid, z_total, 1.0)[:, None]  # padded rows may have Z = 0 when eps = 0
    out_ptrs = _row_ptrs(Out_ptr, off_b, off_h, offs_m, offs_d, stride_ob, stride_oh, stride_on, stride_od)
    tl.store(out_ptrs, out.to(Out_ptr.dtype.element_ty), mask=row_valid[:, None])
    stats = off_bh.to(tl.int64) * N + offs_m
    tl.store(RowMax_ptr + stats, mx_i * _LN2, mask=row_valid)  # back from log2 units
    tl.store(RowSum_ptr + stats, z_total, mask=row_valid)


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _masked_attention_bwd_preprocess_kernel(
    Out_ptr, DO_ptr, RowSum_ptr, Delta_ptr, DOZSum_ptr,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    H, N,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, HAS_EPS: tl.constexpr,
):
    pid_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < N
    o = tl.load(_row_ptrs(Out_ptr, off_b, off_h, offs_m, offs_d, stride_ob, stride_oh, stride_on, stride_od),
                mask=row_valid[:, None], other=0.0).to(tl.float32)
    do = tl.load(_row_ptrs(DO_ptr, off_b, off_h, offs_m, offs_d, stride_dob, stride_doh, stride_don, stride_dod),
                 mask=row_valid[:, None], other=0.0).to(tl.float32)
    stats = off_bh.to(tl.int64) * N + offs_m
    tl.store(Delta_ptr + stats, tl.sum(o * do, 1), mask=row_valid)
    if HAS_EPS:
        # dv_j gets eps/N * sum_i dout_i / Z_i, the same for every key j: partial sums per block
        # here, summed in block order by the dkdv kernel (deterministic, no atomics).
        z_inv = 1.0 / tl.load(RowSum_ptr + stats, mask=row_valid, other=1.0)
        part = tl.sum(do * z_inv[:, None], 0)
        tl.store(DOZSum_ptr + (off_bh.to(tl.int64) * tl.num_programs(0) + pid_m) * HEAD_DIM + offs_d, part)


@triton.jit
def _bwd_dkdv_inner(
    dk, dv, dkeep, k, v, keep, qT_ptrs, do_ptrs, stats_ptr, RowMax_ptr, RowSum_ptr, Delta_ptr,
    offs_n, N, qk_scale, lo, hi, stride_qn, stride_don,
    BLOCK_M: tl.constexpr, DIAG: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Accumulates over query blocks [lo, hi) in the transposed (key-row) frame; DIAG compiles
    the diagonal mask.

    The keep weight multiplies e / Z before anything is rounded to the input dtype: e_ij / Z_i
    alone is unbounded for a dropped key (Z_i can be far below e_ij) and would overflow fp16,
    while w_ij e_ij / Z_i = P_ij - eps/(N Z_i) <= 1.
    """
    offs_m = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        row_valid = rows < N
        # Padded queries load dout = 0, delta = 0, m = 0, Z = 1: they add exact zeros.
        qT = tl.load(qT_ptrs + start_m * stride_qn, mask=row_valid[None, :], other=0.0)
        do = tl.load(do_ptrs + start_m * stride_don, mask=row_valid[:, None], other=0.0)
        # log2 of m_i + log Z_i: one exp2 then gives e_ij / Z_i directly
        lse2 = (tl.load(RowMax_ptr + stats_ptr + rows, mask=row_valid, other=0.0) * _LOG2E
                + tl.log2(tl.load(RowSum_ptr + stats_ptr + rows, mask=row_valid, other=1.0)))
        delta = tl.load(Delta_ptr + stats_ptr + rows, mask=row_valid, other=0.0)

        sT = tl.dot(k, qT, input_precision=DOT_PRECISION)
        e_over_zT = tl.exp2(sT * qk_scale - lse2[None, :])  # fp32 only: unbounded for dropped keys
        if DIAG:
            on_diag = offs_n[:, None] == rows[None, :]
            pT = e_over_zT * tl.where(on_diag, 1.0, keep[:, None])
        else:
            pT = e_over_zT * keep[:, None]  # P_ij without its eps/N share, added once by the caller
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        z_gT = dpT - delta[None, :]  # Z_i g_ij
        if DIAG:
            dkeep += tl.sum(tl.where(on_diag, 0.0, e_over_zT * z_gT), 1)
        else:
            dkeep += tl.sum(e_over_zT * z_gT, 1)
        dsT = pT * z_gT
        dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=DOT_PRECISION)
    return dk, dv, dkeep


@triton.jit
def _masked_attention_bwd_dkdv_kernel(
    Q_ptr, K_ptr, V_ptr, Keep_ptr, DO_ptr, RowMax_ptr, RowSum_ptr, Delta_ptr, DOZSum_ptr,
    DK_ptr, DV_ptr, DKeepPart_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_keepb, stride_keepn,
    H, N, qk_scale, scale, eps_over_n, num_dozsum_blocks,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_EPS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    key_valid = offs_n < N

    # Padded key rows compute garbage (inf or NaN too) that stays in their own rows, never stored.
    k = tl.load(_row_ptrs(K_ptr, off_b, off_h, offs_n, offs_d, stride_kb, stride_kh, stride_kn, stride_kd),
                mask=key_valid[:, None], other=0.0)
    v = tl.load(_row_ptrs(V_ptr, off_b, off_h, offs_n, offs_d, stride_vb, stride_vh, stride_vn, stride_vd),
                mask=key_valid[:, None], other=0.0)
    keep = tl.load(Keep_ptr + off_b * stride_keepb + offs_n * stride_keepn, mask=key_valid, other=0.0).to(tl.float32)
    qT_ptrs = Q_ptr + off_b * stride_qb + off_h * stride_qh + offs_m[None, :] * stride_qn + offs_d[:, None] * stride_qd
    do_ptrs = _row_ptrs(DO_ptr, off_b, off_h, offs_m, offs_d, stride_dob, stride_doh, stride_don, stride_dod)
    stats_ptr = off_bh.to(tl.int64) * N

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dkeep = tl.zeros([BLOCK_N], dtype=tl.float32)
    # Query blocks [diag_lo, diag_hi) hold this key block's diagonal.
    diag_lo = (start_n // BLOCK_M) * BLOCK_M
    diag_hi = ((start_n + BLOCK_N + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
    dk, dv, dkeep = _bwd_dkdv_inner(
        dk, dv, dkeep, k, v, keep, qT_ptrs, do_ptrs, stats_ptr, RowMax_ptr, RowSum_ptr, Delta_ptr,
        offs_n, N, qk_scale, 0, diag_lo, stride_qn, stride_don, BLOCK_M, False, DOT_PRECISION)
    dk, dv, dkeep = _bwd_dkdv_inner(
        dk, dv, dkeep, k, v, keep, qT_ptrs, do_ptrs, stats_ptr, RowMax_ptr, RowSum_ptr, Delta_ptr,
        offs_n, N, qk_scale, diag_lo, tl.minimum(diag_hi, N), stride_qn, stride_don, BLOCK_M, True, DOT_PRECISION)
    dk, dv, dkeep = _bwd_dkdv_inner(
        dk, dv, dkeep, k, v, keep, qT_ptrs, do_ptrs, stats_ptr, RowMax_ptr, RowSum_ptr, Delta_ptr,
        offs_n, N, qk_scale, diag_hi, N, stride_qn, stride_don, BLOCK_M, False, DOT_PRECISION)

    if HAS_EPS:
        dout_over_z = tl.zeros([HEAD_DIM], dtype=tl.float32)
        dozsum_ptr = DOZSum_ptr + off_bh.to(tl.int64) * num_dozsum_blocks * HEAD_DIM + offs_d
        for blk in range(0, num_dozsum_blocks):
            dout_over_z += tl.load(dozsum_ptr + blk * HEAD_DIM)
        dv += eps_over_n * dout_over_z[None, :]

    dk_ptrs = _row_ptrs(DK_ptr, off_b, off_h, offs_n, offs_d, stride_dkb, stride_dkh, stride_dkn, stride_dkd)
    dv_ptrs = _row_ptrs(DV_ptr, off_b, off_h, offs_n, offs_d, stride_dvb, stride_dvh, stride_dvn, stride_dvd)
    tl.store(dk_ptrs, (dk * scale).to(DK_ptr.dtype.element_ty), mask=key_valid[:, None])
    tl.store(dv_ptrs, dv.to(DV_ptr.dtype.element_ty), mask=key_valid[:, None])
    tl.store(DKeepPart_ptr + stats_ptr + offs_n, dkeep, mask=key_valid)


@triton.jit
def _bwd_dq_inner(
    dq, q, do, lse2, delta, k_ptrs, v_ptrs, keep_ptrs, offs_m, N, qk_scale, lo, hi,
    stride_kn, stride_vn, stride_keepn,
    BLOCK_N: tl.constexpr, EDGE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dq steps over key blocks [lo, hi); EDGE compiles the diagonal and tail masks."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if EDGE:
            col_valid = cols < N
            k = tl.load(k_ptrs + start_n * stride_kn, mask=col_valid[:, None], other=0.0)
            v = tl.load(v_ptrs + start_n * stride_vn, mask=col_valid[:, None], other=0.0)
            keep = tl.load(keep_ptrs + start_n * stride_keepn, mask=col_valid, other=0.0).to(tl.float32)
        else:
            k = tl.load(k_ptrs + start_n * stride_kn)
            v = tl.load(v_ptrs + start_n * stride_vn)
            keep = tl.load(keep_ptrs + start_n * stride_keepn).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if EDGE:
            # a padded key's score 0 could be far above m_i: exp would overflow and 0 * inf = NaN
            e_over_z = tl.exp2(tl.where(col_valid[None, :], s * qk_scale, float("-inf")) - lse2[:, None])
            p = e_over_z * tl.where(offs_m[:, None] == cols[None, :], 1.0, keep[None, :])
        else:
            p = tl.exp2(s * qk_scale - lse2[:, None]) * keep[None, :]
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        # weight first: e / Z alone is unbounded for a dropped key, P is not
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _masked_attention_bwd_dq_kernel(
    Q_ptr, K_ptr, V_ptr, Keep_ptr, DO_ptr, RowMax_ptr, RowSum_ptr, Delta_ptr, DQ_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    stride_keepb, stride_keepn,
    H, N, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < N

    q = tl.load(_row_ptrs(Q_ptr, off_b, off_h, offs_m, offs_d, stride_qb, stride_qh, stride_qn, stride_qd),
                mask=row_valid[:, None], other=0.0)
    do = tl.load(_row_ptrs(DO_ptr, off_b, off_h, offs_m, offs_d, stride_dob, stride_doh, stride_don, stride_dod),
                 mask=row_valid[:, None], other=0.0)
    stats = off_bh.to(tl.int64) * N + offs_m
    lse2 = (tl.load(RowMax_ptr + stats, mask=row_valid, other=0.0) * _LOG2E
            + tl.log2(tl.load(RowSum_ptr + stats, mask=row_valid, other=1.0)))
    delta = tl.load(Delta_ptr + stats, mask=row_valid, other=0.0)
    k_ptrs = _row_ptrs(K_ptr, off_b, off_h, offs_n, offs_d, stride_kb, stride_kh, stride_kn, stride_kd)
    v_ptrs = _row_ptrs(V_ptr, off_b, off_h, offs_n, offs_d, stride_vb, stride_vh, stride_vn, stride_vd)
    keep_ptrs = Keep_ptr + off_b * stride_keepb + offs_n * stride_keepn

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    diag_lo = (start_m // BLOCK_N) * BLOCK_N
    diag_hi = ((start_m + BLOCK_M + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    n_full = (N // BLOCK_N) * BLOCK_N
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, keep_ptrs, offs_m, N, qk_scale,
                       0, diag_lo, stride_kn, stride_vn, stride_keepn, BLOCK_N, False, DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, keep_ptrs, offs_m, N, qk_scale,
                       diag_lo, tl.minimum(diag_hi, N), stride_kn, stride_vn, stride_keepn, BLOCK_N, True,
                       DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, keep_ptrs, offs_m, N, qk_scale,
                       diag_hi, n_full, stride_kn, stride_vn, stride_keepn, BLOCK_N, False, DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, keep_ptrs, offs_m, N, qk_scale,
                       tl.maximum(diag_hi, n_full), N, stride_kn, stride_vn, stride_keepn, BLOCK_N, True,
                       DOT_PRECISION)
    dq_ptrs = _row_ptrs(DQ_ptr, off_b, off_h, offs_m, offs_d, stride_dqb, stride_dqh, stride_dqn, stride_dqd)
    tl.store(dq_ptrs, (dq * scale).to(DQ_ptr.dtype.element_ty), mask=row_valid[:, None])


# ---------------------------------------------------------------------------------------------
# autotuning (H100/H200) and launchers
# ---------------------------------------------------------------------------------------------
def _configs(shapes: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)
        for bm, bn, warps, stages in shapes
    ]


# Autotuning candidates (BLOCK_M, BLOCK_N, num_warps, num_stages) for H100/H200, per class of
# inputs (16-bit with head dim <= 64 or 128; float32, whose 3xTF32 products need more registers,
# with head dim <= 64 or 128);
# the first of each list is the default when autotuning is off. Chosen by compiling for sm_90 with
# Triton 3.9 and reading registers and spills (cuobjdump --dump-resource-usage): tiles that spill
# much are left out. Forward: big query tiles amortize the K/V stream. dkdv: large key tile, small
# query step (the Triton fused-attention tutorial's 32 x 128); dq: the mirror image.
CONFIGS = {
    "fwd": {
        "d<=64": _configs([(128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 4), (64, 64, 4, 3), (64, 32, 4, 4)]),
        "d=128": _configs([(128, 64, 8, 3), (64, 64, 8, 3), (64, 32, 4, 4)]),
        "fp32": _configs([(128, 32, 8, 2), (64, 32, 4, 3), (128, 64, 8, 3)]),
        "fp32,d=128": _configs([(64, 32, 4, 2), (64, 64, 8, 2)]),
    },
    "dkdv": {
        "d<=64": _configs([(32, 128, 8, 2), (32, 128, 8, 3), (32, 64, 4, 3), (64, 64, 8, 2)]),
        "d=128": _configs([(32, 64, 8, 2), (16, 128, 8, 2), (32, 128, 8, 2)]),
        "fp32": _configs([(16, 64, 4, 2), (32, 128, 8, 3), (32, 128, 8, 2)]),
        "fp32,d=128": _configs([(16, 64, 4, 2), (32, 64, 8, 2)]),
    },
    "dq": {
        "d<=64": _configs([(128, 32, 8, 2), (128, 32, 4, 3), (128, 64, 8, 2), (64, 32, 4, 3)]),
        "d=128": _configs([(128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 4, 3)]),
        "fp32": _configs([(128, 32, 8, 2), (64, 32, 4, 2)]),
        "fp32,d=128": _configs([(64, 32, 4, 2), (32, 32, 4, 2)]),
    },
}
# Autotuning compiles every candidate once per (N, head dim, dtype): tens of seconds per new shape.
# STPRIV_TRITON_AUTOTUNE=0 takes each list's first config instead (quick checks, CI on a GPU).
_AUTOTUNE = os.environ.get("STPRIV_TRITON_AUTOTUNE", "1") != "0"


def candidate_configs(stage: str, head_dim: int, n: int, dtype: torch.dtype) -> list[triton.Config]:
    """The autotuning candidates of a stage ("fwd", "dkdv", "dq") for these inputs."""
    if dtype == torch.float32:
        # float32 tiles are twice the bytes: at head dim 128 the float32 dq default (128 x 32, two
        # stages) asked for 320 KiB of shared memory on an H200, whose limit is 227 KiB.
        group = "fp32" if head_dim <= 64 else "fp32,d=128"
    else:
        group = "d<=64" if head_dim <= 64 else "d=128"
    configs = CONFIGS[stage][group]
    n_cap = max(16, triton.next_power_of_2(n))  # no tile far beyond the sequence
    fitting = [c for c in configs if c.kwargs["BLOCK_M"] <= n_cap and c.kwargs["BLOCK_N"] <= n_cap]
    return fitting or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


def _autotuned(kernel, stage: str):
    def prune(configs, named_args, **kwargs):
        allowed = candidate_configs(stage, kwargs["HEAD_DIM"], named_args["N"], named_args["Q_ptr"].dtype)
        return [c for c in configs if any(c is a for a in allowed)]

    return triton.autotune(
        configs=[c for group in CONFIGS[stage].values() for c in group],
        key=["N", "HEAD_DIM", "DOT_PRECISION"],
        prune_configs_by={"early_config_prune": prune},
    )(kernel)


_fwd_tuned = _autotuned(_masked_attention_fwd_kernel, "fwd")
_dkdv_tuned = _autotuned(_masked_attention_bwd_dkdv_kernel, "dkdv")
_dq_tuned = _autotuned(_masked_attention_bwd_dq_kernel, "dq")
_PREPROCESS_BLOCK = INTERPRETER_BLOCKS["preprocess"] if _INTERPRET else 64
_MAX_GRID_Y = 65535  # CUDA's limit on grid axis 1, which carries batch * heads


def _launch(kernel, tuned, stage: str, length: int, tile: str, batch_heads: int, blocks, *args, **kwargs) -> None:
    """Runs ``tuned`` (autotuned, GPU) or ``kernel`` with fixed tiles (interpreter, tests, no autotune).

    Grid axis 0 covers ``length`` (= N) rows in tiles of ``tile`` ("BLOCK_M" or "BLOCK_N"), axis 1 is
    B*H. ``blocks[stage]`` may be ``(BLOCK_M, BLOCK_N)`` or a ``triton.Config``.
    """
    fixed = (blocks or {}).get(stage)
    if fixed is None and _INTERPRET:
        fixed = INTERPRETER_BLOCKS[stage]
    if fixed is None and not _AUTOTUNE:
        fixed = candidate_configs(stage, kwargs["HEAD_DIM"], length, args[0].dtype)[0]  # args[0] is q
    if fixed is None:
        tuned[lambda meta: (triton.cdiv(length, meta[tile]), batch_heads)](*args, **kwargs)
        return
    if isinstance(fixed, triton.Config):
        options = dict(fixed.kwargs, num_warps=fixed.num_warps, num_stages=fixed.num_stages)
    else:
        options = {"BLOCK_M": fixed[0], "BLOCK_N": fixed[1]}
    kernel[(triton.cdiv(length, options[tile]), batch_heads)](*args, **options, **kwargs)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, eps: float) -> None:
    # The op's own contract first (shared with the public wrapper), then the kernels' limits.
    check_masked_attention_inputs(q, k, v, keep, eps)
    B, H, _, d = q.shape
    if d > MAX_HEAD_DIM:
        raise ValueError(f"q's head dim (last axis) must be <= {MAX_HEAD_DIM} for the Triton kernels, got {d}")
    if B * H > _MAX_GRID_Y:
        raise ValueError(f"batch * heads of q must be <= {_MAX_GRID_Y} for the Triton kernels, got {B} * {H}")


def _dot_precision(dtype: torch.dtype) -> str:
    # fp16/bf16 ignore it. fp32 follows torch.set_float32_matmul_precision: "highest" gets three
    # TF32 products per product (fp32-level error on tensor cores; "ieee" would run on FMA units
    # and spill kilobytes per thread at these tiles), "high"/"medium" one.
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "tf32x3"
    return "tf32"


def _pad_head_dim(t: Tensor, head_dim: int) -> Tensor:
    # Zero columns change no score and no output column: any head dim runs on power-of-two tiles.
    return t if t.shape[-1] == head_dim else torch.nn.functional.pad(t, (0, head_dim - t.shape[-1]))


def _prepare(q: Tensor, k: Tensor, v: Tensor, scale: float | None) -> tuple[Tensor, Tensor, Tensor, float, float, int]:
    """Pads the head dim to a power of two >= 16 and makes the scale non-negative.

    The kernels take ``max_j(scale * s_ij)`` as ``scale * max_j s_ij``, true for scale >= 0 only;
    a negative scale is folded into q (``scale * q.k = (-scale) * (-q).k``), and dq flips back.

    Returns:
        q, k, v (padded), the non-negative scale, the sign folded into q, the padded head dim.
    """
    d = q.shape[-1]
    scale = d**-0.5 if scale is None else float(scale)
    sign = 1.0
    if scale < 0:
        q, scale, sign = -q, -scale, -1.0
    head_dim = max(16, triton.next_power_of_2(d))
    return _pad_head_dim(q, head_dim), _pad_head_dim(k, head_dim), _pad_head_dim(v, head_dim), scale, sign, head_dim


def masked_attention_forward(
    q: Tensor, k: Tensor, v: Tensor, keep: Tensor, scale: float | None = None, eps: float = 1e-6,
    *, blocks: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward of ``stpriv.masked_attention`` (the op's CUDA kernel; CPU tensors under the interpreter).

    Args:
        q, k, v: ``Tensor[B, H, N, d]``, float16, bfloat16 or float32 (float64 runs the reference);
            any strides, d <= 128.
        keep: ``Tensor[B, N]``, any floating dtype.
        scale: score scale, ``d ** -0.5`` when None.
        eps: smoothing term (>= 0).
        blocks: fixed ``{"fwd": (BLOCK_M, BLOCK_N) or triton.Config}`` instead of autotuning (tests).

    Returns:
        out ``Tensor[B, H, N, d]`` in q's dtype, row_max ``m_i`` and row_sum ``Z_i`` as float32
        ``Tensor[B, H, N]`` (float64 for float64 inputs).
    """
    _check_inputs(q, k, v, keep, eps)
    if q.dtype == torch.float64:
        return _forward_float64(q, k, v, keep, scale, eps)
    B, H, N, d = q.shape
    q, k, v, scale, _, head_dim = _prepare(q, k, v, scale)
    out = q.new_empty((B, H, N, head_dim))
    row_max = q.new_empty((B, H, N), dtype=torch.float32)
    row_sum = torch.empty_like(row_max)
    has_eps = eps > 0
    # sum_j v_j for the eps/N term: one read of v here beats a cross-warp reduction per key tile.
    v_sum = v.sum(dim=2, dtype=torch.float32) if has_eps else row_sum
    _launch(
        _masked_attention_fwd_kernel, _fwd_tuned, "fwd", N, "BLOCK_M", B * H, blocks,
        q, k, v, keep, v_sum, out, row_max, row_sum,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *keep.stride(),
        H, N, scale * LOG2E, eps, eps / N,
        HEAD_DIM=head_dim, HAS_EPS=has_eps, DOT_PRECISION=_dot_precision(q.dtype),
    )
    if head_dim != d:
        out = out[..., :d].contiguous()
    return out, row_max, row_sum


def masked_attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, keep: Tensor, out: Tensor, row_max: Tensor,
    row_sum: Tensor, scale: float | None, eps: float, *, blocks: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward of ``stpriv.masked_attention``: gradients for q, k, v and keep, deterministic.

    Args:
        grad_out, out: ``Tensor[B, H, N, d]`` like q.
        q, k, v, keep, scale, eps: the forward's inputs.
        row_max, row_sum: ``Tensor[B, H, N]``, the forward's statistics ``m_i`` and ``Z_i``.
        blocks: fixed ``{"dkdv": ..., "dq": ...}`` tiles, each ``(BLOCK_M, BLOCK_N)`` or a
            ``triton.Config``, instead of autotuning (tests).

    Returns:
        dq, dk, dv ``Tensor[B, H, N, d]`` in q's dtype and dkeep ``Tensor[B, N]`` in keep's dtype,
        ``dkeep_j = sum_h sum_{i != j} e_ij g_ij``.
    """
    _check_inputs(q, k, v, keep, eps)
    B, H, N, d = q.shape
    check_shape("grad_out", grad_out, (B, H, N, d), "[B, H, N, d] like q")
    check_shape("out", out, (B, H, N, d), "[B, H, N, d] like q")
    check_shape("row_max", row_max, (B, H, N), "[B, H, N] from the forward")
    check_shape("row_sum", row_sum, (B, H, N), "[B, H, N] from the forward")
    if q.dtype == torch.float64:
        return _backward_float64(grad_out, q, k, v, keep, scale, eps)
    q, k, v, scale, sign, head_dim = _prepare(q, k, v, scale)
    grad_out = _pad_head_dim(grad_out.to(q.dtype), head_dim)
    out = _pad_head_dim(out.to(q.dtype), head_dim)
    row_max = row_max.to(torch.float32).contiguous()
    row_sum = row_sum.to(torch.float32).contiguous()
    has_eps = eps > 0
    precision = _dot_precision(q.dtype)

    delta = torch.empty_like(row_max)
    n_pre = triton.cdiv(N, _PREPROCESS_BLOCK)
    dout_over_z = row_max.new_empty((B * H, n_pre, head_dim)) if has_eps else delta
    _masked_attention_bwd_preprocess_kernel[(n_pre, B * H)](
        out, grad_out, row_sum, delta, dout_over_z, *out.stride(), *grad_out.stride(), H, N,
        HEAD_DIM=head_dim, BLOCK_M=_PREPROCESS_BLOCK, HAS_EPS=has_eps,
    )
    dq, dk, dv = (q.new_empty((B, H, N, head_dim)) for _ in range(3))
    dkeep_per_head = torch.empty_like(row_max)
    _launch(
        _masked_attention_bwd_dkdv_kernel, _dkdv_tuned, "dkdv", N, "BLOCK_N", B * H, blocks,
        q, k, v, keep, grad_out, row_max, row_sum, delta, dout_over_z, dk, dv, dkeep_per_head,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dk.stride(), *dv.stride(), *keep.stride(),
        H, N, scale * LOG2E, scale, eps / N, n_pre,
        HEAD_DIM=head_dim, HAS_EPS=has_eps, DOT_PRECISION=precision,
    )
    _launch(
        _masked_attention_bwd_dq_kernel, _dq_tuned, "dq", N, "BLOCK_M", B * H, blocks,
        q, k, v, keep, grad_out, row_max, row_sum, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dq.stride(), *keep.stride(),
        H, N, scale * LOG2E, scale,
        HEAD_DIM=head_dim, DOT_PRECISION=precision,
    )
    if sign < 0:
        dq = dq.neg_()
    if head_dim != d:
        dq, dk, dv = (t[..., :d].contiguous() for t in (dq, dk, dv))
    # Sum over heads in a fixed order: deterministic, unlike atomics.
    dkeep = dkeep_per_head.sum(dim=1).to(keep.dtype)
    return dq, dk, dv, dkeep


# float64 has no place on tensor cores; it serves gradcheck-style checks, so it runs the reference.
def _forward_float64(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, scale: float | None, eps: float):
    n, d = q.shape[-2:]
    scale = d**-0.5 if scale is None else scale
    scores = scale * (q @ k.transpose(-2, -1))
    row_max = scores.amax(dim=-1)
    eye = torch.eye(n, dtype=q.dtype, device=q.device)
    w = keep.to(q.dtype)[:, None, None, :] * (1 - eye) + eye
    row_sum = (w * torch.exp(scores - row_max[..., None])).sum(dim=-1) + eps
    return reference.masked_attention(q, k, v, keep, scale, eps), row_max, row_sum


def _backward_float64(grad_out, q, k, v, keep, scale, eps):
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v, keep)]
        out = reference.masked_attention(*leaves, scale, eps)
        return tuple(torch.autograd.grad(out, leaves, grad_out))
