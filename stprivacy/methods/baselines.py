"""The paper's fixed baseline anonymizers (Table 1) and the controls beside them.

Each is a fixed transform ``Tensor[B, C, T, H, W] -> Tensor[B, C, T, H, W]`` that goes through the
same evaluation protocol as STPrivacy (fresh recognizers trained on transformed training videos,
tested on transformed test videos; see ``stprivacy.train.evaluation``). Three families, by the
part of the frame they change (``BASELINE_REGIONS``):

* **Whole frame** (``BASELINE_NAMES``, the demo's rows):

  - ``downsample_2x`` / ``downsample_4x``: box-filter (area) downsampling by the factor, then
    bilinear upsampling back to the input size, so the recognizers see the same geometry.
  - ``blur_weak`` / ``blur_strong``: a separable Gaussian blur of the whole frame (``BLUR_DIVISOR``).

* **Person region** (``PERSON_BASELINES``): the paper takes Blackening, StrongBlur and WeakBlur
  from SPAct, where they obfuscate the detected person, not the frame. ``person_blacken`` paints
  the person region black, ``person_blur_strong`` / ``person_blur_weak`` blur it with the
  whole-frame blurs' sigmas, from the region's own pixels only (as blurring a crop would).
  Pixels outside the region are left exactly as they were. The region comes from the dataset
  where it knows it (the synthetic benchmark's actor, ``SyntheticVideos.person_region``), else
  from OpenCV's HOG people detector (:mod:`stprivacy.methods.person_detection`). The paper's
  COCO detector finds more people than HOG does, so on real video ours hide less.
  ``blacken_faces`` (:mod:`stprivacy.methods.blackening`) blackens Haar-detected faces only.

* **Controls** (``CONTROLS``), which show what learning adds: ``grey`` (the whole frame in
  greyscale), ``grey_blur`` (grey, then the strong blur, whole frame) and ``oracle_grey_blur``
  (the oracle sparsifier, the actor's tubelets only with everything else black, then grey and the
  strong blur inside the kept tubelets: a hand-made STPrivacy that knows where the actor is; it
  needs the dataset's actor region, so only the synthetic benchmark has it).

Blur strength: sigma = H / 32 (weak) and H / 16 (strong) pixels, truncated at 3 sigma, reflect
padding: 3.5 and 7 px at the paper's 112 px (23 and 43 taps), 1 and 2 px at the demo's 32 px.
SPAct's kernel sizes could not be found; these are our constants, one table for every blur here.
Plain ``conv2d``; torchvision is not a dependency.

Baselines that take a region say so by ``takes_region = True`` and are called
``fn(video, region)`` with ``region`` a ``Tensor[B, T, H, W]`` bool, or None where the dataset
knows none (:func:`stprivacy.train.evaluation.transform_dataset` reads it from the dataset's
``person_region(index)``).

The ablations ("sparsification only", "anonymization only") are STPrivacy models with a switch
off (``STPrivacyConfig(use_pab=False)`` / ``alpha=1``) and are trained like STPrivacy.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .person_detection import PersonDetector

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
    """Area-downsample each whole frame by ``factor`` and bilinearly upsample back.

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
    """Blur each whole frame with a separable Gaussian of standard deviation ``sigma`` pixels.

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


# Gaussian blur strength: sigma = H / divisor pixels, for every blur in this module (whole frame,
# person region, controls). 3.5 and 7 px at 112 px; the demo's rows have always used these.
BLUR_DIVISOR = {"weak": 32, "strong": 16}

# ITU-R BT.601 luma weights of (R, G, B), as OpenCV's RGB2GRAY.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def blur_sigma(strength: str, image_size: int) -> float:
    """The blur's sigma in pixels for ``image_size``-pixel frames; ``strength`` is "weak" or "strong"."""
    if strength not in BLUR_DIVISOR:
        raise ValueError(f"strength must be one of {tuple(BLUR_DIVISOR)}, got {strength!r}")
    return image_size / BLUR_DIVISOR[strength]


def greyscale(video: Tensor) -> Tensor:
    """The luma of every pixel (``LUMA_WEIGHTS``), copied to the three channels.

    Args:
        video: Tensor[B, 3, T, H, W].

    Returns:
        Tensor[B, 3, T, H, W], its three channels equal; in [0, 1] where the input is.
    """
    _check_video(video)
    if video.shape[1] != 3:
        raise ValueError(f"greyscale needs RGB video, Tensor[B, 3, T, H, W], got {tuple(video.shape)}")
    weights = torch.tensor(LUMA_WEIGHTS, dtype=video.dtype, device=video.device).view(1, 3, 1, 1, 1)
    return (video * weights).sum(1, keepdim=True).expand_as(video).contiguous()


def _check_region(region: Tensor, video: Tensor) -> Tensor:
    """``region`` as a bool Tensor[B, T, H, W] on the video's device, or a ValueError."""
    B, _, T, H, W = video.shape
    if not isinstance(region, Tensor) or region.dtype != torch.bool or tuple(region.shape) != (B, T, H, W):
        got = f"{region.dtype} {tuple(region.shape)}" if isinstance(region, Tensor) else type(region).__name__
        raise ValueError(f"region must be a bool Tensor[B, T, H, W] = {(B, T, H, W)} for the video, got {got}")
    return region.to(video.device)


def blacken_region(video: Tensor, region: Tensor) -> Tensor:
    """Paint the region black.

    Args:
        video: Tensor[B, C, T, H, W].
        region: Tensor[B, T, H, W] bool, True where the pixels go.

    Returns:
        Tensor[B, C, T, H, W]: 0 in the region, the input elsewhere.
    """
    _check_video(video)
    return video.masked_fill(_check_region(region, video).unsqueeze(1), 0.0)


def blur_region(video: Tensor, region: Tensor, sigma: float) -> Tensor:
    """Gaussian-blur the region from its own pixels only; leave the rest exactly as it is.

    Each region pixel becomes the Gaussian-weighted mean of the region pixels around it
    (normalized convolution: ``blur(video * mask) / blur(mask)``), so nothing outside the region
    leaks in, as when a detector's box is cropped and blurred on its own.

    Args:
        video: Tensor[B, C, T, H, W].
        region: Tensor[B, T, H, W] bool.
        sigma: in pixels, > 0 (see :func:`gaussian_blur`).

    Returns:
        Tensor[B, C, T, H, W].
    """
    _check_video(video)
    inside = _check_region(region, video).unsqueeze(1)  # [B, 1, T, H, W]
    weight = inside.to(video.dtype)
    blurred = gaussian_blur(video * weight, sigma)
    # Inside the region the weight's blur is at least the kernel's centre tap: no division by zero.
    norm = gaussian_blur(weight, sigma).clamp_min(torch.finfo(video.dtype).tiny)
    return torch.where(inside, blurred / norm, video)


@dataclass
class PersonBaseline:
    """One of the paper's person-region baselines (SPAct's Blackening, StrongBlur, WeakBlur).

    Called ``baseline(video, region=None)``: with ``region`` (the dataset's person region), it
    obfuscates that; without, it finds people with the HOG detector.

    Attributes:
        effect: "blacken" or "blur".
        sigma: the blur's sigma in pixels (``effect == "blur"``); ignored for "blacken".
        detector: a :class:`~stprivacy.methods.person_detection.PersonDetector`; None makes the
            default one when a video first comes without a region.
    """

    effect: str
    sigma: float = 0.0
    detector: PersonDetector | None = None
    takes_region: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.effect not in ("blacken", "blur"):
            raise ValueError(f"effect must be 'blacken' or 'blur', got {self.effect!r}")
        if self.effect == "blur" and not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be a positive finite float for a blur, got {self.sigma!r}")

    def __call__(self, video: Tensor, region: Tensor | None = None) -> Tensor:
        """Tensor[B, 3, T, H, W] in [0, 1] (and Tensor[B, T, H, W] bool) -> Tensor[B, 3, T, H, W]."""
        _check_video(video)
        if region is None:
            if self.detector is None:
                from .person_detection import PersonDetector  # OpenCV, only where a detector is needed

                self.detector = PersonDetector()
            region = self.detector.regions(video)
        if self.effect == "blacken":
            return blacken_region(video, region)
        return blur_region(video, region, self.sigma)


@dataclass
class OracleGreyBlur:
    """The oracle sparsifier followed by greyscale and blur: the control STPrivacy should beat.

    Keeps the actor's tubelets only (everything else black, as the demo's oracle row), then
    greys them and blurs them from their own pixels (:func:`blur_region`). Called
    ``control(video, region)``; the region is the dataset's actor region, which only the
    synthetic benchmark knows (there is no oracle on real video).

    Attributes:
        sigma: the blur's sigma in pixels.
    """

    sigma: float
    takes_region: ClassVar[bool] = True

    def __call__(self, video: Tensor, region: Tensor | None = None) -> Tensor:
        """Tensor[B, 3, T, H, W] and Tensor[B, T, H, W] bool -> Tensor[B, 3, T, H, W]."""
        if region is None:
            raise ValueError("oracle_grey_blur needs the actor region of each video: evaluate it on the synthetic "
                             "benchmark (SyntheticVideos.person_region), which knows where its actor is")
        kept = blur_region(greyscale(video), region, self.sigma)
        return blacken_region(kept, ~_check_region(region, video))


# The demo's rows, in its table's order: transforms of the whole frame.
BASELINE_NAMES = ("raw", "downsample_2x", "downsample_4x", "blur_weak", "blur_strong")
# The paper's Blackening, StrongBlur and WeakBlur: inside the person region.
PERSON_BASELINES = ("person_blacken", "person_blur_strong", "person_blur_weak")
CONTROLS = ("grey", "grey_blur", "oracle_grey_blur")
# Every built-in baseline that is not a demo row.
MORE_BASELINES = ("blacken_faces",) + PERSON_BASELINES + CONTROLS
# What `stprivacy evaluate --baselines` offers.
ALL_BASELINES = BASELINE_NAMES + MORE_BASELINES

# What part of the frame each baseline changes (reports show it next to the row's name).
BASELINE_REGIONS = {
    **{name: "whole frame" for name in BASELINE_NAMES + ("grey", "grey_blur")},
    "blacken_faces": "detected faces",
    **{name: "person region" for name in PERSON_BASELINES},
    "oracle_grey_blur": "actor tubelets (others black)",
}


def make_baseline(name: str, image_size: int) -> Transform:
    """The baseline transform called ``name`` for ``image_size``-pixel frames.

    Args:
        name: one of ``ALL_BASELINES``.
        image_size: H of the videos it will see (sets the blurs' sigma).

    Returns:
        ``fn(video)``, or for the baselines with ``takes_region`` (``PERSON_BASELINES``,
        ``oracle_grey_blur``) ``fn(video, region)``.
    """
    if name == "raw":
        return lambda video: video
    if name in ("downsample_2x", "downsample_4x"):
        factor = int(name[len("downsample_")])
        return lambda video: downsample(video, factor)
    if name in ("blur_weak", "blur_strong"):
        sigma = blur_sigma(name[len("blur_"):], image_size)
        return lambda video: gaussian_blur(video, sigma)
    if name == "blacken_faces":
        from .blackening import FaceBlackener  # OpenCV's bundled Haar face detector

        return FaceBlackener()
    if name == "person_blacken":
        return PersonBaseline("blacken")
    if name in ("person_blur_strong", "person_blur_weak"):
        return PersonBaseline("blur", blur_sigma(name[len("person_blur_"):], image_size))
    if name == "grey":
        return greyscale
    if name == "grey_blur":
        sigma = blur_sigma("strong", image_size)
        return lambda video: gaussian_blur(greyscale(video), sigma)
    if name == "oracle_grey_blur":
        return OracleGreyBlur(blur_sigma("strong", image_size))
    raise ValueError(f"unknown baseline {name!r}; expected one of {ALL_BASELINES}")
