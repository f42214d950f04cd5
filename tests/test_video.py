"""Video I/O (PyAV), clip/crop sampling (5 clips x 3 crops) and transforms, on files the tests write."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from stprivacy.data.clips import (
    average_views,
    eval_clip_indices,
    eval_crop_boxes,
    train_clip_indices,
    train_crop_box,
)
from stprivacy.data.transforms import frames_to_tensor, tensor_to_frames, eval_views, train_transform
from stprivacy.data.video import VideoDecodeError, iter_frames, probe_video, read_frames, write_video
from video_factory import frame_value, synthetic_frames, truncate, write_test_video


def red_levels(frames: np.ndarray) -> np.ndarray:
    return frames[..., 0].reshape(len(frames), -1).mean(1)


@pytest.mark.parametrize("name", ["clip.avi", "clip.mp4", "clip.mkv"])
def test_write_probe_read_roundtrip(tmp_path, name):
    path = write_test_video(tmp_path / name, num_frames=30, fps=Fraction(30000, 1001) if name.endswith("mp4") else 25)
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (30, 24, 32)
    assert info.fps == (Fraction(30000, 1001) if name.endswith("mp4") else 25)
    indices = [29, 0, 7, 7, 15]
    frames = read_frames(path, indices, info.num_frames)
    assert frames.shape == (5, 24, 32, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(red_levels(frames), [frame_value(i) for i in indices], atol=4)


def test_iter_frames_yields_every_frame_in_order(tmp_path):
    path = write_test_video(tmp_path / "v.avi", num_frames=12)
    levels = red_levels(np.stack(list(iter_frames(path))))
    np.testing.assert_allclose(levels, [frame_value(i) for i in range(12)], atol=4)


def test_truncated_and_corrupt_files_raise(tmp_path):
    avi = truncate(write_test_video(tmp_path / "a.avi", num_frames=40))
    with pytest.raises(VideoDecodeError, match="truncated"):
        read_frames(avi, [38], probe_video(avi).num_frames)
    mp4 = truncate(write_test_video(tmp_path / "b.mp4", num_frames=40))
    with pytest.raises(VideoDecodeError):
        read_frames(mp4, [38], probe_video(mp4).num_frames)
    garbage = tmp_path / "c.avi"
    garbage.write_bytes(b"not a video" * 50)
    with pytest.raises(VideoDecodeError, match="cannot open"):
        probe_video(garbage)
    with pytest.raises(VideoDecodeError):
        probe_video(tmp_path / "missing.avi")


def test_slightly_short_stream_repeats_its_last_frame(tmp_path):
    path = write_test_video(tmp_path / "v.avi", num_frames=20)
    # A header that claims 21 frames (HMDB51 has such files) is tolerated, not called truncated.
    frames = read_frames(path, [19, 20], num_frames=21)
    np.testing.assert_allclose(red_levels(frames), [frame_value(19)] * 2, atol=4)


def test_write_video_validates_and_pads_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", [np.zeros((8, 8, 3), np.float32)], fps=25)
    with pytest.raises(ValueError, match="empty"):
        write_video(tmp_path / "y.mp4", [], fps=25)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "z.mp4", synthetic_frames(2), fps=0)
    path = tmp_path / "odd.mp4"
    assert write_video(path, synthetic_frames(3, 23, 31), fps=25) == 3
    assert (probe_video(path).height, probe_video(path).width) == (24, 32)


def test_train_clip_indices():
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(50):
        idx = train_clip_indices(100, 16, 2, generator=g)
        assert idx.shape == (16,) and idx.min() >= 0 and idx.max() < 100
        assert torch.equal(idx.diff(), torch.full((15,), 2))
        starts.add(int(idx[0]))
    assert len(starts) > 10 and max(starts) <= 100 - 31
    short = train_clip_indices(10, 16, 4)  # shorter than the clip: cover it whole
    assert short.shape == (16,) and short[0] == 0 and short[-1] == 9 and (short.diff() >= 0).all()
    with pytest.raises(ValueError, match="clip_len"):
        train_clip_indices(10, 0, 2)


def test_eval_clip_indices_five_clips_span_the_video():
    idx = eval_clip_indices(100, 16, 2, num_clips=5)  # 50 strided frames, starts 0, 8, 17, 25, 34
    assert idx.shape == (5, 16)
    assert idx[0, 0] == 0 and idx[-1, -1] == 98
    assert torch.equal(idx[:, 0], torch.tensor([0, 16, 34, 50, 68]))
    assert (idx.diff(dim=1) == 2).all()
    short = eval_clip_indices(20, 16, 4)  # 5 strided frames: padded with the last one
    assert short.shape == (5, 16) and (short[:, 4:] == 16).all() and (short == short[0]).all()


def test_eval_crop_boxes():
    assert eval_crop_boxes(112, 149, 112) == [(0, 0), (0, 18), (0, 37)]
    assert eval_crop_boxes(149, 112, 112) == [(0, 0), (18, 0), (37, 0)]
    assert eval_crop_boxes(112, 112, 112) == [(0, 0)] * 3
    top, left = train_crop_box(128, 170, 112, torch.Generator().manual_seed(1))
    assert 0 <= top <= 16 and 0 <= left <= 58
    with pytest.raises(ValueError, match="fit"):
        eval_crop_boxes(100, 149, 112)


def test_average_views():
    logits = torch.randn(2, 15, 7, dtype=torch.float64)
    torch.testing.assert_close(average_views(logits), logits.mean(1))
    torch.testing.assert_close(average_views(logits.reshape(30, 7), num_views=15), logits.mean(1))
    with pytest.raises(ValueError, match="num_views"):
        average_views(logits.reshape(30, 7), num_views=4)


def test_transforms_shapes_and_crops():
    frames = np.stack(synthetic_frames(16, 24, 32))
    video = train_transform(frames, crop_size=112, generator=torch.Generator().manual_seed(0))
    assert video.shape == (3, 16, 112, 112) and video.dtype == torch.float32
    assert 0 <= video.min() and video.max() <= 1
    views = eval_views(frames, crop_size=112)
    assert views.shape == (3, 3, 16, 112, 112)
    # Green is a left-to-right ramp: the left, center and right crops are ordered by mean green.
    green = views[:, 1].mean(dim=(1, 2, 3))
    assert green[0] < green[1] < green[2]
    roundtrip = tensor_to_frames(frames_to_tensor(frames))
    np.testing.assert_array_equal(roundtrip, frames)
    with pytest.raises(ValueError, match="uint8"):
        frames_to_tensor(frames.astype(np.float32))
