"""``TrainConfig.reconstruction_epochs``: the start of an anonymizer without pretrained weights
(stpriv's): it learns to reproduce its training videos before phase 1, leaves the keep
predictors alone, and resumes exactly from a checkpoint taken inside it."""
from __future__ import annotations

import pytest
import torch

from stprivacy.model import STPrivacy, STPrivacyConfig
from stprivacy.train import TrainConfig, build_dataset, train_anonymizer, train_reconstruction
from stprivacy.train import anonymizer as anonymizer_module
from stprivacy.train.checkpoint import load_latest
from train_fixtures import TINY_MODEL, TINY_TRAIN, one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _setup(**train):
    model_cfg = STPrivacyConfig.small(**{k: v for k, v in TINY_MODEL.items() if k != "preset"})
    cfg = TrainConfig.from_dict({**TINY_TRAIN, "log": "none", **train})
    data = build_dataset("synthetic", "train", {"frames": model_cfg.frames, "image_size": model_cfg.image_size,
                                                 "tubelet": model_cfg.tubelet}, **cfg.dataset_kwargs)
    return model_cfg, cfg, data, {"num_classes": data.num_classes, "num_attributes": data.num_attributes}


def test_reconstruction_learns_the_video_and_leaves_the_predictors_alone():
    model_cfg, cfg, data, _ = _setup(reconstruction_epochs=6, base_lr=0.2)
    torch.manual_seed(0)
    model = STPrivacy(model_cfg)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    videos = torch.stack([data[i][0] for i in range(8)])
    with torch.no_grad():
        error_before = torch.nn.functional.mse_loss(model.eval()(videos, keep_all=True).video, videos).item()
    history = train_reconstruction(model, data, cfg)
    with torch.no_grad():
        error_after = torch.nn.functional.mse_loss(model.eval()(videos, keep_all=True).video, videos).item()
    losses = history["loss_reconstruction"]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
    assert error_after < 0.5 * error_before, (error_before, error_after)
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (".predictor." not in name), name


def test_keep_all_keeps_and_decodes_every_tubelet_in_training_mode():
    model_cfg, _, data, _ = _setup()
    model = STPrivacy(model_cfg).train()
    videos = torch.stack([data[i][0] for i in range(2)])
    out = model(videos, 0.3, keep_all=True)
    assert torch.equal(out.keep, torch.ones_like(out.keep)) and out.keep_masks == []
    assert out.video.shape == videos.shape and torch.isfinite(out.video).all()
    with torch.no_grad():
        assert torch.equal(out.video, model.eval()(videos, 1.0).video)


def test_train_anonymizer_runs_reconstruction_first_and_zero_skips_it():
    model_cfg, cfg, data, sizes = _setup(reconstruction_epochs=1)
    _, history = train_anonymizer(model_cfg, cfg, data, **sizes)
    assert list(history) == ["reconstruction", "initialization", "adversarial"]
    _, history = train_anonymizer(model_cfg, TrainConfig.from_dict({**cfg.to_dict(), "reconstruction_epochs": 0}),
                                  data, **sizes)
    assert list(history) == ["initialization", "adversarial"]


def test_a_run_stopped_inside_the_reconstruction_resumes_exactly(tmp_path, monkeypatch):
    # 16 training videos / batch 8: 2 steps per epoch, 4 in the 2 epochs; a checkpoint every step.
    model_cfg, cfg, data, sizes = _setup(reconstruction_epochs=2, checkpoint_every=1)
    full, history = train_anonymizer(model_cfg, cfg, data, out_dir=tmp_path / "full", **sizes)

    steps = {"n": 0}
    real_step = anonymizer_module.clip_and_step

    def stop_at_the_third_step(optimizer, cfg):
        steps["n"] += 1
        if steps["n"] == 3:
            raise KeyboardInterrupt
        real_step(optimizer, cfg)

    monkeypatch.setattr(anonymizer_module, "clip_and_step", stop_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        train_anonymizer(model_cfg, cfg, data, out_dir=tmp_path / "cut", **sizes)
    monkeypatch.setattr(anonymizer_module, "clip_and_step", real_step)
    left = load_latest(tmp_path / "cut")
    assert left["phase"] == "reconstruction" and left["step"] == 2, left["progress"]

    resumed, history_resumed = train_anonymizer(model_cfg, cfg, data, out_dir=tmp_path / "cut", resume=True, **sizes)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    for phase, values in history.items():
        assert {k: v for k, v in history_resumed[phase].items() if k != "seconds"} == \
            {k: v for k, v in values.items() if k != "seconds"}, phase


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_reconstruction_epochs_must_be_a_count(bad):
    with pytest.raises(ValueError, match="reconstruction_epochs"):
        TrainConfig(reconstruction_epochs=bad)
