"""Small pieces the phases share: optimizers, recognizers, the action and privacy losses."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import STPrivacy, STPrivacyConfig, VideoClassifier
from ..model.layers import PIXEL_MEAN, PIXEL_STD
from ..model.pretrained import load_pretrained_vit
from .config import TrainConfig


def _anonymizer_layer(name: str, cfg: STPrivacyConfig) -> tuple[str, int]:
    """(role, layer id) of an STPrivacy parameter for the release's learning-rate rules: the
    tokenizer is layer 0, transformer block i (PSBs then PAB, 0-based) layer i + 1, predictor m
    the layer of the block before it, everything else (the PAB's norm and head) the top layer."""
    parts = name.split(".")
    if parts[0] == "embed":
        return "backbone", 0
    if parts[0] == "psbs" and parts[2] == "predictor":
        return "predictor", cfg.depth * (int(parts[1]) + 1)
    if parts[0] == "psbs":
        return "backbone", int(parts[1]) * cfg.depth + int(parts[3]) + 1
    if parts[0] == "pab" and parts[1] == "blocks":
        return "backbone", cfg.depth * cfg.num_psb + int(parts[2]) + 1
    return "backbone", cfg.num_blocks + 1


def make_optimizer(modules: Iterable[nn.Module], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and convolution kernels only (nanoGPT's split):
    decaying biases, norms and position embeddings only hurts.

    An :class:`STPrivacy` among ``modules`` gets the release's groups: its predictors apart from
    its "backbone" (every other parameter), and with ``cfg.layer_decay < 1`` a learning-rate scale
    per layer, ``layer_decay ** (num_blocks + 1 - layer)``. :func:`set_lr` reads both.
    """
    groups: dict[tuple[str, float, bool], list[nn.Parameter]] = {}
    for module in modules:
        anonymizer = module.cfg if isinstance(module, STPrivacy) else None
        top = anonymizer.num_blocks + 1 if anonymizer is not None else 0
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            role, scale = "other", 1.0
            if anonymizer is not None:
                role, layer = _anonymizer_layer(name, anonymizer)
                scale = cfg.layer_decay ** (top - layer)
            decay = p.dim() >= 2 and "pos_embed" not in name
            groups.setdefault((role, scale, decay), []).append(p)
    param_groups = [{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "role": role,
                     "lr_scale": scale} for (role, scale, decay), params in groups.items()]
    return torch.optim.AdamW(param_groups, lr=cfg.peak_lr, betas=(0.9, 0.999))


def set_lr(optimizer: torch.optim.Optimizer, lr: float, backbone_lr: float | None = None) -> None:
    """Every group at ``lr`` times its ``lr_scale``; the anonymizer's backbone groups (see
    :func:`make_optimizer`) at ``backbone_lr`` instead where given."""
    for group in optimizer.param_groups:
        base = backbone_lr if backbone_lr is not None and group.get("role") == "backbone" else lr
        group["lr"] = base * group.get("lr_scale", 1.0)


def backbone_lr(lr: float, step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """The anonymizer backbone's learning rate when the predictors' is ``lr`` (the release's rule):
    0 during the first ``cfg.predictor_warmup_epochs`` (only the predictors learn), then
    ``min(lr, peak_lr * backbone_lr_ratio)``."""
    if step < round(cfg.predictor_warmup_epochs * steps_per_epoch):
        return 0.0
    return min(lr, cfg.peak_lr * cfg.backbone_lr_ratio)


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
                    multilabel: bool, init: dict[str, Tensor] | None = None) -> NormalizedRecognizer:
    """A fresh ViT recognizer for videos of ``model_cfg``, with ``cfg.recognizer``'s sizes.

    ``init``: an ImageNet ViT state dict (``stprivacy.model.pretrained.load_vit_checkpoint``) the
    recognizer starts from, inflated to video, instead of its random initialization (which is
    still drawn, so the random stream is the same either way); its head stays random.
    """
    recognizer = NormalizedRecognizer(
        VideoClassifier.from_config(model_cfg, num_outputs, multilabel=multilabel, **cfg.recognizer))
    if init is not None:
        load_pretrained_vit(recognizer.classifier, init)
    return recognizer


def action_loss(logits: Tensor, action: Tensor, reduction: str = "mean") -> Tensor:
    """The action recognizer's loss, for both kinds of action label; every loop that learns the
    action calls it, so each works on single- and multi-label datasets alike.

    Which kind is decided from the labels: integer class indices (one action per clip) take
    cross-entropy over the softmax; float multi-hot rows (``multilabel_actions`` datasets, where a
    clip may show several actions) take binary cross-entropy per class on the logits.

    Args:
        logits: ``Tensor[B, K]``.
        action: ``Tensor[B]`` int64 class indices, or ``Tensor[B, K]`` float multi-hot.
        reduction: ``"mean"`` (a scalar) or ``"none"`` (``Tensor[B]``, one value per clip: for
            multi-hot labels the mean over the K classes).
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if not action.is_floating_point():
        return F.cross_entropy(logits, action, reduction=reduction)
    if action.shape != logits.shape:
        raise ValueError(f"multi-hot actions must be shaped like the logits {tuple(logits.shape)}, "
                         f"got {tuple(action.shape)}")
    target = action.to(logits.dtype)
    if reduction == "mean":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=-1)


def action_hits(logits: Tensor, action: Tensor) -> Tensor:
    """``Tensor[B]`` bool: whether each clip's highest-scoring class is one of its actions (top-1
    for class indices; for multi-hot labels, hit@1), the training-time accuracy some methods
    watch (VITA updates its target model below an accuracy threshold)."""
    predicted = logits.argmax(dim=-1)
    if not action.is_floating_point():
        return predicted == action
    return action.gather(1, predicted.unsqueeze(1)).squeeze(1) > 0.5


def privacy_adversary_loss(logits: Tensor, privacy: Tensor, kind: str, reduction: str = "mean") -> Tensor:
    """The term the anonymizer *minimizes* to defeat the privacy recognizer (times lambda_P).

    "negative_bce" is the paper's ``-L_privacy``; "entropy" is ``-H(sigmoid(logits))``, the
    negative mean per-attribute entropy, which is bounded below (by -log 2) so the anonymizer
    cannot win by making the recognizer confidently wrong. ``reduction="none"`` gives one value
    per clip (the mean over attributes), ``Tensor[B]``.
    """
    if kind not in ("negative_bce", "entropy"):
        raise ValueError(f"kind must be 'negative_bce' or 'entropy', got {kind!r}")
    target = privacy if kind == "negative_bce" else torch.sigmoid(logits)  # BCE(logits, p) = H(p)
    per_clip = -F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=-1)
    return per_clip if reduction == "none" else per_clip.mean()


def score_function_term(per_clip_loss: Tensor, keep_log_prob: Tensor | None) -> Tensor:
    """The REINFORCE surrogate of ``STPrivacyConfig.keep_gradient="score_function"``: its gradient
    is an unbiased estimate of the gradient of the expected loss with respect to the predictors.

    ``mean_i (loss_i - b_i) * log p(mask_i)`` with the leave-one-out baseline ``b_i``, the mean
    loss of the other clips of the (micro-)batch: it does not depend on clip i's own draw, so it
    leaves the estimate unbiased while removing the batch's common level. Zero without a log-
    probability (the straight-through estimator, evaluation, nothing dropped).
    """
    if keep_log_prob is None:
        return per_clip_loss.new_zeros(())
    loss = per_clip_loss.detach()
    n = loss.numel()
    baseline = (loss.sum() - loss) / (n - 1) if n > 1 else torch.zeros_like(loss)
    return ((loss - baseline) * keep_log_prob).mean()


def to_device(batch, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    video, action, privacy = batch
    return (video.to(device, non_blocking=True), action.to(device, non_blocking=True),
            privacy.to(device, torch.float32, non_blocking=True))
