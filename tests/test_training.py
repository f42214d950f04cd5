"""Training: config, schedule, checkpoints, and a tiny end-to-end run of all three phases."""
import dataclasses
import math
import random

import numpy as np
import pytest
import torch

from stprivacy.data import materialize
from stprivacy.model import STPrivacyConfig
from stprivacy.train import (
    TrainConfig,
    build_dataset,
    evaluate_baseline,
    evaluate_stprivacy,
    get_lr,
    load_checkpoint,
    save_checkpoint,
    train_adversarial,
    train_anonymizer,
)
from stprivacy.train.checkpoint import rng_state, set_rng_state
from stprivacy.train.common import make_optimizer, privacy_adversary_loss

TINY_MODEL = STPrivacyConfig.small(embed_dim=24, num_heads=2, depth=1, pab_depth=1)
GEOMETRY = {"frames": TINY_MODEL.frames, "image_size": TINY_MODEL.image_size, "tubelet": TINY_MODEL.tubelet}


def _tiny_cfg(**overrides):
    base = dict(batch_size=8, base_lr=0.5, init_epochs=1, adv_epochs=1, eval_epochs=1, progress=False,
                recognizer=dict(embed_dim=24, num_heads=2, depth=1), dataset_kwargs=dict(train_videos=20, test_videos=8))
    return TrainConfig(**{**base, **overrides})


def test_config_round_trip_and_errors():
    cfg = _tiny_cfg(eval_keep_ratios=[0.5, 0.7])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig keys: \\['epochs'\\]"):
        TrainConfig.from_dict({"epochs": 3})
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="privacy_adversary"):
        TrainConfig(privacy_adversary="gradient_reversal")
    with pytest.raises(ValueError, match="eval_keep_ratios"):
        TrainConfig(eval_keep_ratios=[0.0])
    with pytest.raises(ValueError, match="base_lr"):
        TrainConfig(base_lr=float("nan"))


def test_lr_scaling_and_cosine_schedule():
    assert TrainConfig(base_lr=1e-3, batch_size=64).peak_lr == pytest.approx(1e-3 * 64 / 512)
    peak, total, warmup, floor = 1.0, 100, 10, 0.01
    lrs = [get_lr(s, total, peak, warmup, floor) for s in range(total + 5)]
    assert lrs[0] == pytest.approx(0.1) and lrs[warmup - 1] == pytest.approx(peak)
    assert lrs[warmup] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))
    assert lrs[total] == pytest.approx(floor) and lrs[-1] == pytest.approx(floor)
    mid = warmup + (total - warmup) // 2
    assert lrs[mid] == pytest.approx(floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * 0.5)))


def test_weight_decay_skips_biases_norms_and_position_embeddings():
    from stprivacy.model import STPrivacy

    model = STPrivacy(TINY_MODEL)
    groups = make_optimizer([model], _tiny_cfg()).param_groups  # per role (predictor / backbone), decay or not
    decay = [p for g in groups if g["weight_decay"] == 0.05 for p in g["params"]]
    no_decay = [p for g in groups if g["weight_decay"] == 0.0 for p in g["params"]]
    assert any(p is model.embed.pos_embed for p in no_decay)
    assert all(p.dim() >= 2 for p in decay) and all(p.dim() < 2 or p is model.embed.pos_embed for p in no_decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_privacy_adversary_losses():
    logits = torch.randn(6, 5)
    privacy = torch.randint(2, (6, 5)).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, privacy)
    assert privacy_adversary_loss(logits, privacy, "negative_bce") == pytest.approx(-bce.item())
    # The entropy adversary is bounded: at best every attribute is a coin flip.
    assert privacy_adversary_loss(torch.zeros(6, 5), privacy, "entropy") == pytest.approx(-math.log(2))
    assert privacy_adversary_loss(logits.sign() * 20, privacy, "entropy") > -1e-6
    per_clip = privacy_adversary_loss(logits, privacy, "entropy", reduction="none")
    assert per_clip.shape == (6,) and per_clip.mean() == pytest.approx(
        privacy_adversary_loss(logits, privacy, "entropy").item())
    with pytest.raises(ValueError, match="'negative_bce' or 'entropy'"):
        privacy_adversary_loss(logits, privacy, "uniform")


def test_removed_options_read_from_old_configs_only_where_they_were_off():
    """Probes' options that did not help are gone (docs/demo_results.md); a checkpoint of an
    earlier version, which stores them at their defaults, still loads."""
    old = {**_tiny_cfg().to_dict(), "adversarial_lr_scale": 1.0, "privacy_restart_epochs": 0}
    assert TrainConfig.from_dict(old) == _tiny_cfg()
    for name, value in (("adversarial_lr_scale", 10.0), ("privacy_restart_epochs", 1)):
        with pytest.raises(ValueError, match=f"{name}={value!r} is no longer supported"):
            TrainConfig.from_dict({**old, name: value})
    for name, value in (("privacy_adversary", "uniform"), ("adversarial_trains", "pab_and_predictors")):
        with pytest.raises(ValueError, match=name):
            _tiny_cfg(**{name: value})


def test_checkpoint_round_trip_is_atomic_and_safe(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    state = {"phase": "adversarial", "epoch": 2, "step": 10, "model": model.state_dict(),
             "config": {"train": _tiny_cfg().to_dict()}, "rng": rng_state()}
    path = save_checkpoint(tmp_path / "ckpt.pt", state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary file left behind
    loaded = load_checkpoint(path)
    assert loaded["phase"] == "adversarial" and loaded["epoch"] == 2
    torch.testing.assert_close(loaded["model"]["weight"], model.weight.detach())
    assert TrainConfig.from_dict(loaded["config"]["train"]) == _tiny_cfg()
    # Restoring the RNG states replays the same draws from torch, numpy and random.
    set_rng_state(loaded["rng"])
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(loaded["rng"])
    second = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2]


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_loader_refuses_code_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"phase": "x", "payload": _Payload()}, bad)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(bad)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="not an stprivacy checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_data_factory():
    train = build_dataset("synthetic", "train", GEOMETRY, train_videos=5, test_videos=3)
    test = build_dataset("synthetic", "test", GEOMETRY, train_videos=5, test_videos=3)
    assert len(train) == 5 and len(test) == 3
    assert train[0][0].shape == (3, TINY_MODEL.frames, TINY_MODEL.image_size, TINY_MODEL.image_size)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("kinetics", "train", GEOMETRY)
    with pytest.raises(ValueError, match="split"):
        build_dataset("synthetic", "val", GEOMETRY)
    with pytest.raises(ValueError, match="bad dataset_kwargs"):
        build_dataset("synthetic", "train", GEOMETRY, resolution=3)


def test_three_phases_end_to_end(tmp_path):
    cfg = _tiny_cfg()
    train = materialize(build_dataset("synthetic", "train", GEOMETRY, **cfg.dataset_kwargs))
    test = materialize(build_dataset("synthetic", "test", GEOMETRY, **cfg.dataset_kwargs))
    sizes = dict(num_classes=4, num_attributes=5)
    torch.manual_seed(cfg.seed)
    from stprivacy.model import STPrivacy

    untrained = STPrivacy(TINY_MODEL).state_dict()
    model, history = train_anonymizer(TINY_MODEL, cfg, train, out_dir=tmp_path, **sizes)
    # Phases 1 and 2 ran, moved the weights and left a checkpoint each.
    assert set(history) == {"initialization", "adversarial"}
    assert len(history["adversarial"]["loss_privacy"]) == cfg.adv_epochs
    assert not torch.equal(untrained["embed.proj.weight"], model.state_dict()["embed.proj.weight"])
    for phase, name in (("initialization", "initialization.pt"), ("adversarial", "adversarial.pt")):
        ckpt = load_checkpoint(tmp_path / name)
        assert ckpt["phase"] == phase and ckpt["epoch"] == 1 and ckpt["step"] == 2
        assert STPrivacyConfig.from_dict(ckpt["config"]["model"]) == TINY_MODEL
        assert set(ckpt["optimizer"]) >= {"anonymizer"}
    torch.testing.assert_close(load_checkpoint(tmp_path / "adversarial.pt")["model"]["embed.proj.weight"],
                               model.state_dict()["embed.proj.weight"])
    # Phase 3: fresh recognizers on transformed data, at two deployment keep ratios.
    results = evaluate_stprivacy(model, cfg, train, test, keep_ratios=[0.5, 1.0], **sizes)
    assert set(results) == {"0.5", "1"}
    assert results["0.5"]["kept"] == pytest.approx(2 / 16)  # floor(16 * 0.5**3) = 2 of 16 per step
    assert results["1"]["kept"] == 1.0
    for r in results.values():
        assert 0 <= r["top1"] <= 1 and 0 <= r["f1"] <= 1 and 0 <= r["cmap"] <= 1
    blur = evaluate_baseline("blur_strong", TINY_MODEL, cfg, train, test, **sizes)
    assert blur["kept"] == 1.0 and 0 <= blur["cmap"] <= 1


def test_ablations_train():
    # 10 videos: 8 outside the validation split, one batch of 8 per epoch (fewer would train no step).
    cfg = _tiny_cfg(dataset_kwargs=dict(train_videos=10, test_videos=8))
    train = materialize(build_dataset("synthetic", "train", GEOMETRY, **cfg.dataset_kwargs))
    sizes = dict(num_classes=4, num_attributes=5)
    no_pab, history = train_anonymizer(dataclasses.replace(TINY_MODEL, use_pab=False), cfg, train, **sizes)
    video = train.tensors[0][:2]
    out = no_pab(video)
    # Sparsification only: kept tubelets are the raw pixels, dropped ones black.
    mask = no_pab.keep_to_pixels(out.keep)
    torch.testing.assert_close(out.video, video * mask)
    no_drop, history = train_anonymizer(dataclasses.replace(TINY_MODEL, alpha=1.0, use_psb=False), cfg, train,
                                        **sizes)
    assert history["initialization"]["loss_spars"] == [0.0]
    assert bool((no_drop(video).keep == 1).all())


@pytest.mark.parametrize("scope", ["pab", "all"])
def test_adversarial_phase_trains_what_its_scope_says(scope):
    """The release freezes the sparsification in the adversarial phase: with "pab" only the
    anonymization block moves; "all" moves the keep predictors, the tokenizer and the PSBs'
    blocks too. The flags come back after."""
    from stprivacy.model import STPrivacy, VideoClassifier

    cfg = _tiny_cfg(adv_epochs=1, adversarial_trains=scope)
    train_set = build_dataset("synthetic", "train", GEOMETRY, **cfg.dataset_kwargs)
    torch.manual_seed(0)
    model = STPrivacy(TINY_MODEL)
    recognizers = [VideoClassifier.from_config(TINY_MODEL, n, multilabel=m, **cfg.recognizer)
                   for n, m in ((train_set.num_classes, False), (train_set.num_attributes, True))]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_adversarial(model, *recognizers, train_set, cfg)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("pab.") for name in moved)
    assert any(".predictor." in name for name in moved) is (scope != "pab")
    assert all(name.startswith("pab.") for name in moved) is (scope == "pab")
    assert any(name.startswith("embed.") for name in moved) is (scope == "all")
    assert all(p.requires_grad for p in model.parameters())


def test_adversarial_phase_without_anything_to_train():
    """Sparsification only under the release's freezing: the anonymizer has no PAB, so nothing of
    it learns; the recognizers still train on its output."""
    from stprivacy.model import STPrivacy, VideoClassifier

    cfg = _tiny_cfg(adv_epochs=1)
    model_cfg = dataclasses.replace(TINY_MODEL, use_pab=False)
    train_set = build_dataset("synthetic", "train", {"frames": model_cfg.frames, "image_size": model_cfg.image_size,
                                                     "tubelet": model_cfg.tubelet}, **cfg.dataset_kwargs)
    model = STPrivacy(model_cfg)
    action, privacy = (VideoClassifier.from_config(model_cfg, n, multilabel=m, **cfg.recognizer)
                       for n, m in ((train_set.num_classes, False), (train_set.num_attributes, True)))
    before = [p.detach().clone() for p in model.parameters()]
    rec_before = [p.detach().clone() for p in privacy.parameters()]
    history = train_adversarial(model, action, privacy, train_set, cfg)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert not all(torch.equal(p, b) for p, b in zip(privacy.parameters(), rec_before))
    assert len(history["loss_privacy"]) == 1


def test_initialization_can_keep_the_pab_at_its_identity_start():
    """initialization_trains='sparsifier': phase 1 moves the predictors, not the residual PAB, whose
    zero head makes the output the sparsified video; without pab_residual the option is refused."""
    from stprivacy.model import STPrivacy, VideoClassifier
    from stprivacy.train import train_initialization

    cfg = _tiny_cfg(initialization_trains="sparsifier")
    model_cfg = dataclasses.replace(TINY_MODEL, pab_residual=True)
    train_set = build_dataset("synthetic", "train", GEOMETRY, **cfg.dataset_kwargs)
    model = STPrivacy(model_cfg)
    recognizer = VideoClassifier.from_config(model_cfg, train_set.num_classes, **cfg.recognizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_initialization(model, recognizer, train_set, cfg)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved and not any(name.startswith("pab.") for name in moved)
    assert any(".predictor." in name for name in moved)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="pab_residual"):
        train_initialization(STPrivacy(TINY_MODEL), recognizer, train_set, cfg)
