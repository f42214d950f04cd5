"""Recognizers: video classifier (with and without a keep mask) and frame classifier."""
from __future__ import annotations

import pytest
import torch

from stprivacy.model import FrameClassifier, STPrivacy, STPrivacyConfig, VideoClassifier, reference_ops
from stprivacy.model.layers import keep_to_pixels

GEOMETRY = dict(frames=4, image_size=16, tubelet=(2, 4, 4))  # L = 2, N = 16
SIZES = dict(embed_dim=24, depth=2, num_heads=2, mlp_ratio=2.0)


def make_classifier(num_classes=5, seed=0, **overrides) -> VideoClassifier:
    torch.manual_seed(seed)
    model = VideoClassifier(num_classes, **{**GEOMETRY, **SIZES, **overrides}).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # the zero init would make every logit 0
    return model


def make_video(batch=3, seed=1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 4, 16, 16, generator=g, dtype=dtype)


def random_keep(batch=3, seed=2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = (torch.rand(batch, 2, 16, generator=g) < 0.5).float()
    keep[:, :, 0] = 1  # at least one kept tubelet per step
    return keep


def test_video_classifier_logits_shape_and_dtype():
    model = make_classifier(num_classes=7)
    assert model(make_video()).shape == (3, 7)
    assert model(make_video(), random_keep()).shape == (3, 7)
    double = make_classifier(num_classes=7).double()
    assert double(make_video(dtype=torch.float64)).dtype == torch.float64


def test_dropped_tubelets_are_skipped():
    """With a keep mask, the pixels of dropped tubelets cannot change the logits (up to the
    attention's eps smoothing, 0 here)."""
    model = make_classifier(attn_eps=0.0).double()
    video, keep = make_video(dtype=torch.float64), random_keep().double()
    logits = model(video, keep)
    pixel_keep = keep_to_pixels(keep.view(3, 2, 4, 4), tubelet=(2, 4, 4))
    noise = torch.rand_like(video) * 10
    scrambled = video * pixel_keep + noise * (1 - pixel_keep)
    torch.testing.assert_close(model(scrambled, keep), logits, atol=1e-10, rtol=1e-8)
    # Without the mask the dropped pixels do matter: the test above can fail.
    assert not torch.allclose(model(scrambled), model(video))


def test_all_kept_equals_no_mask():
    model = make_classifier()
    video = make_video()
    torch.testing.assert_close(model(video, torch.ones(3, 2, 16)), model(video), atol=1e-5, rtol=1e-4)


def test_keep_may_be_flat_and_matches_reference_ops():
    model = make_classifier()
    video, keep = make_video(), random_keep()
    logits = model(video, keep)
    torch.testing.assert_close(model(video, keep.reshape(3, 32)), logits)
    with reference_ops():
        torch.testing.assert_close(model(video, keep), logits, atol=1e-5, rtol=1e-4)


def test_gradients_flow_to_keep_and_weights():
    model = make_classifier().train()
    keep = random_keep().requires_grad_()
    model(make_video(), keep).logsumexp(dim=1).sum().backward()
    assert torch.isfinite(keep.grad).all() and keep.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_video_classifier_from_config_and_multilabel():
    cfg = STPrivacyConfig.small()
    action = VideoClassifier.from_config(cfg, 10)
    privacy = VideoClassifier.from_config(cfg, 5, multilabel=True, depth=1)
    assert not action.multilabel and privacy.multilabel
    assert len(action.encoder.blocks) == cfg.num_blocks and len(privacy.encoder.blocks) == 1
    video = torch.rand(2, 3, cfg.frames, cfg.image_size, cfg.image_size)
    out = STPrivacy(cfg).eval()(video)
    assert action(out.video, out.keep).shape == (2, 10)
    assert privacy(out.video, out.keep).shape == (2, 5)


def test_video_classifier_rejects_bad_inputs():
    model = make_classifier()
    with pytest.raises(ValueError, match=r"video must have shape \[B, 3, 4, 16, 16\]"):
        model(torch.rand(3, 3, 4, 16, 20))
    with pytest.raises(TypeError, match="video must be a floating-point"):
        model(torch.zeros(3, 3, 4, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"keep must have shape \[B, L, N\] = \[3, 2, 16\]"):
        model(make_video(), torch.ones(3, 2, 15))
    with pytest.raises(TypeError, match="keep must be a torch.Tensor"):
        model(make_video(), [1, 0])
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        VideoClassifier(0, **GEOMETRY)
    with pytest.raises(ValueError, match=r"tubelet \(2, 5, 5\) must divide"):
        VideoClassifier(3, frames=4, image_size=16, tubelet=(2, 5, 5))
    with pytest.raises(ValueError, match=r"embed_dim \(24\) must be divisible by num_heads \(5\)"):
        VideoClassifier(3, **GEOMETRY, embed_dim=24, num_heads=5)


def test_frame_classifier():
    torch.manual_seed(0)
    model = FrameClassifier(5, image_size=16, patch_size=(4, 8), embed_dim=24, depth=1, num_heads=2, multilabel=True)
    frames = torch.rand(6, 3, 16, 16)
    logits = model(frames)
    assert logits.shape == (6, 5) and model.multilabel
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # Frames are independent: one frame's logits do not depend on the rest of the batch.
    torch.testing.assert_close(model(frames[2:3]), logits[2:3])
    with pytest.raises(ValueError, match=r"frames must have shape \[B, 3, 16, 16\]"):
        model(torch.rand(6, 3, 4, 16, 16))
    cfg = STPrivacyConfig.small()
    from_cfg = FrameClassifier.from_config(cfg, 5)
    assert from_cfg.multilabel and from_cfg(torch.rand(2, 3, cfg.image_size, cfg.image_size)).shape == (2, 5)
