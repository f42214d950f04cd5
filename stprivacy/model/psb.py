"""The privacy sparsification block (PSB, paper §3.2): transformer blocks, then a keep predictor."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .layers import Block


# The score of an already dropped tubelet in the Gumbel top-k: finite, so the softmax of the
# straight-through gradient stays NaN-free, and low enough that no Gumbel draw lifts it.
_DROPPED_SCORE = -1e4


def keep_score(log_probs: Tensor) -> Tensor:
    """The ranking score of each token, ``log p(keep) - log p(drop)``: ``Tensor[..., 2]`` -> ``Tensor[...]``.

    Not ``log p(keep)`` alone: that saturates at exactly 0 in float32 once the predictor is
    confident (logit gap > ~17), and the top-k then breaks the tie by position, not by merit.
    """
    return log_probs[..., 0] - log_probs[..., 1]


def tokens_to_keep(num_tokens: int, ratio: float) -> int:
    """``floor(num_tokens * ratio)``, at least 1; the tiny slack absorbs ``0.7 ** 2 = 0.48999...``."""
    return max(1, math.floor(num_tokens * ratio + 1e-9))


def sample_topk(score: Tensor, k: int, generator=None) -> tuple[Tensor, Tensor]:
    """The Gumbel top-k draw of :func:`stpriv_ops.gumbel_topk` without a gradient, and its log-probability.

    Perturbing with Gumbel noise and taking the top k in order is drawing k tubelets one after
    another without replacement from ``softmax(score)`` (Plackett-Luce), so the ordered draw has
    ``log p = sum_j score[i_j] - logsumexp(score over the tubelets not drawn before j)``.

    Returns:
        ``(keep, log_prob)``: the 0/1 mask ``Tensor[B, L, N]`` (no gradient) and ``Tensor[B]``.
    """
    noise = ops.gumbel_noise(score, generator)
    order = (score.detach() + noise).topk(k, dim=-1).indices  # [B, L, k], in draw order
    drawn = F.one_hot(order, score.shape[-1]).to(torch.bool)  # [B, L, k, N]
    before = drawn.cumsum(dim=2, dtype=torch.int32) > drawn.to(torch.int32)  # drawn strictly before j
    remaining = score[:, :, None, :].masked_fill(before, float("-inf")).logsumexp(dim=-1)
    log_prob = (score.gather(-1, order) - remaining).sum(dim=(1, 2))
    keep = torch.zeros_like(score, requires_grad=False).scatter_(-1, order, 1.0)
    return keep, log_prob


def sample_keep(log_probs: Tensor, prev: Tensor, generator=None) -> tuple[Tensor, Tensor]:
    """The hard Gumbel-softmax decision of :func:`stpriv_ops.gumbel_keep` without a gradient, and
    its log-probability: each tubelet still kept stays with ``p = exp(log_probs[..., 0])``.

    Returns:
        ``(keep, log_prob)``: ``Tensor[B, T]`` 0/1 (a subset of ``prev``, no gradient) and ``Tensor[B]``.
    """
    noise = ops.logistic_noise(prev, generator)
    stays = (log_probs[..., 0] - log_probs[..., 1]).detach() + noise > 0
    live = prev.detach() > 0
    log_prob = torch.where(stays, log_probs[..., 0], log_probs[..., 1]).masked_fill(~live, 0.0).sum(dim=-1)
    return (stays & live).to(prev.dtype), log_prob


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
        # (local, spatial, spatio-temporal) channels, split as the release does when 3 does not divide D.
        self.split = (third, third, dim - 2 * third)
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
                 norm_eps: float = 1e-6, predictor: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, eps=eps, norm_eps=norm_eps)
            for _ in range(depth)
        )
        self.predictor = KeepPredictor(dim) if predictor else None

    def forward_train(self, x: Tensor, keep: Tensor | None, *, grid: tuple[int, int], ratio: float, tau: float,
                      generator=None, budget: int | None = None, score_scale: float = 1.0,
                      score_function: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One PSB in training.

        Args:
            x: ``Tensor[B, L*N, D]``, every token (dropped ones included).
            keep: ``Tensor[B, L*N]`` from the previous PSB, or None when nothing was dropped yet.
            grid: ``(L, N)``.
            ratio: this block's cumulative target keep ratio; at 1 nothing is dropped.
            tau: Gumbel-softmax temperature.
            generator: random generator for the Gumbel noise.
            budget: None decides per tubelet (hard Gumbel-softmax, Eq. 6); an int keeps exactly
                that many tubelets per time step among those still kept (Gumbel top-k).
            score_scale: with ``budget``, multiplies the scores (0: a uniformly random subset).
            score_function: sample without a straight-through gradient and return the draw's
                log-probability (``STPrivacyConfig.keep_gradient="score_function"``).

        Returns:
            ``(x, keep, log_prob)``: ``Tensor[B, L*N, D]``, the new ``Tensor[B, L*N]`` (None: all
            kept) and, with ``score_function``, ``Tensor[B]`` (else None).
        """
        for blk in self.blocks:
            x = blk(x, keep)
        if self.predictor is None or ratio >= 1.0:
            return x, keep, None
        B, _, D = x.shape
        L, N = grid
        log_probs = self.predictor(x.view(B, L, N, D), None if keep is None else keep.view(B, L, N))
        prev = x.new_ones(B, L * N) if keep is None else keep
        if budget is None:
            if score_function:
                return x, *sample_keep(log_probs.view(B, L * N, 2), prev, generator)
            return x, ops.gumbel_keep(log_probs.view(B, L * N, 2), prev, tau, generator), None
        score = keep_score(log_probs) * score_scale
        if keep is not None:  # only tubelets still kept compete; budget <= their count per step
            score = score.masked_fill(keep.view(B, L, N) == 0, _DROPPED_SCORE)
        if score_function:
            chosen, log_prob = sample_topk(score, budget, generator)
            return x, chosen.view(B, L * N) * prev, log_prob
        chosen = ops.gumbel_topk(score, budget, tau, generator).view(B, L * N)
        return x, chosen * prev, None  # a subset of prev; the product carries the gradient to it too

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
        local = ops.topk_keep(keep_score(log_probs), k)
        return ops.gather_tokens(x, local), index.gather(-1, local)
