"""Bad input a user can reach gives a clear error naming what is wrong: config files, command-line
options, videos fed to the model, and a loss that turns NaN during training."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from stprivacy.attack.verdict import split_validation
from stprivacy.cli import main as cli_main
from stprivacy.model import STPrivacy, STPrivacyConfig
from stprivacy.train import TrainConfig, build_dataset, train_anonymizer
from stprivacy.train.checkpoint import load_latest
from stprivacy.train.distributed import ResumableBatches
from stprivacy.train.loop import NonFiniteLossError
from train_fixtures import TINY_MODEL, TINY_TRAIN, one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _run_cli(tmp_path, capsys, config: dict | str, *extra: str) -> str:
    path = tmp_path / "run.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    code = cli_main(["train", "--config", str(path), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("model, train, message", [
    ({}, {"epochs": 3}, r"unknown TrainConfig keys: \['epochs'\]"),
    ({"preset": "small", "image_size": 30}, {}, r"image_size \(30\) must be divisible by the tubelet's spatial size"),
    ({"preset": "small", "frames": 7}, {}, r"frames \(7\) must be divisible by the tubelet's time size"),
    ({"preset": "small", "colour": 3}, {}, r"unknown STPrivacyConfig keys: \['colour'\]"),
    ({"preset": "huge"}, {}, r"unknown model preset 'huge'"),
    ({}, {"init_epochs": -1}, r"init_epochs must be an int >= 0, got -1"),
    ({}, {"batch_size": 0}, r"batch_size must be a positive int"),
    ({}, {"batch_size": 6, "grad_accum_steps": 4}, r"batch_size \(6\) must be divisible by grad_accum_steps \(4\)"),
    ({}, {"precision": "fp8"}, r"precision must be 'fp32' or 'bf16'"),
    ({}, {"log": "wandb"}, r"log must be 'none', 'csv' or 'tensorboard'"),
    ({}, {"device": "gpu"}, r"device must be 'cpu', 'cuda' or 'cuda:<index>'"),
    ({}, {"base_lr": float("nan")}, r"base_lr must be a finite number"),
    ({}, {"dataset": "kinetics"}, r"unknown dataset 'kinetics'"),
])
def test_config_errors(tmp_path, capsys, model, train, message):
    err = _run_cli(tmp_path, capsys, {"model": model or {"preset": "small"}, "train": train})
    assert "stprivacy train: error:" in err
    assert __import__("re").search(message, err), err


def test_config_file_errors(tmp_path, capsys):
    assert "is not valid JSON" in _run_cli(tmp_path, capsys, "{model: }")
    assert "unknown sections" in _run_cli(tmp_path, capsys, {"model": {}, "optim": {}})
    code = cli_main(["train", "--config", str(tmp_path / "missing.json")])
    assert code == 2 and "config file not found" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--grad-accum", "0"), ("--seed", "-1"), ("--precision", "fp16"),
                                         ("--checkpoint-every", "x"), ("--grad-clip", "-1")])
def test_command_line_errors(tmp_path, capsys, flag, value):
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--config", str(tmp_path / "run.json"), flag, value])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_command_line_override_is_validated_like_the_config(tmp_path, capsys):
    err = _run_cli(tmp_path, capsys, {"train": {"batch_size": 6}}, "--grad-accum", "4")
    assert "batch_size (6) must be divisible by grad_accum_steps (4)" in err


def test_resume_with_a_different_config_is_refused(tmp_path):
    model_cfg = STPrivacyConfig.small(**{k: v for k, v in TINY_MODEL.items() if k != "preset"})
    cfg = TrainConfig.from_dict({**TINY_TRAIN, "init_epochs": 1, "adv_epochs": 0, "log": "none"})
    data = _dataset(model_cfg, cfg)
    sizes = {"num_classes": data.num_classes, "num_attributes": data.num_attributes}
    train_anonymizer(model_cfg, cfg, data, out_dir=tmp_path, **sizes)
    changed = TrainConfig.from_dict({**cfg.to_dict(), "base_lr": 0.5})
    with pytest.raises(ValueError, match=r"cannot resume: the train config differs .* in \['base_lr'\]"):
        train_anonymizer(model_cfg, changed, data, out_dir=tmp_path, resume=True, **sizes)


@pytest.mark.parametrize("video, error, message", [
    (torch.rand(2, 3, 8, 32), ValueError, r"video must be \[B, C, T, H, W\] = \[B, 3, 8, 32, 32\]"),
    (torch.rand(2, 3, 6, 32, 32), ValueError, r"got \(2, 3, 6, 32, 32\)"),
    (torch.rand(2, 3, 8, 24, 24), ValueError, r"= \[B, 3, 8, 32, 32\]"),
    (torch.rand(0, 3, 8, 32, 32), ValueError, r"B >= 1"),
    (torch.randint(0, 255, (2, 3, 8, 32, 32), dtype=torch.uint8), TypeError, r"floating-point tensor"),
    ([[0.0]], TypeError, r"video must be a torch.Tensor"),
])
def test_model_rejects_bad_videos(video, error, message):
    model = STPrivacy(STPrivacyConfig.small(**{k: v for k, v in TINY_MODEL.items() if k != "preset"}))
    with pytest.raises(error, match=message):
        model(video)


class _PoisonedVideos(Dataset):
    """The synthetic benchmark with one NaN video, as a broken decoder or augmentation could yield."""

    def __init__(self, base, poisoned: int):
        self.base, self.poisoned = base, poisoned
        self.num_classes, self.num_attributes = base.num_classes, base.num_attributes

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        video, action, privacy = self.base[index]
        return (torch.full_like(video, float("nan")) if index == self.poisoned else video), action, privacy


def _dataset(model_cfg, cfg):
    geometry = {"frames": model_cfg.frames, "image_size": model_cfg.image_size, "tubelet": model_cfg.tubelet}
    return build_dataset(cfg.dataset, "train", geometry, **cfg.dataset_kwargs)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model_cfg = STPrivacyConfig.small(**{k: v for k, v in TINY_MODEL.items() if k != "preset"})
    cfg = TrainConfig.from_dict({**TINY_TRAIN, "dataset_kwargs": {"train_videos": 40, "test_videos": 8},
                                 "init_epochs": 1, "checkpoint_every": 1, "log": "none"})
    base = _dataset(model_cfg, cfg)
    # The anonymizer trains on the 32 videos outside the validation split, in batches of positions
    # in that part: poison a video of the 3rd of 4 batches, so steps 1 and 2 succeed and are checkpointed.
    fit, _ = split_validation(len(base), cfg.validation_fraction, cfg.seed)
    batches = ResumableBatches(len(fit), cfg.batch_size, 1, seed=cfg.seed * 7919 + 1).epoch(0)
    data = _PoisonedVideos(base, fit[batches[2][0]])
    with pytest.raises(NonFiniteLossError, match=r"initialization phase at step 3 \(epoch 1, batch 3\)"):
        train_anonymizer(model_cfg, cfg, data, out_dir=tmp_path, num_classes=base.num_classes,
                         num_attributes=base.num_attributes)
    last = load_latest(tmp_path)
    assert last["step"] == 2 and last["progress"]["batch"] == 2
    assert all(torch.isfinite(t).all() for t in last["model"].values())
