"""Pure-PyTorch oracles: the semantics of every stpriv op, written for clarity, not speed.

These are what the kernels are tested against (in float64) and what runs when the compiled
extension is missing. Each function documents the exact math of ../DESIGN.md's op contracts.
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
