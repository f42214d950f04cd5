"""Triton kernels of ``stpriv.gumbel_keep`` and ``stpriv.gumbel_topk`` (docs/ops.md, "gumbel_keep" and "gumbel_topk"; Eq. 6).

The noise is either read from a given tensor or generated in the kernel: one uniform per token
from Philox-4x32-10 (``tl.randint4x``; token i takes output i % 4 of counter i // 4), mapped to
the open interval (0, 1) the way csrc/cpu/gumbel.cpp does, so CPU and GPU draw identical uniforms
for one seed. gumbel_keep is
elementwise (one launch forward, one backward; the backward needs only the saved perturbed logit
``z``). gumbel_topk runs one program per (b, l) row: softmax for the straight-through gradient and
the top-k by ranks (stpriv_ops/triton/topk.py), its perturbed values staged in the ``soft`` buffer.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .topk import _nan_to_inf, _rank_in_row


@triton.jit
def _philox_uniform(seed, offsets):
    """Uniforms in (0, 1): 23 random bits centred in their bucket, exact in float32.

    Token i takes output i % 4 of Philox counter i // 4, like csrc/cpu/gumbel.cpp, whose CPU loop
    thus needs one Philox call per four tokens."""
    r0, r1, r2, r3 = tl.randint4x(seed, offsets // 4)
    lane = offsets % 4
    bits = tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))
    bits = bits.to(tl.uint32, bitcast=True) >> 9
    return bits.to(tl.float32) * 1.1920928955078125e-07 + 5.960464477539063e-08


@triton.jit(do_not_specialize=["seed"])
def _gumbel_keep_fwd_kernel(
    LogProbs_ptr, Prev_ptr, Noise_ptr, Keep_ptr, Logit_ptr, seed, count,
    HAS_NOISE: tl.constexpr, BLOCK: tl.constexpr,
):
    compute = Logit_ptr.dtype.element_ty
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < count
    lp0 = tl.load(LogProbs_ptr + 2 * offs, mask=valid, other=0.0).to(compute)
    lp1 = tl.load(LogProbs_ptr + 2 * offs + 1, mask=valid, other=0.0).to(compute)
    prev = tl.load(Prev_ptr + offs, mask=valid, other=0.0).to(compute)
    if HAS_NOISE:
        noise = tl.load(Noise_ptr + offs, mask=valid, other=0.0).to(compute)
    else:
        u = _philox_uniform(seed, offs)
        noise = tl.log(u / (1.0 - u)).to(compute)  # Logistic(0, 1) = g0 - g1
    z = (lp0 - lp1) + noise
    hard = tl.where(z > 0.0, 1.0, 0.0).to(compute)
    tl.store(Logit_ptr + offs, z, mask=valid)
    tl.store(Keep_ptr + offs, (hard * prev).to(Keep_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _gumbel_keep_bwd_kernel(
    Grad_ptr, Logit_ptr, Prev_ptr, GradLogProbs_ptr, GradPrev_ptr, inv_tau, count,
    BLOCK: tl.constexpr,
):
    compute = Logit_ptr.dtype.element_ty
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < count
    z = tl.load(Logit_ptr + offs, mask=valid, other=0.0)
    g = tl.load(Grad_ptr + offs, mask=valid, other=0.0).to(compute)
    prev = tl.load(Prev_ptr + offs, mask=valid, other=0.0).to(compute)
    soft = 1.0 / (1.0 + tl.exp(-z * inv_tau))
    dz = g * prev * soft * (1.0 - soft) * inv_tau
    out_ty = GradLogProbs_ptr.dtype.element_ty
    tl.store(GradLogProbs_ptr + 2 * offs, dz.to(out_ty), mask=valid)
    tl.store(GradLogProbs_ptr + 2 * offs + 1, (-dz).to(out_ty), mask=valid)
    tl.store(GradPrev_ptr + offs, tl.where(z > 0.0, g, 0.0).to(out_ty), mask=valid)


@triton.jit(do_not_specialize=["seed"])
def _gumbel_topk_fwd_kernel(
    Score_ptr, Noise_ptr, Keep_ptr, Soft_ptr, seed, N, k, tau,
    HAS_NOISE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr,
):
    compute = Soft_ptr.dtype.element_ty
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_N)
    valid = offs < N
    score = tl.load(Score_ptr + row * N + offs, mask=valid, other=0.0).to(compute)
    if HAS_NOISE:
        noise = tl.load(Noise_ptr + row * N + offs, mask=valid, other=0.0).to(compute)
    else:
        u = _philox_uniform(seed, row * N + offs)
        noise = (-tl.log(-tl.log(u))).to(compute)  # Gumbel(0, 1)
    perturbed = score + noise
    ranked = _nan_to_inf(perturbed)
    # Stage the ranked values where soft goes: other lanes reread them block by block.
    tl.store(Soft_ptr + row * N + offs, ranked, mask=valid)
    tl.debug_barrier()
    rank = _rank_in_row(Soft_ptr + row * N, offs, ranked, N, BLOCK_J)
    tl.debug_barrier()
    scaled = tl.where(valid, perturbed / tau, float("-inf"))
    e = tl.exp(scaled - tl.max(scaled, axis=0))
    e = tl.where(valid, e, 0.0)
    tl.store(Soft_ptr + row * N + offs, e / tl.sum(e, axis=0), mask=valid)
    keep = tl.where(rank < k, 1.0, 0.0)
    tl.store(Keep_ptr + row * N + offs, keep.to(Keep_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _gumbel_topk_bwd_kernel(Grad_ptr, Soft_ptr, GradScore_ptr, N, inv_tau, BLOCK_N: tl.constexpr):
    compute = Soft_ptr.dtype.element_ty
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_N)
    valid = offs < N
    g = tl.load(Grad_ptr + row * N + offs, mask=valid, other=0.0).to(compute)
    soft = tl.load(Soft_ptr + row * N + offs, mask=valid, other=0.0)
    weighted = tl.sum(g * soft, axis=0)  # the softmax Jacobian is diag(s) - s s^T
    out = soft * (g - weighted) * inv_tau
    tl.store(GradScore_ptr + row * N + offs, out.to(GradScore_ptr.dtype.element_ty), mask=valid)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _seed_value(noise: Tensor | None, seed: Tensor | None) -> int:
    if noise is not None:
        return 0
    if seed is None:
        raise ValueError("gumbel kernels: pass either noise or seed")
    if seed.numel() != 1 or seed.is_floating_point():
        raise ValueError(f"seed must be one integer, got {seed.dtype} of shape {tuple(seed.shape)}")
    return int(seed.item())  # a CPU seed (the default) costs no device synchronization


_BLOCK = 1024


def gumbel_keep_forward(
    log_probs: Tensor, prev: Tensor, noise: Tensor | None, seed: Tensor | None, tau: float
) -> tuple[Tensor, Tensor]:
    """Launcher: log_probs ``[B, T, 2]``, prev ``[B, T]`` -> ``(keep [B, T], logit [B, T])``."""
    log_probs, prev = log_probs.contiguous(), prev.contiguous()
    compute = _compute_dtype(log_probs.dtype)
    seed_value = _seed_value(noise, seed)
    noise_arg = noise.to(compute).contiguous() if noise is not None else prev  # unread without noise
    keep = torch.empty_like(prev)
    logit = torch.empty(prev.shape, dtype=compute, device=prev.device)
    count = prev.numel()
    if count >= 2**31:
        raise ValueError(f"gumbel_keep: at most 2^31 - 1 tokens per call, got {count}")
    _gumbel_keep_fwd_kernel[(triton.cdiv(count, _BLOCK),)](
        log_probs, prev, noise_arg, keep, logit, seed_value, count, HAS_NOISE=noise is not None, BLOCK=_BLOCK
    )
    return keep, logit


def gumbel_keep_backward(grad_keep: Tensor, logit: Tensor, prev: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Launcher of the backward: ``(grad_log_probs [B, T, 2], grad_prev [B, T])``."""
    grad_keep, prev = grad_keep.contiguous(), prev.contiguous()
    logit = logit.to(_compute_dtype(grad_keep.dtype)).contiguous()
    B, T = prev.shape
    grad_lp = grad_keep.new_empty((B, T, 2))
    grad_prev = grad_keep.new_empty((B, T))
    count = prev.numel()
    _gumbel_keep_bwd_kernel[(triton.cdiv(count, _BLOCK),)](
        grad_keep, logit, prev, grad_lp, grad_prev, 1.0 / tau, count, BLOCK=_BLOCK
    )
    return grad_lp, grad_prev


def gumbel_topk_forward(
    score: Tensor, k: int, noise: Tensor | None, seed: Tensor | None, tau: float
) -> tuple[Tensor, Tensor]:
    """Launcher: score ``[B, L, N]`` -> ``(keep [B, L, N] with k ones per step, soft [B, L, N])``."""
    score = score.contiguous()
    B, L, N = score.shape
    compute = _compute_dtype(score.dtype)
    seed_value = _seed_value(noise, seed)
    noise_arg = noise.to(compute).contiguous() if noise is not None else score
    keep = torch.empty_like(score)
    soft = torch.empty(score.shape, dtype=compute, device=score.device)
    if score.numel() >= 2**31:
        raise ValueError(f"gumbel_topk: at most 2^31 - 1 scores per call, got {score.numel()}")
    BLOCK_N = triton.next_power_of_2(N)
    BLOCK_J = min(BLOCK_N, max(16, 8192 // BLOCK_N))
    _gumbel_topk_fwd_kernel[(B * L,)](
        score, noise_arg, keep, soft, seed_value, N, k, tau,
        HAS_NOISE=noise is not None, BLOCK_N=BLOCK_N, BLOCK_J=BLOCK_J,
    )
    return keep, soft


def gumbel_topk_backward(grad_keep: Tensor, soft: Tensor, tau: float) -> Tensor:
    """Launcher of the backward: ``grad_score [B, L, N] = soft * (g - sum(g * soft)) / tau``."""
    grad_keep = grad_keep.contiguous()
    soft = soft.to(_compute_dtype(grad_keep.dtype)).contiguous()
    B, L, N = grad_keep.shape
    grad_score = torch.empty_like(grad_keep)
    _gumbel_topk_bwd_kernel[(B * L,)](grad_keep, soft, grad_score, N, 1.0 / tau, BLOCK_N=triton.next_power_of_2(N))
    return grad_score
