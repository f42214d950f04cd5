"""Real-benchmark datasets: shipped labels, official split formats, missing/corrupt files, 5x3 views.

The videos are tiny files the tests write with PyAV under real HMDB51 / UCF101 names.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import torch

from stprivacy.data.folder_csv import FolderCSV
from stprivacy.data.hmdb51 import HMDB51, parse_hmdb51_splits
from stprivacy.data.pa_hmdb51 import PAHMDB51, load_pa_hmdb51_labels, video_level_labels
from stprivacy.data.privacy_labels import PRIVACY_ATTRIBUTES, load_privacy_labels, parse_label_csv
from stprivacy.data.ucf101 import UCF101, parse_ucf101_splits
from stprivacy.data.video_dataset import collate_videos, forward_views
from video_factory import real_names, truncate, write_test_video

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_label_files():
    hmdb, ucf = load_privacy_labels("hmdb51"), load_privacy_labels("ucf101")
    assert (len(hmdb), len(hmdb.classes)) == (6766, 51)
    assert (len(ucf), len(ucf.classes)) == (13320, 101)
    assert hmdb.attributes == ucf.attributes == PRIVACY_ATTRIBUTES
    # The positives per column documented in labels/README.md.
    assert hmdb.labels.sum(0).tolist() == [6109, 4194, 6195, 1815, 1431]
    assert ucf.labels.sum(0).tolist() == [12143, 7994, 11949, 3289, 3375]
    with pytest.raises(ValueError, match="dataset"):
        load_privacy_labels("kinetics")


def test_label_files_ship_with_the_package_and_their_license():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    labels_dir = ROOT / "stprivacy" / "data"
    shipped = {p.name for pattern in package_data["stprivacy.data"] for p in labels_dir.glob(pattern)}
    assert shipped == {"hmdb51_privacy_labels.csv", "ucf101_privacy_labels.csv", "LICENSE", "README.md"}
    assert "MIT License" in (labels_dir / "labels" / "LICENSE").read_text()


def test_label_csv_errors():
    with pytest.raises(ValueError, match="header"):
        parse_label_csv("name,face\na/b.mp4,1\n")
    with pytest.raises(ValueError, match="0 or 1"):
        parse_label_csv("video,face\na/b.mp4,2\n")
    with pytest.raises(ValueError, match="twice"):
        parse_label_csv("video,face\na/b.mp4,1\nc/b.avi,0\n")


@pytest.fixture(scope="module")
def hmdb_tree(tmp_path_factory):
    """2 classes x 5 real videos; split 1 tags 1,1,2,0 plus a listed-but-missing video, a listed
    video with no label row, and a truncated train file."""
    root = tmp_path_factory.mktemp("hmdb51")
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir()
    for action, stems in real_names("hmdb51", num_classes=2, per_class=5).items():
        tags = ["1", "1", "2", "0", "1"]  # the last one's file is never written: missing
        lines = [f"{stem}.avi {tag}" for stem, tag in zip(stems, tags)]
        lines.append(f"Not_In_The_Labels_{action}_u_nm_np1_fr_med_0.avi 2")
        (splits / f"{action}_test_split1.txt").write_text("\n".join(lines) + "\n")
        (splits / f"{action}_test_split2.txt").write_text("\n".join(f"{s}.avi 2" for s in stems) + "\n")
        for stem in stems[:4]:
            write_test_video(root / "videos" / action / f"{stem}.avi", num_frames=40)
        write_test_video(root / "videos" / action / f"Not_In_The_Labels_{action}_u_nm_np1_fr_med_0.avi")
    first_action = sorted(real_names("hmdb51", 1, 1))[0]
    truncate(root / "videos" / first_action / f"{real_names('hmdb51', 1, 2)[first_action][1]}.avi")
    return root


def test_hmdb51_split_parsing_and_joining(hmdb_tree):
    entries = parse_hmdb51_splits(hmdb_tree / "testTrainMulti_7030_splits", split=1)
    assert len(entries) == 2 * 5  # 4 tagged 1/2 + 1 unlabeled per class; tag 0 left out
    with pytest.warns(UserWarning) as caught:
        train = HMDB51(hmdb_tree / "videos", hmdb_tree / "testTrainMulti_7030_splits", split=1, subset="train")
    messages = " ".join(str(w.message) for w in caught)
    assert "2 videos of the split have no video file" in messages
    assert len(train) == 4  # 2 per class with a label row and a file (one of them truncated)
    assert sorted(r.action for r in train.records) == [0, 0, 1, 1]
    assert train.report.missing_label == [] and len(train.report.missing_file) == 2
    with pytest.warns(UserWarning, match="no privacy label"):
        test = HMDB51(hmdb_tree / "videos", hmdb_tree / "testTrainMulti_7030_splits", split=1, subset="test")
    assert len(test) == 2 and len(test.report.missing_label) == 2
    hmdb = load_privacy_labels("hmdb51")
    for record in test.records:
        assert torch.equal(record.privacy, hmdb.labels[hmdb.index()[record.path.stem]])
        assert hmdb.classes[record.action] == record.path.parent.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split2 = HMDB51(hmdb_tree / "videos", hmdb_tree / "testTrainMulti_7030_splits", split=2, subset="test")
    assert len(split2) == 8
    with pytest.raises(ValueError, match="_test_split3"):
        parse_hmdb51_splits(hmdb_tree / "testTrainMulti_7030_splits", split=3)


# Run in a fresh interpreter: forked DataLoader workers inherit the state of the process that
# forks them, and after the rest of the suite (CI, a loaded 2-core machine) a worker of this
# pytest process was twice seen waiting forever inside FFmpeg's swscale. The test is about
# counting skipped videos across workers, so it forks them from a clean process.
WORKERS_CHECK = """
import json, sys, warnings
from torch.utils.data import DataLoader
from stprivacy.data.hmdb51 import HMDB51
root = sys.argv[1]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    train = HMDB51(root + "/videos", root + "/testTrainMulti_7030_splits", subset="train")
loader = DataLoader(train, batch_size=2, num_workers=2, collate_fn=train.collate_fn, timeout=120)
batches = [b for b in loader if b is not None]
video, action, privacy = batches[0]
print(json.dumps({"videos": sum(len(b[0]) for b in batches), "skipped": train.num_skipped,
                  "summary": train.summary(), "shape": list(video.shape[1:]), "action": str(action.dtype),
                  "attributes": privacy.shape[1], "sizes": [train.num_classes, train.num_attributes]}))
"""


def test_truncated_video_is_skipped_and_counted_in_workers(hmdb_tree):
    res = subprocess.run([sys.executable, "-c", WORKERS_CHECK, str(hmdb_tree)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["videos"] == 3
    assert out["skipped"] == 1  # counted in a worker process, read in the parent
    assert "1 unreadable video loads skipped" in out["summary"]
    assert out["shape"] == [3, 16, 112, 112] and out["action"] == "torch.int64" and out["attributes"] == 5
    assert out["sizes"] == [51, 5]
    assert collate_videos([None, None]) is None


def test_forward_views_averages_logits_over_views():
    video = torch.randn(2, 15, 3, 4, 8, 8)
    fn = lambda clips: clips.mean(dim=(2, 3, 4))  # noqa: E731 - [B', 3] "logits"
    torch.testing.assert_close(forward_views(fn, video), video.mean(dim=(1, 3, 4, 5)))
    torch.testing.assert_close(forward_views(fn, video[:, 0]), fn(video[:, 0]))
    with pytest.raises(ValueError, match="V, 3, T"):
        forward_views(fn, torch.zeros(2, 3, 4))


def test_hmdb51_test_views_are_5_clips_by_3_crops(hmdb_tree):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = HMDB51(hmdb_tree / "videos", hmdb_tree / "testTrainMulti_7030_splits", subset="test")
    video, action, privacy = test[0]
    assert test.num_views == 15 and video.shape == (15, 3, 16, 112, 112)
    # Views are clip-major: the 3 crops of a clip share frames (red channel, frame-coded)...
    red = video[:, 0].mean(dim=(2, 3))  # [15, T]
    torch.testing.assert_close(red[0], red[2], atol=0.02, rtol=0)
    # ...and successive clips start later in the video (red grows with the frame index).
    assert red[0, 0] < red[3, 0] < red[6, 0] < red[9, 0] < red[12, 0]


@pytest.fixture(scope="module")
def ucf_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf101")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    classes = load_privacy_labels("ucf101").classes
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    names = real_names("ucf101", num_classes=2, per_class=3)
    train, test = [], []
    for action, stems in names.items():
        label = classes.index(action) + 1
        train += [f"{action}/{s}.avi {label}" for s in stems[:2]]
        test += [f"{action}/{stems[2]}.avi"]
        for stem in stems:
            write_test_video(root / "UCF-101" / action / f"{stem}.avi", num_frames=70)
    (lists / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")  # the official files use CRLF
    (lists / "testlist01.txt").write_text("\r\n".join(test) + "\r\n")
    return root


def test_ucf101_split_counts_and_labels(ucf_tree):
    entries = parse_ucf101_splits(ucf_tree / "ucfTrainTestlist", split=1)
    assert sum(s == "train" for _, s in entries.values()) == 4 and len(entries) == 6
    train = UCF101(ucf_tree / "UCF-101", ucf_tree / "ucfTrainTestlist", split=1, subset="train")
    test = UCF101(ucf_tree / "UCF-101", ucf_tree / "ucfTrainTestlist", split=1, subset="test")
    assert (len(train), len(test), train.rate, len(train.classes)) == (4, 2, 4, 101)
    video, action, privacy = train[0]
    assert video.shape == (3, 16, 112, 112) and train.classes[action] == train.records[0].path.parent.name
    assert privacy.shape == (5,)
    with pytest.raises(ValueError, match="missing official split list"):
        parse_ucf101_splits(ucf_tree / "ucfTrainTestlist", split=2)


def test_ucf101_rejects_a_label_that_disagrees_with_classind(ucf_tree, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 A\n2 B\n")
    (lists / "trainlist01.txt").write_text("A/v_A_g01_c01.avi 2\n")
    (lists / "testlist01.txt").write_text("")
    with pytest.raises(ValueError, match="disagrees"):
        parse_ucf101_splits(lists, 1)


def test_pa_hmdb51_video_level_rule(tmp_path):
    assert video_level_labels({"face": [[0, 9, 0], [10, 20, 2]], "gender": [[0, 20, [1, 2]]],
                               "nudity": [[0, 20, 0]], "skin_color": [], "relationship": [[0, 20, [0]]]}) == [
        0.0, 1.0, 1.0, 0.0, 0.0]  # skin_color, face, gender, nudity, relationship
    with pytest.raises(ValueError, match="start, end, value"):
        video_level_labels({"face": [[0, 1]]})
    hmdb = real_names("hmdb51", num_classes=1, per_class=2)
    (action, stems), = hmdb.items()
    annotations = tmp_path / "PrivacyAttributes"
    annotations.mkdir()
    spans = {a: [[0, 39, 1]] for a in PRIVACY_ATTRIBUTES} | {"review": False, "note": ""}
    (annotations / f"{action}.json").write_text(json.dumps({f"{s}.avi": spans for s in stems}))
    table = load_pa_hmdb51_labels(annotations)
    assert table.labels.tolist() == [[1.0] * 5] * 2
    write_test_video(tmp_path / "videos" / f"{stems[0]}.avi", num_frames=40)
    with pytest.warns(UserWarning, match="1 videos of the split have no video file"):
        dataset = PAHMDB51(tmp_path / "videos", annotations)
    assert len(dataset) == 1 and dataset.num_views == 15
    assert load_privacy_labels("hmdb51").classes[dataset.records[0].action] == action


def test_folder_csv_dataset(tmp_path):
    write_test_video(tmp_path / "clips" / "a.mp4", num_frames=20)
    write_test_video(tmp_path / "clips" / "sub" / "b.avi", num_frames=20)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("video,action,split,smile,glasses\na.mp4,talk,train,1,0\nsub/b.avi,walk,test,0,1\nc.mp4,walk,train,1,1\n")
    with pytest.warns(UserWarning, match="1 videos of the split have no video file"):
        train = FolderCSV(tmp_path / "clips", csv_path, subset="train")
    test = FolderCSV(tmp_path / "clips", csv_path, subset="test")
    assert train.attributes == ("smile", "glasses") and train.classes == test.classes == ("talk", "walk")
    assert len(train) == 1 and len(test) == 1 and test.records[0].action == 1
    video, action, privacy = train[0]
    assert video.shape == (3, 16, 112, 112) and privacy.tolist() == [1.0, 0.0]
    bad = tmp_path / "bad.csv"
    bad.write_text("video,smile\na.mp4,yes\n")
    with pytest.raises(ValueError, match="0 or 1"):
        FolderCSV(tmp_path / "clips", bad)
