"""The privacy anonymization block (PAB, paper §3.3): transformer blocks decoding tokens to pixels."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
                 eps: float = 1e-6, norm_eps: float = 1e-6,
                 filter_shape: tuple[int, int, int, int] | None = None, filter_sigma: float = 1.5):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, eps=eps, norm_eps=norm_eps)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, out_dim)
        # STPrivacyConfig.pab_filter: per-token desaturation and blur of the tubelet, instead of the head.
        self.filter = TubeletFilter(dim, filter_shape, filter_sigma) if filter_shape else None

    def forward(self, x: Tensor, keep: Tensor | None = None, pixels: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """``x: Tensor[B, M, D]`` and ``keep: Tensor[B, M]`` (None: every token is kept)
        -> ``(Tensor[B, M, out_dim], gates)``: the pixels of each token's tubelet (dropped tokens'
        rows are computed but meaningless; the caller blacks them out), and with ``pab_filter``
        the filter's gates ``Tensor[B, M, 2]`` (else None).

        ``pixels: Tensor[B, M, out_dim]``, each token's input tubelet, makes the block residual
        (``STPrivacyConfig.pab_residual``): the head's output is added to the tubelet itself;
        with ``pab_filter`` the output is the tubelet filtered by the gates each token decides,
        and nothing else."""
        for blk in self.blocks:
            x = blk(x, keep)
        x = self.norm(x)
        if self.filter is not None:  # STPrivacyConfig.pab_filter: the filtered tubelet is the output
            gates = self.filter.gates(x)
            return self.filter(pixels, gates), gates
        out = self.head(x)
        if pixels is None:
            return out, None
        return out + pixels, None


class TubeletFilter(nn.Module):
    """The output of the anonymization block with ``STPrivacyConfig.pab_filter``.

    From its decoded token, each tubelet gets two gates in [0, 1]: how far to desaturate it
    (towards the mean of its channels) and how far to blur it (towards a Gaussian blur of each of
    its frames, within the tubelet only, so nothing of a dropped neighbour leaks in). The gates
    are a Linear of the token clamped to [0, 1]; the Linear starts at zero, so the filter is the
    identity at initialization, and it is a raw parameter (not an ``nn.Linear``) so that turning
    the option on draws nothing from the random stream that builds the other modules. The clamp
    is :class:`_ProjectedClamp`: outside [0, 1] it passes only a gradient that leads back into
    the range, so a gate held at an end answers the next push the other way at once.

    Why gates and not pixels: desaturating or blurring a textured tubelet changes every pixel in
    step with the texture, which a pixel head cannot output through one token (measured in
    docs/demo_results.md), while a gate is one number whose adversarial gradient has the same
    sign for every clip (any colour cast or fine marking shrinks as it grows), where the
    gradients on a global colour mixing cancel between opposite casts. And a filter can only
    remove what is there: next to a pixel head, the adversarial phase used the head to re-encode
    the tint that the gates had removed, which the phase's own adversary missed and fresh
    attackers read.
    """

    def __init__(self, dim: int, shape: tuple[int, int, int, int], sigma: float):
        super().__init__()
        self.shape = tuple(shape)  # (C, dT, dH, dW) of one tubelet, the channel-major row layout
        self.weight = nn.Parameter(torch.zeros(2, dim))
        self.bias = nn.Parameter(torch.zeros(2))
        _, _, dh, dw = self.shape
        self.register_buffer("blur_h", _blur_matrix(dh, sigma), persistent=False)
        self.register_buffer("blur_w", _blur_matrix(dw, sigma), persistent=False)

    def gates(self, tokens: Tensor) -> Tensor:
        """``Tensor[B, M, D]`` -> ``Tensor[B, M, 2]``: (desaturation, blur), each in [0, 1] (the
        gradient of the unclamped value)."""
        return _ProjectedClamp.apply(F.linear(tokens, self.weight, self.bias))

    def blur(self, rows: Tensor) -> Tensor:
        """Gaussian blur of every frame of every tubelet, replicate-padded at its borders:
        ``Tensor[B, M, C, dT, dH, dW]`` -> same shape (two small matrix products)."""
        return torch.einsum("yh,bmcthw,xw->bmctyx", self.blur_h.to(rows.dtype), rows, self.blur_w.to(rows.dtype))

    def forward(self, pixels: Tensor, gates: Tensor) -> Tensor:
        """``pixels: Tensor[B, M, C*dT*dH*dW]`` (channel-major rows) and their ``gates:
        Tensor[B, M, 2]`` (:meth:`gates`) -> the filtered pixels, same shape."""
        rows = pixels.unflatten(-1, self.shape)
        grey = rows.mean(dim=2, keepdim=True)
        rows = rows + gates[..., 0, None, None, None, None] * (grey - rows)
        rows = rows + gates[..., 1, None, None, None, None] * (self.blur(rows) - rows)
        return rows.flatten(-4)


def _blur_matrix(size: int, sigma: float) -> Tensor:
    """The 1-D Gaussian blur of ``size`` samples with replicate padding as a matrix
    ``Tensor[size, size]`` (row i: the weights of every input sample in output sample i)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    taps = taps / taps.sum()
    matrix = torch.zeros(size, size, dtype=torch.float64)
    for i in range(size):
        for tap, offset in zip(taps.tolist(), range(-radius, radius + 1)):
            matrix[i, min(max(i + offset, 0), size - 1)] += tap
    return matrix.float()


class _ProjectedClamp(torch.autograd.Function):
    """``clamp(z, 0, 1)`` whose gradient passes inside [0, 1] and, outside, only where a descent
    step moves ``z`` back towards the range: a gate pushed past an end by one side of the
    adversarial game stays at that end, where the other side's next push acts at once (a plain
    clamp's gate dies there; a straight-through one drifts away from the range for as long as
    one side keeps pushing)."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        ctx.save_for_backward(z)
        return z.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (z,) = ctx.saved_tensors
        # Descent moves z by -grad: below the range it may only rise (grad < 0), above only fall.
        passes = ((z >= 0) & (z <= 1)) | ((z < 0) & (grad < 0)) | ((z > 1) & (grad > 0))
        return grad * passes
