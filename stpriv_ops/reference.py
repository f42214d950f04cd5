"""Pure-PyTorch oracles: the semantics of every stpriv op, written for clarity, not speed.

These are what the kernels are tested against (in float64) and what runs when the compiled
extension is missing. Each function states the math of its op's contract in docs/ops.md.
"""
from __future__ import annotations

import torch
from torch import Tensor


def masked_attention(
    q: Tensor, k: Tensor, v: Tensor, keep: Tensor, scale: float | None = None, eps: float = 1e-6
) -> Tensor:
    """DynamicViT's ``softmax_with_policy`` attention, with the N x N matrix materialized.

    Args:
        q, k, v: ``Tensor[B, H, N, d]``.
        keep: ``Tensor[B, N]`` in [0, 1]; 0 drops key ``j`` for every query but ``j`` itself.
        scale: score scale, ``d ** -0.5`` when None.
        eps: smoothing that keeps a row finite when every other key is dropped.

    Returns:
        ``Tensor[B, H, N, d]`` in the dtype of ``q`` (computed in float32 at least).
    """
    d, n = q.shape[-1], q.shape[-2]
    scale = d**-0.5 if scale is None else scale
    compute = torch.promote_types(q.dtype, torch.float32)
    q, k, v, keep = (t.to(compute) for t in (q, k, v, keep))
    scores = scale * (q @ k.transpose(-2, -1))  # [B, H, N, N]
    # The max runs over all keys, dropped ones too. It only stabilizes exp(); detaching it drops
    # the O(eps) gradient path through the max, as the fused kernels do.
    row_max = scores.amax(dim=-1, keepdim=True).detach()
    e = torch.exp(scores - row_max)
    eye = torch.eye(n, dtype=compute, device=q.device)
    w = keep[:, None, None, :] * (1 - eye) + eye  # the diagonal is always kept
    z = (w * e).sum(dim=-1, keepdim=True) + eps
    p = (w * e + eps / n) / z
    return (p @ v).to(q.dtype)


# ---- token pruning (paper Eq. 2-3, Eq. 6 and the inference-time top-k of §3.2) ----


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def masked_mean(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Masked spatial and spatio-temporal means of the predictor's features (Eq. 2-3).

    Args:
        x: ``Tensor[B, L, N, C]`` token features, ``L`` time steps of ``N`` tubelets.
        keep: ``Tensor[B, L, N]`` keep weights (hard 0/1 or soft).

    Returns:
        ``spatial: Tensor[B, L, C] = sum_n keep*x / sum_n keep`` and
        ``spatiotemporal: Tensor[B, C] = sum_{l,n} keep*x / sum_{l,n} keep``, in the dtype of x.
        A group whose keep sums to exactly 0 gives 0, with zero gradients (never NaN).
    """
    compute = _compute_dtype(x.dtype)
    xc, kc = x.to(compute), keep.to(compute)
    weighted = (xc * kc[..., None]).sum(dim=2)  # [B, L, C]
    count = kc.sum(dim=2)  # [B, L]

    def safe_divide(num: Tensor, den: Tensor) -> Tensor:
        # where() alone would still backpropagate 0 * inf = NaN through the masked branch;
        # dividing by 1 in empty groups keeps both branches finite.
        empty = den == 0
        return torch.where(empty[..., None], 0.0, num / torch.where(empty, 1.0, den)[..., None])

    spatial = safe_divide(weighted, count)
    spatiotemporal = safe_divide(weighted.sum(dim=1), count.sum(dim=1))
    return spatial.to(x.dtype), spatiotemporal.to(x.dtype)


def logistic_noise(uniform: Tensor) -> Tensor:
    """Logistic(0, 1) noise ``log(u) - log(1 - u)`` from uniforms in (0, 1): the difference of two
    independent Gumbel(0, 1) draws, all a two-class Gumbel-softmax needs."""
    return torch.log(uniform) - torch.log1p(-uniform)


def gumbel_noise(uniform: Tensor) -> Tensor:
    """Gumbel(0, 1) noise ``-log(-log u)`` from uniforms in (0, 1)."""
    return -torch.log(-torch.log(uniform))


def gumbel_keep(log_probs: Tensor, prev: Tensor, noise: Tensor, tau: float = 1.0) -> Tensor:
    """Hard Gumbel-softmax keep decision times the previous decision, straight-through (Eq. 6).

    With ``z = (lp0 - lp1) + noise`` (index 0 = keep; ``noise`` = ``g0 - g1``, Logistic(0, 1)):
    forward ``(z > 0) * prev``; backward the gradient of ``sigmoid(z / tau) * prev``, which is
    ``softmax((log_probs + [noise, 0]) / tau)[..., 0] * prev``, as ``F.gumbel_softmax(hard=True)``.

    Args:
        log_probs: ``Tensor[B, T, 2]`` keep/drop log-probabilities (or any logits).
        prev: ``Tensor[B, T]`` the previous block's decision.
        noise: ``Tensor[B, T]`` Logistic(0, 1) draws.
        tau: softmax temperature (> 0).

    Returns:
        ``Tensor[B, T]`` 0/1 decisions times prev, in the dtype of log_probs.
    """
    compute = _compute_dtype(log_probs.dtype)
    lp = log_probs.to(compute)
    z = (lp[..., 0] - lp[..., 1]) + noise.to(compute)
    hard = (z > 0).to(compute)
    soft = torch.sigmoid(z / tau)
    prev_c = prev.to(compute)
    # soft - soft.detach() is exactly 0, so the forward value is hard * prev bit for bit.
    straight_through = hard.detach() + (soft - soft.detach())
    return (straight_through * prev_c).to(log_probs.dtype)


def topk_keep(score: Tensor, k: int) -> Tensor:
    """Indices of the k highest scores per time step, sorted ascending; ties go to the lower index.

    NaN scores rank like +inf (ties with +inf again go to the lower index).

    Args:
        score: ``Tensor[B, L, N]``.
        k: how many to keep per step, ``0 <= k <= N``.

    Returns:
        ``Tensor[B, L, k]`` int64 indices in ``[0, N)``.
    """
    score = torch.where(torch.isnan(score), torch.inf, score)
    # A stable descending sort keeps equal scores in index order.
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    return torch.sort(order[..., :k], dim=-1).values


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """Compact tokens: ``out[b, l*k + j] = x[b, l*N + idx[b, l, j]]``.

    Args:
        x: ``Tensor[B, L*N, D]`` time-major tokens.
        idx: ``Tensor[B, L, k]`` int64 indices within each step.

    Returns:
        ``Tensor[B, L*k, D]``.
    """
    B, L, k = idx.shape
    N = x.shape[1] // L
    flat = (idx + N * torch.arange(L, device=idx.device)[:, None]).reshape(B, L * k)
    return torch.gather(x, 1, flat[..., None].expand(B, L * k, x.shape[2]))


def scatter_tokens(y: Tensor, idx: Tensor, num_tokens_per_step: int) -> Tensor:
    """Back to the full grid: ``out[b, l*N + idx[b, l, j]] += y[b, l*k + j]``, dropped tokens 0.

    Repeated indices accumulate, which makes this the exact adjoint of :func:`gather_tokens`.

    Args:
        y: ``Tensor[B, L*k, D]``.
        idx: ``Tensor[B, L, k]`` int64 indices within each step.
        num_tokens_per_step: ``N``.

    Returns:
        ``Tensor[B, L*N, D]``.
    """
    B, L, k = idx.shape
    N = num_tokens_per_step
    flat = (idx + N * torch.arange(L, device=idx.device)[:, None]).reshape(B, L * k)
    out = y.new_zeros(B, L * N, y.shape[2])
    return out.scatter_add(1, flat[..., None].expand(B, L * k, y.shape[2]), y)


def gumbel_topk(score: Tensor, k: int, noise: Tensor, tau: float = 1.0) -> Tensor:
    """Exactly k tubelets per time step, sampled without replacement by Gumbel-perturbed top-k.

    Forward: the 0/1 mask of :func:`topk_keep` of ``score + noise``. Backward: straight-through,
    the gradient of ``softmax((score + noise) / tau)`` over the step.

    Args:
        score: ``Tensor[B, L, N]`` keep logits.
        k: tubelets kept per step.
        noise: ``Tensor[B, L, N]`` Gumbel(0, 1) draws.
        tau: softmax temperature (> 0).

    Returns:
        ``Tensor[B, L, N]`` 0/1 keep mask in the dtype of score.
    """
    compute = _compute_dtype(score.dtype)
    perturbed = score.to(compute) + noise.to(compute)
    idx = topk_keep(perturbed.detach(), k)
    hard = torch.zeros_like(perturbed).scatter(-1, idx, 1.0)
    soft = torch.softmax(perturbed / tau, dim=-1)
    return (hard + (soft - soft.detach())).to(score.dtype)
