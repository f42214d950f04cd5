"""Per-step top-k token selection and compaction (inference, STPrivacy §3.2): wrappers and autograd.

``topk_keep`` picks the ``k`` best tubelets of every time step; ``gather_tokens`` compacts the
token sequence to them and ``scatter_tokens`` puts tokens back on the full grid (dropped = 0).
gather and scatter are each other's adjoint, so each one's backward is the other op.
Ops defined in csrc/ops.cpp; C++ in csrc/cpu/topk.cpp; Triton in stpriv_ops/triton/topk.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from ._checks import check_same_device, check_score_and_k, check_tensor
from ._extension import has_ops

# False while the compiled extension predates these ops (a stale build): the reference runs instead.
_HAS_OP = has_ops() and hasattr(torch.ops.stpriv, "topk_keep")


def _check_index(idx: Tensor, batch: int) -> tuple[int, int, int]:
    check_tensor("idx", idx, ndim=3, floating=False)
    if idx.dtype != torch.int64:
        raise TypeError(f"idx must be int64 (as returned by topk_keep), got {idx.dtype}")
    if idx.shape[0] != batch:
        raise ValueError(f"idx must be [B, L, k] with B={batch} of the tokens, got shape {tuple(idx.shape)}")
    B, L, k = idx.shape
    if L == 0:
        raise ValueError(f"idx must have at least one time step, got shape {tuple(idx.shape)}")
    return B, L, k


def topk_keep(score: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores in every time step, sorted ascending.

    Sorted indices keep the compacted tokens in time-major order; ties go to the lower index and
    NaN ranks like +inf, so the result is deterministic.

    Args:
        score: ``Tensor[B, L, N]`` keep scores (e.g. keep probabilities), floating point.
        k: tubelets kept per step, ``0 <= k <= N`` (``floor(N * ratio)`` at deployment).

    Returns:
        ``Tensor[B, L, k]`` int64 indices in ``[0, N)``.
    """
    check_score_and_k(score, k)
    if not _HAS_OP:
        return reference.topk_keep(score, k)
    return torch.ops.stpriv.topk_keep(score, k)


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """Compacts time-major tokens to the selected ones: ``out[b, l*k + j] = x[b, l*N + idx[b, l, j]]``.

    Args:
        x: ``Tensor[B, L*N, D]`` tokens, token ``l*N + n`` is tubelet ``n`` of step ``l``.
        idx: ``Tensor[B, L, k]`` int64 indices in ``[0, N)`` (from :func:`topk_keep`).

    Returns:
        ``Tensor[B, L*k, D]`` in the dtype of x; differentiable in x.
    """
    check_tensor("x", x, ndim=3)
    B, L, _ = _check_index(idx, x.shape[0])
    check_same_device(x=x, idx=idx)
    if x.shape[1] % L != 0:
        raise ValueError(f"x must be [B, L*N, D] with L={L} steps of idx, got {x.shape[1]} tokens")
    if not _HAS_OP:
        return reference.gather_tokens(x, idx)
    return torch.ops.stpriv.gather_tokens(x, idx)


def scatter_tokens(y: Tensor, idx: Tensor, num_tokens_per_step: int) -> Tensor:
    """Puts compacted tokens back on the full grid: ``out[b, l*N + idx[b, l, j]] = y[b, l*k + j]``.

    Tokens not selected are 0 (the decoder renders them black). Repeated indices add up, which
    makes this the exact adjoint of :func:`gather_tokens`.

    Args:
        y: ``Tensor[B, L*k, D]`` compacted tokens.
        idx: ``Tensor[B, L, k]`` int64 indices in ``[0, N)``.
        num_tokens_per_step: ``N``, tubelets per step of the full grid.

    Returns:
        ``Tensor[B, L*N, D]`` in the dtype of y; differentiable in y.
    """
    check_tensor("y", y, ndim=3)
    B, L, k = _check_index(idx, y.shape[0])
    check_same_device(y=y, idx=idx)
    if y.shape[1] != L * k:
        raise ValueError(f"y must be [B, L*k, D] = [{B}, {L * k}, D] to match idx, got shape {tuple(y.shape)}")
    N = num_tokens_per_step
    if isinstance(N, bool) or not isinstance(N, int):
        raise TypeError(f"num_tokens_per_step must be an int, got {type(N).__name__}")
    if N < 1:
        raise ValueError(f"num_tokens_per_step must be >= 1, got {N}")
    if not _HAS_OP:
        return reference.scatter_tokens(y, idx, N)
    return torch.ops.stpriv.scatter_tokens(y, idx, N)


def _register() -> None:
    @torch.library.register_fake("stpriv::topk_keep")
    def _fake_topk(score, k):
        torch._check(score.dim() == 3, lambda: "score must be [B, L, N]")
        torch._check(0 <= k <= score.shape[2], lambda: "k must be in [0, N]")
        B, L, _ = score.shape
        return score.new_empty((B, L, k), dtype=torch.int64)

    @torch.library.register_fake("stpriv::gather_tokens")
    def _fake_gather(x, idx):
        B, L, k = idx.shape
        return x.new_empty((B, L * k, x.shape[2]))

    @torch.library.register_fake("stpriv::scatter_tokens")
    def _fake_scatter(y, idx, num_tokens_per_step):
        B, L, _ = idx.shape
        return y.new_empty((B, L * num_tokens_per_step, y.shape[2]))

    def gather_setup_context(ctx, inputs, output):
        x, idx = inputs
        ctx.save_for_backward(idx)
        ctx.num_tokens_per_step = x.shape[1] // idx.shape[1]

    def gather_backward(ctx, grad_out):
        (idx,) = ctx.saved_tensors
        # scatter_tokens is gather_tokens' adjoint; it has its own autograd, so double backward works.
        return scatter_tokens_op(grad_out.contiguous(), idx, ctx.num_tokens_per_step), None

    def scatter_setup_context(ctx, inputs, output):
        _, idx, _ = inputs
        ctx.save_for_backward(idx)

    def scatter_backward(ctx, grad_out):
        (idx,) = ctx.saved_tensors
        return torch.ops.stpriv.gather_tokens(grad_out.contiguous(), idx), None, None

    scatter_tokens_op = torch.ops.stpriv.scatter_tokens
    torch.library.register_autograd("stpriv::gather_tokens", gather_backward, setup_context=gather_setup_context)
    torch.library.register_autograd("stpriv::scatter_tokens", scatter_backward, setup_context=scatter_setup_context)

    # Triton is imported on the first CUDA call only (about a second; CPU users never need it).
    def topk_cuda(score, k):
        from .triton.topk import topk_keep_forward

        return topk_keep_forward(score, k)

    def gather_cuda(x, idx):
        from .triton.topk import gather_tokens_forward

        return gather_tokens_forward(x, idx)

    def scatter_cuda(y, idx, num_tokens_per_step):
        from .triton.topk import scatter_tokens_forward

        return scatter_tokens_forward(y, idx, num_tokens_per_step)

    torch.library.register_kernel("stpriv::topk_keep", "cuda", topk_cuda)
    torch.library.register_kernel("stpriv::gather_tokens", "cuda", gather_cuda)
    torch.library.register_kernel("stpriv::scatter_tokens", "cuda", scatter_cuda)


if _HAS_OP:
    _register()
