"""Triton kernels of ``stpriv.masked_mean`` (docs/ops.md, "masked_mean"; paper Eq. 2-3).

Forward: one program per (video b, channel block) walks the video's L steps and N tubelets once,
writing each step's spatial mean and, from the same per-step sums, the spatio-temporal mean: both
means in one pass over x, no atomics. Backward: one program per (step, tubelet block) loops over
channel blocks, writing ``grad_x = keep_n * g`` and reducing ``grad_keep_n = x_n . g - offset`` with
``g = grad_spatial / count_step + grad_st / count_video`` and
``offset = grad_spatial . spatial / count_step + grad_st . st / count_video``.
Counts of 0 use 1/count := 0: empty groups give 0 and zero gradients. float32 accumulation.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def token_offsets(step, n, N):
    """Flat offsets ``step * N + n`` of tokens ``n`` of step ``step`` (= b * L + l), in int64.

    Program ids are int32, and ``(step * N + n) * C`` passes 2^31 - 1 once x has 2^31 elements:
    every flat index is built on an int64 step.
    """
    return step.to(tl.int64) * N + n


@triton.jit
def _inverse_or_zero(count):
    return tl.where(count == 0.0, 0.0, 1.0 / tl.where(count == 0.0, 1.0, count))


@triton.jit
def _masked_mean_fwd_kernel(
    X_ptr, Keep_ptr, Spatial_ptr, St_ptr,
    L, N, C,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_valid = offs_c < C
    offs_n = tl.arange(0, BLOCK_N)
    video_sum = tl.zeros([BLOCK_C], dtype=tl.float32)
    video_count = 0.0
    for l in range(0, L):
        step = b * L + l  # int64, as b is
        step_sum = tl.zeros([BLOCK_C], dtype=tl.float32)
        step_count = 0.0
        for n0 in range(0, N, BLOCK_N):
            n = n0 + offs_n
            n_valid = n < N
            tokens = token_offsets(step, n, N)
            w = tl.load(Keep_ptr + tokens, mask=n_valid, other=0.0).to(tl.float32)
            x = tl.load(
                X_ptr + tokens[:, None] * C + offs_c[None, :],
                mask=n_valid[:, None] & c_valid[None, :], other=0.0,
            ).to(tl.float32)
            step_sum += tl.sum(w[:, None] * x, axis=0)
            step_count += tl.sum(w, axis=0)
        spatial = step_sum * _inverse_or_zero(step_count)
        tl.store(Spatial_ptr + step * C + offs_c, spatial.to(Spatial_ptr.dtype.element_ty), mask=c_valid)
        video_sum += step_sum
        video_count += step_count
    st = video_sum * _inverse_or_zero(video_count)
    tl.store(St_ptr + b * C + offs_c, st.to(St_ptr.dtype.element_ty), mask=c_valid)


@triton.jit
def _masked_mean_bwd_kernel(
    GradS_ptr, GradSt_ptr, X_ptr, Keep_ptr, Spatial_ptr, St_ptr, GradX_ptr, GradKeep_ptr,
    L, N, C,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_LN: tl.constexpr,
):
    step = tl.program_id(0).to(tl.int64)  # b * L + l
    b = step // L
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < N
    # Counts: the step's N weights and the video's L*N (a few hundred loads, no extra launch).
    offs_ln = tl.arange(0, BLOCK_LN)
    step_count = 0.0
    for n0 in range(0, N, BLOCK_LN):
        m = n0 + offs_ln
        step_count += tl.sum(tl.load(Keep_ptr + step * N + m, mask=m < N, other=0.0).to(tl.float32), axis=0)
    video_count = 0.0
    for i0 in range(0, L * N, BLOCK_LN):
        m = i0 + offs_ln
        video_count += tl.sum(tl.load(Keep_ptr + b * L * N + m, mask=m < L * N, other=0.0).to(tl.float32), axis=0)
    inv_step = _inverse_or_zero(step_count)
    inv_video = _inverse_or_zero(video_count)

    w = tl.load(Keep_ptr + step * N + offs_n, mask=n_valid, other=0.0).to(tl.float32)
    dot = tl.zeros([BLOCK_N], dtype=tl.float32)
    offset = 0.0
    offs_c0 = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + offs_c0
        c_valid = offs_c < C
        gs = tl.load(GradS_ptr + step * C + offs_c, mask=c_valid, other=0.0).to(tl.float32) * inv_step
        gst = tl.load(GradSt_ptr + b * C + offs_c, mask=c_valid, other=0.0).to(tl.float32) * inv_video
        s = tl.load(Spatial_ptr + step * C + offs_c, mask=c_valid, other=0.0).to(tl.float32)
        st = tl.load(St_ptr + b * C + offs_c, mask=c_valid, other=0.0).to(tl.float32)
        g = gs + gst
        offset += tl.sum(gs * s + gst * st, axis=0)
        ptrs = token_offsets(step, offs_n, N)[:, None] * C + offs_c[None, :]
        mask = n_valid[:, None] & c_valid[None, :]
        x = tl.load(X_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
        dot += tl.sum(x * g[None, :], axis=1)
        tl.store(GradX_ptr + ptrs, (w[:, None] * g[None, :]).to(GradX_ptr.dtype.element_ty), mask=mask)
    tl.store(GradKeep_ptr + step * N + offs_n, (dot - offset).to(GradKeep_ptr.dtype.element_ty), mask=n_valid)


def _blocks(N: int, C: int) -> tuple[int, int]:
    return min(64, triton.next_power_of_2(N)), min(64, triton.next_power_of_2(C))


def masked_mean_forward(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Launcher: x ``[B, L, N, C]``, keep ``[B, L, N]`` (dtype of x) -> ``([B, L, C], [B, C])``."""
    x, keep = x.contiguous(), keep.to(x.dtype).contiguous()
    B, L, N, C = x.shape
    spatial = x.new_empty((B, L, C))
    st = x.new_empty((B, C))
    BLOCK_N, BLOCK_C = _blocks(N, C)
    grid = (B, triton.cdiv(C, BLOCK_C))
    _masked_mean_fwd_kernel[grid](x, keep, spatial, st, L, N, C, BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C)
    return spatial, st


def masked_mean_backward(
    grad_spatial: Tensor, grad_st: Tensor, x: Tensor, keep: Tensor, spatial: Tensor, st: Tensor
) -> tuple[Tensor, Tensor]:
    """Launcher of the backward: returns ``(grad_x [B, L, N, C], grad_keep [B, L, N])``."""
    x, keep = x.contiguous(), keep.to(x.dtype).contiguous()
    grad_spatial, grad_st = grad_spatial.contiguous(), grad_st.contiguous()
    spatial, st = spatial.contiguous(), st.contiguous()
    B, L, N, C = x.shape
    grad_x = torch.empty_like(x)
    grad_keep = torch.empty_like(keep)
    BLOCK_N, BLOCK_C = _blocks(N, C)
    BLOCK_LN = min(1024, triton.next_power_of_2(L * N))
    grid = (B * L, triton.cdiv(N, BLOCK_N))
    _masked_mean_bwd_kernel[grid](
        grad_spatial, grad_st, x, keep, spatial, st, grad_x, grad_keep, L, N, C,
        BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C, BLOCK_LN=BLOCK_LN,
    )
    return grad_x, grad_keep
