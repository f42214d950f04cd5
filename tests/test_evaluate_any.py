"""Evaluating methods that are not ours: `stprivacy evaluate --transformed-root` and `evaluate_transform`.

On HMDB51-layout videos the tests write: a byte copy of the dataset's videos and the identity
transform reproduce the raw baseline's numbers exactly; a folder with one missing and one
truncated video names both; a blackening method scores the label prior; bad input is one line.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from stprivacy import evaluate_transform
from stprivacy.cli import main
from stprivacy.errors import UsageError
from stprivacy.model import STPrivacyConfig
from stprivacy.train import TrainConfig, evaluate_baseline
from stprivacy.train.data_factory import build_dataset
from test_pretrained import fake_vit_state_dict
from train_fixtures import one_thread
from video_factory import real_names, truncate, write_test_video

MODEL = {"preset": "small"}  # 8 frames of 32 x 32, 2 x 8 x 8 tubelets
MODEL_CFG = STPrivacyConfig.small()
RECOGNIZER = {"embed_dim": 24, "num_heads": 2, "depth": 1}
CLIPS = {"train_short_side": 36, "num_clips": 2, "num_crops": 1}
SCORES = ("top1", "f1", "cmap", "ap", "last_epoch_loss")  # the losses: continuous, so equality means something
_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def hmdb(tmp_path_factory):
    """8 train and 4 test videos of 2 HMDB51 classes (official split-file layout), every one readable;
    a byte copy of them; and a damaged copy: a train video missing, a test video truncated, one
    video in another container."""
    root = tmp_path_factory.mktemp("hmdb")
    splits = root / "splits"
    splits.mkdir()
    for action, stems in real_names("hmdb51", num_classes=2, per_class=6).items():
        (splits / f"{action}_test_split1.txt").write_text("".join(f"{s}.avi {t}\n" for s, t in zip(stems, "111122")))
        for i, stem in enumerate(stems):
            write_test_video(root / "videos" / action / f"{stem}.avi", num_frames=20 + 3 * i)
    shutil.copytree(root / "videos", root / "copy")
    shutil.copytree(root / "videos", root / "damaged")
    videos = sorted((root / "damaged").rglob("*.avi"))
    test_stems = {line.split()[0][:-4] for f in splits.iterdir() for line in f.read_text().splitlines()
                  if line.endswith(" 2")}
    missing = next(v for v in videos if v.stem not in test_stems)
    truncated = next(v for v in videos if v.stem in test_stems)
    recoded = next(v for v in videos if v not in (missing, truncated))
    missing.unlink()
    truncate(truncated)
    recoded.unlink()
    write_test_video(recoded.with_suffix(".mp4"), num_frames=24)
    kwargs = {"video_root": str(root / "videos"), "split_dir": str(splits), **CLIPS}
    return {"root": root, "kwargs": kwargs, "missing": missing.relative_to(root / "damaged").as_posix(),
            "truncated": truncated.relative_to(root / "damaged").as_posix()}


def _config(path: Path, dataset: str, dataset_kwargs: dict) -> Path:
    train = {"dataset": dataset, "dataset_kwargs": dataset_kwargs, "batch_size": 4, "eval_epochs": 1,
             "progress": False, "recognizer": RECOGNIZER}
    path.write_text(json.dumps({"model": MODEL, "train": train}))
    return path


def _scores(row: dict) -> dict:
    return {k: row[k] for k in SCORES}


def test_byte_copy_reproduces_raw_and_a_damaged_folder_names_what_it_lacks(tmp_path, hmdb, capsys):
    config = _config(tmp_path / "run.json", "hmdb51", hmdb["kwargs"])
    root = hmdb["root"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the damaged folder's truncated video, if a loader met it
        assert main(["evaluate", "--config", str(config), "--baselines", "raw", "--transformed-root",
                     f"copy={root / 'copy'}", f"damaged={root / 'damaged'}", "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    rows = evaluation["rows"]
    assert list(rows) == ["raw", "copy", "damaged"]
    # The exactness check: the same seed, the same records, the same bytes -> the same floats.
    assert _scores(rows["copy"]["attackers"]["video"]) == _scores(rows["raw"]["attackers"]["video"])
    assert rows["copy"]["cmap"] == rows["raw"]["cmap"] and rows["copy"]["top1"] == rows["raw"]["top1"]
    assert rows["copy"]["left_out"]["count"] == 0 and rows["copy"]["kind"] == "transformed_root"
    left_out = rows["damaged"]["left_out"]
    assert left_out["count"] == 2
    assert left_out["train"]["missing"] == [hmdb["missing"]] and not left_out["train"]["unreadable"]
    assert list(left_out["test"]["unreadable"]) == [hmdb["truncated"]] and not left_out["test"]["missing"]
    assert evaluation["dataset"]["train_videos"] == 8 and evaluation["dataset"]["test_videos"] == 4
    assert rows["damaged"]["videos"] == {"train": 7, "test": 3} and rows["copy"]["videos"] == {"train": 8, "test": 4}
    for name in (hmdb["missing"], hmdb["truncated"]):
        assert name in out  # printed before the training, and in the table's list
        assert name in (tmp_path / "eval" / "evaluation.md").read_text()
    markdown = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "| Method | video: top-1 ↑ | video: cMAP ↓ | video: F1 ↓ |" in markdown
    assert "| **copy** |" in markdown and "| raw |" in markdown
    assert (tmp_path / "eval" / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert evaluation["command"].startswith("stprivacy evaluate --config")


def test_identity_transform_reproduces_raw_on_video_files(hmdb):
    cfg = TrainConfig(dataset="hmdb51", dataset_kwargs=hmdb["kwargs"], batch_size=4, eval_epochs=1,
                      progress=False, recognizer=RECOGNIZER)
    evaluation = evaluate_transform(lambda video: video, "hmdb51", model_cfg=MODEL_CFG, cfg=cfg, name="identity",
                                    baselines=["raw"])
    rows = evaluation["rows"]
    assert _scores(rows["identity"]["attackers"]["video"]) == _scores(rows["raw"]["attackers"]["video"])
    # The check can fail: a transform that changes the pixels changes the numbers.
    dimmed = evaluate_transform(lambda video: 0.5 * video, "hmdb51", model_cfg=MODEL_CFG, cfg=cfg)
    assert (dimmed["rows"]["transform"]["attackers"]["video"]["last_epoch_loss"]
            != rows["raw"]["attackers"]["video"]["last_epoch_loss"])


@pytest.fixture(scope="module")
def synthetic_cfg():
    # 20 training videos: 16 left once the validation split (20%) is carved out, two full batches
    # of 8 per epoch. With one batch an epoch's mean loss would be the first step's, the same
    # (ln 4, ln 2) for every attacker since the heads start at zero.
    return TrainConfig(dataset="synthetic", dataset_kwargs={"train_videos": 20, "test_videos": 8}, batch_size=8,
                       eval_epochs=1, progress=False, recognizer=RECOGNIZER)


def test_identity_transform_reproduces_raw_in_memory(synthetic_cfg, tmp_path):
    evaluation = evaluate_transform(torch.nn.Identity(), "synthetic", model_cfg=MODEL_CFG, cfg=synthetic_cfg,
                                    name="identity", out=tmp_path)
    geometry = {"frames": MODEL_CFG.frames, "image_size": MODEL_CFG.image_size, "tubelet": MODEL_CFG.tubelet}
    splits = [build_dataset("synthetic", s, geometry, **synthetic_cfg.dataset_kwargs) for s in ("train", "test")]
    raw = evaluate_baseline("raw", MODEL_CFG, synthetic_cfg, *splits, num_classes=4, num_attributes=5)
    # The demo's own raw-baseline path (stprivacy.train.evaluate_baseline) gives the same floats.
    assert _scores(evaluation["rows"]["identity"]["attackers"]["video"]) == _scores(raw)
    assert {p.name for p in tmp_path.iterdir()} == {"evaluation.json", "evaluation.md", "tradeoff.png"}


def test_blackening_scores_the_label_prior(synthetic_cfg):
    """All-black output: every test video gets the same scores, so each attribute's AP is its
    share of positives and top-1 is the share of whichever class is predicted."""
    evaluation = evaluate_transform(torch.zeros_like, "synthetic", model_cfg=MODEL_CFG, cfg=synthetic_cfg,
                                    name="black", attackers=("video", "frame"))
    geometry = {"frames": MODEL_CFG.frames, "image_size": MODEL_CFG.image_size, "tubelet": MODEL_CFG.tubelet}
    test = build_dataset("synthetic", "test", geometry, **synthetic_cfg.dataset_kwargs)
    labels = torch.stack([test[i][2] for i in range(len(test))])
    actions = torch.tensor([test[i][1] for i in range(len(test))])
    prior = labels.mean(0).double()
    row = evaluation["rows"]["black"]
    video, frame = row["attackers"]["video"], row["attackers"]["frame"]
    torch.testing.assert_close(torch.tensor(video["ap"], dtype=torch.float64), prior, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.tensor(frame["frame_ap"], dtype=torch.float64), prior, rtol=0, atol=1e-12)
    assert video["cmap"] == pytest.approx(float(prior.mean()), abs=1e-12)
    shares = {float((actions == c).float().mean()) for c in range(4)}
    assert video["top1"] in shares


def test_imagenet_and_frame_attackers(synthetic_cfg, tmp_path):
    vit = tmp_path / "vit_s.safetensors"
    save_file(fake_vit_state_dict(depth=1, dim=RECOGNIZER["embed_dim"]), str(vit))
    attackers = ("video", "frame", "video_imagenet", "frame_imagenet")
    with pytest.raises(UsageError, match="needs a ViT-S model"):  # the recognizers' MLPs are 2x, the file's 4x
        evaluate_transform(lambda video: video, "synthetic", model_cfg=MODEL_CFG, cfg=synthetic_cfg,
                           attackers=attackers, imagenet_vit=vit)
    cfg = dataclasses.replace(synthetic_cfg, recognizer={**RECOGNIZER, "mlp_ratio": 4.0})
    evaluation = evaluate_transform(lambda video: video, "synthetic", model_cfg=MODEL_CFG, cfg=cfg,
                                    attackers=attackers, imagenet_vit=vit)
    row = evaluation["rows"]["transform"]
    assert list(row["attackers"]) == list(attackers) and row["privacy_from"] in attackers
    assert row["top1_from"] in ("video", "video_imagenet")
    loaded = evaluation["imagenet_vit"]["loaded_parameters"]
    assert loaded["video"] > 0 and loaded["frame"] > 0
    # Initialized from the file, the attacker is another one: its numbers differ from scratch's.
    assert row["attackers"]["video_imagenet"]["last_epoch_loss"] != row["attackers"]["video"]["last_epoch_loss"]
    assert len(row["attackers"]["frame"]["frame_ap"]) == 5 and len(row["ap"]) == 5
    with pytest.raises(UsageError, match="imagenet_vit"):
        evaluate_transform(lambda video: video, "synthetic", model_cfg=MODEL_CFG, cfg=synthetic_cfg,
                           attackers=("video_imagenet",))


def test_cross_dataset_protocol_for_a_transformed_folder(tmp_path, hmdb):
    """A method trained on UCF101, its output on HMDB51's videos: novel actions."""
    config = _config(tmp_path / "run.json", "ucf101", {})
    assert main(["evaluate", "--config", str(config), "--eval-dataset", "hmdb51", "--eval-dataset-kwargs",
                 json.dumps(hmdb["kwargs"]), "--transformed-root", str(hmdb["root"] / "copy"),
                 "--out", str(tmp_path / "eval")]) == 0
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["dataset"] == {**evaluation["dataset"], "trained_on": "ucf101", "evaluated_on": "hmdb51",
                                     "cross_dataset": True}
    assert list(evaluation["rows"]) == ["copy"]


def test_wrong_transform_output_is_a_usage_error(synthetic_cfg):
    with pytest.raises(UsageError, match=r"transform must return a float Tensor\[B, 3, T, H, W\] shaped like"):
        evaluate_transform(lambda video: video[:, :, :4], "synthetic", model_cfg=MODEL_CFG, cfg=synthetic_cfg)


def test_bad_command_lines_give_one_line(tmp_path, hmdb, capsys):
    good = _config(tmp_path / "run.json", "hmdb51", hmdb["kwargs"])
    synthetic = _config(tmp_path / "synthetic.json", "synthetic", {})
    copy, damaged = str(hmdb["root"] / "copy"), str(hmdb["root"] / "damaged")
    cases = [
        (["--config", str(good)], "evaluate needs --checkpoint (a trained STPrivacy) or --transformed-root DIR"),
        (["--config", str(good), "--transformed-root", str(tmp_path / "nowhere")], "is not a directory"),
        (["--transformed-root", copy], "--config is required without --checkpoint"),
        (["--config", str(synthetic), "--transformed-root", copy], "--transformed-root needs a dataset of video files"),
        (["--config", str(good), "--transformed-root", copy, "--imagenet-vit", str(tmp_path / "none.pth")],
         "--imagenet-vit: no such file"),
        (["--config", str(good), "--transformed-root", f"raw={copy}", "--baselines", "raw"], "used twice"),
        (["--config", str(good), "--transformed-root", damaged, "--on-missing", "error"],
         "1 missing and 0 unreadable train videos"),
    ]
    for argv, message in cases:
        assert main(["evaluate", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
