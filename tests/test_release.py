"""The model against the authors' released forward (github.com/ming1993li/stprivacy, stprivacy.py).

``release_forward`` below restates that forward in plain PyTorch (DeiT blocks, the predictor, the
per-frame top-k and the decoder over the kept tokens; in training the hard Gumbel-softmax and the
masked attention over every token), reading the weights under the release's keys. Our model,
loaded from the same state dict, must decode the same video in float64, and in training, with
its default options (those of ``STPrivacyConfig.vit_s()``, here at small sizes), pass the same
gradients to its parameters, the keep predictors included.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import save_file

from stprivacy.model import STPrivacy, STPrivacyConfig, ops
from stprivacy.model.ops import gumbel_keep as _gumbel_keep
from stprivacy.model.release import load_release_weights, release_state_dict
from train_fixtures import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _ln(x, w, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], w[prefix + ".weight"], w[prefix + ".bias"], eps)


def _lin(x, w, prefix):
    return F.linear(x, w[prefix + ".weight"], w[prefix + ".bias"])


def _attention(x, w, p, heads, policy, eps=1e-6):
    B, N, C = x.shape
    qkv = _lin(x, w, p + ".qkv").reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * (C // heads) ** -0.5
    if policy is None:
        attn = attn.softmax(dim=-1)
    else:  # the release's softmax_with_policy
        keep = policy.reshape(B, 1, 1, N)
        eye = torch.eye(N, dtype=keep.dtype).view(1, 1, N, N)
        keep = keep + (1.0 - keep) * eye
        attn = (attn - attn.max(dim=-1, keepdim=True)[0]).exp() * keep
        attn = (attn + eps / N) / (attn.sum(dim=-1, keepdim=True) + eps)
    return _lin((attn @ v).transpose(1, 2).reshape(B, N, C), w, p + ".proj")


def _block(x, w, i, heads, policy=None):
    p = f"blocks.{i}"
    x = x + _attention(_ln(x, w, p + ".norm1", 1e-6), w, p + ".attn", heads, policy)
    h = _ln(x, w, p + ".norm2", 1e-6)
    return x + _lin(F.gelu(_lin(h, w, p + ".mlp.fc1")), w, p + ".mlp.fc2")


def _predictor(x, w, m, t, policy):
    p = f"score_predictor.{m}"
    x = F.gelu(_lin(_ln(x, w, p + ".in_conv.0", 1e-5), w, p + ".in_conv.1"))
    B, N, C = x.shape
    x = rearrange(x, "b (t n) c -> b t n c", t=t)
    policy = rearrange(policy, "b (t n) c -> b t n c", t=t)
    local = x[..., : C // 3]
    frame = (x[..., C // 3 : C // 3 * 2] * policy).sum(2, keepdim=True) / policy.sum(2, keepdim=True)
    video = (x[..., C // 3 * 2 :] * policy).sum((1, 2), keepdim=True) / policy.sum((1, 2), keepdim=True)
    x = torch.cat([local, frame.expand(B, t, N // t, C // 3), video.expand(B, t, N // t, C - 2 * (C // 3))], -1)
    x = rearrange(x, "b t n c -> b (t n) c")
    x = F.gelu(_lin(x, w, p + ".out_conv.0"))
    x = F.gelu(_lin(x, w, p + ".out_conv.2"))
    return torch.log_softmax(_lin(x, w, p + ".out_conv.4"), dim=-1)


def _hard_gumbel_softmax(logits, gumbels, tau):
    """``F.gumbel_softmax(logits, tau, hard=True)`` with its Gumbel draws given: ``[..., 2]``."""
    soft = ((logits + gumbels) / tau).softmax(dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def release_forward(w, cfg: STPrivacyConfig, video, decisions=None, gumbels=None):
    """Eval mode (``decisions`` and ``gumbels`` None): per-frame top-k and the decoder on the kept
    tokens only; returns the decoded video, dropped tubelets black.

    Training mode: predictor m keeps by ``F.gumbel_softmax(score, hard=True)`` with the Gumbel
    draws ``gumbels[m]`` (``[B, L*N, 2]``, keep first), the release's straight-through graph, or
    by ``decisions[m]`` (``[B, L*N]`` 0/1, no gradient). Returns what the release's training
    forward returns: the decoded video of every tubelet (nothing blackened) and the final keep
    mask ``[B, L*N, 1]``."""
    t, heads = cfg.time_steps, cfg.num_heads
    training = decisions is not None or gumbels is not None
    x = F.conv3d(video, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=cfg.tubelet)
    x = rearrange(x, "b c t h w -> b (t h w) c") + w["pos_embed"]
    B, n0 = x.shape[:2]
    pruning_loc = [cfg.depth * (m + 1) for m in range(cfg.num_psb)]
    index = torch.arange(n0).reshape(1, -1).expand(B, n0)
    prev = torch.ones(B, n0, 1, dtype=x.dtype)
    policy = torch.ones(B, n0, 1, dtype=x.dtype)
    for i in range(cfg.num_blocks):
        if i in pruning_loc:
            m = pruning_loc.index(i)
            score = _predictor(x, w, m, t, prev)
            if training:
                if gumbels is not None:
                    decision = _hard_gumbel_softmax(score, gumbels[m], cfg.gumbel_tau)[..., 0:1]
                else:
                    decision = decisions[m].reshape(B, n0, 1).to(x.dtype)
                policy = prev = decision * prev
                x = _block(x, w, i, heads, policy)
            else:
                keep_count = int(n0 // t * cfg.alpha ** (m + 1) + 1e-9)
                top = torch.argsort(rearrange(score[..., 0], "b (t n) -> b t n", t=t), dim=2, descending=True)
                top = top[:, :, :keep_count] + torch.arange(t).view(1, t, 1) * (x.shape[1] // t)
                top = rearrange(top, "b t c -> b (t c)")
                x = torch.gather(x, 1, top[..., None].expand(-1, -1, x.shape[-1]))
                prev = torch.gather(prev, 1, top[..., None])
                index = torch.gather(index, 1, top)
                x = _block(x, w, i, heads)
        else:
            x = _block(x, w, i, heads, policy if training else None)
    x = _lin(_ln(x, w, "norm_recon", 1e-6), w, "head_recon")
    h = cfg.grid_size[0]
    dt, dh, dw = cfg.tubelet
    pattern = "b (t h w) (p0 p1 p2 c) -> b c (t p0) (h p1) (w p2)"
    if training:
        return rearrange(x, pattern, t=t, h=h, w=h, p0=dt, p1=dh, p2=dw), prev
    full = torch.zeros(B, n0, x.shape[-1], dtype=x.dtype).scatter(1, index[..., None].expand(-1, -1, x.shape[-1]), x)
    return rearrange(full, pattern, t=t, h=h, w=h, p0=dt, p1=dh, p2=dw)


def _release_weights(cfg: STPrivacyConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    donor = STPrivacy(cfg).double()
    for p in donor.parameters():  # non-trivial norms and biases too
        torch.nn.init.normal_(p, std=0.2 if p.dim() < 2 else 0.08)
    return release_state_dict(donor)


# (config, seed): a 12-block ViT-S layout at a small width, and a width that 3 does not divide.
CASES = [
    (STPrivacyConfig(frames=4, image_size=32, tubelet=(2, 8, 8), embed_dim=48, num_heads=3), 0),
    (STPrivacyConfig(frames=4, image_size=24, tubelet=(2, 8, 8), embed_dim=40, num_heads=2, depth=1, pab_depth=2,
                     alpha=0.6), 1),
]


@pytest.mark.parametrize("cfg,seed", CASES)
def test_eval_decodes_the_same_video_as_the_release(cfg, seed):
    weights = _release_weights(cfg, seed)
    model = STPrivacy(cfg).double().eval()
    report = load_release_weights(model, weights)
    assert len(report.loaded) == len(list(model.parameters()))
    video = torch.rand(2, 3, cfg.frames, cfg.image_size, cfg.image_size, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = model(video).video
        theirs = release_forward(weights, cfg, video)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10, msg=f"seed={seed}")


@pytest.mark.parametrize("cfg,seed", CASES)
def test_training_decodes_the_same_video_as_the_release(cfg, seed):
    """With the same keep decisions (ours are read back and fed to the release's forward) the
    decoder's output matches; the only difference is that the release's first blocks run the
    smoothed masked softmax over an all-ones mask where ours run plain softmax (eps = 1e-6)."""
    weights = _release_weights(cfg, seed)
    model = STPrivacy(cfg).double().train()
    load_release_weights(model, weights)
    video = torch.rand(2, 3, cfg.frames, cfg.image_size, cfg.image_size, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))
    out = model(video, generator=torch.Generator().manual_seed(seed))
    decisions = [mask.reshape(2, -1).detach() for mask in out.keep_masks]
    # Cumulative masks: each is a subset of the previous one, so they serve as per-block decisions.
    theirs, keep = release_forward(weights, cfg, video, decisions)
    theirs = theirs * model.keep_to_pixels(keep.view_as(out.keep))  # the release returns it unblackened
    torch.testing.assert_close(out.video.detach(), theirs, rtol=1e-4, atol=1e-5, msg=f"seed={seed}")
    assert 0 < float(out.keep.detach().mean()) < 1


def _gumbel_draws(cfg: STPrivacyConfig, batch: int, seed: int) -> list[torch.Tensor]:
    """Gumbel(0, 1) draws ``[B, L*N, 2]`` (keep, drop) for each predictor, float64."""
    g = torch.Generator().manual_seed(seed)
    uniform = torch.rand(cfg.num_psb, batch, cfg.num_tokens, 2, dtype=torch.float64, generator=g)
    return list(-torch.log(-torch.log(uniform.clamp(1e-12, 1 - 1e-12))))


def _our_training_gradients(model: STPrivacy, video, gumbels, loss_of, monkeypatch):
    """Our training forward with the release's Gumbel draws (their difference is the Logistic
    noise of our hard decision) and the gradients of ``loss_of(video, keep)`` in the release's
    keys, the head's rows in the release's order. Returns ``(keep, gradients)``."""
    draws = iter(gumbels)

    def gumbel_keep(log_probs, prev, tau, generator=None, noise=None):
        g = next(draws)
        return _gumbel_keep(log_probs, prev, tau, noise=g[..., 0] - g[..., 1])

    monkeypatch.setattr(ops, "gumbel_keep", gumbel_keep)
    model.zero_grad(set_to_none=True)
    out = model(video)
    loss_of(out.video, out.keep.view(out.keep.shape[0], -1, 1)).backward()
    as_params = STPrivacy(model.cfg).double()
    as_params.load_state_dict({name: p.grad for name, p in model.named_parameters()})
    return out.keep.detach(), release_state_dict(as_params)


@pytest.mark.parametrize("cfg,seed", CASES)
def test_training_gradients_reach_the_predictors_as_in_the_release(cfg, seed, monkeypatch):
    """The release's training forward returns the decoded video and the keep mask apart, so its
    predictors learn only through the mask in masked attention (blocks, decoder, predictors'
    pooling), and in what a recognizer does with the mask. Ours, by default: the same gradients
    for a loss on the kept pixels (the same weights and Gumbel draws, float64). With
    ``blackening_gradient`` (once our default) the output's ``pixels * keep`` adds its own."""
    weights = _release_weights(cfg, seed)
    B = 2
    video = torch.rand(B, 3, cfg.frames, cfg.image_size, cfg.image_size, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))
    probe = torch.randn(video.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 100))
    gumbels = _gumbel_draws(cfg, B, seed)
    keep_pixels = STPrivacy(cfg).keep_to_pixels

    def loss_of(decoded, keep):  # keep: [B, L*N, 1]; a loss on the kept pixels only
        kept = keep_pixels(keep.detach().view(B, cfg.time_steps, cfg.tokens_per_step))
        return (decoded * kept * probe).sum()

    theirs_w = {k: v.clone().requires_grad_() for k, v in weights.items()}
    decoded, final_keep = release_forward(theirs_w, cfg, video, gumbels=gumbels)
    theirs = dict(zip(theirs_w, torch.autograd.grad(loss_of(decoded, final_keep), list(theirs_w.values()))))

    for variant in (cfg, dataclasses.replace(cfg, blackening_gradient=True)):  # our default, the option
        model = STPrivacy(variant).double().train()
        load_release_weights(model, weights)
        keep, ours = _our_training_gradients(model, video, gumbels, loss_of, monkeypatch)
        assert torch.equal(keep.view(B, -1), final_keep.detach().view(B, -1))  # the same decisions
        assert 0 < float(keep.mean()) < 1
        # Each key's error relative to its largest gradient: the first blocks' eps smoothing (see
        # above) leaves about 1e-8; the blackening's gradient changes the predictors' by over 100x.
        error = {k: float((ours[k] - theirs[k]).abs().max() / theirs[k].abs().max()) for k in theirs}
        predictors = [k for k in theirs if k.startswith("score_predictor.")]
        assert all(theirs[k].abs().max() > 0 for k in predictors)
        if variant is cfg:
            assert max(error.values()) < 1e-6, max(error.items(), key=lambda item: item[1])
        else:
            assert max(error[k] for k in predictors) > 1.0


def test_release_layout_round_trips_through_a_file(tmp_path):
    cfg = CASES[0][0]
    weights = {k: v.float().contiguous() for k, v in _release_weights(cfg, 3).items()}
    assert "head_recon.weight" in weights and "score_predictor.2.out_conv.4.bias" in weights
    assert "blocks.11.mlp.fc2.weight" in weights and "norm_recon.weight" in weights
    path = tmp_path / "release.safetensors"
    save_file(weights, str(path))
    model = STPrivacy(cfg)
    load_release_weights(model, path)
    back = release_state_dict(model)
    assert set(back) == set(weights)
    for key, value in weights.items():
        assert torch.equal(back[key], value), key


def test_head_rows_are_reordered_from_dt_dh_dw_c():
    cfg = CASES[0][0]
    weights = _release_weights(cfg, 4)
    model = STPrivacy(cfg).double()
    load_release_weights(model, weights)
    dt, dh, dw = cfg.tubelet
    # Release row of pixel (p0, p1, p2, c) -> our row of (c, p0, p1, p2).
    p0, p1, p2, c = 1, 5, 2, 2
    release_row = ((p0 * dh + p1) * dw + p2) * 3 + c
    our_row = ((c * dt + p0) * dh + p1) * dw + p2
    assert torch.equal(model.pab.head.weight[our_row], weights["head_recon.weight"][release_row])


def test_strict_mapping_names_what_is_wrong():
    cfg = CASES[0][0]
    weights = _release_weights(cfg, 5)
    model = STPrivacy(cfg)
    extra = dict(weights, **{"cls_token": torch.zeros(1, 1, 48)})
    with pytest.raises(ValueError, match="unexpected keys \\['cls_token'\\]"):
        load_release_weights(model, extra)
    short = {k: v for k, v in weights.items() if k != "norm_recon.bias"}
    with pytest.raises(ValueError, match="missing keys \\['norm_recon.bias'\\]"):
        load_release_weights(model, short)
    wrong = dict(weights, **{"blocks.0.mlp.fc1.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match="blocks.0.mlp.fc1.bias has shape"):
        load_release_weights(model, wrong)
    with pytest.raises(ValueError, match="predictors and a PAB"):
        load_release_weights(STPrivacy(STPrivacyConfig(**{**cfg.to_dict(), "use_pab": False})), weights)


def test_vit_s_is_the_releases_12_block_layout():
    cfg = STPrivacyConfig.vit_s()
    assert (cfg.depth, cfg.num_psb, cfg.pab_depth, cfg.num_blocks, cfg.norm_eps) == (3, 3, 3, 12, 1e-6)
    assert not (cfg.pab_residual or cfg.normalize_input or cfg.blackening_gradient) and cfg.train_sampler == "gumbel"
    params = sum(p.numel() for p in STPrivacy(cfg).parameters())
    assert math.isclose(params / 1e6, 23.35, abs_tol=0.05)


def test_release_layout_refuses_the_filter_by_name():
    plain = STPrivacy(STPrivacyConfig.small(embed_dim=24, num_heads=2, pab_residual=True))
    other = STPrivacy(STPrivacyConfig.small(embed_dim=24, num_heads=2, pab_residual=True, pab_filter=True))
    with pytest.raises(ValueError, match="pab_filter"):
        load_release_weights(other, release_state_dict(plain))
    with pytest.raises(ValueError, match="pab_filter"):
        release_state_dict(other)
