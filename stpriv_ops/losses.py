"""The sparsity loss of STPrivacy Eq. 7.

Pure PyTorch on purpose: it reduces a few ``[B, L, N]`` masks to one number once per step, a few
microseconds of work that a custom kernel would not measurably speed up, and autograd through
``mean`` is already exact.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import check_tensor


def sparsity_loss(keep_masks: Sequence[Tensor], targets: Sequence[float]) -> Tensor:
    """Per-time-step keep ratio against its target, squared, averaged (STPrivacy Eq. 7).

    ``loss = mean_m mean_{b,l} (mean_n keep_m[b, l, n] - targets[m])^2``: every sparsification
    block ``m`` is pushed to keep the fraction ``targets[m]`` (alpha^m for a keep ratio alpha) of
    the tubelets in every time step, so no frame is dropped entirely.

    Args:
        keep_masks: one ``Tensor[B, L, N]`` per block (hard 0/1 with a straight-through gradient
            in training, or soft), all on one device.
        targets: one target keep ratio in [0, 1] per block.

    Returns:
        A 0-dim tensor in float32 (float64 when the masks are float64), differentiable in the masks.
    """
    if isinstance(keep_masks, Tensor) or not isinstance(keep_masks, Sequence):
        raise TypeError(f"keep_masks must be a list of Tensor[B, L, N], got {type(keep_masks).__name__}")
    if isinstance(targets, Tensor) or not isinstance(targets, Sequence):
        raise TypeError(f"targets must be a list of floats, got {type(targets).__name__}")
    if len(keep_masks) == 0:
        raise ValueError("keep_masks must hold at least one mask")
    if len(keep_masks) != len(targets):
        raise ValueError(f"targets must have one ratio per mask: {len(keep_masks)} masks, {len(targets)} targets")
    losses = []
    for m, (keep, target) in enumerate(zip(keep_masks, targets)):
        check_tensor(f"keep_masks[{m}]", keep, ndim=3)
        if keep.numel() == 0:
            raise ValueError(f"keep_masks[{m}] must not be empty, got shape {tuple(keep.shape)}")
        if keep.device != keep_masks[0].device:
            raise ValueError(f"keep_masks must share one device, got {keep_masks[0].device} and {keep.device}")
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 <= target <= 1.0:
            raise ValueError(f"targets[{m}] must be a float in [0, 1], got {target!r}")
        ratio = keep.to(torch.promote_types(keep.dtype, torch.float32)).mean(dim=2)  # [B, L]
        losses.append(((ratio - target) ** 2).mean())
    return torch.stack(losses).mean()
