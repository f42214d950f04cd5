"""The validation split that chooses the attackers: carved from the training videos, never seen by
the anonymizer nor by any attacker's training, and the only thing a row's choice of attacker
looks at (the test numbers are reported, never compared)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset
from train_fixtures import one_thread

from stprivacy.attack.evaluate import summarize_attackers
from stprivacy.attack.verdict import SELECTION_RULE, combine_attackers, split_validation
from stprivacy.data import materialize
from stprivacy.data.video_dataset import collate_videos
from stprivacy.model import STPrivacy, STPrivacyConfig
from stprivacy.train import TrainConfig, build_dataset, evaluation, train_anonymizer
from stprivacy.train.evaluation import (
    attack_transformed,
    fit_recognizers,
    split_for_validation,
    stprivacy_transform,
    transform_dataset,
)

MODEL_CFG = STPrivacyConfig.small(embed_dim=24, num_heads=2, depth=1, pab_depth=1)  # 8 frames of 32 x 32
GEOMETRY = {"frames": MODEL_CFG.frames, "image_size": MODEL_CFG.image_size, "tubelet": MODEL_CFG.tubelet}
TRAIN_CFG = TrainConfig(batch_size=4, init_epochs=1, adv_epochs=1, eval_epochs=1, progress=False)
METRICS = ("top1", "f1", "cmap", "ap")

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _synthetic(split: str, train_videos: int = 10) -> TensorDataset:
    # 10 training videos: 2 in the validation split, 8 left, two batches of 4.
    return materialize(build_dataset("synthetic", split, GEOMETRY, train_videos=train_videos, test_videos=4))


# ---------------------------------------------------------------------------- split_validation


@pytest.mark.parametrize("num_videos,fraction,seed", [(20, 0.2, 0), (7, 0.3, 5), (2, 0.5, 1), (100, 0.25, 42)])
def test_split_is_deterministic_disjoint_sorted_and_covers_every_video(num_videos, fraction, seed):
    fit, val = split_validation(num_videos, fraction, seed)
    assert split_validation(num_videos, fraction, seed) == (fit, val)
    assert not set(fit) & set(val)
    assert sorted(fit + val) == list(range(num_videos))
    assert fit == sorted(fit) and val == sorted(val)


def test_the_seed_chooses_the_videos():
    splits = {tuple(split_validation(20, 0.2, seed)[1]) for seed in range(5)}
    assert len(splits) > 1
    # A permutation, not the head or tail of the list (real datasets are listed class by class).
    assert any(val not in ((0, 1, 2, 3), (16, 17, 18, 19)) for val in splits)


@pytest.mark.parametrize("num_videos,fraction,expected", [
    (20, 0.2, 4),    # round(4.0)
    (10, 0.25, 2),   # round(2.5): Python rounds half to even
    (9, 0.2, 2),     # round(1.8)
    (3, 0.01, 1),    # at least one validation video
    (4, 0.99, 3),    # at least one video left to fit on
    (2, 0.5, 1),
])
def test_split_sizes(num_videos, fraction, expected):
    fit, val = split_validation(num_videos, fraction, seed=0)
    assert len(val) == expected and len(fit) == num_videos - expected


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5, math.nan, True])
def test_split_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match=r"validation fraction must be in \(0, 1\)"):
        split_validation(10, fraction, seed=0)


@pytest.mark.parametrize("num_videos", [1, 0])
def test_split_needs_two_videos(num_videos):
    with pytest.raises(ValueError, match=f"at least 2 training videos, got {num_videos}"):
        split_validation(num_videos, 0.2, seed=0)


@pytest.mark.parametrize("value", [0, 0.0, 0.6, 1.0, -0.1, True, "x"])
def test_train_config_refuses_a_bad_validation_fraction(value):
    with pytest.raises(ValueError, match=r"validation_fraction must be in \(0, 0\.5\]"):
        TrainConfig(validation_fraction=value)


def test_train_config_takes_a_validation_fraction_up_to_a_half():
    assert TrainConfig().validation_fraction == 0.2
    assert TrainConfig(validation_fraction=0.5).validation_fraction == 0.5
    assert TrainConfig.from_dict(TrainConfig(validation_fraction=0.1).to_dict()).validation_fraction == 0.1


def test_split_for_validation_keeps_what_the_dataset_declares():
    videos = torch.arange(10.0)[:, None]
    data = TensorDataset(videos, torch.arange(10))
    data.num_classes, data.num_attributes = 4, 5
    fit, val = split_for_validation(data, TRAIN_CFG)
    expected_fit, expected_val = split_validation(10, TRAIN_CFG.validation_fraction, TRAIN_CFG.seed)
    assert isinstance(fit, TensorDataset) and fit.tensors[1].tolist() == expected_fit
    assert val.tensors[1].tolist() == expected_val
    assert (fit.num_classes, val.num_attributes) == (4, 5)

    lazy = _Recording(data)
    lazy.collate_fn = collate_videos  # what real video datasets declare: the parts must carry it
    fit, val = split_for_validation(lazy, TRAIN_CFG)
    assert fit.indices == expected_fit and val.indices == expected_val
    assert fit.collate_fn is val.collate_fn is collate_videos and val.num_classes == 4


# ---------------------------------------------------------------------------- choosing attackers


def _result(test: dict, validation: dict) -> dict:
    """An attacker's result: test metrics with ``ap`` and ``f1`` derived, and validation ones."""
    def full(m):
        return {"top1": m["top1"], "cmap": m["cmap"], "f1": m["cmap"] / 2, "ap": [m["cmap"]] * 5}
    return {**full(test), "validation": full(validation)}


def test_combine_attackers_chooses_on_validation_when_the_test_set_disagrees():
    # pixels leaks more on the TEST videos (0.8 > 0.6) but less on validation (0.5 < 0.7), and its
    # action recognizer is better on test (0.9 > 0.7) but worse on validation (0.4 < 0.6).
    pixels = _result({"top1": 0.9, "cmap": 0.8}, {"top1": 0.4, "cmap": 0.5})
    mask = _result({"top1": 0.7, "cmap": 0.6}, {"top1": 0.6, "cmap": 0.7})
    row = combine_attackers({"pixels": pixels, "mask": mask})
    assert row["privacy_from"] == "mask" and row["top1_from"] == "mask"
    assert (row["cmap"], row["f1"], row["ap"], row["top1"]) == (0.6, 0.3, [0.6] * 5, 0.7)  # mask's TEST numbers
    assert row["validation"]["cmap"] == 0.7 and row["validation"]["top1"] == 0.6
    assert row["selection"] == SELECTION_RULE
    assert row["attackers"]["pixels"]["cmap"] == 0.8  # the other attacker's numbers stay in the row


def test_combine_attackers_takes_privacy_and_top1_from_different_attackers():
    pixels = _result({"top1": 0.5, "cmap": 0.9}, {"top1": 0.8, "cmap": 0.3})
    mask = _result({"top1": 0.95, "cmap": 0.2}, {"top1": 0.7, "cmap": 0.4})
    row = combine_attackers({"pixels": pixels, "mask": mask})
    assert (row["privacy_from"], row["top1_from"]) == ("mask", "pixels")
    assert (row["cmap"], row["top1"]) == (0.2, 0.5)
    assert row["validation"] == {**mask["validation"], "top1": 0.8}


def test_combine_attackers_ties_go_to_the_attackers_order():
    pixels = _result({"top1": 0.5, "cmap": 0.3}, {"top1": 0.6, "cmap": 0.6})
    mask = _result({"top1": 0.9, "cmap": 0.9}, {"top1": 0.6, "cmap": 0.6})
    for results in ({"pixels": pixels, "mask": mask}, {"mask": mask, "pixels": pixels}):
        row = combine_attackers(results)
        assert (row["privacy_from"], row["top1_from"]) == ("pixels", "pixels")
        assert (row["cmap"], row["top1"]) == (0.3, 0.5)


def test_combine_attackers_needs_validation_metrics():
    pixels = _result({"top1": 0.9, "cmap": 0.8}, {"top1": 0.4, "cmap": 0.5})
    mask = {k: v for k, v in pixels.items() if k != "validation"}
    with pytest.raises(ValueError, match=r"attackers \['mask'\] have no validation metrics"):
        combine_attackers({"pixels": pixels, "mask": mask})


def _frame_result(test_cmap: float, validation_cmap: float) -> dict:
    """A frame attacker's result: per-frame and per-video privacy (no top-1)."""
    def full(cmap):
        return {"frame_cmap": cmap - 0.1, "frame_f1": 0.1, "frame_ap": [cmap - 0.1] * 5,
                "video_cmap": cmap, "video_f1": cmap / 2, "video_ap": [cmap] * 5}
    return {**full(test_cmap), "validation": full(validation_cmap), "skipped": 0}


def test_summarize_attackers_chooses_on_validation_across_video_and_frame_attackers():
    video = {**_result({"top1": 0.9, "cmap": 0.8}, {"top1": 0.4, "cmap": 0.5}), "kept": 0.7, "skipped": 1}
    video_imagenet = {**_result({"top1": 0.7, "cmap": 0.3}, {"top1": 0.6, "cmap": 0.2}), "kept": 0.7, "skipped": 0}
    frame = _frame_result(test_cmap=0.6, validation_cmap=0.7)
    row = summarize_attackers({"video": video, "frame": frame, "video_imagenet": video_imagenet})
    # Privacy: frame wins on validation (0.7 > 0.5) though video leaks more on test (0.8 > 0.6).
    assert row["privacy_from"] == "frame"
    assert (row["cmap"], row["f1"], row["ap"]) == (0.6, 0.3, [0.6] * 5)  # frame's per-video TEST numbers
    # Top-1: among the video attackers, video_imagenet wins on validation (0.6 > 0.4), not on test.
    assert (row["top1_from"], row["top1"]) == ("video_imagenet", 0.7)
    assert row["selection"] == SELECTION_RULE and row["kept"] == 0.7 and row["skipped"] == 1


def test_summarize_attackers_ties_go_to_the_attacker_named_first():
    video = {**_result({"top1": 0.9, "cmap": 0.8}, {"top1": 0.4, "cmap": 0.5}), "kept": 1.0}
    frame = _frame_result(test_cmap=0.6, validation_cmap=0.5)
    assert summarize_attackers({"video": video, "frame": frame})["privacy_from"] == "video"
    assert summarize_attackers({"frame": frame, "video": video})["privacy_from"] == "frame"
    alone = summarize_attackers({"frame": frame})
    assert alone["top1_from"] is None and alone["top1"] is None and alone["cmap"] == 0.6


# ---------------------------------------------------------------------------- the protocol


class _Recording(Dataset):
    """A dataset that records every index it is asked for."""

    def __init__(self, base: TensorDataset):
        self.base, self.read = base, set()
        self.num_classes, self.num_attributes = 4, 5

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        self.read.add(int(index))
        return self.base[index]


def test_the_anonymizer_never_reads_a_validation_video():
    data = _Recording(_synthetic("train"))
    fit, val = split_validation(len(data), TRAIN_CFG.validation_fraction, TRAIN_CFG.seed)
    torch.manual_seed(0)
    _, history = train_anonymizer(MODEL_CFG, TRAIN_CFG, data, num_classes=4, num_attributes=5)
    assert len(val) == 2 and data.read == set(fit)  # every fit video, in both phases; no validation one
    assert len(history["initialization"]["loss_action"]) == len(history["adversarial"]["loss_privacy"]) == 1


def test_attack_transformed_scores_every_attacker_on_the_validation_split(monkeypatch):
    train, test = _synthetic("train"), _synthetic("test")
    torch.manual_seed(0)
    transform = stprivacy_transform(STPrivacy(MODEL_CFG), keep_ratio=0.5)
    train_data = transform_dataset(transform, train, TRAIN_CFG)
    test_data = transform_dataset(transform, test, TRAIN_CFG)
    sizes = {"num_classes": 4, "num_attributes": 5, "attackers": ("pixels", "mask")}
    fitted_on = []  # the videos each attacker's recognizers train on

    def spy(data, *args, **kwargs):
        fitted_on.append(data.tensors[0])
        return fit_recognizers(data, *args, **kwargs)

    monkeypatch.setattr(evaluation, "fit_recognizers", spy)
    row = attack_transformed(train_data, test_data, MODEL_CFG, TRAIN_CFG, **sizes)
    assert set(row["attackers"]) == {"pixels", "mask"}
    fit, _ = split_validation(len(train_data), TRAIN_CFG.validation_fraction, TRAIN_CFG.seed)
    assert len(fitted_on) == 2 and all(torch.equal(videos, train_data.tensors[0][fit]) for videos in fitted_on)
    for result in row["attackers"].values():
        assert set(METRICS) <= set(result["validation"]) and len(result["validation"]["ap"]) == 5
        assert all(0 <= result["validation"][k] <= 1 for k in ("top1", "f1", "cmap"))
    assert row["selection"] == SELECTION_RULE

    # The attackers' training does not depend on the test videos: scored with the validation
    # videos as the test set, every attacker's test numbers are its validation numbers exactly.
    _, val_data = split_for_validation(train_data, TRAIN_CFG)
    again = attack_transformed(train_data, val_data, MODEL_CFG, TRAIN_CFG, **sizes)
    for attacker, result in again["attackers"].items():
        assert {k: result[k] for k in METRICS} == {k: result["validation"][k] for k in METRICS}, attacker
        assert result["validation"] == row["attackers"][attacker]["validation"], attacker
