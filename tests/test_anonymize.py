"""`stprivacy anonymize` end to end, on videos and a tiny random checkpoint the tests write."""
from __future__ import annotations

import json
import os
import threading
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from stprivacy.anonymize import (_in_background, anonymize_video, anonymize_window, load_anonymizer, plan_jobs,
                                 resize_frames_uint8, tile_layout)
from stprivacy.cli import main as cli_main
from stprivacy.commands.anonymize import default_threads
from stprivacy.data.video import iter_frames, probe_video
from stprivacy.model import STPrivacy, STPrivacyConfig
from stprivacy.train.checkpoint import UnsafeCheckpointError
from video_factory import write_test_video

CFG = STPrivacyConfig.small()  # 8 frames of 32 x 32, tubelets 2 x 8 x 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialized model saved the way `stprivacy train` saves one."""
    torch.manual_seed(0)
    model = STPrivacy(CFG)
    path = tmp_path_factory.mktemp("ckpt") / "stprivacy.pt"
    torch.save({"phase": "adversarial", "model": model.state_dict(), "config": {"model": CFG.to_dict(), "train": {}}}, path)
    return path


def test_command_on_a_file_keeps_length_rate_and_size(tmp_path, checkpoint, capsys):
    source = write_test_video(tmp_path / "in" / "v_Biking_g01_c01.avi", num_frames=21, height=30, width=64,
                              fps=Fraction(30000, 1001))
    out = tmp_path / "out.mp4"
    assert cli_main(["anonymize", str(source), "-o", str(out), "--checkpoint", str(checkpoint), "--keep-ratio", "0.5",
                           "--no-progress"]) == 0
    assert "21 frames" in capsys.readouterr().out
    info = probe_video(out)
    assert (info.num_frames, info.fps, info.height, info.width) == (21, Fraction(30000, 1001), 30, 64)
    frames = np.stack(list(iter_frames(out)))  # it decodes, all of it
    assert frames.shape == (21, 30, 64, 3)
    # A random anonymizer at keep ratio 0.5 drops tubelets: black regions appear.
    assert (frames.reshape(21, -1, 3).max(-1) < 16).mean() > 0.1
    # The encoder's speed and quality are options; a coarser CRF gives a smaller file of the same video.
    coarse = tmp_path / "coarse.mp4"
    assert cli_main(["anonymize", str(source), "-o", str(coarse), "--checkpoint", str(checkpoint), "--keep-ratio",
                     "0.5", "--crf", "40", "--preset", "ultrafast", "--no-progress"]) == 0
    assert probe_video(coarse).num_frames == 21 and coarse.stat().st_size < out.stat().st_size


@pytest.fixture(autouse=True)
def _restore_threads():
    """The command sets torch's and OpenCV's thread counts for the process; give the next test its own."""
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)


@pytest.mark.parametrize("cores, expected", [(4, 3), (2, 1), (1, 1), (None, 1)])
def test_default_threads_leave_one_core_to_decoding_and_encoding(monkeypatch, cores, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_threads() == expected


def test_command_without_threads_runs_the_model_on_all_cores_but_one(tmp_path, checkpoint, monkeypatch):
    source = write_test_video(tmp_path / "in.avi", num_frames=8, height=32, width=32)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert cli_main(["anonymize", str(source), "-o", str(tmp_path / "a.mp4"), "--checkpoint", str(checkpoint),
                     "--no-progress"]) == 0
    assert torch.get_num_threads() == 2 and cv2.getNumThreads() == 2
    assert cli_main(["anonymize", str(source), "-o", str(tmp_path / "b.mp4"), "--checkpoint", str(checkpoint),
                     "--threads", "1", "--no-progress"]) == 0
    assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1


def test_command_on_a_folder_with_stride(tmp_path, checkpoint):
    write_test_video(tmp_path / "in" / "a.avi", num_frames=9, height=24, width=32)
    write_test_video(tmp_path / "in" / "sub" / "b.mp4", num_frames=40, height=48, width=32, fps=12)
    assert cli_main(["anonymize", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--checkpoint", str(checkpoint),
                           "--stride", "2", "--codec", "mpeg4", "--no-progress"]) == 0
    a, b = probe_video(tmp_path / "out" / "a.mp4"), probe_video(tmp_path / "out" / "sub" / "b.mp4")
    assert (a.num_frames, a.height, a.width) == (9, 24, 32)
    assert (b.num_frames, b.fps, b.height, b.width) == (40, 12, 48, 32)


def test_refusals(tmp_path, checkpoint, capsys):
    source = write_test_video(tmp_path / "in" / "clip.mp4", num_frames=4)
    before = source.read_bytes()
    args = ["--checkpoint", str(checkpoint), "--no-progress"]
    assert cli_main(["anonymize", str(source), "-o", str(source), *args]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert cli_main(["anonymize", str(source), "-o", str(source), "--overwrite", *args]) == 2  # never, even then
    assert source.read_bytes() == before
    assert cli_main(["anonymize", str(tmp_path / "in"), "-o", str(tmp_path / "in" / "anon"), *args]) == 2
    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"keep me")
    assert cli_main(["anonymize", str(source), "-o", str(existing), *args]) == 2
    assert "exists" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    assert cli_main(["anonymize", str(source), "-o", str(tmp_path / "x.mp4"), "--keep-ratio", "1.5", *args]) == 2
    assert cli_main(["anonymize", str(tmp_path / "nothing"), "-o", str(tmp_path / "y.mp4"), *args]) == 2
    assert cli_main(["anonymize", str(source), "-o", str(tmp_path / "z.mp4"), "--crf", "60", *args]) == 2
    assert "--crf must be in [0, 51], got 60" in capsys.readouterr().err
    # An existing output folder receives <stem>.mp4.
    assert plan_jobs(source, tmp_path)[0].target == tmp_path / "clip.mp4"


class IdentityAnonymizer(nn.Module):
    """Stands in for STPrivacy: returns its input, so only the windowing and tiling are tested."""

    def __init__(self):
        super().__init__()
        self.cfg = CFG
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[int, ...]] = []

    def anonymize(self, video, keep_ratio=None):
        self.calls.append(tuple(video.shape))
        return video


@pytest.mark.parametrize("height,width,stride", [(32, 64, 1), (32, 64, 2), (96, 32, 3), (32, 32, 1)])
def test_window_tiling_and_interleaving_are_exact(height, width, stride):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (CFG.frames * stride, height, width, 3), dtype=np.uint8)
    model = IdentityAnonymizer()
    out = anonymize_window(model, frames, stride=stride)
    np.testing.assert_array_equal(out, frames)  # tiles are exactly model-sized here: no resampling
    tiles, _ = tile_layout(height, width)
    assert model.calls == [(tiles * stride, 3, CFG.frames, CFG.image_size, CFG.image_size)]


def test_checkpoint_formats(tmp_path):
    model = STPrivacy(CFG)
    safetensors_path = tmp_path / "weights.safetensors"
    save_file(model.state_dict(), str(safetensors_path))
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(CFG.to_dict()))
    loaded = load_anonymizer(safetensors_path, config_path)
    assert not loaded.training
    torch.testing.assert_close(loaded.embed.pos_embed, model.embed.pos_embed)
    with pytest.raises(ValueError, match="no model config"):
        load_anonymizer(safetensors_path)
    with pytest.raises(ValueError, match="do not fit"):
        load_anonymizer(safetensors_path, STPrivacyConfig.small(embed_dim=48))
    evil = tmp_path / "evil.pt"
    torch.save({"model": model.state_dict(), "config": {"model": CFG.to_dict()}, "extra": nn.Linear(1, 1)}, evil)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load .*evil.pt.*GLOBAL torch.nn.modules.linear.Linear"):
        load_anonymizer(evil)  # a pickled object is refused, not executed


class LeftHalfDropper(IdentityAnonymizer):
    """Returns its input with the left half of every tile black, as a dropped tubelet column is."""

    def anonymize(self, video, keep_ratio=None):
        out = video.clone()
        out[..., : video.shape[-1] // 2] = 0
        return out


def test_window_resampled_in_uint8_keeps_dropped_regions_black():
    # A smooth 64 x 64 frame (twice the model size): down and up again it stays close to itself,
    # and the half the model blacked out stays exactly 0 away from the seam.
    yy, xx = np.mgrid[0:64, 0:64]
    frame = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)
    frames = np.repeat(frame[None], CFG.frames, axis=0)
    out = anonymize_window(LeftHalfDropper(), frames)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    assert out[:, :, :30].max() == 0
    assert np.abs(out[:, :, 34:].astype(int) - frames[:, :, 34:]).max() <= 3


def test_two_step_shrink_matches_one_area_resize():
    # 96 x 128 -> 20 x 20 goes through a whole-number box average (by 4) first; on a smooth image
    # that agrees with OpenCV's one-step area resize to within a level or two.
    yy, xx = np.mgrid[0:96, 0:128]
    frame = np.stack([xx * 2, yy * 2, (xx + yy)], -1).astype(np.uint8)
    out = resize_frames_uint8(frame[None], (20, 20))
    reference = cv2.resize(frame, (20, 20), interpolation=cv2.INTER_AREA)
    assert out.shape == (1, 20, 20, 3)
    assert np.abs(out[0].astype(int) - reference).max() <= 2


class FailingAnonymizer(IdentityAnonymizer):
    """Fails on its second window, as a model running out of memory part way would."""

    def anonymize(self, video, keep_ratio=None):
        if self.calls:
            raise RuntimeError("model failed")
        return super().anonymize(video, keep_ratio)


def test_failure_in_the_model_thread_reaches_the_caller_and_leaves_no_output(tmp_path):
    source = write_test_video(tmp_path / "in.mp4", num_frames=3 * CFG.frames, height=32, width=32)
    target = tmp_path / "out.mp4"
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="model failed"):
        anonymize_video(FailingAnonymizer(), source, target, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]  # no output, no partial file
    assert {t.name for t in threading.enumerate()} == before  # decoding and model threads stopped


def test_background_stage_yields_in_order_and_stops_when_closed():
    produced = []

    def numbers():
        for i in range(100):
            produced.append(i)
            yield i

    stage = _in_background(numbers(), depth=2)
    assert [next(stage) for _ in range(5)] == [0, 1, 2, 3, 4]
    stage.close()
    assert len(produced) <= 5 + 2 + 2  # read ahead by at most the buffer and the item in hand
