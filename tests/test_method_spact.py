"""SPAct as a learned comparison method: the UNet's geometry, the loss pieces against hand
computations, the views, the min-max's directions, and a tiny seeded training run end to end."""
import math

import pytest
import torch
from torch.utils.data import Dataset
from train_fixtures import one_thread

from stprivacy.methods.learned import (
    MethodContext,
    get_method,
    load_method_checkpoint,
    train_method,
)
from stprivacy.methods.spact import (
    FrameEncoder,
    SPActConfig,
    UNetAnonymizer,
    anonymizer_step,
    augment,
    build,
    contrastive_views,
    nt_xent,
    privacy_step,
    target_step,
)
from stprivacy.model import STPrivacyConfig
from stprivacy.train import TrainConfig, build_dataset

MODEL_CFG = STPrivacyConfig.small(embed_dim=24, num_heads=2, depth=1, pab_depth=1, num_psb=2)
TINY = {"width": 4, "depth": 1, "init_epochs": 1, "encoder_width": 4, "projection_hidden": 16, "projection_dim": 8,
        "privacy_epochs": 1, "target_epochs": 1, "epochs": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


def _train_cfg(seed=0):
    return TrainConfig(batch_size=8, recognizer={"embed_dim": 24, "num_heads": 2, "depth": 1}, progress=False,
                       seed=seed)


def _train_set():
    """20 videos: train_method leaves out the validation split (20%), 16 remain, 2 batches an epoch."""
    geometry = {"frames": 8, "image_size": 32, "tubelet": (2, 8, 8)}
    return build_dataset("synthetic", "train", geometry, train_videos=20, test_videos=8, num_classes=4)


def _video(shape=(2, 3, 8, 32, 32), seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- config


def test_config_round_trips_and_names_bad_fields():
    cfg = SPActConfig(width=12, lr=3e-4)
    assert SPActConfig.from_dict(cfg.to_dict()) == cfg
    assert get_method("spact").config_class is SPActConfig
    for bad in ({"width": 0}, {"depth": 1.5}, {"epochs": -1}, {"lr": 0.0}, {"temperature": float("nan")},
                {"gray_prob": 1.5}, {"crop_min": 0.0}, {"jitter": 1.0}, {"action_weight": -1.0}, {"lr": True},
                {"erase_max": "0.1"}, {"action_weight": float("inf")}):
        with pytest.raises(ValueError, match=f"SPActConfig.{next(iter(bad))}"):
            SPActConfig(**bad)
    with pytest.raises(ValueError, match="unknown SPActConfig keys"):
        SPActConfig.from_dict({"widht": 8})


# ------------------------------------------------------------------------------------- the UNet


def test_demo_geometry_any_frame_count_output_in_unit_range():
    anonymizer = build(SPActConfig(), STPrivacyConfig.small()).eval()
    for frames in (8, 3):
        video = _video((2, 3, frames, 32, 32))
        out = anonymizer(video)
        assert out.shape == video.shape
        assert out.min() >= 0 and out.max() <= 1


def test_paper_geometry_forward():
    torch.manual_seed(0)
    cfg = SPActConfig(width=64, depth=4)
    anonymizer = build(cfg, STPrivacyConfig.vit_s()).eval()
    assert sum(p.numel() for p in anonymizer.parameters()) == 17_263_107  # the bilinear UNet's size
    with torch.no_grad():
        out = anonymizer(_video((1, 3, 16, 112, 112)))
    assert out.shape == (1, 3, 16, 112, 112) and out.min() >= 0 and out.max() <= 1


def test_frames_are_anonymized_independently():
    anonymizer = build(SPActConfig(width=4, depth=2), STPrivacyConfig.small()).eval()
    video = _video()
    out = anonymizer(video)
    torch.testing.assert_close(anonymizer(video[:, :, 2:3]), out[:, :, 2:3])
    torch.testing.assert_close(anonymizer.frames(video[:, :, 5]), out[:, :, 5])


def test_refuses_sizes_the_depth_does_not_divide():
    with pytest.raises(ValueError, match="image_size divisible by 64"):
        build(SPActConfig(depth=6), STPrivacyConfig.small())
    anonymizer = UNetAnonymizer(width=4, depth=2)
    with pytest.raises(ValueError, match="multiples of 4, got 30x32"):
        anonymizer(_video((1, 3, 2, 30, 32)))
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, T, H, W\]"):
        anonymizer(_video((1, 3, 32, 32)))


# ---------------------------------------------------------------------------------------- losses


def test_nt_xent_against_a_hand_computation():
    # Two images, 2-d unit embeddings; t = 0.5. Anchor a: -log(e^{s(a,p)/t} / sum_{k != a} e^{s(a,k)/t}).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[0.6, 0.8], [0.8, -0.6]], dtype=torch.float64)
    z = [row.tolist() for row in torch.cat([z1, z2])]
    partner = {0: 2, 1: 3, 2: 0, 3: 1}
    total = 0.0
    for a in range(4):
        sims = {k: sum(x * y for x, y in zip(z[a], z[k])) / 0.5 for k in range(4) if k != a}
        total -= sims[partner[a]] - math.log(sum(math.exp(s) for s in sims.values()))
    torch.testing.assert_close(nt_xent(z1, z2, 0.5), torch.tensor(total / 4, dtype=torch.float64))


def test_nt_xent_bounds():
    n, t = 5, 0.1
    same = torch.nn.functional.normalize(torch.ones(n, 3), dim=-1)
    # All embeddings equal: every anchor is a uniform guess among 2n - 1 (f_A's best case).
    torch.testing.assert_close(nt_xent(same, same, t), torch.tensor(math.log(2 * n - 1)))
    eye = torch.eye(n)
    # Partners equal, the rest orthogonal: the loss is the small -log(e^10 / (e^10 + 2n - 2)).
    expected = -10 + math.log(math.exp(10) + 2 * n - 2)
    torch.testing.assert_close(nt_xent(eye, eye, t), torch.tensor(expected))


# ----------------------------------------------------------------------------------------- views


def test_views_are_seeded_in_range_and_differ():
    images = 0.1 + 0.9 * _video((6, 3, 32, 32))[:, :, :, :]
    cfg = SPActConfig()
    a = augment(images, torch.Generator().manual_seed(1), cfg)
    b = augment(images, torch.Generator().manual_seed(1), cfg)
    c = augment(images, torch.Generator().manual_seed(2), cfg)
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_views_without_crop_jitter_gray_or_erase_are_the_image_or_its_mirror():
    images = _video((16, 3, 16, 16))
    cfg = SPActConfig(crop_min=1.0, jitter_prob=0.0, gray_prob=0.0, erase_prob=0.0)
    out = augment(images, torch.Generator().manual_seed(0), cfg)
    flipped = 0
    for x, y in zip(images, out):
        if torch.allclose(y, x, atol=1e-5):
            continue
        torch.testing.assert_close(y, x.flip(-1), atol=1e-5, rtol=0)
        flipped += 1
    assert 0 < flipped < 16  # p = 0.5 each


def test_greyscale_and_erasing_when_certain():
    images = 0.1 + 0.9 * _video((8, 3, 32, 32))
    gray = augment(images, torch.Generator().manual_seed(0), SPActConfig(gray_prob=1.0, erase_prob=0.0))
    torch.testing.assert_close(gray[:, 0], gray[:, 1])
    torch.testing.assert_close(gray[:, 1], gray[:, 2])
    assert (gray > 0).all()
    erased = augment(images, torch.Generator().manual_seed(0), SPActConfig(erase_prob=1.0))
    black = (erased == 0).all(dim=1).flatten(1)
    assert black.any(dim=1).all() and black.float().mean() < 0.05  # one small box in every image


def test_contrastive_views_take_frames_of_the_clips():
    video = _video((3, 3, 4, 16, 16))
    cfg = SPActConfig(frames_per_clip=2, crop_min=1.0, jitter_prob=0.0, gray_prob=0.0, erase_prob=0.0)
    v1, v2 = contrastive_views(video, torch.Generator().manual_seed(0), cfg)
    assert v1.shape == v2.shape == (6, 3, 16, 16)
    frames = video.transpose(1, 2)
    for i, view in enumerate(v1):
        clip = frames[i // 2]
        assert any(torch.allclose(view, f, atol=1e-5) or torch.allclose(view, f.flip(-1), atol=1e-5) for f in clip)


# ------------------------------------------------------------------------------ min-max directions


def _step_parts(action_weight, pretrain=True):
    torch.manual_seed(0)
    cfg = SPActConfig(**TINY, action_weight=action_weight, lr=1e-2)
    ctx = MethodContext(None, 4, 5, MODEL_CFG, _train_cfg())
    anonymizer = build(cfg, MODEL_CFG)
    encoder = FrameEncoder(cfg.encoder_width, cfg.projection_hidden, cfg.projection_dim)
    target = ctx.action_recognizer()
    video, action = _video((4, 3, 8, 32, 32)), torch.tensor([0, 1, 2, 3])
    views = contrastive_views(video, torch.Generator().manual_seed(0), cfg)
    # The recipe's identity initialisation (a random UNet in eval mode maps every clip alike).
    optimizer = ctx.optimizer([anonymizer], cfg.lr)
    for _ in range(20):
        loss = (anonymizer(video) - video).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if pretrain:  # a random f_B maps every frame alike: its NT-Xent starts at its maximum, log(2N - 1)
        opt_b, opt_t = ctx.optimizer([encoder], cfg.lr), ctx.optimizer([target], cfg.lr)
        for _ in range(40):  # enough for f_B's BatchNorm running statistics, which its eval mode uses
            privacy_step(anonymizer, encoder, opt_b, views, cfg)
            target_step(anonymizer, target, opt_t, video, action)
    return cfg, ctx, anonymizer, encoder, target, video, action, views


def test_anonymizer_step_raises_the_contrastive_loss_and_leaves_the_adversaries():
    cfg, ctx, anonymizer, encoder, target, video, action, views = _step_parts(action_weight=0.0)
    frozen = {k: v.clone() for k, v in {**encoder.state_dict(), **target.state_dict()}.items()}
    optimizer = ctx.optimizer([anonymizer], cfg.lr)
    ssl = [anonymizer_step(anonymizer, encoder, target, optimizer, video, action, views, cfg)[0] for _ in range(8)]
    assert ssl[-1] > ssl[0] + 0.05, ssl
    after = {**encoder.state_dict(), **target.state_dict()}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    assert all(p.requires_grad for p in [*encoder.parameters(), *target.parameters()])


def test_anonymizer_step_lowers_its_whole_objective():
    cfg, ctx, anonymizer, encoder, target, video, action, views = _step_parts(action_weight=1.0)
    optimizer = ctx.optimizer([anonymizer], cfg.lr)
    losses = []
    for _ in range(8):
        ssl, ce = anonymizer_step(anonymizer, encoder, target, optimizer, video, action, views, cfg)
        losses.append(-ssl + ce)
    assert losses[-1] < losses[0] - 0.05, losses


def test_adversary_steps_lower_their_losses_and_leave_the_anonymizer():
    cfg, ctx, anonymizer, encoder, target, video, action, views = _step_parts(action_weight=1.0, pretrain=False)
    before = {k: v.clone() for k, v in anonymizer.state_dict().items()}
    opt_b, opt_t = ctx.optimizer([encoder], cfg.lr), ctx.optimizer([target], cfg.lr)
    ssl = [privacy_step(anonymizer, encoder, opt_b, views, cfg) for _ in range(8)]
    ce = [target_step(anonymizer, target, opt_t, video, action) for _ in range(8)]
    assert ssl[-1] < ssl[0] - 0.05 and ce[-1] < ce[0] - 0.05, (ssl, ce)
    assert all(torch.equal(before[k], v) for k, v in anonymizer.state_dict().items())


# ------------------------------------------------------------------------------- tiny training run


class _PermutedPrivacy(Dataset):
    """The same videos and actions, the privacy labels of other videos."""

    def __init__(self, base):
        self.base, self.order = base, torch.randperm(len(base), generator=torch.Generator().manual_seed(3))

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        video, action, _ = self.base[i]
        return video, action, 1 - self.base[int(self.order[i])][2]


def _train(train_set, out_dir=None, **overrides):
    return train_method("spact", SPActConfig(**{**TINY, **overrides}), MODEL_CFG, _train_cfg(), train_set,
                        num_classes=4, num_attributes=5, out_dir=out_dir)


def test_tiny_training_round_trips_is_seeded_and_ignores_privacy_labels(tmp_path):
    train_set = _train_set()
    anonymizer, history = _train(train_set, out_dir=tmp_path)
    assert set(history) == {"identity_l1", "privacy_pretrain_ntxent", "target_pretrain_ce", "anonymizer_loss",
                            "anonymizer_ntxent", "anonymizer_ce", "privacy_ntxent", "target_ce"}
    assert len(history["identity_l1"]) == 1 and len(history["anonymizer_ntxent"]) == 2
    assert all(math.isfinite(v) for values in history.values() for v in values)  # 2 batches an epoch

    video = train_set[0][0].unsqueeze(0)
    method, loaded = load_method_checkpoint(tmp_path / "spact.pt")
    assert method.name == "spact" and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), anonymizer(video), rtol=0, atol=0)

    again, _ = _train(train_set)
    permuted, _ = _train(_PermutedPrivacy(train_set))
    state = anonymizer.state_dict()
    assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in permuted.state_dict().items())


def test_identity_initialisation_then_min_max_moves_the_anonymizer():
    train_set = _train_set()
    video = torch.stack([train_set[i][0] for i in range(4)])
    torch.manual_seed(0)
    untrained = build(SPActConfig(**TINY), MODEL_CFG).eval()
    initialised, history = _train(train_set, init_epochs=20, init_lr=1e-2, epochs=0)
    minimaxed, _ = _train(train_set, init_epochs=20, init_lr=1e-2)
    with torch.no_grad():
        error = {name: (model(video) - video).abs().mean().item()
                 for name, model in (("untrained", untrained), ("initialised", initialised))}
        moved = (minimaxed(video) - initialised(video)).abs().mean().item()
    assert error["initialised"] < 0.6 * error["untrained"], error
    assert history["identity_l1"][-1] < history["identity_l1"][0]
    assert history["anonymizer_loss"] == []
    assert moved > 1e-3
