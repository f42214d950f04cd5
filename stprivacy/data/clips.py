"""Which frames and which pixels a clip is made of: the paper's (VideoMAE's) sampling protocol.

Training: one clip of ``clip_len`` frames, ``rate`` frames apart, at a random start; one random
``crop x crop`` window. Testing: ``num_clips`` = 5 clips spread evenly over the video times
``num_crops`` = 3 windows spread evenly along the frame's long side (after its short side was
resized to ``crop``), 15 views whose predictions are averaged (:func:`average_views`).
Random draws go through torch's generator, which DataLoader reseeds in every worker.
"""
from __future__ import annotations

import torch
from torch import Tensor

# The paper's frame sampling rates (frames between two sampled frames) per benchmark.
SAMPLING_RATE = {"hmdb51": 2, "ucf101": 4}


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def train_clip_indices(num_frames: int, clip_len: int, rate: int, generator: torch.Generator | None = None) -> Tensor:
    """Frame indices of one training clip: ``start + rate * arange(clip_len)``, start uniform.

    A video shorter than the clip's span (``(clip_len - 1) * rate + 1`` frames) is covered
    whole at the largest stride that fits, repeating frames when it has fewer than ``clip_len``.

    Returns:
        ``LongTensor[clip_len]``, non-decreasing, in ``[0, num_frames)``.
    """
    _check_positive(num_frames=num_frames, clip_len=clip_len, rate=rate)
    span = (clip_len - 1) * rate + 1
    if num_frames < span:
        return torch.linspace(0, num_frames - 1, clip_len).round().long()
    start = int(torch.randint(num_frames - span + 1, (), generator=generator))
    return start + rate * torch.arange(clip_len)


def eval_clip_indices(num_frames: int, clip_len: int, rate: int, num_clips: int = 5) -> Tensor:
    """Frame indices of the test clips (VideoMAE's protocol).

    The video is first subsampled at ``rate``; the clips are ``clip_len`` consecutive subsampled
    frames starting at ``round_down(c * (S - clip_len) / (num_clips - 1))`` for c = 0..num_clips-1
    (S = number of subsampled frames), so the first clip starts at frame 0 and the last one ends
    at the video's end. A video with ``S < clip_len`` repeats its last subsampled frame.

    Returns:
        ``LongTensor[num_clips, clip_len]``.
    """
    _check_positive(num_frames=num_frames, clip_len=clip_len, rate=rate, num_clips=num_clips)
    strided = torch.arange(0, num_frames, rate)
    if len(strided) < clip_len:
        strided = torch.cat([strided, strided[-1:].expand(clip_len - len(strided))])
    step = (len(strided) - clip_len) / (num_clips - 1) if num_clips > 1 else 0.0
    starts = [int(c * step) for c in range(num_clips)]
    return torch.stack([strided[s : s + clip_len] for s in starts])


def train_crop_box(height: int, width: int, crop: int, generator: torch.Generator | None = None) -> tuple[int, int]:
    """Top-left corner of a uniformly random ``crop x crop`` window in a ``height x width`` frame."""
    _check_positive(height=height, width=width, crop=crop)
    if crop > min(height, width):
        raise ValueError(f"crop ({crop}) must fit in the frame ({height} x {width})")
    top = int(torch.randint(height - crop + 1, (), generator=generator))
    left = int(torch.randint(width - crop + 1, (), generator=generator))
    return top, left


def eval_crop_boxes(height: int, width: int, crop: int, num_crops: int = 3) -> list[tuple[int, int]]:
    """Top-left corners of ``num_crops`` windows spread evenly along the frame's long side.

    With the short side already resized to ``crop`` this gives VideoMAE's left/center/right (or
    top/middle/bottom) crops; the short side is centered.
    """
    _check_positive(height=height, width=width, crop=crop, num_crops=num_crops)
    if crop > min(height, width):
        raise ValueError(f"crop ({crop}) must fit in the frame ({height} x {width})")
    free_h, free_w = height - crop, width - crop
    positions = [round(i * max(free_h, free_w) / (num_crops - 1)) if num_crops > 1 else max(free_h, free_w) // 2 for i in range(num_crops)]
    if free_w >= free_h:
        return [(free_h // 2, p) for p in positions]
    return [(p, free_w // 2) for p in positions]


def average_views(logits: Tensor, num_views: int | None = None) -> Tensor:
    """Averages predictions over the test views of each video.

    Args:
        logits: ``Tensor[B, V, K]`` or ``Tensor[B * V, K]`` (videos major, views minor; then
            ``num_views`` = V is required).
        num_views: V when ``logits`` is flat.

    Returns:
        ``Tensor[B, K]``: the mean of the raw logits over the V views, as VideoMAE's test.
    """
    if logits.dim() == 2:
        if num_views is None or num_views < 1 or logits.shape[0] % num_views:
            raise ValueError(
                f"num_views must divide the {logits.shape[0]} rows of flat logits, got {num_views}"
            )
        logits = logits.reshape(-1, num_views, logits.shape[1])
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, V, K] or [B*V, K], got shape {tuple(logits.shape)}")
    return logits.mean(dim=1)
