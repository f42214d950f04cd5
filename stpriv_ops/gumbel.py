"""Gumbel keep decisions (STPrivacy Eq. 6) and budgeted Gumbel top-k: wrappers, fakes, autograd.

``gumbel_keep`` and ``gumbel_topk`` are ``torch.ops.stpriv`` ops (schemas in csrc/ops.cpp; C++ in
csrc/cpu/gumbel.cpp; Triton in stpriv_ops/triton/gumbel.py). Noise is either passed in
explicitly (exact tests) or generated inside the kernel by counter-based Philox (the 10-round
Philox-4x32 of ``triton.language.randint4x``) keyed by a seed drawn from the generator: one uniform
per token, no noise tensor in memory, the same seed gives the same decisions every call, and the
CPU and CUDA kernels draw identical uniforms for one seed.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from ._checks import check_nonempty, check_same_device, check_score_and_k, check_shape, check_tensor
from ._extension import has_ops

# False while the compiled extension predates these ops (a stale build): the reference runs instead.
_HAS_OP = has_ops() and hasattr(torch.ops.stpriv, "gumbel_keep")


def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"tau must be a float, got {type(tau).__name__}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return float(tau)


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def draw_seed(generator: torch.Generator | None = None) -> Tensor:
    """One int64 seed (a 0-dim tensor) for the in-kernel Philox RNG, drawn from ``generator``
    (the default CPU generator when None, so ``torch.manual_seed`` makes runs reproducible)."""
    device = generator.device if generator is not None else torch.device("cpu")
    # Always >= 2^32: Triton compiles one kernel per integer width of an argument, and this keeps
    # the seed a 64-bit one.
    return torch.randint(2**32, 2**62, (), generator=generator, device=device, dtype=torch.int64)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    # Only for the reference fallback (no compiled ops); uniforms kept inside (0, 1).
    device = generator.device if generator is not None else like.device
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32).to(like.device)
    return u.clamp_(min=2.0**-24, max=1.0 - 2.0**-24)


def _noise_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def gumbel_keep(
    log_probs: Tensor,
    prev: Tensor,
    tau: float = 1.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Hard Gumbel-softmax keep decision times the previous decision (STPrivacy Eq. 6).

    Forward: ``keep = (lp0 - lp1 + noise > 0) * prev`` with Logistic(0, 1) ``noise`` (the difference
    of the two classes' Gumbel draws). Backward, straight-through: the gradient of
    ``sigmoid((lp0 - lp1 + noise) / tau) * prev`` for ``log_probs`` and the hard decision for
    ``prev``, identical to ``F.gumbel_softmax(log_probs, tau, hard=True)[..., 0] * prev`` given the
    same Gumbel draws.

    Args:
        log_probs: ``Tensor[B, T, 2]`` keep/drop log-probabilities (index 0 = keep).
        prev: ``Tensor[B, T]`` the previous block's decision (1 for every token at the first block).
        tau: Gumbel-softmax temperature, > 0.
        generator: source of the per-call seed when ``noise`` is None (default generator if None).
        noise: optional ``Tensor[B, T]`` Logistic(0, 1) draws to use instead of the RNG.

    Returns:
        ``Tensor[B, T]`` 0/1 decisions times prev, in the promoted dtype of log_probs and prev.
    """
    check_tensor("log_probs", log_probs, ndim=3)
    check_tensor("prev", prev, ndim=2)
    B, T, two = log_probs.shape
    if two != 2:
        raise ValueError(f"log_probs must be [B, T, 2] (keep, drop), got shape {tuple(log_probs.shape)}")
    check_shape("prev", prev, (B, T), "[B, T] with B and T of log_probs")
    check_same_device(log_probs=log_probs, prev=prev)
    check_nonempty(log_probs=log_probs)
    tau = _check_tau(tau)
    _check_generator(generator)
    dtype = torch.promote_types(log_probs.dtype, prev.dtype)
    log_probs, prev = log_probs.to(dtype), prev.to(dtype)
    if noise is not None:
        check_tensor("noise", noise, ndim=2)
        check_shape("noise", noise, (B, T), "[B, T] Logistic(0, 1) draws")
        check_same_device(log_probs=log_probs, noise=noise)
        noise = noise.to(_noise_dtype(dtype))
    if not _HAS_OP:
        if noise is None:
            noise = reference.logistic_noise(_uniform((B, T), generator, log_probs))
        return reference.gumbel_keep(log_probs, prev, noise, tau)
    seed = None if noise is not None else draw_seed(generator)
    keep, _ = torch.ops.stpriv.gumbel_keep(log_probs, prev, noise, seed, tau)
    return keep


def gumbel_topk(
    score: Tensor,
    k: int,
    tau: float = 1.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Exactly ``k`` tubelets per time step, sampled without replacement (Gumbel-perturbed top-k).

    Forward: the 0/1 mask of the ``k`` largest ``score + g`` per step, ``g`` Gumbel(0, 1), ties to
    the lower index. Backward, straight-through: the gradient of ``softmax((score + g) / tau)``
    over the step. Lets a model train with a fixed token count per frame.

    Args:
        score: ``Tensor[B, L, N]`` keep logits (e.g. log keep probabilities).
        k: tubelets kept per step, ``0 <= k <= N``.
        tau: softmax temperature, > 0.
        generator: source of the per-call seed when ``noise`` is None.
        noise: optional ``Tensor[B, L, N]`` Gumbel(0, 1) draws to use instead of the RNG.

    Returns:
        ``Tensor[B, L, N]`` 0/1 keep mask (exactly k ones per step) in the dtype of score.
    """
    check_score_and_k(score, k)
    tau = _check_tau(tau)
    _check_generator(generator)
    if noise is not None:
        check_tensor("noise", noise, ndim=3)
        check_shape("noise", noise, tuple(score.shape), "[B, L, N] Gumbel(0, 1) draws like score")
        check_same_device(score=score, noise=noise)
        noise = noise.to(_noise_dtype(score.dtype))
    if not _HAS_OP:
        if noise is None:
            noise = reference.gumbel_noise(_uniform(tuple(score.shape), generator, score))
        return reference.gumbel_topk(score, k, noise, tau)
    seed = None if noise is not None else draw_seed(generator)
    keep, _ = torch.ops.stpriv.gumbel_topk(score, k, noise, seed, tau)
    return keep


def _register() -> None:
    def _check_rng_args(noise, seed):
        torch._check(noise is not None or seed is not None, lambda: "pass noise or seed")

    @torch.library.register_fake("stpriv::gumbel_keep")
    def _fake_keep(log_probs, prev, noise, seed, tau):
        torch._check(log_probs.dim() == 3 and log_probs.shape[2] == 2, lambda: "log_probs must be [B, T, 2]")
        torch._check(prev.shape == log_probs.shape[:2], lambda: "prev must be [B, T]")
        _check_rng_args(noise, seed)
        logit = log_probs.new_empty(prev.shape, dtype=_noise_dtype(log_probs.dtype))
        return prev.new_empty(prev.shape), logit

    @torch.library.register_fake("stpriv::_gumbel_keep_backward")
    def _fake_keep_backward(grad_keep, logit, prev, tau):
        B, T = prev.shape
        return grad_keep.new_empty((B, T, 2)), grad_keep.new_empty((B, T))

    def keep_setup_context(ctx, inputs, output):
        _, prev, _, _, tau = inputs
        _, logit = output
        ctx.save_for_backward(logit, prev)
        ctx.tau = tau
        # logit is saved for the backward, not differentiated: no zero gradient is made for it.
        ctx.mark_non_differentiable(logit)
        ctx.set_materialize_grads(False)

    def keep_backward(ctx, grad_keep, _grad_logit):
        if grad_keep is None:
            return None, None, None, None, None
        logit, prev = ctx.saved_tensors
        grad_lp, grad_prev = torch.ops.stpriv._gumbel_keep_backward(grad_keep.contiguous(), logit, prev, ctx.tau)
        need_lp, need_prev = ctx.needs_input_grad[:2]
        return grad_lp if need_lp else None, grad_prev if need_prev else None, None, None, None

    torch.library.register_autograd("stpriv::gumbel_keep", keep_backward, setup_context=keep_setup_context)

    @torch.library.register_fake("stpriv::gumbel_topk")
    def _fake_topk(score, k, noise, seed, tau):
        torch._check(score.dim() == 3, lambda: "score must be [B, L, N]")
        _check_rng_args(noise, seed)
        return score.new_empty(score.shape), score.new_empty(score.shape, dtype=_noise_dtype(score.dtype))

    @torch.library.register_fake("stpriv::_gumbel_topk_backward")
    def _fake_topk_backward(grad_keep, soft, tau):
        return grad_keep.new_empty(soft.shape)

    def topk_setup_context(ctx, inputs, output):
        score, _, _, _, tau = inputs
        _, soft = output
        ctx.save_for_backward(soft)
        ctx.tau = tau
        # soft is saved for the backward, not differentiated: no zero gradient is made for it.
        ctx.mark_non_differentiable(soft)
        ctx.set_materialize_grads(False)

    def topk_backward(ctx, grad_keep, _grad_soft):
        if grad_keep is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        (soft,) = ctx.saved_tensors
        grad_score = torch.ops.stpriv._gumbel_topk_backward(grad_keep.contiguous(), soft, ctx.tau)
        return grad_score, None, None, None, None

    torch.library.register_autograd("stpriv::gumbel_topk", topk_backward, setup_context=topk_setup_context)

    def _no_double_backward(ctx, *grads):
        raise RuntimeError(
            "stpriv Gumbel ops do not support double backward (create_graph=True through their "
            "gradient); use stpriv_ops.reference.gumbel_keep / gumbel_topk for higher-order derivatives"
        )

    for name in ("_gumbel_keep_backward", "_gumbel_topk_backward"):
        torch.library.register_autograd(
            f"stpriv::{name}", _no_double_backward, setup_context=lambda ctx, inputs, output: None
        )

    # Triton is imported on the first CUDA call only (about a second; CPU users never need it).
    def keep_cuda(log_probs, prev, noise, seed, tau):
        from .triton.gumbel import gumbel_keep_forward

        return gumbel_keep_forward(log_probs, prev, noise, seed, tau)

    def keep_backward_cuda(grad_keep, logit, prev, tau):
        from .triton.gumbel import gumbel_keep_backward

        return gumbel_keep_backward(grad_keep, logit, prev, tau)

    def topk_cuda(score, k, noise, seed, tau):
        from .triton.gumbel import gumbel_topk_forward

        return gumbel_topk_forward(score, k, noise, seed, tau)

    def topk_backward_cuda(grad_keep, soft, tau):
        from .triton.gumbel import gumbel_topk_backward

        return gumbel_topk_backward(grad_keep, soft, tau)

    torch.library.register_kernel("stpriv::gumbel_keep", "cuda", keep_cuda)
    torch.library.register_kernel("stpriv::_gumbel_keep_backward", "cuda", keep_backward_cuda)
    torch.library.register_kernel("stpriv::gumbel_topk", "cuda", topk_cuda)
    torch.library.register_kernel("stpriv::_gumbel_topk_backward", "cuda", topk_backward_cuda)


if _HAS_OP:
    _register()
