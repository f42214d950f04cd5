"""The privacy anonymization block (PAB, paper §3.3): transformer blocks decoding tokens to pixels."""
from __future__ import annotations

from torch import Tensor, nn

from .layers import Block


class AnonymizationBlock(nn.Module):
    """``depth`` transformer blocks, LayerNorm and a Linear to the pixels of each tubelet.

    It runs on the full tubelet grid, dropped tubelets entering as zero tokens; their pixels are
    forced to 0 (black) at the output, so nothing of a dropped tubelet survives.
    """

    def __init__(self, dim: int, *, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, out_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, keep: Tensor | None) -> Tensor:
        """``x: Tensor[B, L*N, D]``, ``keep: Tensor[B, L*N] | None`` -> ``Tensor[B, L*N, C*dT*dH*dW]``."""
        if keep is not None:
            # Training carries dropped tokens' features along (masked); zero them as evaluation's
            # scatter does, so both modes decode the same input.
            x = x * keep[..., None].to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        patches = self.head(self.norm(x))
        return patches if keep is None else patches * keep[..., None].to(patches.dtype)
