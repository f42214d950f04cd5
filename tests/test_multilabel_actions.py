"""Multi-label actions (paper Table 5, P-HVU): ``action:<class>`` columns in a folder CSV, BCE in
every loop that learns the action, cMAP / F1 instead of top-1 in the reports, tables and verdict.

The end-to-end test writes a P-HVU-shaped dataset (multi-hot actions, object and scene columns as
the privacy attributes) of tiny videos and runs ``stprivacy train`` and ``stprivacy evaluate``.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score
from train_fixtures import TINY_MODEL, one_thread
from video_factory import write_test_video

from stprivacy.attack import metrics
from stprivacy.attack.verdict import combine_attackers, tradeoff_margin
from stprivacy.cli import main
from stprivacy.data.folder_csv import FolderCSV
from stprivacy.data.video_dataset import collate_videos
from stprivacy.errors import DatasetError
from stprivacy.train.common import action_hits, action_loss

_one_thread = pytest.fixture(autouse=True)(one_thread)

ACTIONS = ("walk", "talk", "cook")
PRIVACY = ("car", "dog", "kitchen", "street")  # P-HVU: objects, then scenes
CLIPS = {"train_short_side": 36, "num_clips": 1, "num_crops": 1}


def _phvu_csv(root, num_train: int = 10, num_test: int = 4) -> tuple:
    """A P-HVU-shaped label file and its videos; returns (csv path, multi-hot actions of every row)."""
    rng = np.random.default_rng(0)
    header = ["video", "split", *(f"action:{a}" for a in ACTIONS), *PRIVACY]
    lines, actions = [",".join(header)], []
    for i in range(num_train + num_test):
        hot = rng.random(len(ACTIONS)) < 0.5
        hot[i % len(ACTIONS)] = True  # every video shows at least one action, every class has positives
        privacy = rng.random(len(PRIVACY)) < 0.5
        split = "train" if i < num_train else "test"
        lines.append(",".join([f"v{i}.mp4", split, *map(str, hot.astype(int)), *map(str, privacy.astype(int))]))
        actions.append(hot.astype(np.float32))
        write_test_video(root / "videos" / f"v{i}.mp4", num_frames=20)
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv", np.stack(actions)


def test_action_loss_is_bce_for_multi_hot_and_cross_entropy_for_indices():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g)
    multi_hot = (torch.rand(6, 3, generator=g) < 0.5).float()
    indices = torch.randint(0, 3, (6,), generator=g)
    assert torch.equal(action_loss(logits, multi_hot), F.binary_cross_entropy_with_logits(logits, multi_hot))
    per_clip = F.binary_cross_entropy_with_logits(logits, multi_hot, reduction="none").mean(-1)
    torch.testing.assert_close(action_loss(logits, multi_hot, reduction="none"), per_clip)
    # Class indices keep the exact single-label loss (the synthetic benchmark's numbers do not move).
    assert torch.equal(action_loss(logits, indices), F.cross_entropy(logits, indices))
    assert torch.equal(action_loss(logits, indices, reduction="none"), F.cross_entropy(logits, indices, reduction="none"))
    # hit@1: is the top-scoring class one of the clip's actions.
    assert action_hits(logits, multi_hot).tolist() == [bool(multi_hot[i, j]) for i, j in enumerate(logits.argmax(-1))]
    with pytest.raises(ValueError, match="shaped like the logits"):
        action_loss(logits, multi_hot[:, :2])


def test_vita_target_update_takes_multi_hot_actions():
    from stprivacy.methods.vita import target_update

    torch.manual_seed(0)
    target = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 3))
    video, multi_hot = torch.rand(4, 3, 2, 4, 4), torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    want = F.binary_cross_entropy_with_logits(target(video), multi_hot).item()
    loss, accuracy, updated = target_update(target, torch.optim.SGD(target.parameters(), lr=0.1), video, multi_hot,
                                            threshold=2.0)
    assert loss == pytest.approx(want) and 0 <= accuracy <= 1 and updated


def test_multilabel_folder_csv_and_collation(tmp_path):
    csv_path, actions = _phvu_csv(tmp_path, num_train=3, num_test=2)
    train = FolderCSV(tmp_path / "videos", csv_path, subset="train", clip_len=8, crop_size=32, **CLIPS)
    assert train.multilabel_actions and train.classes == ACTIONS and train.num_classes == 3
    assert train.attributes == PRIVACY  # the other columns stay privacy attributes
    video, action, privacy = collate_videos([train[0], None, train[2]])
    assert action.dtype == torch.float32 and action.tolist() == actions[[0, 2]].tolist()
    assert video.shape == (2, 3, 8, 32, 32) and privacy.shape == (2, 4)
    single = tmp_path / "single.csv"
    single.write_text("video,action,car\nv0.mp4,walk,1\n")
    assert not FolderCSV(tmp_path / "videos", single).multilabel_actions  # the default of every other dataset


@pytest.mark.parametrize("header, row, message", [
    ("video,action,action:walk,car", "v0.mp4,walk,1,0", "not both"),
    ("video,action:walk,action:,car", "v0.mp4,1,0,0", "must name its class"),
    ("video,action:walk,car", "v0.mp4,yes,0", "action values must be 0 or 1"),
])
def test_bad_multilabel_columns_are_one_clear_error(tmp_path, capsys, header, row, message):
    write_test_video(tmp_path / "videos" / "v0.mp4", num_frames=20)
    (tmp_path / "labels.csv").write_text(f"{header}\n{row}\n")
    with pytest.raises(DatasetError, match=message):
        FolderCSV(tmp_path / "videos", tmp_path / "labels.csv")
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": TINY_MODEL, "train": {
        "dataset": "folder_csv", "progress": False,
        "dataset_kwargs": {"video_root": str(tmp_path / "videos"), "csv_path": str(tmp_path / "labels.csv")}}}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("stprivacy train: error:") and message in err, err


def test_multilabel_metrics_equal_scikit_learn():
    rng = np.random.default_rng(1)
    targets = (rng.random((30, 4)) < 0.4).astype(np.float64)
    targets[0] = 1  # every class has a positive
    logits = rng.normal(size=(30, 4)) * 2
    privacy = (rng.random((30, 2)) < 0.5).astype(np.float64)
    row = metrics.summarize(torch.from_numpy(logits), torch.from_numpy(targets), torch.zeros(30, 2),
                            torch.from_numpy(privacy))
    assert row["top1"] is None
    assert row["action_cmap"] == pytest.approx(average_precision_score(targets, logits, average="macro"), abs=1e-12)
    assert row["action_ap"] == pytest.approx(list(average_precision_score(targets, logits, average=None)), abs=1e-12)
    predicted = (1 / (1 + np.exp(-logits)) >= 0.5).astype(int)
    assert row["action_f1"] == pytest.approx(f1_score(targets, predicted, average="macro"), abs=1e-12)
    assert metrics.task_score(row) == ("action_cmap", row["action_cmap"])
    single = metrics.summarize(torch.from_numpy(logits), torch.from_numpy(targets.argmax(1)), torch.zeros(30, 2),
                               torch.from_numpy(privacy))
    assert "action_cmap" not in single and metrics.task_score(single) == ("top1", single["top1"])


def test_verdict_chooses_the_action_recognizer_by_validation_action_cmap():
    def result(action_cmap, val_action_cmap, cmap, val_cmap):
        scores = {"top1": None, "action_cmap": action_cmap, "action_f1": 0.5, "action_ap": [action_cmap],
                  "cmap": cmap, "f1": 0.5, "ap": [cmap]}
        return {**scores, "validation": {**scores, "action_cmap": val_action_cmap, "cmap": val_cmap}}

    row = combine_attackers({"pixels": result(0.6, 0.9, 0.7, 0.4), "mask": result(0.8, 0.5, 0.5, 0.6)})
    assert (row["top1_from"], row["privacy_from"]) == ("pixels", "mask")
    assert (row["action_cmap"], row["cmap"], row["top1"]) == (0.6, 0.5, None)
    assert row["validation"]["action_cmap"] == 0.9 and "action cMAP" in row["selection"]
    assert tradeoff_margin(row) == pytest.approx(10.0)  # action cMAP - privacy cMAP, in points


def test_in_memory_evaluation_and_train_table_of_a_multilabel_task(capsys):
    """The in-memory protocol (``stprivacy train`` on data held in memory) learns and scores
    multi-hot actions too, and the train command's table prints their cMAP and F1."""
    from stprivacy.commands.train import print_results
    from stprivacy.model import STPrivacyConfig
    from stprivacy.train import TrainConfig, baseline_transform, evaluate_anonymizer

    g = torch.Generator().manual_seed(0)
    model_cfg = STPrivacyConfig.small()

    def data(n: int) -> torch.utils.data.TensorDataset:
        actions = (torch.rand(n, 3, generator=g) < 0.5).float()
        actions[:, 0] = 1 - actions[:, 1]  # at least one action per clip
        return torch.utils.data.TensorDataset(torch.rand(n, 3, model_cfg.frames, 32, 32, generator=g), actions,
                                              (torch.rand(n, 2, generator=g) < 0.5).float())

    cfg = TrainConfig(batch_size=4, eval_epochs=1, progress=False, recognizer={"embed_dim": 24, "num_heads": 2,
                                                                               "depth": 1})
    row = evaluate_anonymizer(baseline_transform(lambda video: video), data(10), data(6), model_cfg, cfg,
                              num_classes=3, num_attributes=2)
    assert row["top1"] is None and 0 <= row["action_cmap"] <= 1 and 0 <= row["action_f1"] <= 1
    print_results({"0.7": row})
    header, line = capsys.readouterr().out.splitlines()
    assert header.split()[:5] == ["alpha", "action", "cMAP", "%", "action"] and "top-1" not in header
    assert line.split()[1] == f"{100 * row['action_cmap']:.1f}"


def test_sweep_summarizes_and_plots_a_multilabel_task_by_action_cmap(tmp_path):
    from stprivacy.attack.viz import plot_sweep
    from stprivacy.commands import sweep

    def row(action_cmap: float, cmap: float) -> dict:
        return {"top1": None, "action_cmap": action_cmap, "action_f1": 0.5, "cmap": cmap, "f1": 0.5}

    points = [{"value": v, "seed": s, **sweep.scores(row(a, c)), "commit": "abc"}
              for v, s, a, c in [("0.5", 0, 0.6, 0.4), ("0.5", 1, 0.8, 0.5), ("1", 0, 0.7, 0.3)]]
    assert points[0]["top1"] is None and points[0]["margin"] == pytest.approx(0.2)
    raw = [{"seed": 0, **sweep.scores(row(0.9, 0.8)), "commit": "abc"}]
    summary = sweep.summarize(points, ["0.5", "1"], "action_cmap")
    assert summary["0.5"]["action_cmap"] == {"median": 0.7, "min": 0.6, "max": 0.8} and "top1" not in summary["0.5"]
    table = {"parameter": "train.lambda_privacy", "task": "action_cmap", "labels": ["0.5", "1"], "seeds": [0, 1],
             "points": points, "summary": summary, "raw_points": raw,
             "raw": {m: {"median": raw[0][m], "min": raw[0][m], "max": raw[0][m]} for m in ("action_cmap", "cmap",
                                                                                             "margin")},
             "command": "stprivacy sweep", "commit": "abc", "machine": {"cpu": "cpu"}, "threads": 1}
    markdown = sweep.to_markdown(table)
    assert "| train.lambda_privacy | action cMAP | cMAP | action cMAP - cMAP |" in markdown and "top-1" not in markdown
    assert "| 0.5 | 70.0 (60.0 to 80.0) |" in markdown
    assert plot_sweep(table, tmp_path / "sweep.png").stat().st_size > 10_000


def _check_row(row: dict) -> None:
    assert row["top1"] is None
    assert 0 <= row["action_cmap"] <= 1 and 0 <= row["action_f1"] <= 1 and len(row["action_ap"]) == len(ACTIONS)
    assert 0 <= row["cmap"] <= 1 and len(row["ap"]) == len(PRIVACY)


def test_train_and_evaluate_a_multilabel_dataset(tmp_path, capsys, monkeypatch):
    csv_path, _ = _phvu_csv(tmp_path)
    # Every action loss must be BCE: cross-entropy may only ever see class indices (SPAct's NT-Xent
    # and the like), and BCE must see the K = 3 action logits somewhere.
    cross_entropy, bce, action_bce = F.cross_entropy, F.binary_cross_entropy_with_logits, []

    def checked_cross_entropy(logits, target, *args, **kwargs):
        assert not target.is_floating_point(), "cross-entropy on multi-hot actions"
        return cross_entropy(logits, target, *args, **kwargs)

    def counted_bce(logits, target, *args, **kwargs):
        if logits.shape[-1] == len(ACTIONS):
            action_bce.append(logits.shape)
        return bce(logits, target, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", checked_cross_entropy)
    monkeypatch.setattr(F, "binary_cross_entropy_with_logits", counted_bce)
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": TINY_MODEL, "train": {
        "dataset": "folder_csv", "batch_size": 4, "init_epochs": 1, "adv_epochs": 1, "eval_epochs": 1,
        "recognizer": {"embed_dim": 24, "num_heads": 2, "depth": 1}, "progress": False, "log": "none",
        "dataset_kwargs": {"video_root": str(tmp_path / "videos"), "csv_path": str(csv_path), **CLIPS}}}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "action_cmap %" in printed and "top1 %" not in printed  # the streamed protocol's table
    assert action_bce  # phases 1 and 2 and the attackers learned the actions with BCE
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (result,) = report["evaluation"].values()
    _check_row(result)
    assert all("action_cmap" in a for a in result["attackers"].values())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "adversarial.pt"), "--baselines", "raw",
                     "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "raw: action cMAP" in printed and "| video: action cMAP ↑ | video: action F1 ↑ |" in printed
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["dataset"]["multilabel_actions"] and evaluation["dataset"]["num_classes"] == len(ACTIONS)
    for row in evaluation["rows"].values():
        _check_row(row)
        assert row["attackers"]["video"]["top1"] is None
    markdown = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "action cMAP ↑" in markdown and "top-1" not in markdown and "multi-label" in markdown
    assert (tmp_path / "eval" / "tradeoff.png").stat().st_size > 10_000
