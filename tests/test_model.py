"""STPrivacy model: shapes, keep counts in training vs evaluation, deployment keep ratio, gradients
through the masked attention, ablation switches, config validation."""
from __future__ import annotations

import json
import math

import pytest
import torch

import stpriv_ops
from stprivacy.model import STPrivacy, STPrivacyConfig, STPrivacyOutput, ops, reference_ops
from stprivacy.model.layers import tubelets_to_video
from stprivacy.model.psb import tokens_to_keep


def tiny_config(**overrides) -> STPrivacyConfig:
    # L = 2 time steps of N = 16 tubelets: big enough for three PSBs to drop something.
    base = dict(frames=4, image_size=16, tubelet=(2, 4, 4), embed_dim=24, num_heads=2, depth=1, num_psb=3,
                pab_depth=1, mlp_ratio=2.0, alpha=0.7)
    base.update(overrides)
    return STPrivacyConfig.small(**base)


def make_model(seed: int = 0, **overrides) -> STPrivacy:
    torch.manual_seed(seed)
    return STPrivacy(tiny_config(**overrides))


def make_video(cfg: STPrivacyConfig, batch: int = 2, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, cfg.in_chans, cfg.frames, cfg.image_size, cfg.image_size, generator=g, dtype=dtype)


def kept_per_step(keep: torch.Tensor) -> torch.Tensor:
    return keep.sum(dim=-1)  # [B, L]


# ---- shapes and dtypes -------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_output_shapes_and_dtypes(training, dtype):
    model = make_model().to(dtype).train(training)
    cfg = model.cfg
    video = make_video(cfg, dtype=dtype)
    out = model(video)
    assert isinstance(out, STPrivacyOutput)
    assert out.video.shape == video.shape and out.video.dtype == dtype
    assert out.keep.shape == (2, cfg.time_steps, cfg.tokens_per_step) and out.keep.dtype == dtype
    assert len(out.keep_masks) == cfg.num_psb == len(out.target_ratios)
    assert all(m.shape == out.keep.shape for m in out.keep_masks)
    assert out.target_ratios == pytest.approx([0.7, 0.49, 0.343])
    assert torch.isfinite(out.video).all()
    assert torch.equal(out.keep, out.keep_masks[-1].to(dtype))


def test_vit_s_geometry():
    cfg = STPrivacyConfig.vit_s()
    assert (cfg.frames, cfg.image_size, cfg.tubelet, cfg.embed_dim, cfg.num_heads) == (16, 112, (2, 16, 16), 384, 6)
    assert (cfg.depth, cfg.num_psb, cfg.pab_depth, cfg.num_blocks, cfg.alpha) == (3, 3, 3, 12, 0.7)
    assert (cfg.time_steps, cfg.tokens_per_step, cfg.num_tokens, cfg.tubelet_pixels) == (8, 49, 392, 1536)
    model = STPrivacy(cfg)
    # One 12-block ViT-S (9 blocks encode, 3 decode) plus three predictors: the release's 23.4M.
    assert 23.3e6 < sum(p.numel() for p in model.parameters()) < 23.4e6


# ---- keep counts: training vs evaluation, deployment keep ratio --------------------------------


def test_eval_keeps_floor_n_ratio_pow_m_per_time_step():
    model = make_model().eval()
    out = model(make_video(model.cfg))
    N = model.cfg.tokens_per_step
    previous = torch.ones_like(out.keep)
    for m, mask in enumerate(out.keep_masks, start=1):
        expected = math.floor(N * 0.7**m + 1e-9)
        assert (kept_per_step(mask) == expected).all(), f"PSB {m}"
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert (mask <= previous).all(), "a dropped tubelet came back"
        previous = mask


def test_train_keeps_random_nested_hard_masks():
    model = make_model().train()
    out = model(make_video(model.cfg, batch=4), generator=torch.Generator().manual_seed(0))
    previous = torch.ones_like(out.keep)
    for mask in out.keep_masks:
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert (mask <= previous).all()
        previous = mask
    counts = kept_per_step(out.keep_masks[0])
    # Gumbel decisions at an untrained predictor: not the fixed top-k count, and not all equal.
    assert counts.unique().numel() > 1


def test_train_decisions_reproducible_with_generator():
    model = make_model().train()
    video = make_video(model.cfg)
    a = model(video, generator=torch.Generator().manual_seed(3)).keep
    b = model(video, generator=torch.Generator().manual_seed(3)).keep
    c = model(video, generator=torch.Generator().manual_seed(4)).keep
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("keep_ratio", [0.9, 0.5, 0.3, 0.05])
def test_deployment_keep_ratio_changes_kept_count(keep_ratio):
    model = make_model().eval()
    video = make_video(model.cfg)
    N, num_psb = model.cfg.tokens_per_step, model.cfg.num_psb
    out = model(video, keep_ratio=keep_ratio)
    expected = max(1, math.floor(N * keep_ratio**num_psb + 1e-9))
    assert (kept_per_step(out.keep) == expected).all()
    assert out.target_ratios == pytest.approx([keep_ratio ** (m + 1) for m in range(num_psb)])
    # cfg.alpha = 0.7 keeps floor(16 * 0.343) = 5 per step; every ratio above keeps another count.
    assert not torch.equal(kept_per_step(out.keep), kept_per_step(model(video).keep))


def test_tokens_to_keep_floor_is_robust_to_rounding():
    assert tokens_to_keep(100, 0.7**2) == 49  # 0.7 ** 2 == 0.48999999999999994
    assert tokens_to_keep(16, 0.01) == 1
    assert tokens_to_keep(49, 1.0) == 49


# ---- evaluation's compaction computes what training's masking computes --------------------------


def test_eval_compaction_equals_masked_computation():
    """Top-k + gather + SDPA on the kept tokens, the PAB on the kept tokens only, then scatter,
    must equal running every token through masked attention with the same masks, the PAB's
    included, and blacking out the dropped ones (exactly so with eps = 0)."""
    model = make_model(attn_eps=0.0).eval()
    video = make_video(model.cfg, dtype=torch.float64)
    model = model.double()
    out = model(video, keep_ratio=0.6)
    B, L, N = out.keep.shape
    x = model.tokenize(video)
    keep = None
    for psb, mask in zip(model.psbs, out.keep_masks):
        for blk in psb.blocks:
            x = blk(x, keep)
        keep = mask.reshape(B, L * N)
    patches = model.pab(x, keep)[0] * keep[..., None]
    want = tubelets_to_video(patches, time_steps=L, grid_size=model.cfg.grid_size, tubelet=model.cfg.tubelet)
    torch.testing.assert_close(out.video, want, atol=1e-10, rtol=1e-8)


def test_dropped_tubelets_are_black():
    for training in (True, False):
        model = make_model().train(training)
        out = model(make_video(model.cfg))
        dropped = model.keep_to_pixels(1 - out.keep).bool().expand_as(out.video)
        assert dropped.any()
        assert (out.video[dropped] == 0).all()
        assert (out.video[~dropped] != 0).float().mean() > 0.99


# ---- gradients ----------------------------------------------------------------------------------


def test_gradients_reach_predictor_through_masked_attention():
    """Loss on the tokens after PSB 2's blocks: the predictor of PSB 1 only influences them through
    the keep mask inside masked attention, i.e. through masked_attention's dkeep."""
    model = make_model().train()
    cfg = model.cfg
    L, N = cfg.time_steps, cfg.tokens_per_step
    x = model.tokenize(make_video(cfg))
    x, keep, _ = model.psbs[0].forward_train(x, None, grid=(L, N), ratio=0.7, tau=1.0,
                                          generator=torch.Generator().manual_seed(0))
    assert keep is not None and 0 < keep.sum() < keep.numel()

    def loss_with(mask):
        y = x
        for blk in model.psbs[1].blocks:
            y = blk(y, mask)
        return y.square().mean()

    predictor = list(model.psbs[0].predictor.parameters())
    grads = torch.autograd.grad(loss_with(keep), predictor, retain_graph=True)
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    # Control: without the path through the mask, the predictor gets no gradient at all.
    detached = torch.autograd.grad(loss_with(keep.detach()), predictor, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in detached)


def _fixed_noise_gumbel(monkeypatch):
    """Same Logistic noise for the kernel path and the reference path (they draw differently)."""
    real = ops.gumbel_keep
    g = torch.Generator().manual_seed(123)
    draws = []

    def gumbel_keep(log_probs, prev, tau, generator=None, noise=None):
        call = gumbel_keep.calls
        gumbel_keep.calls += 1
        if call >= len(draws):
            draws.append(torch.logit(torch.rand(prev.shape, generator=g, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)))
        return real(log_probs, prev, tau, generator, noise=draws[call].to(prev.device, prev.dtype))

    monkeypatch.setattr(ops, "gumbel_keep", gumbel_keep)
    return gumbel_keep


def test_training_step_matches_reference_ops(monkeypatch):
    """The whole training forward and backward on stpriv_ops equals the eager references."""
    gumbel = _fixed_noise_gumbel(monkeypatch)
    model = make_model().double().train()
    video = make_video(model.cfg, dtype=torch.float64)

    def run():
        gumbel.calls = 0
        model.zero_grad(set_to_none=True)
        out = model(video)
        loss = out.video.square().mean() + stpriv_ops.sparsity_loss(out.keep_masks, out.target_ratios)
        loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast, fast_grads = run()
    with reference_ops():
        ref, ref_grads = run()
    assert torch.equal(fast.keep, ref.keep)
    torch.testing.assert_close(fast.video, ref.video, atol=1e-10, rtol=1e-8)
    assert fast_grads.keys() == ref_grads.keys()
    assert any("predictor" in n for n in fast_grads)
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], atol=1e-9, rtol=1e-6, msg=name)


def test_eval_matches_reference_ops():
    model = make_model().eval()
    video = make_video(model.cfg)
    fast = model(video, keep_ratio=0.5)
    with reference_ops():
        ref = model(video, keep_ratio=0.5)
    assert torch.equal(fast.keep, ref.keep)
    torch.testing.assert_close(fast.video, ref.video)


# ---- ablation switches and convenience ----------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_sparsification_only_outputs_masked_raw_pixels(training):
    model = make_model(use_pab=False).train(training)
    video = make_video(model.cfg)
    out = model(video)
    assert model.pab is None
    torch.testing.assert_close(out.video, video * model.keep_to_pixels(out.keep), atol=0, rtol=0)
    assert out.keep.sum() < out.keep.numel()


@pytest.mark.parametrize("overrides", [dict(use_psb=False), dict(alpha=1.0)], ids=["no_psb", "alpha1"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_anonymization_only_drops_nothing(overrides, training):
    model = make_model(**overrides).train(training)
    out = model(make_video(model.cfg))
    assert (out.keep == 1).all()
    assert all((m == 1).all() for m in out.keep_masks)
    if overrides.get("use_psb") is False:
        assert out.keep_masks == [] and out.target_ratios == []
        assert all(psb.predictor is None for psb in model.psbs)


def test_anonymize_is_eval_without_grad_and_restores_mode():
    model = make_model().train()
    video = make_video(model.cfg)
    anonymized = model.anonymize(video, keep_ratio=0.5)
    assert model.training and not anonymized.requires_grad
    model.eval()
    torch.testing.assert_close(anonymized, model(video, keep_ratio=0.5).video)


def test_forward_rejects_bad_inputs():
    model = make_model()
    cfg = model.cfg
    with pytest.raises(ValueError, match=r"video must be \[B, C, T, H, W\]"):
        model(torch.rand(1, 3, cfg.frames, cfg.image_size + 4, cfg.image_size))
    with pytest.raises(TypeError, match="video must be a floating-point"):
        model(torch.zeros(1, 3, cfg.frames, cfg.image_size, cfg.image_size, dtype=torch.uint8))
    with pytest.raises(TypeError, match="video must be a torch.Tensor"):
        model([1, 2, 3])
    for bad in (0.0, 1.5, -0.1, "0.5"):
        with pytest.raises(ValueError, match="keep_ratio"):
            model(make_video(cfg), keep_ratio=bad)
    with pytest.raises(TypeError, match="cfg must be an STPrivacyConfig"):
        STPrivacy({"frames": 8})


# ---- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(frames=7), r"frames \(7\) must be divisible by the tubelet's time size dT \(2\)"),
        (dict(image_size=18), r"image_size \(18\) must be divisible"),
        (dict(embed_dim=25), r"embed_dim \(25\) must be divisible by num_heads \(2\)"),
        (dict(alpha=0.0), r"alpha must be in \(0, 1\]"),
        (dict(alpha=1.2), r"alpha must be in \(0, 1\]"),
        (dict(num_psb=0), "num_psb must be a positive int"),
        (dict(depth=1.5), "depth must be a positive int"),
        (dict(tubelet=(2, 4)), "tubelet must be three positive ints"),
        (dict(gumbel_tau=0.0), "gumbel_tau must be a positive"),
        (dict(attn_eps=-1.0), "attn_eps must be >= 0"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = STPrivacyConfig.small(alpha=0.5)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert STPrivacyConfig.from_dict(data) == cfg
    with pytest.raises(ValueError, match=r"unknown STPrivacyConfig keys: \['blocks', 'heads'\]"):
        STPrivacyConfig.from_dict({**data, "heads": 4, "blocks": 2})
    with pytest.raises(TypeError, match="data must be a dict"):
        STPrivacyConfig.from_dict([("frames", 8)])


def test_small_preset_is_small():
    cfg = STPrivacyConfig.small()
    assert cfg.num_tokens <= 64 and cfg.embed_dim <= 96 and cfg.depth == 1
    assert sum(p.numel() for p in STPrivacy(cfg).parameters()) < 1e6


def test_bf16_autocast_training_step():
    """Mixed precision as the training code runs it: bf16 activations, float32 keep decisions."""
    model = make_model().train()
    video = make_video(model.cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(video, generator=torch.Generator().manual_seed(0))
        loss = out.video.float().square().mean() + stpriv_ops.sparsity_loss(out.keep_masks, out.target_ratios)
    loss.backward()
    assert out.video.dtype == torch.bfloat16 and out.keep.dtype == torch.float32
    grads = [p.grad for p in model.psbs[0].predictor.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


# ---- CUDA (the Triton kernels); skipped without a GPU -------------------------------------------


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-12)).item()


@pytest.mark.cuda
def test_cuda_eval_matches_reference_ops():
    model = make_model().cuda().eval()
    video = make_video(model.cfg).cuda()
    fast = model(video, keep_ratio=0.5)
    with reference_ops():
        ref = model(video, keep_ratio=0.5)
    assert torch.equal(fast.keep, ref.keep)
    assert _relative_error(fast.video, ref.video) < 1e-3


@pytest.mark.cuda
def test_cuda_training_step_matches_reference_ops(monkeypatch):
    """float32 on the Triton kernels vs the eager references, same Gumbel noise. Tolerances allow
    TF32 products in the kernels."""
    gumbel = _fixed_noise_gumbel(monkeypatch)
    model = make_model().cuda().train()
    video = make_video(model.cfg).cuda()

    def run():
        gumbel.calls = 0
        model.zero_grad(set_to_none=True)
        out = model(video)
        loss = out.video.square().mean() + stpriv_ops.sparsity_loss(out.keep_masks, out.target_ratios)
        loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast, fast_grads = run()
    with reference_ops():
        ref, ref_grads = run()
    assert torch.equal(fast.keep, ref.keep)
    assert _relative_error(fast.video, ref.video) < 1e-2
    assert fast_grads.keys() == ref_grads.keys()
    for name in fast_grads:
        assert _relative_error(fast_grads[name], ref_grads[name]) < 3e-2, name


@pytest.mark.cuda
def test_cuda_bf16_autocast_training_step():
    model = STPrivacy(STPrivacyConfig.small()).cuda().train()
    video = torch.rand(4, 3, 8, 32, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(video)
        loss = out.video.float().square().mean() + stpriv_ops.sparsity_loss(out.keep_masks, out.target_ratios)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert sum(p.grad.abs().sum() for p in model.psbs[0].predictor.parameters()) > 0
