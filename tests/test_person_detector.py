"""OpenCV's HOG people detector and the person-region baselines that use it on real video.

No image of a person ships with the OpenCV wheel (``cv2.samples`` finds none), so the frames are
drawn: a dark upright figure (head, torso, arms, legs) on a light background. The detector
really fires on it (an SVM score of about 4.5 where 0 is the threshold); a flat frame and
smooth noise give nothing.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from stprivacy.methods.baselines import PersonBaseline, make_baseline
from stprivacy.methods.person_detection import PersonDetector

BACKGROUND, FIGURE = 190, 50


def pedestrian(height: int, cx: int = 56, size: int = 112) -> np.ndarray:
    """A ``uint8[size, size, 3]`` frame with a figure ``height`` pixels tall centred at column ``cx``."""
    frame = np.full((size, size, 3), BACKGROUND, np.uint8)
    top, s = (size - height) // 2, height / 116

    def at(x: float, y: float) -> tuple[int, int]:
        return int(round(cx + x * s)), int(round(top + y * s))

    color = (FIGURE,) * 3
    cv2.circle(frame, at(0, 10), int(round(9 * s)), color, -1)  # head
    cv2.rectangle(frame, at(-13, 22), at(13, 68), color, -1)  # torso
    for x0, x1, y0, y1, width in ((-13, -20, 26, 64, 7), (13, 20, 26, 64, 7), (-6, -10, 68, 114, 9),
                                  (6, 10, 68, 114, 9)):  # arms, legs
        cv2.line(frame, at(x0, y0), at(x1, y1), color, max(1, int(round(width * s))))
    return frame


def figure_box(frame: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the drawn figure's pixels."""
    ys, xs = np.nonzero(frame[..., 0] != BACKGROUND)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def to_video(frames: list[np.ndarray]) -> torch.Tensor:
    """Tensor[1, 3, T, H, W] in [0, 1] of uint8 RGB frames."""
    return torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float().div(255).unsqueeze(0)


@pytest.mark.parametrize("height, cx", [(56, 40), (80, 56), (104, 70)])
def test_finds_a_drawn_person_of_any_height(height, cx):
    frame = pedestrian(height, cx)
    boxes = PersonDetector().detect(frame)
    assert len(boxes) >= 1
    fx0, fy0, fx1, fy1 = figure_box(frame)
    # One box covers the whole figure, and is not much wider than it (a padded person box).
    covering = [b for b in boxes if b[0] <= fx0 and b[1] <= fy0 and b[2] >= fx1 and b[3] >= fy1]
    assert covering, f"no box of {boxes.tolist()} covers the figure at {(fx0, fy0, fx1, fy1)}"
    x0, _, x1, _ = covering[0]
    assert x1 - x0 < 3 * (fx1 - fx0) and abs((x0 + x1) / 2 - (fx0 + fx1) / 2) < 10


def test_a_tall_person_needs_the_border():
    frame = pedestrian(100)
    assert len(PersonDetector(border=0.0).detect(frame)) == 0  # the window cannot be taller than the frame
    assert len(PersonDetector().detect(frame)) >= 1


def test_no_person_no_box_and_no_change():
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8), (0, 0), 3)
    flat = np.full((112, 112, 3), 128, np.uint8)
    detector = PersonDetector()
    assert len(detector.detect(smooth)) == 0 and len(detector.detect(flat)) == 0
    video = to_video([smooth, flat])
    for name in ("person_blacken", "person_blur_strong", "person_blur_weak"):
        torch.testing.assert_close(make_baseline(name, 112)(video), video, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["person_blacken", "person_blur_strong", "person_blur_weak"])
def test_person_baselines_change_only_the_detected_boxes(name):
    frames = [pedestrian(80, 40), pedestrian(80, 72)]
    video = to_video(frames)
    detector = PersonDetector(every=1)
    region = detector.regions(video)[0]  # [T, H, W]
    for t, frame in enumerate(frames):  # the region is the union of that frame's boxes
        want = np.zeros((112, 112), bool)
        for x0, y0, x1, y1 in detector.detect(frame):
            want[y0:y1, x0:x1] = True
        assert want.any() and (region[t].numpy() == want).all()
    baseline = make_baseline(name, 112)
    baseline.detector = detector  # every frame (the default detects on every 4th and holds)
    out = baseline(video)
    assert out.shape == video.shape and out.min() >= 0 and out.max() <= 1
    outside = ~region.unsqueeze(0).expand_as(video[0])
    torch.testing.assert_close(out[0][outside], video[0][outside], rtol=0, atol=0)
    inside = ~outside
    if name == "person_blacken":
        assert (out[0][inside] == 0).all()
    else:  # the blur changes the figure's edges inside the box
        assert (out[0][inside] - video[0][inside]).abs().max() > 0.2


def test_every_holds_the_boxes_of_the_last_detected_frame():
    person, blank = pedestrian(80), np.full((112, 112, 3), BACKGROUND, np.uint8)
    frames = np.stack([person, blank, blank, person, blank])
    masks = PersonDetector(every=2).person_masks(frames)
    # Detected on frames 0, 2, 4: frame 1 holds frame 0's box, frame 3 holds frame 2's (none).
    assert masks[0].any() and (masks[1] == masks[0]).all()
    assert not masks[2].any() and not masks[3].any() and not masks[4].any()
    every_frame = PersonDetector(every=1).person_masks(frames)
    assert every_frame[3].any() and not every_frame[1].any()
    # The baselines' default: every 4th frame, so blank frames 1-3 hold frame 0's box, 4 has none.
    video = to_video([person, blank, blank, blank, blank])
    default = make_baseline("person_blacken", 112)(video)
    box = torch.from_numpy(masks[0])
    assert all((default[0, :, t][:, box] == 0).all() for t in range(4))
    torch.testing.assert_close(default[0, :, 4], video[0, :, 4], rtol=0, atol=0)


def test_injected_boxes_reach_the_baseline():
    """The box plumbing alone: a detector whose output is given, the baseline paints exactly it."""

    class GivenBoxes(PersonDetector):
        def detect(self, frame):
            return np.array([[10, 20, 30, 60]])

    video = torch.rand(2, 3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    out = PersonBaseline("blacken", detector=GivenBoxes(every=1))(video)
    want = video.clone()
    want[..., 20:60, 10:30] = 0
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="smaller than the HOG"):
        PersonDetector().regions(torch.rand(1, 3, 2, 32, 32))
    with pytest.raises(ValueError, match="smaller than the HOG"):
        make_baseline("person_blur_strong", 32)(torch.rand(1, 3, 2, 32, 32))
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, T, H, W\]"):
        PersonDetector().regions(torch.rand(3, 2, 112, 112))
    for field, value in (("upscale", 0.0), ("scale", 1.0), ("margin", -0.1), ("border", -1.0), ("every", 0),
                         ("win_stride", 0)):
        with pytest.raises(ValueError, match=field):
            PersonDetector(**{field: value})
