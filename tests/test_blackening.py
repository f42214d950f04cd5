"""The face-blackening baseline, on a real photograph of a face that ships with matplotlib."""
from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib
import matplotlib.image
import numpy as np
import pytest
import torch

import stprivacy.methods.blackening as blackening
from stprivacy.methods.blackening import FaceBlackener, blacken_faces


@pytest.fixture(scope="module")
def face_frame() -> np.ndarray:
    """Grace Hopper's portrait (matplotlib's sample data), 112 x 112 RGB uint8."""
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = np.asarray(matplotlib.image.imread(path))
    return cv2.resize(image, (112, 112), interpolation=cv2.INTER_AREA)


def to_video(frames: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float().div(255).unsqueeze(0)


def test_detects_and_blackens_the_face_only(face_frame):
    blackener = FaceBlackener(hold=0)
    boxes = blackener.detect(face_frame)
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    # The face is in the upper middle of the portrait, about half the frame wide.
    assert 20 < (x0 + x1) / 2 < 90 and 10 < (y0 + y1) / 2 < 70 and 30 < x1 - x0 < 90
    video = to_video([face_frame] * 3)
    out = blackener(video)
    assert out.shape == video.shape
    assert (out[..., y0:y1, x0:x1] == 0).all()
    outside = torch.ones(112, 112, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    torch.testing.assert_close(out[..., outside], video[..., outside], rtol=0, atol=0)


def test_no_face_means_no_change():
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8), (0, 0), 8)
    video = to_video([smooth] * 2)
    torch.testing.assert_close(blacken_faces(video), video, rtol=0, atol=0)


def test_hold_covers_a_frame_where_detection_failed(face_frame):
    blank = np.full_like(face_frame, 128)
    video = to_video([face_frame, blank, blank])
    masks = FaceBlackener(hold=1).face_masks(np.stack([face_frame, blank, blank]))
    assert masks[0].any() and masks[1].any() and not masks[2].any()
    out = FaceBlackener(hold=1)(video)
    assert (out[0, :, 1][:, torch.from_numpy(masks[1])] == 0).all()


def test_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, T, H, W\]"):
        FaceBlackener()(torch.zeros(3, 4, 8, 8))
    with pytest.raises(ValueError, match="scale_factor"):
        FaceBlackener(scale_factor=1.0)
    monkeypatch.setattr(blackening.cv2.data, "haarcascades", str(tmp_path))
    with pytest.raises(RuntimeError, match="opencv-python-headless>=4.8,<5"):
        FaceBlackener()
