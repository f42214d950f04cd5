"""Small real video files and official-format split files, written by the tests themselves.

Frame i of a generated video has red = ``frame_value(i)`` everywhere, so a test can tell from
the decoded pixels which frame it got (MPEG-4 at a high bitrate keeps a flat frame within a few
levels). Green is a horizontal ramp and blue a vertical one, so crops are distinguishable too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from stprivacy.data.privacy_labels import load_privacy_labels
from stprivacy.data.video import write_video


def frame_value(i: int) -> int:
    return (20 + 9 * i) % 240


def synthetic_frames(num_frames: int, height: int = 24, width: int = 32) -> list[np.ndarray]:
    ramp_x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    ramp_y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    frames = []
    for i in range(num_frames):
        frame = np.stack([np.full((height, width), frame_value(i), np.float32), ramp_x, ramp_y], axis=-1)
        frames.append(frame.round().astype(np.uint8))
    return frames


def write_test_video(path: Path, num_frames: int = 24, height: int = 24, width: int = 32, fps: float = 25) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if path.suffix == ".mp4" else "mpeg4"
    write_video(path, synthetic_frames(num_frames, height, width), fps=fps, codec=codec)
    return path


def truncate(path: Path, keep: float = 0.35) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def real_names(dataset: str, num_classes: int, per_class: int) -> dict[str, list[str]]:
    """The first ``per_class`` video stems of the first ``num_classes`` classes of the shipped labels."""
    table = load_privacy_labels(dataset)
    names: dict[str, list[str]] = {}
    for stem, action in zip(table.stems, table.action_names):
        if action not in names and len(names) == num_classes:
            continue
        names.setdefault(action, [])
        if len(names[action]) < per_class:
            names[action].append(stem)
    return names
