"""Recognizers that judge an anonymized video: ViT classifiers over tubelets, and over single frames.

Action recognition uses :class:`VideoClassifier` with cross-entropy; video-level privacy uses
it with ``multilabel=True`` (one logit per attribute, BCE); the frame-level privacy protocol
(paper §4.7) uses :class:`FrameClassifier`. They return logits only; losses live in training.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import ops
from .config import STPrivacyConfig
from .layers import Block, TubeletEmbed, init_weights


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


class _ViTEncoder(nn.Module):
    """Tokenizer, pre-norm blocks, a mean pool and a LayerNorm; shared by both classifiers.

    By default the pool comes before the norm, as in the authors' ``action.py`` (timm's
    ``fc_norm``): the mean over the kept tokens, then the LayerNorm of that mean.
    ``norm_before_pool`` normalizes every token first and averages after (the choice of ViTs
    pooled by a class token's norm), which small recognizers trained from scratch learn motion
    with far sooner (docs/demo_results.md).
    """

    def __init__(self, *, frames: int, image_size: int, tubelet: tuple[int, int, int], in_chans: int, embed_dim: int,
                 depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, attn_eps: float, norm_eps: float,
                 norm_before_pool: bool = False):
        super().__init__()
        _check_positive(frames=frames, image_size=image_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
                        num_heads=num_heads)
        if len(tubelet) != 3 or frames % tubelet[0] or image_size % tubelet[1] or image_size % tubelet[2]:
            raise ValueError(f"tubelet {tuple(tubelet)} must divide (frames, image_size, image_size) = "
                             f"({frames}, {image_size}, {image_size})")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.geometry = (in_chans, frames, image_size, image_size)
        self.grid = (frames // tubelet[0], (image_size // tubelet[1]) * (image_size // tubelet[2]))
        self.embed = TubeletEmbed(frames=frames, image_size=image_size, tubelet=tuple(tubelet), in_chans=in_chans,
                                  embed_dim=embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, eps=attn_eps,
                  norm_eps=norm_eps)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.norm_before_pool = norm_before_pool

    def forward(self, video: Tensor, keep: Tensor | None) -> Tensor:
        """``Tensor[B, C, T, H, W]``, ``keep: Tensor[B, L*N] | None`` -> pooled ``Tensor[B, D]``."""
        x = self.embed(video)
        for blk in self.blocks:
            x = blk(x, keep)
        if self.norm_before_pool:
            x = self.norm(x)
        if keep is None:
            pooled = x.mean(dim=1)
        else:
            B, _, D = x.shape
            L, N = self.grid
            pooled = ops.masked_mean(x.view(B, L, N, D), keep.view(B, L, N).to(x.dtype))[1]
        return pooled if self.norm_before_pool else self.norm(pooled)


class VideoClassifier(nn.Module):
    """ViT video classifier over tubelets (no class token, mean-pooled), for action or privacy.

    With a keep mask the dropped tubelets are skipped: masked out of every attention as keys and
    left out of the mean pool. The head starts at zero, as the release's recognizers do (so every
    class starts equally likely), unless ``zero_head`` is False.

    Args:
        num_classes: actions, or privacy attributes when ``multilabel``.
        frames, image_size, tubelet, in_chans: the input geometry (as in :class:`STPrivacyConfig`).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: ViT sizes (ViT-S by default).
        multilabel: True for independent per-class sigmoids (BCE), False for one softmax
            (cross-entropy); recorded for the training code, the logits are the same either way.
        attn_eps: smoothing of the masked attention.
        norm_eps: epsilon of the LayerNorms (ViT-S: 1e-6).
        norm_before_pool: normalize the tokens, then pool (see :class:`_ViTEncoder`); False, the
            release's order, pools then normalizes.
        zero_head: start the head at zero (the release's recognizers); False draws it like every
            other Linear (truncated normal, std 0.02).
    """

    def __init__(self, num_classes: int, *, frames: int = 16, image_size: int = 112,
                 tubelet: tuple[int, int, int] = (2, 16, 16), in_chans: int = 3, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 6, mlp_ratio: float = 4.0, qkv_bias: bool = True, multilabel: bool = False,
                 attn_eps: float = 1e-6, norm_eps: float = 1e-6, norm_before_pool: bool = False,
                 zero_head: bool = True):
        super().__init__()
        _check_positive(num_classes=num_classes)
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.encoder = _ViTEncoder(frames=frames, image_size=image_size, tubelet=tubelet, in_chans=in_chans,
                                   embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                   qkv_bias=qkv_bias, attn_eps=attn_eps, norm_eps=norm_eps,
                                   norm_before_pool=norm_before_pool)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(init_weights)
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @classmethod
    def from_config(cls, cfg: STPrivacyConfig, num_classes: int, *, multilabel: bool = False,
                    **overrides: Any) -> VideoClassifier:
        """A classifier for the videos of ``cfg`` with the anonymizer's sizes (``cfg.num_blocks`` blocks)."""
        kwargs = dict(frames=cfg.frames, image_size=cfg.image_size, tubelet=cfg.tubelet, in_chans=cfg.in_chans,
                      embed_dim=cfg.embed_dim, depth=cfg.num_blocks, num_heads=cfg.num_heads,
                      mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, attn_eps=cfg.attn_eps, norm_eps=cfg.norm_eps)
        kwargs.update(overrides)
        return cls(num_classes, multilabel=multilabel, **kwargs)

    def forward(self, video: Tensor, keep: Tensor | None = None) -> Tensor:
        """Logits ``Tensor[B, num_classes]``.

        Args:
            video: ``Tensor[B, C, T, H, W]``.
            keep: ``Tensor[B, L, N]`` (or ``[B, L*N]``), 1 = tubelet kept; None keeps all.
        """
        _check_input("video", video, self.encoder.geometry)
        if keep is not None:
            keep = _check_keep(keep, video.shape[0], self.encoder.grid)
        return self.head(self.encoder(video, keep))


class FrameClassifier(nn.Module):
    """ViT image classifier for single frames (the frame-level privacy protocol, paper §4.7).

    Args:
        num_classes: privacy attributes (``multilabel=True``) or classes.
        image_size: frame height and width.
        patch_size: ``p`` or ``(pH, pW)``.
        in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: ViT sizes.
        multilabel: recorded for the training code (BCE vs cross-entropy).
        norm_eps, norm_before_pool, zero_head: as for :class:`VideoClassifier`.
    """

    def __init__(self, num_classes: int, *, image_size: int = 112, patch_size: int | tuple[int, int] = 16,
                 in_chans: int = 3, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, multilabel: bool = False, norm_eps: float = 1e-6,
                 norm_before_pool: bool = False, zero_head: bool = True):
        super().__init__()
        _check_positive(num_classes=num_classes)
        ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        self.num_classes = num_classes
        self.multilabel = multilabel
        # A frame is a one-frame video with 1 x pH x pW tubelets: the video encoder serves as is.
        self.encoder = _ViTEncoder(frames=1, image_size=image_size, tubelet=(1, ph, pw), in_chans=in_chans,
                                   embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                   qkv_bias=qkv_bias, attn_eps=1e-6, norm_eps=norm_eps,
                                   norm_before_pool=norm_before_pool)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(init_weights)
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @classmethod
    def from_config(cls, cfg: STPrivacyConfig, num_classes: int, *, multilabel: bool = True,
                    **overrides: Any) -> FrameClassifier:
        """A frame classifier for the frames of ``cfg``'s videos, patches = the tubelets' (dH, dW)."""
        kwargs = dict(image_size=cfg.image_size, patch_size=cfg.tubelet[1:], in_chans=cfg.in_chans,
                      embed_dim=cfg.embed_dim, depth=cfg.num_blocks, num_heads=cfg.num_heads,
                      mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, norm_eps=cfg.norm_eps)
        kwargs.update(overrides)
        return cls(num_classes, multilabel=multilabel, **kwargs)

    def forward(self, frames: Tensor) -> Tensor:
        """``frames: Tensor[B, C, H, W]`` -> logits ``Tensor[B, num_classes]``."""
        C, _, H, W = self.encoder.geometry
        _check_input("frames", frames, (C, H, W))
        return self.head(self.encoder(frames[:, :, None], None))


def _check_input(name: str, x: Tensor, expected: tuple[int, ...]) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != tuple(expected) or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape [B, {', '.join(map(str, expected))}] with B >= 1, "
                         f"got {tuple(x.shape)}")


def _check_keep(keep: Tensor, batch: int, grid: tuple[int, int]) -> Tensor:
    """Validates ``keep: Tensor[B, L, N] | Tensor[B, L*N]`` and returns it as ``[B, L*N]``."""
    L, N = grid
    if not isinstance(keep, Tensor):
        raise TypeError(f"keep must be a torch.Tensor or None, got {type(keep).__name__}")
    if tuple(keep.shape) not in ((batch, L, N), (batch, L * N)):
        raise ValueError(f"keep must have shape [B, L, N] = [{batch}, {L}, {N}] (or [B, L*N]), got {tuple(keep.shape)}")
    if not keep.is_floating_point():
        keep = keep.to(torch.get_default_dtype())
    return keep.reshape(batch, L * N)
