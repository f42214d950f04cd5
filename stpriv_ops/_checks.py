"""Input validation shared by the public wrappers: errors name the argument and what was expected."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, t: object, ndim: int | None = None, floating: bool = True) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if floating and t.dtype not in FLOATING:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    return t


def check_same_device(**tensors: Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listed}")


def check_shape(name: str, t: Tensor, expected: Sequence[int], what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {tuple(t.shape)}")


def check_nonempty(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t.numel() == 0:
            raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")


def check_score_and_k(score: object, k: object) -> Tensor:
    """``score: Tensor[B, L, N]`` (non-empty, floating) and an int ``k`` in ``[0, N]``."""
    score = check_tensor("score", score, ndim=3)
    check_nonempty(score=score)
    N = score.shape[2]
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 0 <= k <= N:
        raise ValueError(f"k must be in [0, N={N}] (tubelets per step of score), got {k}")
    return score
