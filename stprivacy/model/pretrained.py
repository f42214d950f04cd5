"""Initialization from an ImageNet ViT-S checkpoint (paper §4.3), inflated from images to video.

The checkpoint is in timm / DeiT key layout (``patch_embed.proj.weight``, ``pos_embed``,
``cls_token``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``,
``head``), e.g. timm's ``vit_small_patch16_224`` or DeiT-S. Its source is one of:

* **a local file**, read with safetensors, or with ``torch.load(weights_only=True)`` for
  ``.pth`` / ``.pt`` files (DeiT's ``{"model": state_dict}`` wrapper is unwrapped), so an
  untrusted file cannot run code. Nothing is downloaded; this works offline.
* **``"timm:NAME"``** (e.g. ``"timm:deit_small_patch16_224"``, the authors' ImageNet ViT-S):
  ``timm.create_model(NAME, pretrained=True)`` fetches the weights from timm's hub (or its local
  cache), and the model's state dict goes through the same mapping as a file's. timm is the
  optional extra ``pip install "stpriv[timm]"``; it is imported only for this form.

Inflation:

* **Patch embedding** ``[D, C, pH, pW]`` -> ``[D, C, dT, pH, pW]``: the 2D kernel repeated over the
  tubelet's dT frames and divided by dT (I3D's inflation), so a static clip produces exactly
  the image model's patch tokens. ``time_init="center"`` puts the whole kernel on the middle
  frame instead.
* **Position embedding** ``[1, prefix + g*g, D]``: the class / distillation tokens' entries are
  dropped (the video models have none), the ``g x g`` grid is resized bicubically to the video's
  ``h x w`` tubelet grid and repeated for each of the L time steps (token ``l*N + n``).
* **Blocks** map in order: ViT block i -> the model's i-th transformer block. STPrivacy's blocks
  are its PSBs' (block ``i % depth`` of PSB ``i // depth``), then the PAB's: ViT-S blocks 1-9
  go to the three PSBs and blocks 10-12 to the PAB, as in the authors' release. The final
  ``norm`` goes to the recognizers' norm (which normalizes the pooled token, as ImageNet's
  ``fc_norm`` does for mean-pooled ViTs).
* Left at their init: the keep predictors, the PAB's LayerNorm and pixel head, and the
  recognizers' heads (their tasks differ from ImageNet's), which is what :class:`LoadReport`
  lists as ``missing``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .network import STPrivacy
from .recognizers import FrameClassifier, VideoClassifier

TIMM_PREFIX = "timm:"
_WRAPPER_KEYS = ("model", "state_dict", "model_state", "module")
_TIME_INITS = ("average", "center")


@dataclass
class LoadReport:
    """What an initialization did, by parameter name.

    Attributes:
        loaded: model parameters that now hold (inflated) checkpoint values.
        missing: model parameters left at their initialization.
        unused: checkpoint entries that went nowhere (e.g. ``cls_token``, ``head.*``).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def load_vit_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Reads a timm/DeiT-layout state dict from ``.safetensors`` or ``.pth``/``.pt``/``.bin``, safely.

    Raises:
        ValueError: the file does not exist or holds no tensor state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint must be an existing file, got {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (timm / DeiT layout expected)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def is_timm_source(source: object) -> bool:
    """Whether a checkpoint source names a timm model (``"timm:NAME"``) rather than a file."""
    return isinstance(source, str) and source.startswith(TIMM_PREFIX)


def timm_model_name(source: str) -> str:
    """The NAME of ``"timm:NAME"``.

    Raises:
        ConfigError: the source is not of that form, or NAME is empty.
    """
    name = source.removeprefix(TIMM_PREFIX).strip() if is_timm_source(source) else ""
    if not name:
        raise ConfigError(f"pretrained {source!r}: expected 'timm:NAME', e.g. 'timm:deit_small_patch16_224'")
    return name


def _create_pretrained_timm_model(timm: Any, name: str) -> nn.Module:
    """The one step that downloads: timm's model with its ImageNet weights (hub or local cache)."""
    return timm.create_model(name, pretrained=True)


def _is_fetch_error(error: Exception) -> bool:
    """Whether ``error`` means the hub could not be reached (no network, DNS, timeout, no cache).

    huggingface_hub raises ``OSError`` subclasses (``LocalEntryNotFoundError``); older versions let
    ``requests`` / ``urllib3`` errors through, newer ones ``httpx``'s, which are not ``OSError``.
    """
    if isinstance(error, OSError):
        return True
    return type(error).__module__.split(".")[0] in {"huggingface_hub", "requests", "urllib3", "httpx", "httpx2"}


def load_timm_state_dict(source: str) -> dict[str, Tensor]:
    """The ImageNet weights of ``"timm:NAME"`` as a timm-layout state dict (CPU tensors).

    Raises:
        ConfigError: timm is not installed; NAME is not a timm model with pretrained weights; or
            the weights could not be fetched (no network and not in timm's cache). Each is one
            line naming the fix.
    """
    name = timm_model_name(source)
    try:
        import timm
    except ImportError as e:
        raise ConfigError(f"pretrained {source!r} needs timm: pip install \"stpriv[timm]\" "
                          f"(or give a local checkpoint file)") from e
    # Checked before any download: timm would build an unknown name's architecture never, and a
    # known one without weights silently with random weights, which must not pass as ImageNet's.
    if not timm.is_model(name):
        raise ConfigError(f"pretrained {source!r}: timm has no model named {name!r}")
    if not timm.list_pretrained(name) and not timm.list_pretrained(f"{name}.*"):
        raise ConfigError(f"pretrained {source!r}: timm has no pretrained weights for {name!r}")
    try:
        model = _create_pretrained_timm_model(timm, name)
    except Exception as e:  # noqa: BLE001 - only fetch errors are translated, the rest re-raised
        if not _is_fetch_error(e):
            raise
        raise ConfigError(f"pretrained {source!r}: could not fetch the weights from timm's hub "
                          f"({type(e).__name__}); a local checkpoint file path works offline") from e
    return {k: v.detach().to("cpu") for k, v in model.state_dict().items()}


def load_vit_source(source: str | Path) -> dict[str, Tensor]:
    """A ViT state dict from ``"timm:NAME"`` (:func:`load_timm_state_dict`) or a local file
    (:func:`load_vit_checkpoint`)."""
    return load_timm_state_dict(source) if is_timm_source(source) else load_vit_checkpoint(source)


def inflate_patch_embed(weight: Tensor, time_size: int, time_init: str = "average") -> Tensor:
    """``[D, C, pH, pW]`` -> ``[D, C, time_size, pH, pW]`` (see the module docstring)."""
    if weight.dim() != 4:
        raise ValueError(f"patch_embed.proj.weight must be [D, C, pH, pW], got {tuple(weight.shape)}")
    if time_init not in _TIME_INITS:
        raise ValueError(f"time_init must be one of {_TIME_INITS}, got {time_init!r}")
    if time_init == "average":
        return weight.unsqueeze(2).repeat(1, 1, time_size, 1, 1) / time_size
    out = weight.new_zeros(weight.shape[0], weight.shape[1], time_size, *weight.shape[2:])
    out[:, :, time_size // 2] = weight
    return out


def inflate_pos_embed(pos_embed: Tensor, time_steps: int, grid_size: tuple[int, int]) -> Tensor:
    """``[1, prefix + g*g, D]`` -> ``[1, time_steps * h * w, D]``, time-major (see the module docstring)."""
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be [1, tokens, D], got {tuple(pos_embed.shape)}")
    tokens, dim = pos_embed.shape[1:]
    side = math.isqrt(tokens)
    prefix = tokens - side * side
    if prefix > 2:  # a square grid plus at most a class and a distillation token
        raise ValueError(f"pos_embed has {tokens} tokens: not a square grid plus class/distillation tokens")
    grid = pos_embed[:, prefix:].reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    if (side, side) != tuple(grid_size):
        grid = F.interpolate(grid, size=tuple(grid_size), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, 1, grid_size[0] * grid_size[1], dim)
    return grid.expand(1, time_steps, -1, -1).reshape(1, -1, dim).to(pos_embed.dtype)


def _targets(model: nn.Module) -> tuple[nn.Module, list[nn.Module], nn.Module | None]:
    """(tubelet embedding, transformer blocks in order, final norm or None) of a supported model."""
    if isinstance(model, STPrivacy):
        blocks = [block for psb in model.psbs for block in psb.blocks]
        return model.embed, blocks + (list(model.pab.blocks) if model.pab is not None else []), None
    if isinstance(model, (VideoClassifier, FrameClassifier)):
        return model.encoder.embed, list(model.encoder.blocks), model.encoder.norm
    raise TypeError(f"model must be an STPrivacy, VideoClassifier or FrameClassifier, got {type(model).__name__}")


def _copy(model: nn.Module, module: nn.Module, values: dict[str, Tensor], report: LoadReport, source: str) -> None:
    """Copies ``values`` (names relative to ``module``) into it, checking every shape."""
    names = {id(p): n for n, p in model.named_parameters()}
    own = dict(module.named_parameters())
    for name, value in values.items():
        if name not in own:
            report.unused.append(f"{source}{name}")
            continue
        target = own[name]
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(
                f"checkpoint entry {source}{name} has shape {tuple(value.shape)}, the model's "
                f"{names[id(target)]} needs {tuple(target.shape)} (a ViT-S checkpoint needs a ViT-S model)"
            )
        with torch.no_grad():
            target.copy_(value.to(target.dtype))
        report.loaded.append(names[id(target)])


def load_pretrained_vit(model: nn.Module, checkpoint: str | Path | dict[str, Tensor], *, time_init: str = "average") -> LoadReport:
    """Initializes ``model`` in place from an ImageNet ViT checkpoint, inflated to video.

    Args:
        model: :class:`STPrivacy`, :class:`VideoClassifier` or :class:`FrameClassifier`.
        checkpoint: a checkpoint file, ``"timm:NAME"`` (:func:`load_vit_source`), or an already
            loaded state dict.
        time_init: ``"average"`` or ``"center"``, how the patch kernel spreads over dT frames.

    Returns:
        :class:`LoadReport`.

    Raises:
        ValueError: a missing ``patch_embed``/``pos_embed`` entry, or a shape that does not fit
            (a :class:`~stprivacy.errors.ConfigError` naming the model for ``"timm:NAME"``).
    """
    if is_timm_source(checkpoint):
        state = load_timm_state_dict(checkpoint)
        try:
            return _load_state(model, state, time_init)
        except ValueError as e:  # e.g. a ViT-B's width, or a ResNet's keys: name the timm model
            raise ConfigError(f"pretrained {checkpoint!r} does not fit this model: {e}") from e
    state = load_vit_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else dict(checkpoint)
    return _load_state(model, state, time_init)


def _load_state(model: nn.Module, state: dict[str, Tensor], time_init: str) -> LoadReport:
    """:func:`load_pretrained_vit` on a state dict of our own (popped as it is mapped)."""
    embed, blocks, norm = _targets(model)
    for key in ("patch_embed.proj.weight", "pos_embed"):
        if key not in state:
            raise ValueError(f"checkpoint has no {key!r}: not a timm / DeiT ViT state dict")
    report = LoadReport()
    time_size, patch_h, patch_w = embed.proj.kernel_size
    weight2d = state.pop("patch_embed.proj.weight")
    if tuple(weight2d.shape[-2:]) != (patch_h, patch_w):
        raise ValueError(f"the checkpoint's patches are {tuple(weight2d.shape[-2:])}, the model's tubelets "
                         f"{patch_h}x{patch_w}: they must match")
    embed_values = {"proj.weight": inflate_patch_embed(weight2d, time_size, time_init)}
    if "patch_embed.proj.bias" in state:
        embed_values["proj.bias"] = state.pop("patch_embed.proj.bias")
    # Frames are square, so the tubelet grid is side x side with side^2 = tokens per time step.
    time_steps = _time_steps(model)
    side = math.isqrt(embed.pos_embed.shape[1] // time_steps)
    embed_values["pos_embed"] = inflate_pos_embed(state.pop("pos_embed"), time_steps, (side, side))
    _copy(model, embed, embed_values, report, "patch_embed/pos_embed:")
    for i, block in enumerate(blocks):
        prefix = f"blocks.{i}."
        values = {k.removeprefix(prefix): state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
        _copy(model, block, values, report, prefix)
    if norm is not None:
        values = {k.removeprefix("norm."): state.pop(k) for k in ("norm.weight", "norm.bias") if k in state}
        _copy(model, norm, values, report, "norm.")
    report.unused += sorted(state)
    loaded = set(report.loaded)
    report.missing = [name for name, _ in model.named_parameters() if name not in loaded]
    return report


def _time_steps(model: nn.Module) -> int:
    if isinstance(model, STPrivacy):
        return model.cfg.time_steps
    return model.encoder.grid[0]
