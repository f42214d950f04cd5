"""Decoded frames to model input: ``uint8[T, H, W, 3]`` -> ``Tensor[3, T, crop, crop]`` in [0, 1].

The model's convention (``STPrivacyConfig``) is pixels in [0, 1] with black = 0, so there is no
mean/std normalization here. Training: short side resized to ``train_short_side`` (128, the
C3D-style 128 x 171 frame), a random ``crop`` window, a random horizontal flip. Testing: short side
resized to ``crop`` and the 3 crops of :func:`stprivacy.data.clips.eval_crop_boxes`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .clips import eval_crop_boxes, train_crop_box


def frames_to_tensor(frames: np.ndarray | Tensor) -> Tensor:
    """``uint8[T, H, W, 3]`` -> float32 ``Tensor[3, T, H, W]`` in [0, 1]."""
    frames = torch.as_tensor(np.asarray(frames))
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8[T, H, W, 3], got {frames.dtype}{list(frames.shape)}")
    return frames.permute(3, 0, 1, 2).float().div_(255)


def tensor_to_frames(video: Tensor) -> np.ndarray:
    """``Tensor[3, T, H, W]`` in [0, 1] -> ``uint8[T, H, W, 3]`` (clamped and rounded)."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, T, H, W], got shape {tuple(video.shape)}")
    return video.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def resize(video: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (antialiased) resize of every frame: ``Tensor[C, T, H, W] -> Tensor[C, T, h, w]``."""
    if tuple(video.shape[-2:]) == tuple(size):
        return video
    frames = video.transpose(0, 1)  # [T, C, H, W]: interpolate treats T as the batch
    out = F.interpolate(frames, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.transpose(0, 1).clamp_(0, 1)


def resize_short_side(video: Tensor, short_side: int) -> Tensor:
    """Resizes so that min(H, W) = ``short_side``, keeping the aspect ratio."""
    height, width = video.shape[-2:]
    scale = short_side / min(height, width)
    return resize(video, (max(short_side, round(height * scale)), max(short_side, round(width * scale))))


def crop(video: Tensor, top: int, left: int, size: int) -> Tensor:
    """The ``size x size`` window at (top, left) of every frame."""
    return video[..., top : top + size, left : left + size]


def train_transform(
    frames: np.ndarray,
    crop_size: int = 112,
    train_short_side: int = 128,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One random training view: ``uint8[T, H, W, 3]`` -> ``Tensor[3, T, crop_size, crop_size]``."""
    if train_short_side < crop_size:
        raise ValueError(f"train_short_side ({train_short_side}) must be >= crop_size ({crop_size})")
    video = resize_short_side(frames_to_tensor(frames), train_short_side)
    top, left = train_crop_box(video.shape[-2], video.shape[-1], crop_size, generator)
    video = crop(video, top, left, crop_size)
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        video = video.flip(-1)
    return video.contiguous()


def eval_views(frames: np.ndarray, crop_size: int = 112, num_crops: int = 3) -> Tensor:
    """The test crops of one clip: ``uint8[T, H, W, 3]`` -> ``Tensor[num_crops, 3, T, crop, crop]``."""
    video = resize_short_side(frames_to_tensor(frames), crop_size)
    boxes = eval_crop_boxes(video.shape[-2], video.shape[-1], crop_size, num_crops)
    return torch.stack([crop(video, top, left, crop_size) for top, left in boxes])
