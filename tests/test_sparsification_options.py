"""The options that make STPrivacy train from scratch (docs/demo_results.md): the exact-budget
Gumbel top-k sampler, the sparsification warm-up, the residual PAB, input standardization, the
tie-free keep score, and the keep mask's gradient flowing only through attention."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from stprivacy.attack.verdict import split_validation
from stprivacy.model import STPrivacy, STPrivacyConfig
from stprivacy.model.layers import PIXEL_MEAN, PIXEL_STD, keep_to_pixels
from stprivacy.model.psb import keep_score, tokens_to_keep
from stprivacy.train import TrainConfig, build_dataset, train_anonymizer
from stprivacy.train.anonymizer import _warmup_schedule
from stprivacy.train.config import sparsity_warmup
from train_fixtures import TINY_TRAIN, one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


def tiny_config(**overrides) -> STPrivacyConfig:
    # L = 2 time steps of N = 16 tubelets.
    base = dict(frames=4, image_size=16, tubelet=(2, 4, 4), embed_dim=24, num_heads=2, depth=1, num_psb=3,
                pab_depth=1, mlp_ratio=2.0, alpha=0.7)
    return STPrivacyConfig.small(**{**base, **overrides})


def make_model(seed: int = 0, **overrides) -> STPrivacy:
    torch.manual_seed(seed)
    return STPrivacy(tiny_config(**overrides))


def random_video(cfg: STPrivacyConfig, batch: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, cfg.in_chans, cfg.frames, cfg.image_size, cfg.image_size, generator=g)


# ---- the exact-budget sampler -----------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.9, 0.7, 0.5])
def test_gumbel_topk_sampler_keeps_the_deployment_count_in_training(alpha):
    model = make_model(train_sampler="gumbel_topk", alpha=alpha).train()
    out = model(random_video(model.cfg), generator=torch.Generator().manual_seed(0))
    N = model.cfg.tokens_per_step
    previous = torch.ones_like(out.keep_masks[0])
    for m, mask in enumerate(out.keep_masks):
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert (mask.sum(-1) == tokens_to_keep(N, alpha ** (m + 1))).all()
        assert (mask <= previous).all(), "a PSB may only drop, never bring a tubelet back"
        previous = mask
    # Training keeps what evaluation keeps, count for count.
    eval_out = model.eval()(random_video(model.cfg))
    assert torch.equal(out.keep.sum(-1), eval_out.keep.sum(-1))


def test_gumbel_topk_sampler_trains_the_predictors():
    model = make_model(train_sampler="gumbel_topk").train()
    out = model(random_video(model.cfg), generator=torch.Generator().manual_seed(0))
    # The recognizers take the keep mask into their masked attention; a weighted sum stands in.
    weights = torch.randn(out.keep.shape, generator=torch.Generator().manual_seed(1))
    (out.video.square().mean() + (out.keep * weights).sum()).backward()
    for psb in model.psbs:
        grad = psb.predictor.out_conv[0].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_score_scale_zero_keeps_random_subsets_whatever_the_predictors_say():
    video = random_video(tiny_config())
    a = make_model(seed=0, train_sampler="gumbel_topk").train()
    b = make_model(seed=1, train_sampler="gumbel_topk").train()
    for model in (a, b):  # confident predictors, so that their scores outweigh the Gumbel noise
        for layer in (layer for psb in model.psbs for layer in psb.predictor.modules()):
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=1.0)
    keep_a = a(video, generator=torch.Generator().manual_seed(5), score_scale=0.0).keep
    keep_b = b(video, generator=torch.Generator().manual_seed(5), score_scale=0.0).keep
    assert torch.equal(keep_a, keep_b)  # the same noise, and the predictors have no say
    full_a = a(video, generator=torch.Generator().manual_seed(5)).keep
    full_b = b(video, generator=torch.Generator().manual_seed(5)).keep
    assert not torch.equal(full_a, full_b)


def test_unknown_train_sampler_is_refused():
    with pytest.raises(ValueError, match="train_sampler"):
        tiny_config(train_sampler="bernoulli")


# ---- the warm-up schedule ---------------------------------------------------------------------

def test_sparsity_warmup_holds_then_ramps_linearly():
    values = [sparsity_warmup(step, 2, 4) for step in range(8)]
    assert values == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0])
    assert sparsity_warmup(0, 0, 0) == 0.0  # the paper's schedule: the target from the first step


def test_warmup_schedule_per_sampler():
    topk, gumbel = make_model(train_sampler="gumbel_topk"), make_model(train_sampler="gumbel")
    assert _warmup_schedule(topk, 1.0) == (None, 0.0)
    assert _warmup_schedule(topk, 0.25) == (None, 0.75)
    assert _warmup_schedule(gumbel, 1.0) == (1.0, 1.0)  # nothing dropped during the hold
    ratio, scale = _warmup_schedule(gumbel, 0.5)
    assert ratio == pytest.approx(0.85) and scale == 1.0
    assert _warmup_schedule(gumbel, 0.0) == (pytest.approx(0.7), 1.0)


@pytest.mark.parametrize("field", ["sparsity_hold_epochs", "sparsity_ramp_epochs"])
def test_warmup_epochs_must_be_non_negative(field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: -1.0})


def test_training_with_the_warmup_holds_random_subsets_then_lets_the_predictors_decide(monkeypatch):
    cfg = TrainConfig.from_dict({**TINY_TRAIN, "log": "none", "init_epochs": 2, "sparsity_hold_epochs": 1,
                                 "sparsity_ramp_epochs": 0.5})
    model_cfg = STPrivacyConfig.small(embed_dim=24, num_heads=2, depth=1, pab_depth=1, num_psb=2,
                                      train_sampler="gumbel_topk", pab_residual=True)
    geometry = {"frames": model_cfg.frames, "image_size": model_cfg.image_size, "tubelet": model_cfg.tubelet}
    data = build_dataset("synthetic", "train", geometry, **cfg.dataset_kwargs)
    scales = []

    class Spy(STPrivacy):  # records the score scale of every training forward
        def forward(self, video, keep_ratio=None, *, generator=None, score_scale=1.0):
            scales.append(score_scale)
            return super().forward(video, keep_ratio, generator=generator, score_scale=score_scale)

    import stprivacy.train.protocol as protocol
    monkeypatch.setattr(protocol, "STPrivacy", Spy)
    _, history = train_anonymizer(model_cfg, cfg, data, num_classes=data.num_classes,
                                  num_attributes=data.num_attributes)
    # The anonymizer trains on the videos outside the validation split (16 of TINY_TRAIN's 20).
    steps_per_epoch = len(split_validation(len(data), cfg.validation_fraction, cfg.seed)[0]) // cfg.batch_size
    assert steps_per_epoch == 2
    init = scales[: 2 * steps_per_epoch]
    assert init[:steps_per_epoch] == [0.0] * steps_per_epoch  # the hold: random subsets
    assert init[-1] == 1.0 and all(b >= a for a, b in zip(init, init[1:]))  # the ramp, then the predictors
    assert all(s == 1.0 for s in scales[2 * steps_per_epoch:])  # phase 2 has no warm-up
    assert all(k == pytest.approx(history["initialization"]["keep"][0]) for k in history["initialization"]["keep"])


# ---- ranking, residual PAB, input standardization, where the keep gradient flows --------------

def test_keep_score_ranks_confident_tokens_that_log_p_keep_ties():
    gaps = torch.tensor([20.0, 30.0, 40.0])  # logit(keep) - logit(drop)
    log_probs = torch.log_softmax(torch.stack([gaps, torch.zeros(3)], dim=-1), dim=-1)
    assert torch.equal(log_probs[:, 0], torch.zeros(3))  # float32: all exactly 0, a three-way tie
    assert torch.equal(keep_score(log_probs).argsort(), torch.tensor([0, 1, 2]))


def test_residual_pab_starts_as_the_identity_on_kept_tubelets():
    for training in (True, False):
        model = make_model(pab_residual=True).train(training)
        video = random_video(model.cfg)
        out = model(video, generator=torch.Generator().manual_seed(0))
        h, w = model.cfg.grid_size
        kept = keep_to_pixels(out.keep.view(-1, model.cfg.time_steps, h, w), tubelet=model.cfg.tubelet)
        torch.testing.assert_close(out.video, video * kept)
        assert (kept < 1).any()


def test_residual_pab_learns_a_change_of_the_pixels():
    model = make_model(pab_residual=True).eval()
    torch.nn.init.normal_(model.pab.head.weight, std=0.05)
    video = random_video(model.cfg)
    out = model(video)
    h, w = model.cfg.grid_size
    kept = keep_to_pixels(out.keep.view(-1, model.cfg.time_steps, h, w), tubelet=model.cfg.tubelet)
    assert not torch.allclose(out.video, video * kept)
    assert (out.video[kept.expand_as(out.video) == 0] == 0).all()  # dropped tubelets stay black


def assert_same_outputs(a: STPrivacy, b: STPrivacy) -> None:
    """Both models give the same video bit for bit, in training (same Gumbel draws) and evaluation."""
    for training in (True, False):
        video = random_video(a.cfg)
        out_a = a.train(training)(video, generator=torch.Generator().manual_seed(0)).video
        out_b = b.train(training)(video, generator=torch.Generator().manual_seed(0)).video
        assert torch.equal(out_a, out_b), training


def test_filter_starts_as_the_identity_and_its_gates_grey_and_blur():
    plain, filtered = make_model(pab_residual=True), make_model(pab_residual=True, pab_filter=True)
    assert set(filtered.state_dict()) - set(plain.state_dict()) == {"pab.filter.weight", "pab.filter.bias"}
    filtered.load_state_dict(plain.state_dict(), strict=False)  # the same draws built both models
    assert_same_outputs(plain, filtered)
    filtered.eval()
    video = random_video(filtered.cfg)
    with torch.no_grad():
        filtered.pab.filter.bias.copy_(torch.tensor([1.0, 0.0]))  # desaturate fully, no blur
        grey = filtered(video, 1.0).video
        torch.testing.assert_close(grey, video.mean(dim=1, keepdim=True).expand_as(video))
        filtered.pab.filter.bias.copy_(torch.tensor([0.0, 1.0]))  # blur fully, keep the colours
        blurred = filtered(video, 1.0).video
        flat = torch.full_like(video, 0.3)
        torch.testing.assert_close(filtered(flat, 1.0).video, flat)  # a flat tubelet stays flat
    assert blurred.diff(dim=-1).abs().mean() < 0.6 * video.diff(dim=-1).abs().mean()  # less fine detail
    with torch.no_grad():  # gates beyond [0, 1] act as the nearest end
        filtered.pab.filter.bias.copy_(torch.tensor([3.0, -2.0]))
        torch.testing.assert_close(filtered(video, 1.0).video, grey)


def test_filter_gates_learn_from_the_loss_and_are_held_at_their_ends():
    from stprivacy.model.pab import _ProjectedClamp

    model = make_model(pab_residual=True, pab_filter=True).train()
    model.zero_grad()
    with torch.no_grad():
        model.pab.filter.bias.fill_(0.5)
    model(random_video(model.cfg), generator=torch.Generator().manual_seed(0)).video.square().sum().backward()
    assert (model.pab.filter.bias.grad.abs() > 0).all() and model.pab.filter.weight.grad.abs().sum() > 0
    # Outside [0, 1] the gradient passes only where a descent step moves z back into the range.
    z = torch.tensor([-1.0, 0.5, 2.0, -1.0, 2.0, 0.0, 1.0], requires_grad=True)
    gate = _ProjectedClamp.apply(z)
    assert torch.equal(gate, torch.tensor([0.0, 0.5, 1.0, 0.0, 1.0, 0.0, 1.0]))
    gate.backward(torch.tensor([-1.0, 1.0, 1.0, 1.0, -1.0, 1.0, -1.0]))
    assert torch.equal(z.grad, torch.tensor([-1.0, 1.0, 1.0, 0.0, 0.0, 1.0, -1.0]))


def test_filter_blur_matrix_is_a_replicate_padded_gaussian():
    from stprivacy.model.pab import _blur_matrix
    import torch.nn.functional as F
    size, sigma = 8, 1.5
    matrix = _blur_matrix(size, sigma)
    torch.testing.assert_close(matrix.sum(dim=1), torch.ones(size))
    r = 5  # ceil(3 sigma)
    taps = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma ** 2))
    signal = torch.rand(1, 1, size)
    reference = F.conv1d(F.pad(signal, (r, r), mode="replicate"), (taps / taps.sum()).view(1, 1, -1))
    torch.testing.assert_close(signal @ matrix.T, reference)


def test_filter_needs_the_residual_pab_and_a_positive_sigma():
    with pytest.raises(ValueError, match="pab_residual"):
        STPrivacyConfig.small(pab_filter=True)
    with pytest.raises(ValueError, match="pab_filter_sigma"):
        STPrivacyConfig.small(pab_residual=True, pab_filter=True, pab_filter_sigma=0.0)


def test_input_standardization():
    on, off = make_model(seed=0, normalize_input=True), make_model(seed=0)
    video = random_video(on.cfg)
    torch.testing.assert_close(on.tokenize(video), on.embed((video - PIXEL_MEAN) / PIXEL_STD))
    torch.testing.assert_close(off.tokenize(video), off.embed(video))
    assert dataclasses.asdict(STPrivacyConfig.vit_s())["normalize_input"] is False  # the release has none


def test_keep_gradient_flows_through_attention_not_through_blackening():
    """Sparsification only: the output is ``video * keep``. By default (the release's graph) the
    model blackens with the mask's value only; ``blackening_gradient`` makes the output carry the
    gradient of ``video * keep``, which says how the loss changes when a tubelet gets brighter."""
    model = make_model(use_pab=False).train()
    out = model(random_video(model.cfg), generator=torch.Generator().manual_seed(0))
    assert not out.video.requires_grad
    assert out.keep.requires_grad  # what the recognizers' masked attention differentiates
    model = make_model(use_pab=False, blackening_gradient=True).train()
    out = model(random_video(model.cfg), generator=torch.Generator().manual_seed(0))
    assert out.video.requires_grad


def test_blackening_gradient_changes_the_gradient_not_the_video():
    """With a PAB, the default blackening still leaves the keep gradient of the PAB's masked
    attention; ``blackening_gradient`` adds that of ``pixels * keep``; the values are the same."""
    video = random_video(tiny_config())
    outs = {}
    for gradient in (False, True):
        model = make_model(seed=0, blackening_gradient=gradient).train()
        out = model(video, generator=torch.Generator().manual_seed(0))
        probe = torch.randn_like(out.video)
        last_predictor = model.psbs[-1].predictor.out_conv[4].weight
        grads = torch.autograd.grad((out.video * probe).sum(), last_predictor)[0]
        outs[gradient] = (out.video.detach(), grads)
    torch.testing.assert_close(outs[False][0], outs[True][0])
    assert outs[False][1].abs().sum() > 0  # the PAB's attention still differentiates the last mask
    assert not torch.allclose(outs[False][1], outs[True][1])


def test_configs_of_earlier_versions_still_load():
    """``detach_blackening`` (the opposite of ``blackening_gradient``) and a removed field at its
    "off" value are read; a removed field that was on is refused by name."""
    old = tiny_config().to_dict()
    del old["blackening_gradient"]
    assert STPrivacyConfig.from_dict({**old, "detach_blackening": True}).blackening_gradient is False
    assert STPrivacyConfig.from_dict({**old, "detach_blackening": False}).blackening_gradient is True
    assert STPrivacyConfig.from_dict({**old, "pab_color_skip": False}) == tiny_config()
    with pytest.raises(ValueError, match="pab_color_skip=True is no longer supported"):
        STPrivacyConfig.from_dict({**old, "pab_color_skip": True})
    with pytest.raises(ValueError, match="renamed blackening_gradient"):
        STPrivacyConfig.from_dict({**old, "detach_blackening": True, "blackening_gradient": False})
    with pytest.raises(TypeError, match="blackening_gradient"):
        tiny_config(blackening_gradient=1)


def test_filter_gates_are_returned_in_training_only():
    filtered = make_model(pab_residual=True, pab_filter=True)
    video = random_video(filtered.cfg)
    out = filtered.train()(video, generator=torch.Generator().manual_seed(0))
    assert out.filter_gates.shape == (*out.keep.shape, 2)
    assert torch.equal(out.filter_gates, torch.zeros_like(out.filter_gates))  # the identity at initialization
    assert filtered.eval()(video).filter_gates is None
    assert make_model(pab_residual=True).train()(video, generator=torch.Generator().manual_seed(0)).filter_gates is None
