"""The paper's baseline anonymizers (Table 1): raw, downsampling and Gaussian blurring.

Each is a fixed, frame-wise transform ``Tensor[B, C, T, H, W] -> Tensor[B, C, T, H, W]`` that goes
through the same evaluation protocol as STPrivacy (fresh recognizers trained on transformed
training videos, tested on transformed test videos; see ``stprivacy.train.evaluation``).

* ``downsample_2x`` / ``downsample_4x``: box-filter (area) downsampling by the factor, then
  bilinear upsampling back to the input size, so the recognizers see the same geometry.
* ``blur_weak`` / ``blur_strong``: a separable Gaussian with sigma = H/32 and H/16 pixels
  (3.5 and 7 px at the paper's 112 px, 1 and 2 px at the demo's 32 px), truncated at 3 sigma,
  reflect padding. Plain ``conv2d``; torchvision is not a dependency.

The ablations ("sparsification only", "anonymization only") are STPrivacy models with a switch
off (``STPrivacyConfig(use_pab=False)`` / ``alpha=1``) and are trained like STPrivacy.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Transform = Callable[[Tensor], Tensor]


def _check_video(video: Tensor) -> None:
    if not isinstance(video, Tensor):
        raise TypeError(f"video must be a torch.Tensor, got {type(video).__name__}")
    if video.dim() != 5 or not video.is_floating_point():
        raise ValueError(f"video must be a float Tensor[B, C, T, H, W], got {video.dtype} {tuple(video.shape)}")


def _frames(video: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """[B, C, T, H, W] -> [B*T, C, H, W] (and the shape to undo it)."""
    B, C, T, H, W = video.shape
    return video.transpose(1, 2).reshape(B * T, C, H, W), (B, T, C, H, W)


def _unframes(frames: Tensor, shape: tuple[int, ...]) -> Tensor:
    B, T, C, H, W = shape
    return frames.reshape(B, T, C, H, W).transpose(1, 2)


def downsample(video: Tensor, factor: int) -> Tensor:
    """Area-downsample each frame by ``factor`` and bilinearly upsample back.

    Args:
        video: Tensor[B, C, T, H, W], H and W divisible by ``factor``.
        factor: integer >= 1.

    Returns:
        Tensor[B, C, T, H, W].
    """
    _check_video(video)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be an int >= 1, got {factor!r}")
    H, W = video.shape[-2:]
    if H % factor or W % factor:
        raise ValueError(f"frame size {H}x{W} must be divisible by the downsampling factor {factor}")
    frames, shape = _frames(video)
    small = F.avg_pool2d(frames, factor)
    return _unframes(F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False), shape)


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Normalized Gaussian taps, Tensor[2*ceil(3 sigma) + 1]."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive finite float, got {sigma!r}")
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def gaussian_blur(video: Tensor, sigma: float) -> Tensor:
    """Blur each frame with a separable Gaussian of standard deviation ``sigma`` pixels.

    Args:
        video: Tensor[B, C, T, H, W].
        sigma: in pixels, > 0.

    Returns:
        Tensor[B, C, T, H, W].
    """
    _check_video(video)
    taps = gaussian_kernel1d(sigma, video.dtype, video.device)
    radius = taps.numel() // 2
    H, W = video.shape[-2:]
    if radius >= min(H, W):
        raise ValueError(f"sigma={sigma} needs a {2 * radius + 1}-tap kernel, too wide for {H}x{W} frames")
    frames, shape = _frames(video)
    C = frames.shape[1]
    # Depthwise: one copy of the 1-D kernel per channel, rows then columns.
    kernel_h = taps.view(1, 1, -1, 1).expand(C, 1, -1, 1)
    kernel_w = taps.view(1, 1, 1, -1).expand(C, 1, 1, -1)
    frames = F.conv2d(F.pad(frames, (0, 0, radius, radius), mode="reflect"), kernel_h, groups=C)
    frames = F.conv2d(F.pad(frames, (radius, radius, 0, 0), mode="reflect"), kernel_w, groups=C)
    return _unframes(frames, shape)


BASELINE_NAMES = ("raw", "downsample_2x", "downsample_4x", "blur_weak", "blur_strong")
# Baselines that need real footage (a face detector finds nothing in the synthetic benchmark).
DETECTOR_BASELINES = ("blacken_faces",)


def make_baseline(name: str, image_size: int) -> Transform:
    """The baseline transform called ``name`` for ``image_size``-pixel frames.

    Args:
        name: one of ``BASELINE_NAMES``.
        image_size: H of the videos it will see (sets the blur's sigma).
    """
    if name == "raw":
        return lambda video: video
    if name in ("downsample_2x", "downsample_4x"):
        factor = int(name[len("downsample_")])
        return lambda video: downsample(video, factor)
    if name in ("blur_weak", "blur_strong"):
        sigma = image_size / (32 if name == "blur_weak" else 16)
        return lambda video: gaussian_blur(video, sigma)
    if name == "blacken_faces":
        from .blackening import FaceBlackener  # OpenCV's bundled Haar face detector

        return FaceBlackener()
    raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINE_NAMES + DETECTOR_BASELINES}")
