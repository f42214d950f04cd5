"""ViT-S ImageNet initialization: a fake timm-layout checkpoint saved in the test, inflated to video;
and the ``"timm:NAME"`` source, checked offline (only timm's download step is replaced)."""
from __future__ import annotations

import builtins
import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from stprivacy.model import FrameClassifier, STPrivacy, STPrivacyConfig, VideoClassifier
from stprivacy.errors import ConfigError
from stprivacy.model import pretrained as pretrained_module
from stprivacy.model.pretrained import (
    inflate_patch_embed,
    inflate_pos_embed,
    load_pretrained_vit,
    load_timm_state_dict,
    load_vit_checkpoint,
    timm_model_name,
)

D, PATCH, GRID, DEPTH = 48, 8, 28, 4  # a ViT with 8 px patches on 224 px images: a 28 x 28 grid


def fake_vit_state_dict(depth: int = DEPTH, dim: int = D, distilled: bool = False) -> dict[str, torch.Tensor]:
    """Random tensors under timm's / DeiT's ViT key names and shapes."""
    g = torch.Generator().manual_seed(0)
    prefix = 2 if distilled else 1
    state = {
        "cls_token": torch.randn(1, 1, dim, generator=g),
        "pos_embed": torch.randn(1, prefix + GRID * GRID, dim, generator=g),
        "patch_embed.proj.weight": torch.randn(dim, 3, PATCH, PATCH, generator=g),
        "patch_embed.proj.bias": torch.randn(dim, generator=g),
        "norm.weight": torch.randn(dim, generator=g),
        "norm.bias": torch.randn(dim, generator=g),
        "head.weight": torch.randn(1000, dim, generator=g),
        "head.bias": torch.randn(1000, generator=g),
    }
    if distilled:
        state["dist_token"] = torch.randn(1, 1, dim, generator=g)
    for i in range(depth):
        for name, shape in {
            "norm1.weight": (dim,), "norm1.bias": (dim,), "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
            "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,),
            "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,), "mlp.fc2.weight": (dim, 4 * dim),
            "mlp.fc2.bias": (dim,),
        }.items():
            state[f"blocks.{i}.{name}"] = torch.randn(*shape, generator=g)
    return state


def small_config() -> STPrivacyConfig:
    return STPrivacyConfig.small(embed_dim=D, num_heads=3, depth=1, num_psb=3, mlp_ratio=4.0)  # 8 x 32 x 32, tubelet 2x8x8


def test_inflated_shapes_and_values(tmp_path):
    state = fake_vit_state_dict(depth=6)
    path = tmp_path / "vit_small.safetensors"
    save_file(state, str(path))
    cfg = small_config()
    model = STPrivacy(cfg)
    report = load_pretrained_vit(model, path)
    weight = model.embed.proj.weight
    assert weight.shape == (D, 3, 2, PATCH, PATCH)
    torch.testing.assert_close(weight, state["patch_embed.proj.weight"].unsqueeze(2).expand_as(weight) / 2)
    pos = model.embed.pos_embed
    L, N = cfg.time_steps, cfg.tokens_per_step
    assert pos.shape == (1, L * N, D)
    per_step = pos.view(L, N, D)
    assert torch.equal(per_step[0], per_step[-1])  # the same spatial embedding at every time step
    grid = state["pos_embed"][:, 1:].reshape(1, GRID, GRID, D).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(per_step[0], expected[0])
    # Block i of the ViT -> block i % depth of PSB i // depth, then the PAB's blocks (as the
    # release's ViT-S: blocks 1-9 encode, 10-12 decode); the 6th ViT block is unused here.
    torch.testing.assert_close(model.psbs[2].blocks[0].mlp.fc1.weight, state["blocks.2.mlp.fc1.weight"])
    torch.testing.assert_close(model.pab.blocks[0].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])
    torch.testing.assert_close(model.pab.blocks[1].norm2.bias, state["blocks.4.norm2.bias"])
    assert "blocks.5.attn.qkv.weight" in report.unused and "cls_token" in report.unused and "head.weight" in report.unused
    assert sorted({n.rsplit(".", 1)[0] for n in report.missing}) == [
        "pab.head", "pab.norm", *[f"psbs.{m}.predictor.{layer}" for m in range(3)
                                  for layer in ("in_conv.0", "in_conv.1", "out_conv.0", "out_conv.2", "out_conv.4")]]
    assert "embed.pos_embed" in report.loaded


def test_static_clip_gives_the_image_models_patch_tokens():
    state = fake_vit_state_dict()
    model = VideoClassifier(7, frames=8, image_size=32, tubelet=(2, PATCH, PATCH), embed_dim=D, depth=DEPTH, num_heads=3)
    report = load_pretrained_vit(model, state)
    frame = torch.rand(1, 3, 32, 32)
    video = frame.unsqueeze(2).expand(1, 3, 8, 32, 32)
    tokens3d = model.encoder.embed.proj(video)[:, :, 0]
    tokens2d = F.conv2d(frame, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=PATCH)
    torch.testing.assert_close(tokens3d, tokens2d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.encoder.norm.weight, state["norm.weight"])
    assert report.missing == ["head.weight", "head.bias"]


def test_torch_load_pth_with_deit_wrapper_and_frame_classifier(tmp_path):
    path = tmp_path / "deit_small_distilled.pth"
    torch.save({"model": fake_vit_state_dict(distilled=True)}, path)
    assert "dist_token" in load_vit_checkpoint(path)
    model = FrameClassifier(5, image_size=32, patch_size=PATCH, embed_dim=D, depth=2, num_heads=3)
    report = load_pretrained_vit(model, path)
    assert model.encoder.embed.proj.weight.shape == (D, 3, 1, PATCH, PATCH)
    assert model.encoder.embed.pos_embed.shape == (1, 16, D)
    assert "dist_token" in report.unused and report.missing == ["head.weight", "head.bias"]


def test_center_time_init():
    weight = torch.randn(4, 3, 8, 8)
    inflated = inflate_patch_embed(weight, 3, "center")
    assert torch.equal(inflated[:, :, 1], weight) and not inflated[:, :, [0, 2]].any()
    with pytest.raises(ValueError, match="time_init"):
        inflate_patch_embed(weight, 2, "edge")


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="existing file"):
        load_vit_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="pos_embed"):
        load_pretrained_vit(STPrivacy(small_config()), {"patch_embed.proj.weight": torch.zeros(D, 3, 8, 8)})
    with pytest.raises(ValueError, match="ViT-S model"):
        load_pretrained_vit(STPrivacy(small_config()), fake_vit_state_dict(dim=24))
    with pytest.raises(ValueError, match="square grid"):
        inflate_pos_embed(torch.zeros(1, 3 + 16, D), 2, (4, 4))
    with pytest.raises(TypeError, match="STPrivacy, VideoClassifier or FrameClassifier"):
        load_pretrained_vit(torch.nn.Linear(2, 2), fake_vit_state_dict())


def test_training_config_initializes_the_anonymizer_from_a_local_checkpoint(tmp_path):
    from stprivacy.train import TrainConfig, build_dataset, train_anonymizer

    path = tmp_path / "vit.safetensors"
    state = fake_vit_state_dict()
    save_file(state, str(path))
    cfg = small_config()
    train_cfg = TrainConfig(pretrained=str(path), init_epochs=0, adv_epochs=0, progress=False)
    geometry = {"frames": cfg.frames, "image_size": cfg.image_size, "tubelet": cfg.tubelet}
    data = build_dataset("synthetic", "train", geometry, train_videos=4)
    model, _ = train_anonymizer(cfg, train_cfg, data, num_classes=4, num_attributes=5)
    torch.testing.assert_close(model.psbs[1].blocks[0].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])


def test_learned_methods_target_model_starts_from_the_runs_pretrained_vit(tmp_path):
    """VITA's, SPAct's and Collective's action model starts where STPrivacy's recognizers do."""
    from stprivacy.methods.learned import MethodContext
    from stprivacy.train import TrainConfig

    path = tmp_path / "vit.safetensors"
    state = fake_vit_state_dict()
    save_file(state, str(path))
    cfg = small_config()
    scratch = MethodContext([], 4, 5, cfg, TrainConfig(progress=False)).action_recognizer()
    started = MethodContext([], 4, 5, cfg, TrainConfig(pretrained=str(path), progress=False)).action_recognizer()
    weight = state["blocks.0.attn.qkv.weight"]
    assert started.classifier.encoder.blocks[0].attn.qkv.weight.shape == weight.shape
    torch.testing.assert_close(started.classifier.encoder.blocks[0].attn.qkv.weight, weight)
    assert not torch.equal(scratch.classifier.encoder.blocks[0].attn.qkv.weight, weight)


# --- "timm:NAME" ------------------------------------------------------------------------------

HAVE_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAVE_TIMM, reason="timm is not installed (the optional extra: pip install -e '.[timm]')")
DEIT_S = "deit_small_patch16_224"


def vit_s_config() -> STPrivacyConfig:
    """ViT-S widths and depth (384, 6 heads, 3 PSBs x 3 + 3 PAB blocks) on a tiny clip: 4 x 32 x 32."""
    return STPrivacyConfig.small(frames=4, image_size=32, tubelet=(2, 16, 16), embed_dim=384, num_heads=6,
                                 depth=3, num_psb=3, pab_depth=3, mlp_ratio=4.0)


def test_timm_source_parsing_and_missing_timm(monkeypatch):
    """Runs without timm: the name parsing, and the one line that names the extra."""
    assert timm_model_name(f"timm:{DEIT_S}") == DEIT_S
    for bad in ("timm:", "timm: ", "deit.pth"):
        with pytest.raises(ConfigError, match="expected 'timm:NAME'"):
            timm_model_name(bad)
    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "timm", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ConfigError) as info:
        load_pretrained_vit(STPrivacy(small_config()), f"timm:{DEIT_S}")
    message = str(info.value)
    assert "\n" not in message and 'pip install "stpriv[timm]"' in message and DEIT_S in message


def test_training_config_checks_the_timm_form():
    from stprivacy.train import TrainConfig

    assert TrainConfig(pretrained=f"timm:{DEIT_S}").pretrained == f"timm:{DEIT_S}"  # no timm needed to parse
    with pytest.raises(ValueError, match="pretrained 'timm:'"):
        TrainConfig(pretrained="timm:")
    with pytest.raises(TypeError, match="pretrained must be a string"):
        TrainConfig(pretrained=None)


@pytest.fixture
def offline_timm(monkeypatch):
    """timm with only its download replaced: ``pretrained=True`` builds the same architecture with
    ``pretrained=False`` (seeded random weights) and returns it; name checks and mapping stay real."""
    timm = pytest.importorskip("timm", reason="timm is not installed (the optional extra: pip install -e '.[timm]')")
    built = {}

    def create_offline(timm_module, name):
        torch.manual_seed(0)
        built[name] = timm_module.create_model(name, pretrained=False)
        return built[name]

    monkeypatch.setattr(pretrained_module, "_create_pretrained_timm_model", create_offline)
    return timm, built


@needs_timm
def test_timm_source_maps_like_the_models_state_dict(offline_timm):
    _, built = offline_timm
    torch.manual_seed(1)
    via_timm = STPrivacy(vit_s_config())
    via_dict = copy.deepcopy(via_timm)  # the same initialization (what the checkpoint leaves alone)
    report = load_pretrained_vit(via_timm, f"timm:{DEIT_S}")
    reference = built[DEIT_S].state_dict()
    assert reference["pos_embed"].shape == (1, 1 + 14 * 14, 384)  # DeiT-S: class token + 14 x 14 grid
    expected = load_pretrained_vit(via_dict, reference)
    assert report.loaded == expected.loaded and report.unused == expected.unused
    for (name, got), (_, want) in zip(via_timm.state_dict().items(), via_dict.state_dict().items()):
        torch.testing.assert_close(got, want, msg=name)
    # Concrete checks of the mapping, not only agreement: 12 ViT blocks -> 3 PSBs x 3 + PAB x 3.
    torch.testing.assert_close(via_timm.psbs[2].blocks[2].attn.qkv.weight, reference["blocks.8.attn.qkv.weight"])
    torch.testing.assert_close(via_timm.pab.blocks[2].mlp.fc2.bias, reference["blocks.11.mlp.fc2.bias"])
    assert {"cls_token", "head.weight", "norm.weight"} <= set(report.unused)


@needs_timm
def test_timm_source_errors_are_one_line_naming_the_model(offline_timm, monkeypatch):
    for source, fragment in (("timm:not_a_model_xyz", "no model named 'not_a_model_xyz'"),
                             (f"timm:{DEIT_S}.no_such_tag", "no pretrained weights")):
        with pytest.raises(ConfigError, match=fragment) as info:
            load_timm_state_dict(source)
        assert "\n" not in str(info.value)
    # A ViT whose width does not fit ViT-S (DeiT-Tiny: 192), and a model without ViT keys; both
    # fail on the first entry checked, before anything is copied, so one model serves both.
    model = STPrivacy(vit_s_config())
    for name, fragment in (("deit_tiny_patch16_224", "ViT-S model"), ("resnet18", "patch_embed")):
        with pytest.raises(ConfigError, match=fragment) as info:
            load_pretrained_vit(model, f"timm:{name}")
        assert f"timm:{name}" in str(info.value) and "\n" not in str(info.value)

    def unreachable(timm_module, name):  # what huggingface_hub raises with no network and no cache
        raise FileNotFoundError("An error happened while trying to locate the file on the Hub")

    monkeypatch.setattr(pretrained_module, "_create_pretrained_timm_model", unreachable)
    with pytest.raises(ConfigError, match="could not fetch the weights") as info:
        load_pretrained_vit(model, f"timm:{DEIT_S}")
    assert "local checkpoint file path works offline" in str(info.value) and "\n" not in str(info.value)

    def bug(timm_module, name):  # anything else is not a network problem and keeps its traceback
        raise KeyError("unexpected")

    monkeypatch.setattr(pretrained_module, "_create_pretrained_timm_model", bug)
    with pytest.raises(KeyError):
        load_timm_state_dict(f"timm:{DEIT_S}")


@needs_timm
def test_imagenet_attackers_take_a_timm_source(offline_timm):
    """``stprivacy evaluate --imagenet-vit timm:NAME``: the attackers start from timm's weights."""
    from stprivacy.attack.evaluate import load_attacker_init
    from stprivacy.errors import UsageError
    from stprivacy.train import TrainConfig

    _, loaded = load_attacker_init(f"timm:{DEIT_S}", vit_s_config(), TrainConfig(), 5)
    assert loaded["video"] > 0 and loaded["frame"] > 0
    small = TrainConfig(recognizer={"embed_dim": 48, "num_heads": 3, "depth": 1})
    with pytest.raises(UsageError, match=f"--imagenet-vit timm:{DEIT_S}"):
        load_attacker_init(f"timm:{DEIT_S}", vit_s_config(), small, 5)
