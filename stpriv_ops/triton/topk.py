"""Triton kernels of ``stpriv.topk_keep``, ``gather_tokens`` and ``scatter_tokens`` (contract: docs/ops.md).

Top-k without sorting: one program per (b, l) row ranks every tubelet by counting the tubelets that
beat it (higher value, or equal value and lower index; NaN ranks like +inf). That total order
makes ranks a permutation, so exactly ``k`` have rank < k; a prefix sum over the selected flags then
gives each winner its slot, and the indices come out ascending. O(N^2) comparisons per row, cheap
for ViT frame sizes (N <= a few hundred), and fully parallel.

gather copies D-rows through an index map. scatter is written as a 0/1 match matrix times y per
(step, tubelet block, channel block), ``out[n] = sum_j [idx_j == n] y_j``: every output row (zeros
included) is written once, by one program, repeated indices add up, and no atomics are needed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import reference


@triton.jit
def _rank_in_row(Values_ptr, offs_i, value_i, N, BLOCK_J: tl.constexpr):
    """How many of the row's N values beat each ``value_i`` (index ``offs_i``); NaN counts as +inf.

    ``Values_ptr`` points at the row's values, already with NaN replaced by +inf."""
    rank = tl.zeros_like(offs_i)
    offs_j0 = tl.arange(0, BLOCK_J)
    for j0 in range(0, N, BLOCK_J):
        offs_j = j0 + offs_j0
        value_j = tl.load(Values_ptr + offs_j, mask=offs_j < N, other=float("-inf"))
        beats = (value_j[None, :] > value_i[:, None]) | (
            (value_j[None, :] == value_i[:, None]) & (offs_j[None, :] < offs_i[:, None])
        )
        beats = beats & (offs_j[None, :] < N)
        rank += tl.sum(beats.to(tl.int32), axis=1)
    return rank


@triton.jit
def _nan_to_inf(v):
    return tl.where(v != v, float("inf"), v)


@triton.jit
def _topk_keep_kernel(
    Score_ptr, Scratch_ptr, Idx_ptr, N, k,
    BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr,
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_N)
    valid = offs < N
    value = _nan_to_inf(tl.load(Score_ptr + row * N + offs, mask=valid, other=0.0).to(Scratch_ptr.dtype.element_ty))
    # Other lanes' values are reread from memory in blocks of BLOCK_J: registers cannot be indexed.
    tl.store(Scratch_ptr + row * N + offs, value, mask=valid)
    tl.debug_barrier()
    rank = _rank_in_row(Scratch_ptr + row * N, offs, value, N, BLOCK_J)
    selected = (rank < k) & valid
    slot = tl.cumsum(selected.to(tl.int32), axis=0) - 1
    tl.store(Idx_ptr + row * k + slot, offs.to(tl.int64), mask=selected)


@triton.jit
def _gather_tokens_kernel(
    X_ptr, Idx_ptr, Out_ptr, L, N, k, D, rows,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # output rows b*L*k + l*k + j
    r_valid = offs_r < rows
    step = offs_r // k  # b * L + l
    n = tl.load(Idx_ptr + offs_r, mask=r_valid, other=0)
    src = step * N + n  # b*L*N + l*N + n
    offs_d0 = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + offs_d0
        mask = r_valid[:, None] & (offs_d < D)[None, :]
        x = tl.load(X_ptr + src[:, None].to(tl.int64) * D + offs_d[None, :], mask=mask)
        tl.store(Out_ptr + offs_r[:, None].to(tl.int64) * D + offs_d[None, :], x, mask=mask)


@triton.jit
def _scatter_tokens_kernel(
    Y_ptr, Idx_ptr, Out_ptr, N, k, D,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    step = tl.program_id(0)  # b * L + l
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_valid = offs_d < D
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    offs_k0 = tl.arange(0, BLOCK_K)
    for j0 in range(0, k, BLOCK_K):
        offs_j = j0 + offs_k0
        j_valid = offs_j < k
        idx = tl.load(Idx_ptr + step * k + offs_j, mask=j_valid, other=-1)
        match = (offs_n[:, None] == idx[None, :]).to(Y_ptr.dtype.element_ty)
        y = tl.load(
            Y_ptr + (step * k + offs_j)[:, None].to(tl.int64) * D + offs_d[None, :],
            mask=j_valid[:, None] & d_valid[None, :], other=0.0,
        )
        # 0/1 weights: every product is exact, so the copy is exact in any dtype.
        acc += tl.dot(match, y, input_precision=DOT_PRECISION)
    mask = (offs_n < N)[:, None] & d_valid[None, :]
    tl.store(
        Out_ptr + (step * N + offs_n)[:, None].to(tl.int64) * D + offs_d[None, :],
        acc.to(Out_ptr.dtype.element_ty), mask=mask,
    )


def topk_keep_forward(score: Tensor, k: int) -> Tensor:
    """Launcher: score ``[B, L, N]`` -> int64 indices ``[B, L, k]``, ascending."""
    score = score.contiguous()
    B, L, N = score.shape
    idx = torch.empty((B, L, k), dtype=torch.int64, device=score.device)
    if k == 0:
        return idx
    # Ranks compare float32 values (float64 for float64 scores, whose ties must stay exact).
    scratch_dtype = torch.float64 if score.dtype == torch.float64 else torch.float32
    scratch = torch.empty((B, L, N), dtype=scratch_dtype, device=score.device)
    BLOCK_N = triton.next_power_of_2(N)
    BLOCK_J = min(BLOCK_N, max(16, 8192 // BLOCK_N))  # a BLOCK_N x BLOCK_J compare tile of <= 8K
    _topk_keep_kernel[(B * L,)](score, scratch, idx, N, k, BLOCK_N=BLOCK_N, BLOCK_J=BLOCK_J)
    return idx


def gather_tokens_forward(x: Tensor, idx: Tensor) -> Tensor:
    """Launcher: x ``[B, L*N, D]``, idx ``[B, L, k]`` -> ``[B, L*k, D]``. Indices are not range-checked
    on the GPU (that would synchronize); the public wrapper's contract is idx in [0, N)."""
    x, idx = x.contiguous(), idx.contiguous()
    B, L, k = idx.shape
    N, D = x.shape[1] // L, x.shape[2]
    out = x.new_empty((B, L * k, D))
    rows = B * L * k
    if rows == 0 or D == 0:
        return out
    BLOCK_D = min(256, triton.next_power_of_2(D))
    BLOCK_R = max(1, 4096 // BLOCK_D)
    _gather_tokens_kernel[(triton.cdiv(rows, BLOCK_R),)](
        x, idx, out, L, N, k, D, rows, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D
    )
    return out


def scatter_tokens_forward(y: Tensor, idx: Tensor, num_tokens_per_step: int) -> Tensor:
    """Launcher: y ``[B, L*k, D]``, idx ``[B, L, k]`` -> ``[B, L*N, D]`` with dropped rows 0."""
    y, idx = y.contiguous(), idx.contiguous()
    B, L, k = idx.shape
    N, D = num_tokens_per_step, y.shape[2]
    if k == 0 or D == 0:
        return y.new_zeros((B, L * N, D))
    if y.dtype == torch.float64 and y.is_cuda:
        # tl.dot has no float64 path on every GPU; float64 is for checks, not speed.
        return reference.scatter_tokens(y, idx, N)
    out = y.new_empty((B, L * N, D))
    BLOCK_N = min(64, max(16, triton.next_power_of_2(N)))
    BLOCK_K = min(64, max(16, triton.next_power_of_2(k)))
    BLOCK_D = min(64, max(16, triton.next_power_of_2(D)))
    precision = "ieee" if y.dtype == torch.float32 else "tf32"
    grid = (B * L, triton.cdiv(N, BLOCK_N), triton.cdiv(D, BLOCK_D))
    _scatter_tokens_kernel[grid](
        y, idx, out, N, k, D, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, BLOCK_D=BLOCK_D, DOT_PRECISION=precision
    )
    return out
