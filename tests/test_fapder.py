"""FAPDER (paper Table 4, CelebV-HQ): configs/fapder.json on a small dataset of that shape (eight
expressions, five appearance attributes, no split column), the seeded 60/40 split, and
``stprivacy train`` / ``stprivacy evaluate`` through the config with tiny sizes."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from train_fixtures import TINY_MODEL, one_thread
from video_factory import write_test_video

from stprivacy.cli import main
from stprivacy.commands.train import load_run_config
from stprivacy.data.folder_csv import FolderCSV
from stprivacy.errors import ConfigError, DatasetError
from stprivacy.train import build_dataset

_one_thread = pytest.fixture(autouse=True)(one_thread)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fapder.json"
EXPRESSIONS = ("neutral", "happy", "sad", "anger", "fear", "surprise", "contempt", "disgust")
ATTRIBUTES = ("eyeglasses", "male", "young", "blond_hair", "bald")
NUM_VIDEOS = 10  # 6 train / 4 test at 60/40


@pytest.fixture(scope="module")
def celebvhq(tmp_path_factory) -> Path:
    """CelebV-HQ laid out for FAPDER: clips, and a CSV of expression + five attributes, no split."""
    root = tmp_path_factory.mktemp("celebvhq")
    lines = ["video,action," + ",".join(ATTRIBUTES)]
    for i in range(NUM_VIDEOS):
        attributes = [str((i >> bit) & 1) for bit in range(len(ATTRIBUTES))]
        lines.append(f"clip_{i}.mp4,{EXPRESSIONS[i % len(EXPRESSIONS)]}," + ",".join(attributes))
        write_test_video(root / "videos" / f"clip_{i}.mp4", num_frames=20)
    (root / "fapder.csv").write_text("\n".join(lines) + "\n")
    return root


def _tiny_config(path: Path, root: Path, **kwargs) -> Path:
    """configs/fapder.json with the user's paths and tiny sizes; the split and the rate stay its own."""
    data = json.loads(CONFIG.read_text())
    data["model"] = TINY_MODEL
    data["train"]["dataset_kwargs"].update({"video_root": str(root / "videos"), "csv_path": str(root / "fapder.csv"),
                                            "train_short_side": 36, "num_clips": 1, "num_crops": 1, **kwargs})
    data["train"].update(pretrained="", batch_size=4, init_epochs=1, adv_epochs=1, eval_epochs=1, device="cpu",
                         precision="fp32", num_workers=0, log="none", checkpoint_every=0, eval_keep_ratios=[0.7],
                         recognizer={"embed_dim": 24, "num_heads": 2, "depth": 1}, progress=False)
    path.write_text(json.dumps(data))
    return path


def test_the_config_is_the_recipe():
    model, train = load_run_config(CONFIG)
    assert (model.embed_dim, model.num_heads) == (384, 6)  # ViT-S, as the other real-dataset configs
    assert train.dataset == "folder_csv"
    assert {k: train.dataset_kwargs[k] for k in ("rate", "train_fraction", "split_seed")} == \
        {"rate": 2, "train_fraction": 0.6, "split_seed": 0}


def test_seeded_split_sizes_and_reproducibility(celebvhq, tmp_path):
    config = _tiny_config(tmp_path / "run.json", celebvhq)
    model, cfg = load_run_config(config)
    geometry = {"frames": model.frames, "image_size": model.image_size, "tubelet": model.tubelet}

    def names(subset: str, **kwargs) -> list[str]:
        dataset = build_dataset("folder_csv", subset, geometry, **{**cfg.dataset_kwargs, **kwargs})
        assert dataset.rate == 2 and dataset.classes == tuple(sorted(EXPRESSIONS))
        assert dataset.attributes == ATTRIBUTES and not dataset.multilabel_actions
        return [r.path.name for r in dataset.records]

    train, test = names("train"), names("test")
    assert (len(train), len(test)) == (6, 4)  # round(0.6 * 10) train, the rest test
    assert not set(train) & set(test) and len(set(train) | set(test)) == NUM_VIDEOS
    assert names("train") == train and names("test") == test  # the same seed, the same split
    other = names("train", split_seed=1)
    assert other != train and len(other) == 6


@pytest.mark.parametrize("kwargs, error, message", [
    ({"train_fraction": 1.0}, ConfigError, r"train_fraction must be a number in \(0, 1\)"),
    ({"train_fraction": 0}, ConfigError, r"train_fraction must be a number in \(0, 1\)"),
    ({"train_fraction": 0.01}, DatasetError, "each needs at least one"),
    ({"train_fraction": 0.6, "split_seed": -1}, ConfigError, "split_seed must be an integer >= 0"),
])
def test_bad_split_options_are_one_clear_error(celebvhq, kwargs, error, message):
    with pytest.raises(error, match=message):
        FolderCSV(celebvhq / "videos", celebvhq / "fapder.csv", **kwargs)


def test_train_fraction_with_a_split_column_is_refused(celebvhq, tmp_path, capsys):
    with_split = tmp_path / "split.csv"
    with_split.write_text("video,split,action,male\nclip_0.mp4,train,happy,1\nclip_1.mp4,test,sad,0\n")
    with pytest.raises(DatasetError, match="has a 'split' column"):
        FolderCSV(celebvhq / "videos", with_split, train_fraction=0.6)
    config = _tiny_config(tmp_path / "run.json", celebvhq, csv_path=str(with_split))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has a 'split' column" in err, err


def test_train_and_evaluate_through_the_config(celebvhq, tmp_path, capsys):
    config = _tiny_config(tmp_path / "run.json", celebvhq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
        report = json.loads((tmp_path / "run" / "report.json").read_text())
        assert report["config"]["train"]["dataset_kwargs"]["train_fraction"] == 0.6
        result = report["evaluation"]["0.7"]
        assert 0 <= result["top1"] <= 1 and "action_cmap" not in result and len(result["ap"]) == len(ATTRIBUTES)
        assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "adversarial.pt"), "--baselines", "raw",
                     "--out", str(tmp_path / "eval")]) == 0
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    dataset = evaluation["dataset"]
    assert (dataset["train_videos"], dataset["test_videos"]) == (6, 4)  # the checkpoint's config, the same split
    assert dataset["num_classes"] == len(EXPRESSIONS) and dataset["attributes"] == list(ATTRIBUTES)
    assert not dataset["multilabel_actions"]
    for row in evaluation["rows"].values():
        assert 0 <= row["top1"] <= 1 and 0 <= row["cmap"] <= 1
    assert "| video: top-1 ↑ |" in (tmp_path / "eval" / "evaluation.md").read_text()
