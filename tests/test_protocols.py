"""Streaming evaluation protocol, frame-level privacy protocol and cross-dataset tagging, on tiny
HMDB51/UCF101-named videos the tests write (5 x 3 test views, one truncated training file)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from video_factory import real_names, truncate, write_test_video

from stprivacy.attack.protocols import cross_dataset_tag, run_protocol
from stprivacy.data.hmdb51 import HMDB51
from stprivacy.data.privacy_labels import load_privacy_labels
from stprivacy.data.ucf101 import UCF101
from stprivacy.model import STPrivacy, STPrivacyConfig
from stprivacy.train.config import TrainConfig
from stprivacy.train.evaluation import stprivacy_transform

pytestmark = pytest.mark.filterwarnings("ignore:skipping unreadable video")
MODEL_CFG = STPrivacyConfig.small()  # 8 frames of 32 x 32
TRAIN_CFG = TrainConfig(batch_size=4, eval_epochs=1, progress=False,
                        recognizer={"depth": 1, "embed_dim": 48, "num_heads": 3})
CLIP = {"clip_len": MODEL_CFG.frames, "crop_size": MODEL_CFG.image_size, "train_short_side": 36}


@pytest.fixture(scope="module")
def hmdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("hmdb")
    splits = root / "splits"
    splits.mkdir()
    # 8 training videos: the validation split that chooses the attackers (20%) holds 2 of them, so
    # it still has a decodable video wherever the truncated one falls (in the fit part here).
    for action, stems in real_names("hmdb51", num_classes=2, per_class=5).items():
        (splits / f"{action}_test_split1.txt").write_text("".join(f"{s}.avi {t}\n" for s, t in zip(stems, "11112")))
        for stem in stems:
            write_test_video(root / "videos" / action / f"{stem}.avi", num_frames=24)
    truncate(next((root / "videos").rglob("*.avi")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = HMDB51(root / "videos", splits, subset="train", **CLIP)
        test = HMDB51(root / "videos", splits, subset="test", num_clips=2, num_crops=3, **CLIP)
    return train, test


@pytest.mark.parametrize("protocol", ["video", "frame"])
def test_protocols_run_on_real_format_data(hmdb, protocol):
    train, test = hmdb
    torch.manual_seed(0)
    transform = stprivacy_transform(STPrivacy(MODEL_CFG), keep_ratio=0.7)
    result = run_protocol(protocol, transform, train, test, MODEL_CFG, TRAIN_CFG,
                          num_classes=train.num_classes, num_attributes=train.num_attributes, name="tiny")
    assert result["skipped"] >= 1  # the truncated training video, skipped and counted
    if protocol == "video":
        assert 0 <= result["top1"] <= 1 and 0 <= result["f1"] <= 1 and 0 <= result["cmap"] <= 1
        assert 0 < result["kept"] < 1  # the anonymizer dropped tubelets of the test views
    else:
        assert {"frame_f1", "frame_cmap", "video_f1", "video_cmap"} <= set(result)
        assert all(0 <= result[k] <= 1 for k in ("frame_f1", "frame_cmap", "video_f1", "video_cmap"))


def test_cross_dataset_anonymizer_trained_on_one_benchmark_evaluated_on_the_other(tmp_path, hmdb):
    """An anonymizer "trained on VP-HMDB51" (random here) evaluated on VP-UCF101's classes."""
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    classes = load_privacy_labels("ucf101").classes
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    train_lines, test_lines = [], []
    for action, stems in real_names("ucf101", num_classes=2, per_class=3).items():
        train_lines += [f"{action}/{s}.avi {classes.index(action) + 1}" for s in stems[:2]]
        test_lines.append(f"{action}/{stems[2]}.avi")
        for stem in stems:
            write_test_video(tmp_path / "UCF-101" / action / f"{stem}.avi", num_frames=40)
    (lists / "trainlist01.txt").write_text("\n".join(train_lines))
    (lists / "testlist01.txt").write_text("\n".join(test_lines))
    train = UCF101(tmp_path / "UCF-101", lists, subset="train", **CLIP)
    test = UCF101(tmp_path / "UCF-101", lists, subset="test", num_clips=1, num_crops=1, **CLIP)
    transform = stprivacy_transform(STPrivacy(MODEL_CFG))
    result = run_protocol("video", transform, train, test, MODEL_CFG, TRAIN_CFG, num_classes=101,
                          num_attributes=5, name="hmdb51->ucf101")
    tagged = cross_dataset_tag(result, trained_on="hmdb51", evaluated_on="ucf101")
    assert tagged["cross_dataset"] and tagged["trained_on"] == "hmdb51" and tagged["skipped"] == 0
    with pytest.raises(ValueError, match="protocol"):
        run_protocol("pixel", transform, train, test, MODEL_CFG, TRAIN_CFG, num_classes=101, num_attributes=5)


def test_cli_train_on_hmdb51_then_frame_level_cross_dataset_evaluate(tmp_path, hmdb, capsys):
    """`stprivacy train` on HMDB51-format videos (with a truncated one), then `stprivacy evaluate`
    of its checkpoint on UCF101-format videos with the frame-level protocol and face blackening."""
    from stprivacy.cli import main

    train, _ = hmdb
    hmdb_root = train.records[0].path.parents[1]
    clip_options = {"train_short_side": 36, "num_clips": 2, "num_crops": 1}
    run = {"model": {"preset": "small"},
           "train": {"dataset": "hmdb51", "batch_size": 2, "init_epochs": 1, "adv_epochs": 1, "eval_epochs": 1,
                     "progress": False, "recognizer": TRAIN_CFG.recognizer,
                     "dataset_kwargs": {"video_root": str(hmdb_root), "split_dir": str(hmdb_root.parent / "splits"),
                                        **clip_options}}}
    config = tmp_path / "run.json"
    config.write_text(json.dumps(run))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    result = report["evaluation"]["0.7"]
    assert result["trained_on"] == result["evaluated_on"] == "hmdb51" and result["skipped"] >= 1

    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    classes = load_privacy_labels("ucf101").classes
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    names = real_names("ucf101", num_classes=1, per_class=3)
    (action, stems), = names.items()
    (lists / "trainlist01.txt").write_text("".join(f"{action}/{s}.avi 1\n" for s in stems[:2]))
    (lists / "testlist01.txt").write_text(f"{action}/{stems[2]}.avi\n")
    for stem in stems:
        write_test_video(tmp_path / "UCF-101" / action / f"{stem}.avi", num_frames=40)
    ucf = {"video_root": str(tmp_path / "UCF-101"), "split_dir": str(lists), **clip_options}
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "adversarial.pt"), "--protocol", "frame",
                 "--eval-dataset", "ucf101", "--eval-dataset-kwargs", json.dumps(ucf), "--keep-ratios", "0.5",
                 "--baselines", "blacken_faces", "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "Evaluation on ucf101, methods trained on hmdb51 (cross-dataset: novel actions)" in out
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert list(evaluation["rows"]) == ["blacken_faces", "STPrivacy (alpha=0.5)"]
    assert "frame_cmap" in evaluation["rows"]["STPrivacy (alpha=0.5)"]["attackers"]["frame"]
    assert evaluation["dataset"]["evaluated_on"] == "ucf101" and evaluation["dataset"]["cross_dataset"]
    assert not (tmp_path / "eval" / "tradeoff.png").exists()  # a frame attacker has no top-1 to plot
