"""Small pieces the phases share: optimizers, recognizers, the privacy losses."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import STPrivacyConfig, VideoClassifier
from ..model.layers import PIXEL_MEAN, PIXEL_STD
from .config import TrainConfig


def make_optimizer(modules: Iterable[nn.Module], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and convolution kernels only (nanoGPT's split):
    decaying biases, norms and position embeddings only hurts."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 and "pos_embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=(0.9, 0.999))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_and_step(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    if cfg.grad_clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()


class NormalizedRecognizer(nn.Module):
    """A recognizer that standardizes its input first, ``(video - 0.45) / 0.225`` (the Kinetics
    statistics that video pipelines use), as every video classifier's data pipeline does.

    Why it matters here: the action is motion only, so it is a second-order function of the
    pixels, which the ViT's MLPs can only pick up when their inputs are O(1). On raw [0, 1]
    pixels a small ViT stays at chance for hundreds of steps; standardized, it learns the
    synthetic benchmark's motion in about 150 (measured: 95% top-1 after 150 steps).
    """

    def __init__(self, classifier: VideoClassifier, mean: float = PIXEL_MEAN, std: float = PIXEL_STD):
        super().__init__()
        self.classifier = classifier
        self.mean, self.std = mean, std
        self.num_classes, self.multilabel = classifier.num_classes, classifier.multilabel

    def forward(self, video: Tensor, keep: Tensor | None = None) -> Tensor:
        """``Tensor[B, C, T, H, W]`` in [0, 1] (and ``keep: Tensor[B, L, N]``) -> logits."""
        return self.classifier((video - self.mean) / self.std, keep)


def make_recognizer(model_cfg: STPrivacyConfig, cfg: TrainConfig, num_outputs: int, *,
                    multilabel: bool) -> NormalizedRecognizer:
    """A fresh ViT recognizer for videos of ``model_cfg``, with ``cfg.recognizer``'s sizes."""
    return NormalizedRecognizer(
        VideoClassifier.from_config(model_cfg, num_outputs, multilabel=multilabel, **cfg.recognizer))


def privacy_adversary_loss(logits: Tensor, privacy: Tensor, kind: str) -> Tensor:
    """The term the anonymizer *minimizes* to defeat the privacy recognizer (times lambda_P).

    "negative_bce" is the paper's ``-L_privacy``; "entropy" is ``-H(sigmoid(logits))``, the
    negative mean per-attribute entropy, which is bounded below (by -log 2) so the anonymizer
    cannot win by making the recognizer confidently wrong.
    """
    if kind == "negative_bce":
        return -F.binary_cross_entropy_with_logits(logits, privacy)
    p = torch.sigmoid(logits)
    entropy = F.binary_cross_entropy_with_logits(logits, p)  # = H(p) elementwise-mean
    return -entropy


def to_device(batch, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    video, action, privacy = batch
    return (video.to(device, non_blocking=True), action.to(device, non_blocking=True),
            privacy.to(device, torch.float32, non_blocking=True))
