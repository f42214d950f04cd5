"""The face-blackening baseline: detect faces in every frame and paint them black.

The detector is OpenCV's Viola-Jones frontal-face Haar cascade, which ships inside the
``opencv-python-headless`` 4.x wheel (``cv2.data.haarcascades``): nothing is downloaded. OpenCV 5
wheels no longer bundle the cascades, hence ``opencv-python-headless<5`` in the dependencies.
It is a weak detector by today's standards (frontal faces only, misses small and turned faces),
which is the point of the baseline: hiding only detected faces leaves skin color, gender, nudity
and relationship cues, and whatever faces the detector misses, in the video. It is not the
paper's Blackening, which blackens the whole detected person (``person_blacken`` in
:mod:`stprivacy.methods.baselines`).

Two choices that matter at 112 px: frames are upscaled (``upscale``, 2x by default) before
detection, because the cascade's smallest window is 24 px; and a box detected at frame t also
blackens frames ``t - hold .. t + hold`` so that one missed detection does not reveal a face.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

try:
    import cv2
except ImportError as exc:  # pragma: no cover - opencv is a declared dependency
    raise ImportError("the blackening baseline needs opencv-python-headless>=4.8,<5") from exc

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


def cascade_path(name: str = DEFAULT_CASCADE) -> Path:
    """Path of a Haar cascade bundled with OpenCV, with a clear error where none is bundled."""
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(folder or "") / name
    if not hasattr(cv2, "CascadeClassifier") or not folder or not path.is_file():
        raise RuntimeError(
            f"OpenCV {cv2.__version__} does not ship the Haar cascade {name!r} (OpenCV 5 wheels dropped "
            "them); install opencv-python-headless>=4.8,<5"
        )
    return path


@dataclass
class FaceBlackener:
    """Frame-wise face detection + black boxes, as a ``Tensor[B, C, T, H, W] -> same`` transform.

    Attributes:
        cascade: file name of a cascade in ``cv2.data.haarcascades``.
        scale_factor, min_neighbors: ``detectMultiScale``'s search step and strictness.
        upscale: frames are resized by this factor before detection (small faces).
        margin: each box grows by this fraction of its size on every side (hair, chin, ears).
        hold: frames before and after a detection that are blackened too.
    """

    cascade: str = DEFAULT_CASCADE
    scale_factor: float = 1.1
    min_neighbors: int = 3
    upscale: float = 2.0
    margin: float = 0.15
    hold: int = 1

    def __post_init__(self) -> None:
        if self.scale_factor <= 1:
            raise ValueError(f"scale_factor must be > 1, got {self.scale_factor}")
        if self.upscale <= 0 or self.margin < 0 or self.hold < 0 or self.min_neighbors < 0:
            raise ValueError("upscale must be > 0 and margin, hold, min_neighbors >= 0, got "
                             f"{self.upscale}, {self.margin}, {self.hold}, {self.min_neighbors}")
        self._detector = cv2.CascadeClassifier(str(cascade_path(self.cascade)))
        if self._detector.empty():
            raise RuntimeError(f"OpenCV could not load the cascade {self.cascade!r}")

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Face boxes of one ``uint8[H, W, 3]`` RGB frame as ``int[K, 4]`` (x0, y0, x1, y1), margin included."""
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if self.upscale != 1:
            gray = cv2.resize(gray, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_LINEAR)
        gray = cv2.equalizeHist(gray)
        found = self._detector.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors)
        boxes = np.asarray(found, dtype=np.float64).reshape(-1, 4) / self.upscale
        x, y, w, h = boxes.T
        grown = np.stack([x - self.margin * w, y - self.margin * h, x + w * (1 + self.margin), y + h * (1 + self.margin)], 1)
        height, width = frame.shape[:2]
        grown = np.clip(np.round(grown), 0, [width, height, width, height])
        return grown.astype(np.int64)

    def face_masks(self, frames: np.ndarray) -> np.ndarray:
        """``bool[T, H, W]``: True where a detected (or held) face box covers the pixel."""
        detected = np.zeros(frames.shape[:3], dtype=bool)
        for t, frame in enumerate(frames):
            for x0, y0, x1, y1 in self.detect(frame):
                detected[t, y0:y1, x0:x1] = True
        masks = detected.copy()
        for shift in range(1, self.hold + 1):
            masks[shift:] |= detected[:-shift]
            masks[:-shift] |= detected[shift:]
        return masks

    def __call__(self, video: Tensor) -> Tensor:
        """Blackens the faces of ``Tensor[B, 3, T, H, W]`` (values in [0, 1]); returns a new tensor."""
        if not isinstance(video, Tensor) or video.dim() != 5 or video.shape[1] != 3 or not video.is_floating_point():
            shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"video must be a float Tensor[B, 3, T, H, W] in [0, 1], got {shape}")
        out = video.clone()
        for b in range(video.shape[0]):
            frames = video[b].detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
            frames = frames.permute(1, 2, 3, 0).cpu().numpy()  # [T, H, W, 3]
            mask = torch.from_numpy(self.face_masks(frames)).to(video.device)
            out[b].masked_fill_(mask.unsqueeze(0), 0.0)
        return out


def blacken_faces(video: Tensor, **options) -> Tensor:
    """``FaceBlackener(**options)(video)``: the baseline as a function of ``Tensor[B, 3, T, H, W]``."""
    return FaceBlackener(**options)(video)
