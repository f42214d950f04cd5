"""Building blocks shared by STPrivacy and the recognizers: tubelet tokenizer, timm-style blocks."""
from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from . import ops


# Pixel statistics that inputs are standardized with (Kinetics', as video pipelines use).
PIXEL_MEAN, PIXEL_STD = 0.45, 0.225


def init_weights(module: nn.Module) -> None:
    """timm's ViT init: truncated normal (std .02) Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TubeletEmbed(nn.Module):
    """Video to tokens: a Conv3d with kernel = stride = tubelet, plus a learned position embedding.

    No class token: the pruning and the decoder work on the tubelet grid itself.
    """

    def __init__(self, *, frames: int, image_size: int, tubelet: tuple[int, int, int], in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=tubelet, stride=tubelet)
        num_tokens = (frames // tubelet[0]) * (image_size // tubelet[1]) * (image_size // tubelet[2])
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, video: Tensor) -> Tensor:
        """``Tensor[B, C, T, H, W]`` -> ``Tensor[B, L*N, D]``, time-major (token ``l*N + n``)."""
        x = rearrange(self.proj(video), "b d l h w -> b (l h w) d")
        return x + self.pos_embed


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    With a keep mask the dropped keys are masked out by ``stpriv_ops.masked_attention`` (whose
    gradient for ``keep`` trains the predictor); without one every token is a real token and
    PyTorch's SDPA runs (flash / memory-efficient kernels where available), or xformers'
    memory-efficient attention where :func:`stprivacy.model.ops.attention_backend` selects it.
    """

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.eps = eps
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """``Tensor[B, N, D]`` (and ``keep: Tensor[B, N]`` or None) -> ``Tensor[B, N, D]``."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if keep is None:
            x = ops.attention(q, k, v, self.scale)  # SDPA, or xformers where chosen
        else:
            x = ops.masked_attention(q, k, v, keep, self.scale, self.eps)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x), keep)``, then ``x + mlp(norm(x))``.

    ``eps`` is the masked attention's smoothing term, ``norm_eps`` the LayerNorms' (timm's ViT-S
    and the authors' release use 1e-6, not PyTorch's default 1e-5).
    """

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, eps: float = 1e-6,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """``Tensor[B, N, D]``, ``keep: Tensor[B, N] | None`` -> ``Tensor[B, N, D]``."""
        x = x + self.attn(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x))


def tubelets_to_video(patches: Tensor, *, time_steps: int, grid_size: tuple[int, int], tubelet: tuple[int, int, int]) -> Tensor:
    """Unpatchify: ``Tensor[B, L*N, C*dT*dH*dW]`` -> ``Tensor[B, C, T, H, W]``."""
    dt, dh, dw = tubelet
    h, w = grid_size
    return rearrange(
        patches, "b (l h w) (c dt dh dw) -> b c (l dt) (h dh) (w dw)", l=time_steps, h=h, w=w, dt=dt, dh=dh, dw=dw
    )


def video_to_tubelets(video: Tensor, *, tubelet: tuple[int, int, int]) -> Tensor:
    """Patchify, the inverse of :func:`tubelets_to_video`:
    ``Tensor[B, C, T, H, W]`` -> ``Tensor[B, L*N, C*dT*dH*dW]``."""
    dt, dh, dw = tubelet
    return rearrange(video, "b c (l dt) (h dh) (w dw) -> b (l h w) (c dt dh dw)", dt=dt, dh=dh, dw=dw)


def keep_to_pixels(keep: Tensor, *, tubelet: tuple[int, int, int]) -> Tensor:
    """``keep: Tensor[B, L, h, w]`` -> ``Tensor[B, 1, T, H, W]``, each tubelet's value over its pixels."""
    dt, dh, dw = tubelet
    return repeat(keep, "b l h w -> b 1 (l dt) (h dh) (w dw)", dt=dt, dh=dh, dw=dw)
