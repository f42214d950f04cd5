"""Phase 3 of paper §3.4, the evaluation protocol, for STPrivacy and every baseline alike.

Freeze the anonymizer (any transform ``video -> (video, keep)``), transform the training and the
test videos, train a FRESH action recognizer and a FRESH privacy recognizer from scratch on the
transformed training videos, and report top-1, class-wise F1 and cMAP on the transformed test
videos. Recognizers that start from scratch are the point: a privacy attacker who trains on
anonymized data is stronger than one that was trained on raw data.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from .. import metrics
from ..model import STPrivacy, STPrivacyConfig
from .common import clip_and_step, make_loader, make_optimizer, make_recognizer, set_lr
from .config import TrainConfig, get_lr

# A frozen anonymizer: Tensor[B, C, T, H, W] -> (Tensor[B, C, T, H, W], keep Tensor[B, L, N] or None).
Anonymizer = Callable[[Tensor], tuple[Tensor, Tensor | None]]


def stprivacy_transform(model: STPrivacy, keep_ratio: float | None = None) -> Anonymizer:
    """The trained anonymizer in evaluation mode (top-k compaction) at a deployment keep ratio."""
    model.eval()

    def transform(video: Tensor) -> tuple[Tensor, Tensor | None]:
        out = model(video, keep_ratio)
        # Nothing dropped (alpha = 1, no PSB): the recognizers need no mask.
        return out.video, (None if bool((out.keep == 1).all()) else out.keep)

    return transform


def baseline_transform(fn: Callable[[Tensor], Tensor]) -> Anonymizer:
    """A fixed frame-wise transform (raw, downsampling, blur) as an anonymizer."""
    return lambda video: (fn(video), None)


@torch.no_grad()
def transform_dataset(transform: Anonymizer, dataset: Dataset, cfg: TrainConfig, desc: str = "transform"
                      ) -> TensorDataset:
    """Run the frozen transform over a dataset once: (videos, keep, actions, privacy) in memory.

    Where the transform drops nothing at all, ``keep`` is stored as ``Tensor[M]`` of ones, which
    batches to a 1-D tensor that the recognizers' loops read as "no mask". Worth it when the data
    is iterated for many epochs and fits in memory (the synthetic benchmark); real datasets with
    augmentation would transform on the fly instead.
    """
    device = torch.device(cfg.device)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    videos, keeps, actions, privacy = [], [], [], []
    for video, action, priv in tqdm(loader, desc=desc, leave=False, disable=not cfg.progress):
        out, keep = transform(video.to(device))
        videos.append(out.cpu())
        keeps.append(keep if keep is None else keep.cpu())
        actions.append(action)
        privacy.append(priv.float())
    grids = [k for k in keeps if k is not None]
    if not grids:
        keep_all = torch.ones(len(dataset))
    else:
        keep_all = torch.cat([k if k is not None else grids[0].new_ones(len(v), *grids[0].shape[1:])
                              for k, v in zip(keeps, videos)])
    return TensorDataset(torch.cat(videos), keep_all, torch.cat(actions), torch.cat(privacy))


def fit_recognizers(train_data: TensorDataset, model_cfg: STPrivacyConfig, cfg: TrainConfig, num_classes: int,
                    num_attributes: int, desc: str = "recognizers"):
    """Train a fresh action and a fresh privacy recognizer on transformed training data.

    Both see the same batches; each has its own AdamW and cosine schedule (``cfg.eval_epochs``).

    Returns:
        (action_rec, privacy_rec, history)
    """
    device = torch.device(cfg.device)
    action_rec = make_recognizer(model_cfg, cfg, num_classes, multilabel=False).to(device).train()
    privacy_rec = make_recognizer(model_cfg, cfg, num_attributes, multilabel=True).to(device).train()
    loader = make_loader(train_data, cfg, shuffle=True, seed_offset=3)
    opt_action = make_optimizer([action_rec], cfg)
    opt_privacy = make_optimizer([privacy_rec], cfg)
    total = cfg.eval_epochs * len(loader)
    warmup, min_lr = round(cfg.warmup_epochs * len(loader)), cfg.peak_lr * cfg.min_lr_ratio
    history: dict[str, list[float]] = {"loss_action": [], "loss_privacy": []}
    step = 0
    for epoch in range(cfg.eval_epochs):
        sum_action = sum_privacy = 0.0
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{cfg.eval_epochs}", leave=False, disable=not cfg.progress)
        for video, keep, action, privacy in bar:
            video, action, privacy = video.to(device), action.to(device), privacy.to(device)
            keep = keep.to(device) if keep.dim() > 1 else None
            lr = get_lr(step, total, cfg.peak_lr, warmup, min_lr)
            set_lr(opt_action, lr)
            set_lr(opt_privacy, lr)
            loss_action = F.cross_entropy(action_rec(video, keep), action)
            loss_privacy = F.binary_cross_entropy_with_logits(privacy_rec(video, keep), privacy)
            opt_action.zero_grad(set_to_none=True)
            opt_privacy.zero_grad(set_to_none=True)
            (loss_action + loss_privacy).backward()  # disjoint parameters: one backward serves both
            clip_and_step(opt_action, cfg)
            clip_and_step(opt_privacy, cfg)
            step += 1
            sum_action += loss_action.item()
            sum_privacy += loss_privacy.item()
            bar.set_postfix(action=f"{loss_action.item():.3f}", privacy=f"{loss_privacy.item():.3f}")
        history["loss_action"].append(sum_action / len(loader))
        history["loss_privacy"].append(sum_privacy / len(loader))
    return action_rec, privacy_rec, history


@torch.no_grad()
def test_recognizers(action_rec, privacy_rec, test_data: TensorDataset, cfg: TrainConfig) -> dict[str, float]:
    """Top-1, F1 and cMAP (fractions) of trained recognizers on transformed test data."""
    device = torch.device(cfg.device)
    action_rec.eval()
    privacy_rec.eval()
    action_logits, privacy_logits, actions, privacy = [], [], [], []
    for video, keep, action, priv in DataLoader(test_data, batch_size=cfg.batch_size * 2):
        video = video.to(device)
        keep = keep.to(device) if keep.dim() > 1 else None
        action_logits.append(action_rec(video, keep).float().cpu())
        privacy_logits.append(privacy_rec(video, keep).float().cpu())
        actions.append(action)
        privacy.append(priv)
    return metrics.summarize(torch.cat(action_logits), torch.cat(actions), torch.cat(privacy_logits),
                             torch.cat(privacy))


def evaluate_anonymizer(transform: Anonymizer, train_set: Dataset, test_set: Dataset, model_cfg: STPrivacyConfig,
                        cfg: TrainConfig, *, num_classes: int, num_attributes: int, name: str = "anonymizer"
                        ) -> dict[str, Any]:
    """The whole evaluation protocol for one frozen transform.

    Returns:
        ``{"top1", "f1", "cmap"}`` as fractions, plus ``"kept"`` (mean fraction of tubelets the
        transform keeps) and ``"seconds"``.
    """
    t0 = time.perf_counter()
    train_data = transform_dataset(transform, train_set, cfg, desc=f"{name}: transform train")
    test_data = transform_dataset(transform, test_set, cfg, desc=f"{name}: transform test")
    action_rec, privacy_rec, _ = fit_recognizers(train_data, model_cfg, cfg, num_classes, num_attributes,
                                                 desc=f"{name}: fresh recognizers")
    result: dict[str, Any] = test_recognizers(action_rec, privacy_rec, test_data, cfg)
    keep = test_data.tensors[1]
    result["kept"] = float(keep.mean()) if keep.dim() > 1 else 1.0
    result["seconds"] = time.perf_counter() - t0
    return result
