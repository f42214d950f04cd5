"""Person boxes for the person-region baselines: OpenCV's HOG people detector, frame by frame.

The detector is Dalal and Triggs' HOG + linear SVM pedestrian model that OpenCV carries in its
library (``cv2.HOGDescriptor_getDefaultPeopleDetector()``): nothing is downloaded. It finds
upright, mostly whole people; it misses sitting, lying and heavily cropped ones, which a paper's
COCO detector would find more often, so the person-region baselines built on it hide less on real
video than the paper's (see :mod:`stprivacy.methods.baselines`).

Three choices that matter at 112 px. The detection window is 64 x 128 pixels, of which the
person fills about 96 rows, so frames are upscaled (``upscale``, 2x by default) before detection:
a person must be at least about 48 pixels tall. A person who fills the frame needs a window taller
than the frame, so the frame is padded (``border``, a quarter of its size on every side, edge
pixels replicated) before detection: without it, a drawn figure 80 or more pixels tall in a
112-pixel frame was missed, with it figures 50 to 110 pixels tall are found. Frames too small for
one window are refused rather than silently left untouched. Each box grows by ``margin`` of its
size on every side (arms and feet beyond the window's fit).

Cost, measured on a busy 2-core machine (112-pixel frames, 2x, border): 65 to 95 ms per frame, so
1 to 1.5 s per 16-frame clip, which the streaming protocols pay for every clip of every epoch.
Hence ``every = 4`` by default: detection on frames 0, 4, 8, ... only, each frame in between
taking the boxes of the last detected frame before it (the margin covers a few frames of
motion). ``every = 1`` detects on every frame, as the paper's baselines do.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

try:
    import cv2
except ImportError as exc:  # pragma: no cover - opencv is a declared dependency
    raise ImportError("the person detector needs opencv-python-headless>=4.8,<5") from exc

# Width and height (pixels) of the default people detector's window.
HOG_WINDOW = (64, 128)


@dataclass
class PersonDetector:
    """HOG people detection on every (or every k-th) frame of a video.

    Attributes:
        upscale: frames are resized by this factor before detection (the window is 64 x 128).
        hit_threshold: SVM score a window needs to count as a person (OpenCV's default is 0).
        win_stride: step of the sliding window in (upscaled) pixels.
        scale: step between the levels of the image pyramid (> 1).
        margin: each box grows by this fraction of its width and height on every side.
        border: the frame is padded by this fraction of its size on every side before
            detection, so that a window can stick out of the frame: a person who fills the
            frame's height (common in action videos) needs a window taller than the frame.
        every: detect on frames 0, k, 2k, ...; a frame in between takes the boxes of the last
            detected frame before it (1: every frame).
    """

    upscale: float = 2.0
    hit_threshold: float = 0.0
    win_stride: int = 8
    scale: float = 1.05
    margin: float = 0.1
    border: float = 0.25
    every: int = 4

    def __post_init__(self) -> None:
        if not self.upscale > 0:
            raise ValueError(f"upscale must be > 0, got {self.upscale}")
        if self.win_stride < 1:
            raise ValueError(f"win_stride must be >= 1, got {self.win_stride}")
        if not self.scale > 1:
            raise ValueError(f"scale must be > 1, got {self.scale}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.border < 0:
            raise ValueError(f"border must be >= 0, got {self.border}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every must be an int >= 1, got {self.every!r}")
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def check_frame_size(self, height: int, width: int) -> None:
        """Raises ValueError where one upscaled frame cannot hold a single detection window."""
        if height * self.upscale < HOG_WINDOW[1] or width * self.upscale < HOG_WINDOW[0]:
            raise ValueError(
                f"{height}x{width} frames upscaled {self.upscale:g}x are smaller than the HOG people detector's "
                f"{HOG_WINDOW[0]}x{HOG_WINDOW[1]} window: no person could ever be found (raise upscale; on the "
                "synthetic benchmark the person region comes from the dataset, SyntheticVideos.person_region)")

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Person boxes of one ``uint8[H, W, 3]`` frame as ``int64[K, 4]`` (x0, y0, x1, y1), margin
        included, clipped to the frame."""
        height, width = frame.shape[:2]
        self.check_frame_size(height, width)
        pad_y, pad_x = round(self.border * height), round(self.border * width)
        # Replicated edges: a constant border would add a strong edge for the detector to see.
        image = cv2.copyMakeBorder(np.ascontiguousarray(frame), pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REPLICATE)
        if self.upscale != 1:
            image = cv2.resize(image, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_LINEAR)
        found, _ = self._hog.detectMultiScale(image, hitThreshold=self.hit_threshold,
                                              winStride=(self.win_stride, self.win_stride), scale=self.scale)
        boxes = np.asarray(found, dtype=np.float64).reshape(-1, 4) / self.upscale - [pad_x, pad_y, 0, 0]
        x, y, w, h = boxes.T
        grown = np.stack([x - self.margin * w, y - self.margin * h, x + w * (1 + self.margin),
                          y + h * (1 + self.margin)], 1)
        return np.clip(np.round(grown), 0, [width, height, width, height]).astype(np.int64)

    def person_masks(self, frames: np.ndarray) -> np.ndarray:
        """``bool[T, H, W]`` of ``uint8[T, H, W, 3]`` frames: True inside a person box."""
        masks = np.zeros(frames.shape[:3], dtype=bool)
        for t in range(0, len(frames), self.every):
            for x0, y0, x1, y1 in self.detect(frames[t]):
                masks[t, y0:y1, x0:x1] = True
            masks[t + 1 : t + self.every] = masks[t]  # held until the next detected frame
        return masks

    def regions(self, video: Tensor) -> Tensor:
        """The person region of each frame of ``Tensor[B, 3, T, H, W]`` in [0, 1]: ``Tensor[B, T, H, W]``
        bool, on the video's device."""
        if not isinstance(video, Tensor) or video.dim() != 5 or video.shape[1] != 3 or not video.is_floating_point():
            shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"video must be a float Tensor[B, 3, T, H, W] in [0, 1], got {shape}")
        self.check_frame_size(*video.shape[-2:])
        frames = video.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
        frames = frames.permute(0, 2, 3, 4, 1).cpu().numpy()  # [B, T, H, W, 3]
        masks = np.stack([self.person_masks(clip) for clip in frames])
        return torch.from_numpy(masks).to(video.device)
