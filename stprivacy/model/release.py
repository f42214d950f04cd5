"""The authors' released STPrivacy weights (github.com/ming1993li/stprivacy) in and out of this model.

The release is one DeiT-style ViT whose state dict names its parts:

* ``patch_embed.proj.{weight,bias}`` (a Conv3d, kernel = stride = tubelet) and ``pos_embed``
  ``[1, L*N, D]``, token ``l*N + n`` as here;
* ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``: blocks ``0 .. depth*num_psb-1``
  are the PSBs' (block ``i % depth`` of PSB ``i // depth``), the rest the PAB's;
* ``score_predictor.{m}.{in_conv,out_conv}.*``: the keep predictor of PSB ``m``;
* ``norm_recon`` and ``head_recon``: the PAB's LayerNorm and pixel head. The head's rows order a
  tubelet's pixels as ``(dT, dH, dW, C)`` (its ``rearrange(..., '(p0 p1 p2 c)')``); this model's
  as ``(C, dT, dH, dW)`` (``stprivacy.model.layers.tubelets_to_video``), so the rows are permuted.

The mapping is strict: a key that maps nowhere, a parameter left unfilled or a shape that differs
is an error naming it, never a silent partial load. Files are read safely (safetensors, or
``torch.load(weights_only=True)``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .network import STPrivacy
from .pretrained import LoadReport, load_vit_checkpoint


def _head_rows(cfg, order: str) -> Tensor:
    """Row permutation of the pixel head: ``ours[r] = release[perm[r]]`` (``order="to_ours"``)
    or its inverse (``"to_release"``)."""
    dt, dh, dw = cfg.tubelet
    release = torch.arange(cfg.tubelet_pixels).view(dt, dh, dw, cfg.in_chans)
    perm = release.permute(3, 0, 1, 2).reshape(-1)  # our (C, dT, dH, dW) row -> its release row
    return perm if order == "to_ours" else torch.argsort(perm)


def _name_map(model: STPrivacy) -> dict[str, str]:
    """Our parameter name -> the release's key."""
    cfg = model.cfg
    if cfg.pab_filter:  # parameters, and a missing head, that the release's layout has no place for
        raise ValueError("the release's layout has no pab_filter: turn it off to load or export the release's weights")
    out = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if parts[0] == "embed":
            key = "pos_embed" if parts[1] == "pos_embed" else "patch_embed." + ".".join(parts[1:])
        elif parts[0] == "psbs" and parts[2] == "blocks":
            key = f"blocks.{int(parts[1]) * cfg.depth + int(parts[3])}." + ".".join(parts[4:])
        elif parts[0] == "psbs" and parts[2] == "predictor":
            key = f"score_predictor.{parts[1]}." + ".".join(parts[3:])
        elif parts[0] == "pab" and parts[1] == "blocks":
            key = f"blocks.{cfg.depth * cfg.num_psb + int(parts[2])}." + ".".join(parts[3:])
        elif parts[0] == "pab" and parts[1] in ("norm", "head"):
            key = f"{parts[1]}_recon." + ".".join(parts[2:])
        else:  # pragma: no cover - a new parameter must be mapped here first
            raise RuntimeError(f"no release key for parameter {name}")
        out[name] = key
    return out


def load_release_weights(model: STPrivacy, checkpoint: str | Path | dict[str, Tensor]) -> LoadReport:
    """Loads a state dict in the release's key layout into ``model``, strictly.

    Args:
        model: an :class:`STPrivacy` with the release's structure (``use_psb`` and ``use_pab``;
            e.g. ``STPrivacyConfig.vit_s()`` for the ViT-S release).
        checkpoint: a file (``.safetensors``, ``.pth``/``.pt``; a ``{"model": ...}`` wrapper and a
            ``module.`` prefix are removed) or an already loaded state dict.

    Returns:
        :class:`LoadReport` with every parameter in ``loaded``.

    Raises:
        ValueError: the model lacks predictors or the PAB, a key of the checkpoint maps nowhere,
            a parameter has no key, or a shape differs.
    """
    if not isinstance(model, STPrivacy):
        raise TypeError(f"model must be an STPrivacy, got {type(model).__name__}")
    if not (model.cfg.use_psb and model.cfg.use_pab):
        raise ValueError("the release's weights need a model with predictors and a PAB (use_psb and use_pab)")
    state = load_vit_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else dict(checkpoint)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    names = _name_map(model)
    missing = sorted(key for key in names.values() if key not in state)
    unknown = sorted(set(state) - set(names.values()))
    if missing or unknown:
        raise ValueError(f"not a checkpoint of this model in the release's layout: missing keys {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unknown[:8]}"
                         f"{' ...' if len(unknown) > 8 else ''}")
    params = dict(model.named_parameters())
    rows = _head_rows(model.cfg, "to_ours")
    report = LoadReport()
    with torch.no_grad():
        for name, key in names.items():
            value = state[key]
            if name.startswith("pab.head."):
                value = value[rows]
            if tuple(value.shape) != tuple(params[name].shape):
                raise ValueError(f"checkpoint entry {key} has shape {tuple(value.shape)}, the model's {name} "
                                 f"needs {tuple(params[name].shape)}")
            params[name].copy_(value.to(params[name].dtype))
            report.loaded.append(name)
    return report


def release_state_dict(model: STPrivacy) -> dict[str, Tensor]:
    """The inverse of :func:`load_release_weights`: ``model``'s weights under the release's keys."""
    if not isinstance(model, STPrivacy):
        raise TypeError(f"model must be an STPrivacy, got {type(model).__name__}")
    rows = _head_rows(model.cfg, "to_release")
    params = dict(model.named_parameters())
    out = {}
    for name, key in _name_map(model).items():
        value = params[name].detach().clone()
        out[key] = value[rows] if name.startswith("pab.head.") else value
    return out
