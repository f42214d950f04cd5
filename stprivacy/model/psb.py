"""The privacy sparsification block (PSB, paper §3.2): transformer blocks, then a keep predictor."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .layers import Block


def tokens_to_keep(num_tokens: int, ratio: float) -> int:
    """``floor(num_tokens * ratio)``, at least 1; the tiny slack absorbs ``0.7 ** 2 = 0.48999...``."""
    return max(1, math.floor(num_tokens * ratio + 1e-9))


class KeepPredictor(nn.Module):
    """Multi-level aggregation keep predictor (paper Eq. 1-5).

    ``in_conv`` (LayerNorm-Linear-GELU) maps each token to D channels, split in thirds: the first
    stays per token (local), the second is averaged over the kept tokens of the token's frame
    (spatial), the third over the kept tokens of the whole clip (spatio-temporal). A 3-layer MLP
    maps the concatenation to log-probabilities (index 0 = keep).
    """

    def __init__(self, dim: int):
        super().__init__()
        third = dim // 3
        self.split = (dim - 2 * third, third, third)  # (local, spatial, spatio-temporal) channels
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        hidden1, hidden2 = max(dim // 2, 1), max(dim // 4, 1)
        self.out_conv = nn.Sequential(
            nn.Linear(dim, hidden1), nn.GELU(), nn.Linear(hidden1, hidden2), nn.GELU(),
            nn.Linear(hidden2, 2), nn.LogSoftmax(dim=-1),
        )

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """Log-probabilities ``Tensor[B, L, N, 2]`` of ``x: Tensor[B, L, N, D]``.

        ``keep: Tensor[B, L, N]`` selects the tokens the means run over; None means all of them.
        """
        h = self.in_conv(x)
        # One pass over all D channels gives both means; only their own thirds are used below.
        if keep is None:
            spatial, spatiotemporal = h.mean(dim=2), h.mean(dim=(1, 2))
        else:
            spatial, spatiotemporal = ops.masked_mean(h, keep)
        c_local, c_spatial, _ = self.split
        # concat(local, Expd(spatial), Expd(st)) @ W^T == local @ W_l^T + spatial @ W_s^T + st @ W_st^T:
        # the frame and clip terms are computed once per frame / clip and broadcast, never copied.
        first = self.out_conv[0]
        w_local, w_spatial, w_st = first.weight.split(self.split, dim=1)
        z = (
            F.linear(h[..., :c_local], w_local, first.bias)
            + F.linear(spatial[..., c_local : c_local + c_spatial], w_spatial)[:, :, None, :]
            + F.linear(spatiotemporal[..., c_local + c_spatial :], w_st)[:, None, None, :]
        )
        return self.out_conv[1:](z)


class PrivacySparsificationBlock(nn.Module):
    """``depth`` transformer blocks followed by a :class:`KeepPredictor` (None: drops nothing).

    Training keeps every token and masks the dropped ones out of attention, deciding with a hard
    Gumbel-softmax; evaluation keeps the top-k tokens of each time step and really removes the
    rest (gather), so the following blocks run plain attention on fewer tokens.
    """

    def __init__(self, dim: int, *, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eps: float,
                 predictor: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, eps=eps) for _ in range(depth)
        )
        self.predictor = KeepPredictor(dim) if predictor else None

    def forward_train(self, x: Tensor, keep: Tensor | None, *, grid: tuple[int, int], ratio: float, tau: float,
                      generator=None) -> tuple[Tensor, Tensor | None]:
        """One PSB in training.

        Args:
            x: ``Tensor[B, L*N, D]``, every token (dropped ones included).
            keep: ``Tensor[B, L*N]`` from the previous PSB, or None when nothing was dropped yet.
            grid: ``(L, N)``.
            ratio: this block's cumulative target keep ratio; at 1 nothing is dropped.
            tau: Gumbel-softmax temperature.
            generator: random generator for the Gumbel noise.

        Returns:
            ``(x, keep)``: ``Tensor[B, L*N, D]`` and the new ``Tensor[B, L*N]`` (None: all kept).
        """
        for blk in self.blocks:
            x = blk(x, keep)
        if self.predictor is None or ratio >= 1.0:
            return x, keep
        B, _, D = x.shape
        L, N = grid
        log_probs = self.predictor(x.view(B, L, N, D), None if keep is None else keep.view(B, L, N))
        prev = x.new_ones(B, L * N) if keep is None else keep
        keep = ops.gumbel_keep(log_probs.view(B, L * N, 2), prev, tau, generator)
        return x, keep

    def forward_eval(self, x: Tensor, index: Tensor, *, k: int) -> tuple[Tensor, Tensor]:
        """One PSB in evaluation, on the compacted tokens.

        Args:
            x: ``Tensor[B, L*n, D]``, the ``n`` tokens per time step still kept.
            index: ``Tensor[B, L, n]`` (int64), their positions in the full ``N``-tubelet grid.
            k: tokens per time step to keep after this block.

        Returns:
            ``(x, index)``: ``Tensor[B, L*k', D]`` and ``Tensor[B, L, k']``, ``k' = min(k, n)``.
        """
        for blk in self.blocks:
            x = blk(x)  # every remaining token is kept: unmasked attention (SDPA)
        B, L, n = index.shape
        if self.predictor is None or k >= n:
            return x, index
        log_probs = self.predictor(x.view(B, L, n, x.shape[-1]))
        local = ops.topk_keep(log_probs[..., 0], k)
        return ops.gather_tokens(x, local), index.gather(-1, local)
