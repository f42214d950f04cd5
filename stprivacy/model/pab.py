"""The privacy anonymization block (PAB, paper §3.3): transformer blocks decoding tokens to pixels."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import Block


class AnonymizationBlock(nn.Module):
    """``depth`` transformer blocks, LayerNorm and a Linear to the pixels of each tubelet.

    As in the authors' release it decodes only the tubelets that survived the sparsification:
    in evaluation the compacted kept tokens (plain attention, nothing else exists), in training
    every token with the dropped ones masked out of attention by the live keep mask, whose
    gradient reaches the predictors through these blocks too.
    """

    def __init__(self, dim: int, *, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, out_dim: int,
                 eps: float = 1e-6, norm_eps: float = 1e-6, color_skip_channels: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, eps=eps, norm_eps=norm_eps)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, out_dim)
        # STPrivacyConfig.pab_color_skip: the residual skip's colour mixing (None: the identity).
        self.color_skip = ColorSkip(color_skip_channels) if color_skip_channels else None

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """``x: Tensor[B, M, D]`` and ``keep: Tensor[B, M]`` (None: every token is kept)
        -> ``Tensor[B, M, out_dim]``, the pixels of each token's tubelet (dropped tokens' rows
        are computed but meaningless; the caller blacks them out)."""
        for blk in self.blocks:
            x = blk(x, keep)
        return self.head(self.norm(x))


class ColorSkip(nn.Module):
    """The learned skip connection of ``STPrivacyConfig.pab_color_skip``: every pixel's colour
    through ``C x C`` weights and a bias, identity at initialization."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.eye(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, pixels: Tensor) -> Tensor:
        """``Tensor[B, M, C * P]`` tubelets (channel-major rows, ``video_to_tubelets``) -> same shape."""
        rows = pixels.unflatten(-1, (self.channels, -1))
        mixed = torch.einsum("dc,bmcp->bmdp", self.weight, rows) + self.bias[:, None]
        return mixed.flatten(-2)
