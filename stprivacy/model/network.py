"""STPrivacy (paper §3): tokenizer, privacy sparsification blocks, privacy anonymization block."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import ops
from .config import STPrivacyConfig
from .layers import (PIXEL_MEAN, PIXEL_STD, TubeletEmbed, init_weights, keep_to_pixels, tubelets_to_video,
                     video_to_tubelets)
from .pab import AnonymizationBlock
from .psb import PrivacySparsificationBlock, tokens_to_keep


@dataclass
class STPrivacyOutput:
    """What :class:`STPrivacy` returns.

    Attributes:
        video: ``Tensor[B, C, T, H, W]``, the anonymized video; dropped tubelets are exactly 0
            (black in the [0, 1] pixel convention). The decoder's values are not clamped: clamp
            to [0, 1] for display.
        keep: ``Tensor[B, L, N]``, 1 where a tubelet survived every PSB, else 0.
        keep_masks: one ``Tensor[B, L, N]`` per PSB, the cumulative mask after it (empty when
            ``use_psb`` is False); with ``target_ratios`` the input of the sparsity loss (Eq. 7).
        target_ratios: ``ratio ** m`` for PSB m = 1..num_psb.
        keep_log_prob: ``Tensor[B]``, the log-probability of the sampled keep decisions of every
            PSB (training with ``keep_gradient="score_function"`` only, else None): the training
            loop's REINFORCE term (``stprivacy.train.common.score_function_term``).
        filter_gates: ``Tensor[B, L, N, 2]``, the (desaturation, blur) gates the PAB's filter
            decided for every tubelet, dropped ones included (training with
            ``STPrivacyConfig.pab_filter`` only, else None): the input of the adversarial phase's
            filter prior (``TrainConfig.lambda_filter``).
    """

    video: Tensor
    keep: Tensor
    keep_masks: list[Tensor] = field(default_factory=list)
    target_ratios: list[float] = field(default_factory=list)
    keep_log_prob: Tensor | None = None
    filter_gates: Tensor | None = None


class STPrivacy(nn.Module):
    """Video anonymizer: drops privacy-carrying tubelets, then rewrites the kept ones.

    Training mode decides per tubelet with a hard Gumbel-softmax and keeps all tokens, masking the
    dropped ones out of attention (``stpriv_ops.masked_attention``, whose keep gradient trains the
    predictors) in the PSBs and the PAB alike. Evaluation mode keeps the top
    ``floor(N * ratio ** m)`` tubelets of every time step after PSB m and removes the rest for
    real; the PAB decodes only those kept tokens, and their pixels are scattered back to the full
    grid, dropped tubelets black. The keep ratio is a deployment-time argument (paper §4.6).

    Args:
        cfg: sizes and switches; see :class:`STPrivacyConfig`.
    """

    def __init__(self, cfg: STPrivacyConfig):
        super().__init__()
        if not isinstance(cfg, STPrivacyConfig):
            raise TypeError(f"cfg must be an STPrivacyConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        D = cfg.embed_dim
        self.embed = TubeletEmbed(
            frames=cfg.frames, image_size=cfg.image_size, tubelet=cfg.tubelet, in_chans=cfg.in_chans, embed_dim=D
        )
        self.psbs = nn.ModuleList(
            PrivacySparsificationBlock(
                D, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                eps=cfg.attn_eps, norm_eps=cfg.norm_eps, predictor=cfg.use_psb,
            )
            for _ in range(cfg.num_psb)
        )
        self.pab = (
            AnonymizationBlock(
                D, depth=cfg.pab_depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                out_dim=cfg.tubelet_pixels, eps=cfg.attn_eps, norm_eps=cfg.norm_eps,
                filter_shape=(cfg.in_chans, *cfg.tubelet) if cfg.pab_filter else None,
                filter_sigma=cfg.pab_filter_sigma,
            )
            if cfg.use_pab
            else None
        )
        self.apply(init_weights)
        if self.pab is not None and cfg.pab_filter:
            # The filter replaces the pixel head. The head was built and initialized all the same, so
            # that every other module draws the same initial weights as without the filter.
            self.pab.head = None
        elif self.pab is not None and cfg.pab_residual:
            # A zero head makes the PAB the identity on kept tubelets at the start of training.
            nn.init.zeros_(self.pab.head.weight)
            nn.init.zeros_(self.pab.head.bias)

    def forward(self, video: Tensor, keep_ratio: float | None = None, *, generator: torch.Generator | None = None,
                score_scale: float = 1.0, keep_all: bool = False) -> STPrivacyOutput:
        """Anonymize a batch of clips.

        Args:
            video: ``Tensor[B, C, T, H, W]``, pixels in [0, 1], the config's geometry.
            keep_ratio: keep ratio per PSB (``cfg.alpha`` when None); in evaluation it sets how
                many tubelets survive, in training the sparsity targets returned.
            generator: random generator for the Gumbel noise (training only).
            score_scale: training with the "gumbel_topk" sampler only: multiplies the predictors'
                scores before the Gumbel top-k; 0 keeps a uniformly random subset of the same
                size (the warm-up of ``TrainConfig.sparsity_hold_epochs``).
            keep_all: keep and decode every tubelet, the predictors unused, in training too
                (``TrainConfig.reconstruction_epochs``); ``keep_ratio`` is then ignored.

        Returns:
            :class:`STPrivacyOutput`.
        """
        self._check_video(video)
        ratio = self._check_ratio(keep_ratio)
        targets = self.cfg.target_ratios(ratio)
        x = self.tokenize(video)
        log_prob, gates = None, None
        if keep_all:
            anonymized, keep, masks = self._forward_eval(video, x, [])
        elif self.training:
            anonymized, keep, masks, log_prob, gates = self._forward_train(video, x, targets, generator,
                                                                           score_scale)
        else:
            anonymized, keep, masks = self._forward_eval(video, x, targets)
        B, L, N = video.shape[0], self.cfg.time_steps, self.cfg.tokens_per_step
        keep = video.new_ones(B, L, N) if keep is None else keep.view(B, L, N).to(video.dtype)
        return STPrivacyOutput(video=anonymized, keep=keep, keep_masks=masks, target_ratios=targets,
                               keep_log_prob=log_prob, filter_gates=gates)

    def _forward_train(self, video: Tensor, x: Tensor, targets: list[float], generator, score_scale: float
                       ) -> tuple[Tensor, Tensor | None, list[Tensor], Tensor | None, Tensor | None]:
        """Every token travels; ``keep: Tensor[B, L*N]`` masks the dropped ones (None: all kept).
        Returns the video, ``keep``, the masks, the keep log-probability and the filter's gates
        ``Tensor[B, L, N, 2]`` (None without the filter)."""
        B = x.shape[0]
        L, N = self.cfg.time_steps, self.cfg.tokens_per_step
        score_function = self.cfg.keep_gradient == "score_function"
        keep, masks, log_prob = None, [], None
        for m, psb in enumerate(self.psbs):
            ratio = targets[m] if targets else 1.0
            budget = tokens_to_keep(N, ratio) if self.cfg.train_sampler == "gumbel_topk" else None
            x, keep, block_log_prob = psb.forward_train(
                x, keep, grid=(L, N), ratio=ratio, tau=self.cfg.gumbel_tau, generator=generator, budget=budget,
                score_scale=score_scale, score_function=score_function)
            if block_log_prob is not None:
                log_prob = block_log_prob if log_prob is None else log_prob + block_log_prob
            if targets:
                masks.append(x.new_ones(B, L, N) if keep is None else keep.view(B, L, N))
        pixels = video_to_tubelets(video, tubelet=self.cfg.tubelet)
        gates = None
        if self.pab is not None:
            patches, gates = self.pab(x, keep, pixels if self.cfg.pab_residual else None)
            gates = None if gates is None else gates.view(B, L, N, -1)
        else:
            patches = pixels
        if keep is not None:
            # The release returns the decoded video and the mask apart: its predictors learn only
            # through masked attention. Blackening with the live mask adds d(pixels * keep)/dkeep.
            blackening = keep if self.cfg.blackening_gradient else keep.detach()
            patches = patches * blackening[..., None].to(patches.dtype)
        return self._to_video(patches), keep, masks, log_prob, gates

    def _forward_eval(self, video: Tensor, x: Tensor, targets: list[float]
                      ) -> tuple[Tensor, Tensor | None, list[Tensor]]:
        """Dropped tokens are removed for real; the PAB decodes the ``k`` kept ones of each step."""
        B = x.shape[0]
        L, N = self.cfg.time_steps, self.cfg.tokens_per_step
        index = torch.arange(N, device=x.device).expand(B, L, N)
        masks = []
        for m, psb in enumerate(self.psbs):
            k = tokens_to_keep(N, targets[m]) if targets else N
            x, index = psb.forward_eval(x, index, k=k)
            if targets:
                masks.append(self._index_to_mask(index, N, x.dtype))
        pruned = index.shape[-1] < N
        pixels = video_to_tubelets(video, tubelet=self.cfg.tubelet)
        kept_pixels = ops.gather_tokens(pixels, index) if pruned else pixels
        if self.pab is not None:
            patches, _ = self.pab(x, pixels=kept_pixels if self.cfg.pab_residual else None)
        else:
            patches = kept_pixels
        if not pruned:
            return self._to_video(patches), None, masks
        patches = ops.scatter_tokens(patches.contiguous(), index, N)  # dropped tubelets: 0, black
        return self._to_video(patches), masks[-1].view(B, L * N), masks

    def _to_video(self, patches: Tensor) -> Tensor:
        return tubelets_to_video(patches, time_steps=self.cfg.time_steps, grid_size=self.cfg.grid_size,
                                 tubelet=self.cfg.tubelet)

    @staticmethod
    def _index_to_mask(index: Tensor, n: int, dtype: torch.dtype) -> Tensor:
        B, L, _ = index.shape
        return torch.zeros(B, L, n, dtype=dtype, device=index.device).scatter_(-1, index, 1.0)

    def tokenize(self, video: Tensor) -> Tensor:
        """``Tensor[B, C, T, H, W]`` in [0, 1] -> tokens ``Tensor[B, L*N, D]`` (standardized first
        when ``cfg.normalize_input``)."""
        return self.embed((video - PIXEL_MEAN) / PIXEL_STD if self.cfg.normalize_input else video)

    @torch.no_grad()
    def anonymize(self, video: Tensor, keep_ratio: float | None = None) -> Tensor:
        """Evaluation-mode forward without gradients: ``Tensor[B, C, T, H, W]`` -> same shape."""
        was_training = self.training
        self.eval()
        try:
            return self(video, keep_ratio).video
        finally:
            self.train(was_training)

    def keep_to_pixels(self, keep: Tensor) -> Tensor:
        """``keep: Tensor[B, L, N]`` -> ``Tensor[B, 1, T, H, W]``, each tubelet's keep value on its pixels."""
        B = keep.shape[0]
        h, w = self.cfg.grid_size
        return keep_to_pixels(keep.reshape(B, self.cfg.time_steps, h, w), tubelet=self.cfg.tubelet)

    def _check_video(self, video: Tensor) -> None:
        cfg = self.cfg
        if not isinstance(video, Tensor):
            raise TypeError(f"video must be a torch.Tensor, got {type(video).__name__}")
        if not video.is_floating_point():
            raise TypeError(f"video must be a floating-point tensor (pixels in [0, 1]), got {video.dtype}")
        expected = (cfg.in_chans, cfg.frames, cfg.image_size, cfg.image_size)
        if video.dim() != 5 or tuple(video.shape[1:]) != expected or video.shape[0] == 0:
            raise ValueError(f"video must be [B, C, T, H, W] = [B, {', '.join(map(str, expected))}] with B >= 1, "
                             f"got {tuple(video.shape)}")

    def _check_ratio(self, keep_ratio: float | None) -> float:
        if keep_ratio is None:
            return self.cfg.alpha
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be a float in (0, 1] or None, got {keep_ratio!r}")
        return float(keep_ratio)
