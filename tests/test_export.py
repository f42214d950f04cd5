"""`stprivacy export`: the ONNX deployment pass matches ``STPrivacy.anonymize``, and bad input is refused.

Also `stprivacy anonymize --onnx`, which runs the exported file. Nothing is trained: a randomly
initialized tiny model is saved the way `stprivacy train` saves one. Exporting needs onnx, running
the file onnxruntime (``pip install stpriv[onnx]``); the tests that need them skip without them.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from video_factory import write_test_video

from stprivacy.anonymize import OnnxAnonymizer, anonymize_window, load_anonymizer
from stprivacy.cli import main as cli_main
from stprivacy.data.transforms import frames_to_tensor
from stprivacy.data.video import iter_frames
from stprivacy.errors import UsageError
from stprivacy.export import INPUT_NAME, export_anonymizer
from stprivacy.model import STPrivacy, STPrivacyConfig

# 8 frames of 32 x 32, tubelets 2 x 8 x 8 (4 steps of 16 tubelets), three PSBs, a tiny width.
CFG = STPrivacyConfig.small(embed_dim=32, num_heads=2)
ATOL = 1e-4


def _save(model: STPrivacy, path):
    torch.save({"phase": "adversarial", "model": model.state_dict(),
                "config": {"model": model.cfg.to_dict(), "train": {}}}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialized model saved the way `stprivacy train` saves one."""
    torch.manual_seed(0)
    return _save(STPrivacy(CFG), tmp_path_factory.mktemp("ckpt") / "stprivacy.pt")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> torch.Tensor:
    """``Tensor[1, 3, 8, 32, 32]``: a clip written as a real video file and decoded back."""
    path = write_test_video(tmp_path_factory.mktemp("video") / "clip.avi", num_frames=CFG.frames,
                            height=CFG.image_size, width=CFG.image_size)
    return frames_to_tensor(np.stack(list(iter_frames(path))))[None]


def _needs(module: str) -> None:
    """Skips the test, saying why, where an optional package of ``stpriv[onnx]`` is missing."""
    pytest.importorskip(module, reason=f"{module} is not installed (pip install stpriv[onnx])")


def _session(path):
    _needs("onnxruntime")
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("keep_ratio", [0.7, 1.0])
def test_exported_file_matches_anonymize_on_a_decoded_video(tmp_path, checkpoint, clip, keep_ratio, capsys):
    _needs("onnx")
    out = tmp_path / "anonymizer.onnx"
    assert cli_main(["export", "--checkpoint", str(checkpoint), "--keep-ratio", str(keep_ratio), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    session = _session(out)
    model = load_anonymizer(checkpoint)
    generator = torch.Generator().manual_seed(1)
    # The decoded clip, and a batch of three (the graph's batch size is free) with random pixels.
    for video in (clip, torch.rand(3, *clip.shape[1:], generator=generator)):
        expected = model.anonymize(video, keep_ratio)
        (got,) = session.run(None, {INPUT_NAME: video.numpy()})
        assert got.shape == tuple(video.shape)
        np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=ATOL)
    if keep_ratio < 1.0:  # 16 -> 11 -> 7 -> 5 tubelets per step kept: the others are black
        black = (expected == 0).all(dim=1)  # [B, T, H, W]
        assert abs(black.float().mean().item() - 11 / 16) < 1e-6


@pytest.mark.parametrize("pab_filter", [False, True])
def test_residual_and_filter_anonymization_blocks_export(tmp_path, clip, pab_filter):
    """The PAB variants with another output path: the residual head, and the tubelet filter."""
    _needs("onnx")
    torch.manual_seed(2)
    model = STPrivacy(STPrivacyConfig.small(embed_dim=32, num_heads=2, pab_residual=True, pab_filter=pab_filter))
    # Both start as the identity on kept tubelets (zero head, zero gates): give them something to do.
    output_layer = model.pab.filter if pab_filter else model.pab.head
    with torch.no_grad():
        output_layer.weight.normal_(0, 0.5)
    path = export_anonymizer(model, tmp_path / "anonymizer.onnx", 0.8)
    expected = model.anonymize(clip, 0.8)
    assert not torch.equal(expected, clip * (expected != 0))  # the kept tubelets were rewritten
    (got,) = _session(path).run(None, {INPUT_NAME: clip.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=ATOL)


def test_tied_keep_scores_keep_the_same_tubelets(tmp_path, clip):
    """The stable sort exported as ONNX TopK breaks ties as PyTorch does: towards the lower index."""
    _needs("onnx")
    torch.manual_seed(3)
    model = STPrivacy(CFG)
    with torch.no_grad():  # every predictor outputs its bias alone: every keep score ties
        for psb in model.psbs:
            psb.predictor.out_conv[-2].weight.zero_()
    path = export_anonymizer(model, tmp_path / "anonymizer.onnx", 0.5)
    expected = model.anonymize(clip, 0.5)
    # 16 -> 8 -> 4 -> 2 tubelets per step, the first two of each step (row 0 of the 4 x 4 grid, left).
    kept = (expected != 0).any(dim=1)[0, 0]  # [H, W] of the first frame
    assert kept[:8, :16].all() and not kept[:8, 16:].any() and not kept[8:].any()
    (got,) = _session(path).run(None, {INPUT_NAME: clip.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=ATOL)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("case", ["missing", "damaged", "keep_ratio_zero", "keep_ratio_above_one",
                                  "no_folder", "folder_is_a_file", "not_onnx", "exists", "onnx_missing"])
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path, checkpoint, capsys, monkeypatch, case):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ckpt, ratio, out = str(checkpoint), "0.5", out_dir / "anonymizer.onnx"
    if case == "missing":
        ckpt = str(tmp_path / "nothing.pt")
    elif case == "damaged":
        damaged = tmp_path / "damaged.pt"
        damaged.write_bytes(checkpoint.read_bytes()[:2000])
        ckpt = str(damaged)
    elif case == "keep_ratio_zero":
        ratio = "0"
    elif case == "keep_ratio_above_one":
        ratio = "1.5"
    elif case == "no_folder":
        out = out_dir / "missing" / "anonymizer.onnx"
    elif case == "folder_is_a_file":
        (out_dir / "file").write_text("not a folder")
        out = out_dir / "file" / "anonymizer.onnx"
    elif case == "not_onnx":
        out = out_dir / "anonymizer.pt"
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "onnx_missing":
        monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    before = _leftovers(out_dir)
    assert cli_main(["export", "--checkpoint", ckpt, "--keep-ratio", ratio, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stprivacy export: error: "), err
    assert _leftovers(out_dir) == before
    if case == "exists":
        assert out.read_bytes() == b"keep me"


def test_a_failed_write_leaves_no_partial_file(tmp_path, checkpoint, monkeypatch):
    """The file is written under a temporary name and renamed: a failure at the rename leaves nothing."""
    _needs("onnx")
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr("stprivacy.export.os.replace", refuse)
    with pytest.raises(Exception, match="cannot write"):
        export_anonymizer(checkpoint, tmp_path / "anonymizer.onnx", 0.5)
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_an_existing_file(tmp_path, checkpoint):
    _needs("onnx")
    out = tmp_path / "anonymizer.onnx"
    out.write_bytes(b"old")
    export_anonymizer(checkpoint, out, 0.5, overwrite=True)
    assert out.stat().st_size > 10_000 and _leftovers(tmp_path) == ["anonymizer.onnx"]


def test_anonymize_command_runs_the_exported_file(tmp_path, checkpoint, capsys):
    """`stprivacy anonymize --onnx` gives the torch model's frames: same windows, tiles and pixels."""
    _needs("onnx")
    _needs("onnxruntime")
    onnx_file = export_anonymizer(checkpoint, tmp_path / "anonymizer.onnx", 0.7)
    source = write_test_video(tmp_path / "in" / "clip.avi", num_frames=21, height=30, width=64)
    frames = np.stack(list(iter_frames(source)))[: CFG.frames * 2]
    # Window by window (2 interleaved clips of 2 tiles each), before any encoding: equal to a level.
    by_torch = anonymize_window(load_anonymizer(checkpoint), frames, stride=2, keep_ratio=0.7)
    by_onnx = anonymize_window(OnnxAnonymizer(onnx_file), frames, stride=2)
    assert np.abs(by_torch.astype(int) - by_onnx.astype(int)).max() <= 1
    assert (by_onnx.max(-1) < 16).mean() > 0.3  # tubelets were dropped
    # The whole command: the torch model's video and the exported file's decode to the same frames.
    common = [str(source), "--no-progress", "--codec", "mpeg4", "--stride", "2"]
    assert cli_main(["anonymize", *common, "-o", str(tmp_path / "torch.mp4"), "--checkpoint", str(checkpoint),
                     "--keep-ratio", "0.7"]) == 0
    assert cli_main(["anonymize", *common, "-o", str(tmp_path / "onnx.mp4"), "--onnx", str(onnx_file)]) == 0
    decoded = [np.stack(list(iter_frames(tmp_path / name))).astype(int) for name in ("torch.mp4", "onnx.mp4")]
    assert decoded[0].shape == decoded[1].shape == (21, 30, 64, 3)
    assert np.abs(decoded[0] - decoded[1]).mean() < 0.5
    capsys.readouterr()
    # The ratio is the file's: asking for another, or naming a file that is no model, is one line.
    assert cli_main(["anonymize", *common, "-o", str(tmp_path / "x.mp4"), "--onnx", str(onnx_file),
                     "--keep-ratio", "0.5"]) == 2
    assert cli_main(["anonymize", *common, "-o", str(tmp_path / "y.mp4"), "--onnx", str(checkpoint)]) == 2
    assert cli_main(["anonymize", *common, "-o", str(tmp_path / "z.mp4"), "--onnx", str(tmp_path / "none.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("stprivacy anonymize: error: ") for line in err), err
    assert not any((tmp_path / name).exists() for name in ("x.mp4", "y.mp4", "z.mp4"))


def test_threads_set_onnxruntime_torch_and_opencv(tmp_path, checkpoint, capsys):
    """`stprivacy anonymize --threads N` limits the model (onnxruntime's intra-op pool, or torch)
    and OpenCV's resizing; a count below 1 is one line."""
    _needs("onnx")
    _needs("onnxruntime")
    import cv2

    onnx_file = export_anonymizer(checkpoint, tmp_path / "anonymizer.onnx", 0.7)
    assert OnnxAnonymizer(onnx_file, threads=1).session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(UsageError, match="threads must be an int >= 1"):
        OnnxAnonymizer(onnx_file, threads=0)
    source = write_test_video(tmp_path / "in" / "clip.avi", num_frames=9, height=30, width=64)
    common = [str(source), "--no-progress", "--codec", "mpeg4", "--onnx", str(onnx_file)]
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        assert cli_main(["anonymize", *common, "-o", str(tmp_path / "a.mp4"), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
    capsys.readouterr()
    assert cli_main(["anonymize", *common, "-o", str(tmp_path / "b.mp4"), "--threads", "0"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "b.mp4").exists()
