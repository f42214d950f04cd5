"""VITA (stprivacy.methods.vita): the degradation net, the loss pieces, one adversarial step and a
tiny training run through the learned-method interface."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stprivacy.methods.learned import (
    MethodContext,
    get_method,
    load_method_checkpoint,
    train_method,
)
from stprivacy.methods.vita import (
    BUDGET_ARCHS,
    DegradationNet,
    FrameCNN,
    VITAConfig,
    budget_adversary_loss,
    budget_bce,
    budget_update,
    build_budget_models,
    build_vita,
    degradation_step,
    negative_entropy,
    restart_budgets,
    subsample,
    target_update,
    to_frames,
    video_logits,
)
from stprivacy.model import STPrivacyConfig
from stprivacy.train import TrainConfig, build_dataset

TINY_RECOGNIZER = {"embed_dim": 16, "num_heads": 2, "depth": 1, "norm_before_pool": True, "zero_head": False}
GEOMETRY = {"frames": 4, "image_size": 32, "tubelet": (2, 8, 8)}  # 4 frames: a cheaper tiny run


def _model_cfg(**overrides) -> STPrivacyConfig:
    return STPrivacyConfig.small(**overrides)


# ---------------------------------------------------------------------------------------------- config


def test_config_round_trip_and_registry():
    cfg = VITAConfig(gamma=1.0, num_budget=2)
    assert VITAConfig.from_dict(cfg.to_dict()) == cfg
    assert get_method("vita").config_class is VITAConfig
    with pytest.raises(ValueError, match="unknown VITAConfig keys"):
        VITAConfig.from_dict({"gama": 1.0})


@pytest.mark.parametrize("field, value, expected", [
    ("width", 0, "width"), ("residual_blocks", -1, "residual_blocks"), ("num_budget", len(BUDGET_ARCHS) + 1,
                                                                        "num_budget"),
    ("gamma", -0.5, "gamma"), ("gamma", float("nan"), "gamma"), ("target_threshold", 1.5, "target_threshold"),
    ("lr_degrad", 0.0, "lr_degrad"), ("grey", 1, "grey"), ("budget_frame_stride", 0, "budget_frame_stride"),
    ("restart_every", True, "restart_every"),
])
def test_config_rejects_bad_fields(field, value, expected):
    with pytest.raises(ValueError, match=expected):
        VITAConfig(**{field: value})


# ---------------------------------------------------------------------------------------------- f_d


def test_forward_demo_geometry_grey_in_range():
    torch.manual_seed(0)
    net = build_vita(VITAConfig(), _model_cfg())
    video = torch.rand(2, 3, 8, 32, 32)
    out = net(video)
    assert out.shape == video.shape
    assert out.min() >= 0 and out.max() <= 1
    # grey (the authors' default): the three channels are one
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    colour = build_vita(VITAConfig(grey=False), _model_cfg())(video)
    assert not torch.allclose(colour[:, 0], colour[:, 1])


def test_forward_is_framewise():
    torch.manual_seed(0)
    net = build_vita(VITAConfig(), _model_cfg()).eval()
    video = torch.rand(1, 3, 4, 32, 32)
    with torch.no_grad():
        whole = net(video)
        alone = net(video[:, :, 2:3])  # a frame on its own gives the same output: no temporal mixing
    torch.testing.assert_close(whole[:, :, 2:3], alone)


@pytest.mark.parametrize("width, blocks", [(8, 2), (32, 5)])  # the demo's sizes and the paper's
def test_forward_paper_geometry(width, blocks):
    torch.manual_seed(0)
    net = build_vita(VITAConfig(width=width, residual_blocks=blocks), _model_cfg(frames=16, image_size=112))
    with torch.no_grad():
        out = net(torch.rand(1, 3, 16, 112, 112))
    assert out.shape == (1, 3, 16, 112, 112)
    assert out.min() >= 0 and out.max() <= 1


def test_refuses_sides_not_divisible_by_4():
    net = DegradationNet(width=4, residual_blocks=0)
    with pytest.raises(ValueError, match="30x32"):
        net(torch.rand(1, 3, 2, 30, 32))
    with pytest.raises(ValueError, match="Tensor\\[B, 3, T, H, W\\]"):
        net(torch.rand(1, 1, 2, 32, 32))


# ---------------------------------------------------------------------------------------------- losses


def _binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_negative_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(9.0), -math.log(9.0)]])  # p = .5, .75 | .9, .1
    expected = torch.tensor([-(_binary_entropy(0.5) + _binary_entropy(0.75)) / 2, -_binary_entropy(0.9)])
    torch.testing.assert_close(negative_entropy(logits), expected)
    # saturated logits stay finite and tend to 0 (a sure model)
    assert negative_entropy(torch.tensor([[80.0, -80.0]])).abs().item() < 1e-6


def test_budget_adversary_loss_takes_the_most_confident_model_per_video():
    sure, unsure = math.log(9.0), 0.0  # p = .9 and p = .5
    model_a = torch.tensor([[sure], [unsure]])
    model_b = torch.tensor([[unsure], [sure]])
    # per video the max is the sure model's -H(.9), for both videos; a max over the batch means
    # (or over models of the mean) would mix in the unsure one
    expected = -_binary_entropy(0.9)
    torch.testing.assert_close(budget_adversary_loss([model_a, model_b]), torch.tensor(expected))


class _PixelMean(nn.Module):
    """A 'budget model' whose logit per attribute is a frame's mean pixel times a weight."""

    def __init__(self, weights):
        super().__init__()
        self.weights = torch.tensor(weights)

    def forward(self, frames):
        return frames.mean(dim=(1, 2, 3))[:, None] * self.weights


def test_video_logits_average_frames_and_bce_broadcasts_labels():
    budget = _PixelMean([1.0, -2.0])
    frames = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 1.0, 2.0, 4.0)])  # B=2 videos, T=2
    logits = video_logits(budget, frames, (2, 2))
    torch.testing.assert_close(logits, torch.tensor([[0.5, -1.0], [3.0, -6.0]]))
    privacy = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    frame_logits = torch.tensor([[0.0, 0.0], [1.0, -2.0], [2.0, -4.0], [4.0, -8.0]])
    frame_labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    expected = F.binary_cross_entropy_with_logits(frame_logits, frame_labels)
    torch.testing.assert_close(budget_bce(budget, frames, privacy, (2, 2)), expected)


def test_subsample_picks_strided_frames_per_clip():
    frames = torch.arange(2 * 8, dtype=torch.float32).reshape(16, 1, 1, 1)  # video b, frame t = 8b + t
    picked, bt = subsample(frames, (2, 8), stride=4, offset=5)
    assert bt == (2, 2)
    assert picked.flatten().tolist() == [1.0, 5.0, 9.0, 13.0]
    same, same_bt = subsample(frames, (2, 8), stride=1)
    assert same is frames and same_bt == (2, 8)


# ---------------------------------------------------------------------------------------------- updates


def _small_setup(seed=0):
    torch.manual_seed(seed)
    cfg = VITAConfig(width=4, residual_blocks=1, budget_width=4, num_budget=2)
    model_cfg = _model_cfg(frames=4, image_size=16)
    anonymizer = build_vita(cfg, model_cfg)
    train_cfg = TrainConfig(batch_size=4, recognizer=TINY_RECOGNIZER, progress=False)
    ctx = MethodContext(train_set=[], num_classes=4, num_attributes=3, model_cfg=model_cfg, cfg=train_cfg)
    target = ctx.action_recognizer()
    budgets = build_budget_models(cfg, 3)
    video = torch.rand(4, 3, 4, 16, 16)
    action = torch.tensor([0, 1, 2, 3])
    privacy = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    return anonymizer, target, budgets, ctx, video, action, privacy


def _budget_loss(anonymizer, budgets, video):
    frames, bt = to_frames(video)
    with torch.no_grad():
        degraded = anonymizer.degrade_frames(frames)
        return budget_adversary_loss([video_logits(b, degraded, bt) for b in budgets]).item()


def test_degradation_steps_make_the_budget_models_less_sure():
    anonymizer, target, budgets, _, video, action, privacy = _small_setup()
    # make the budget models confident first: they fit the labels of f_d(X)
    budget_opts = [torch.optim.Adam(b.parameters(), lr=1e-2) for b in budgets]
    for _ in range(30):
        frames, bt = to_frames(video)
        with torch.no_grad():
            degraded = anonymizer.degrade_frames(frames)
        budget_update(budgets, budget_opts, degraded, bt, privacy)
    budgets.eval()  # fixed batch norm statistics: only f_d moves the loss below
    target_before = {k: v.clone() for k, v in target.state_dict().items()}
    budgets_before = {k: v.clone() for k, v in budgets.state_dict().items()}
    before = _budget_loss(anonymizer, budgets, video)
    assert before > -0.65  # sure of something (-log 2 = -0.693 is a coin flip on every attribute)
    optimizer = torch.optim.Adam(anonymizer.parameters(), lr=1e-2)
    for _ in range(15):
        degradation_step(anonymizer, target, budgets, optimizer, video, action, gamma=10.0)
    after = _budget_loss(anonymizer, budgets, video)
    assert after < before - 0.02, (before, after)
    # f_T and the f_b are not moved by f_d's step
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in target_before.items())
    assert all(torch.equal(v, budgets.state_dict()[k]) for k, v in budgets_before.items())


def test_target_update_only_below_the_threshold():
    _, target, _, _, video, action, _ = _small_setup()
    optimizer = torch.optim.Adam(target.parameters(), lr=1e-3)
    before = [p.clone() for p in target.parameters()]
    _, accuracy, updated = target_update(target, optimizer, video, action, threshold=0.0)
    assert not updated and all(torch.equal(a, b) for a, b in zip(before, target.parameters()))
    _, _, updated = target_update(target, optimizer, video, action, threshold=accuracy + 0.01)
    assert updated and any(not torch.equal(a, b) for a, b in zip(before, target.parameters()))


def test_restart_gives_new_weights():
    anonymizer, _, budgets, ctx, _, _, _ = _small_setup()
    with torch.no_grad():
        for p in budgets.parameters():
            p.fill_(0.5)
    optimizers = restart_budgets(anonymizer, budgets, VITAConfig(restart_steps=0), ctx, iter(()))
    assert len(optimizers) == len(budgets)
    for budget in budgets:
        assert isinstance(budget, FrameCNN)
        assert not torch.all(budget.head.weight == 0.5)
        assert torch.all(budget.features[1].weight == 1.0)  # batch norm back to its init


# ---------------------------------------------------------------------------------------------- training


def _tiny_run(tmp_path, **overrides):
    model_cfg = _model_cfg(frames=GEOMETRY["frames"])
    settings = {"width": 4, "residual_blocks": 1, "budget_width": 4, "num_budget": 2, "identity_epochs": 1,
                "target_epochs": 1, "budget_epochs": 1, "adv_epochs": 2, "restart_every": 2, "restart_steps": 1}
    cfg = VITAConfig(**{**settings, **overrides})
    train_cfg = TrainConfig(batch_size=8, recognizer=TINY_RECOGNIZER, progress=False, seed=3)
    train_set = build_dataset("synthetic", "train", GEOMETRY, train_videos=16, test_videos=8, num_classes=4)
    return train_method("vita", cfg, model_cfg, train_cfg, train_set, num_classes=4, num_attributes=5,
                        out_dir=tmp_path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vita")
    anonymizer, history = _tiny_run(out)
    return anonymizer, history, out / "vita.pt"


def test_tiny_training_round_trips_and_is_deterministic(tiny_run, tmp_path):
    anonymizer, history, checkpoint = tiny_run
    assert set(history) == {"identity_mse", "target_ce", "target_acc", "budget_bce", "adv_loss", "adv_action_ce",
                            "adv_budget", "adv_budget_bce", "adv_target_acc", "adv_target_updates"}
    assert len(history["adv_loss"]) == 2 and len(history["identity_mse"]) == 1
    assert all(-math.log(2) - 1e-6 <= v <= 0 for v in history["adv_budget"])
    video = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    method, loaded = load_method_checkpoint(checkpoint)
    assert method.name == "vita"
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), anonymizer(video), rtol=0, atol=0)
    again, history_again = _tiny_run(tmp_path)
    assert history_again == history
    for (name, p), q in zip(anonymizer.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name


def test_tiny_training_adversarial_phase_moves_the_anonymizer(tiny_run, tmp_path):
    trained, _, _ = tiny_run
    pretrained_only, history = _tiny_run(tmp_path, adv_epochs=0)
    assert "adv_loss" not in history
    # same seed, same pretraining: every parameter of f_d differs only through the adversarial steps
    assert all(not torch.equal(p, q) for p, q in zip(trained.parameters(), pretrained_only.parameters()))
