"""The evaluation protocol on real video datasets, its frame-level variant, and the cross-dataset setup.

``stprivacy.train.evaluation`` runs the protocol (freeze the anonymizer, train fresh recognizers
on anonymized training videos, test them on anonymized test videos) by transforming a whole
dataset into memory once, which suits the synthetic benchmark. Real benchmarks do not fit in
memory and are sampled anew every epoch (random clips and crops), and their test videos come as
5 clips x 3 crops. Here the frozen anonymizer runs on the fly, batch by batch:

* :func:`evaluate_streaming` - the video-level protocol (paper Table 1): a fresh action recognizer
  and a fresh privacy recognizer; test logits are averaged over the 15 views of each video.
* :func:`evaluate_frame_level` - the frame-level privacy protocol (paper Table 3): a fresh 2D
  privacy recognizer (:class:`stprivacy.model.FrameClassifier`) trained on single anonymized
  frames, each labeled with its video's attributes; reported per frame, and per video with the
  frame logits averaged.
* Cross-dataset (paper Table 2): an anonymizer trained on one benchmark is frozen and evaluated
  with either protocol on the other; :func:`cross_dataset_tag` records which is which.

Videos that cannot be decoded are skipped (see :mod:`stprivacy.data.video_dataset`) and their
count is part of every result (``"skipped"``).
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data.video_dataset import collate_videos
from ..errors import DatasetError
from ..model import FrameClassifier, STPrivacy, STPrivacyConfig
from ..model.pretrained import load_pretrained_vit
from ..progress import progress_bar
from ..train.common import action_loss, clip_and_step, make_optimizer, make_recognizer, set_lr
from ..train.config import TrainConfig, get_lr
from ..train.evaluation import split_for_validation
from . import metrics
from .verdict import ATTACKERS, check_attackers, combine_attackers

# A frozen anonymizer: Tensor[B, C, T, H, W] -> (Tensor[B, C, T, H, W], keep Tensor[B, L, N] or None).
Anonymizer = Callable[[Tensor], tuple[Tensor, Tensor | None]]
PROTOCOLS = ("video", "frame")


def _loader(dataset: Dataset, cfg: TrainConfig, *, shuffle: bool, seed_offset: int) -> DataLoader:
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + seed_offset)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle, drop_last=False, generator=generator,
                      num_workers=cfg.num_workers, collate_fn=getattr(dataset, "collate_fn", collate_videos))


def _batches(loader: DataLoader, device: torch.device, desc: str, progress: bool) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(video, action, privacy) on ``device``, leaving out batches in which every video was skipped."""
    for batch in progress_bar(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        if batch is None:
            continue
        video, action, privacy = batch
        yield video.to(device), action.to(device), privacy.to(device, torch.float32)


@torch.no_grad()
def _anonymize(transform: Anonymizer, video: Tensor) -> tuple[Tensor, Tensor | None, int]:
    """Runs the frozen anonymizer on ``Tensor[B, 3, T, S, S]`` or on the views of ``Tensor[B, V, 3, T, S, S]``
    (flattened to ``B * V`` clips); returns (clips, keep, V)."""
    views = 1
    if video.dim() == 6:
        views = video.shape[1]
        video = video.flatten(0, 1)
    out, keep = transform(video)
    return out, keep, views


def _skipped(*datasets: Dataset) -> int:
    return sum(int(getattr(d, "num_skipped", 0)) for d in datasets)


def _schedule(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int, float]:
    total = cfg.eval_epochs * steps_per_epoch
    return total, round(cfg.warmup_epochs * steps_per_epoch), cfg.peak_lr * cfg.min_lr_ratio


def evaluate_streaming(transform: Anonymizer, train_set: Dataset, test_set: Dataset, model_cfg: STPrivacyConfig,
                       cfg: TrainConfig, *, num_classes: int, num_attributes: int, name: str = "anonymizer",
                       attackers: tuple[str, ...] = ("pixels",), init: dict[str, Tensor] | None = None
                       ) -> dict[str, Any]:
    """The video-level protocol with the anonymizer applied on the fly.

    Each batch is anonymized once and trains one fresh pair of recognizers (action, privacy) per
    attacker in ``attackers`` (``stprivacy.attack.verdict.ATTACKERS``: "pixels" see the released video
    only, "mask" also the keep mask); the result combines them by
    :func:`stprivacy.attack.verdict.combine_attackers`. ``init``: an ImageNet ViT state dict the fresh
    recognizers start from (:func:`stprivacy.train.common.make_recognizer`); None = from scratch.

    Returns:
        ``{"top1", "f1", "cmap", "ap"}`` (fractions), ``"privacy_from"`` / ``"top1_from"`` and
        ``"attackers"``, ``"kept"`` (mean fraction of test tubelets kept), ``"skipped"`` (video
        loads skipped as unreadable) and ``"seconds"``.
    """
    t0 = time.perf_counter()
    attackers = check_attackers(attackers)
    device = torch.device(cfg.device)
    fit_set, val_set = split_for_validation(train_set, cfg)
    pairs = {}
    for attacker in attackers:
        torch.manual_seed(cfg.seed + 1)  # every attacker's recognizers start alike
        pair = (make_recognizer(model_cfg, cfg, num_classes, multilabel=False, init=init).to(device).train(),
                make_recognizer(model_cfg, cfg, num_attributes, multilabel=True, init=init).to(device).train())
        pairs[attacker] = (pair, tuple(make_optimizer([rec], cfg) for rec in pair))
    loader = _loader(fit_set, cfg, shuffle=True, seed_offset=3)
    total, warmup, min_lr = _schedule(cfg, len(loader))
    step = 0
    for epoch in range(cfg.eval_epochs):
        epoch_losses = {attacker: [] for attacker in pairs}
        for video, action, privacy in _batches(loader, device, f"{name}: recognizers {epoch + 1}/{cfg.eval_epochs}",
                                               cfg.progress):
            clips, keep, _ = _anonymize(transform, video)
            for attacker, ((action_rec, privacy_rec), optimizers) in pairs.items():
                mask = keep if attacker == "mask" else None
                for opt in optimizers:
                    set_lr(opt, get_lr(step, total, cfg.peak_lr, warmup, min_lr))
                    opt.zero_grad(set_to_none=True)
                loss_action = action_loss(action_rec(clips, mask), action)
                loss_privacy = F.binary_cross_entropy_with_logits(privacy_rec(clips, mask), privacy)
                (loss_action + loss_privacy).backward()  # disjoint parameters: one backward serves both recognizers
                for opt in optimizers:
                    clip_and_step(opt, cfg)
                epoch_losses[attacker].append((loss_action.item(), loss_privacy.item()))
            step += 1
    recognizers = {attacker: pair for attacker, (pair, _) in pairs.items()}
    results, kept = _score(transform, recognizers, test_set, cfg, f"{name}: test", num_classes, num_attributes)
    validation, _ = _score(transform, recognizers, val_set, cfg, f"{name}: validation", num_classes, num_attributes)
    for attacker in results:
        results[attacker]["validation"] = validation[attacker]
    if cfg.eval_epochs:
        for attacker, losses in epoch_losses.items():
            results[attacker]["last_epoch_loss"] = _mean_losses(losses)
    result: dict[str, Any] = combine_attackers(results)
    result.update(kept=kept, skipped=_skipped(train_set, test_set), seconds=time.perf_counter() - t0)
    return result


@torch.no_grad()
def _score(transform: Anonymizer, recognizers: dict[str, tuple[nn.Module, nn.Module]], dataset: Dataset,
           cfg: TrainConfig, desc: str, num_classes: int, num_attributes: int
           ) -> tuple[dict[str, dict[str, Any]], float]:
    """Each attacker's metrics on the anonymized ``dataset`` (``metrics.summarize``), and the mean
    fraction of tubelets the anonymizer kept there."""
    device = torch.device(cfg.device)
    logits = {attacker: ([], []) for attacker in recognizers}
    actions, privacies, kept = [], [], []
    for video, action, privacy in _batches(_loader(dataset, cfg, shuffle=False, seed_offset=0), device, desc,
                                           cfg.progress):
        clips, keep, views = _anonymize(transform, video)
        for attacker, (action_rec, privacy_rec) in recognizers.items():
            mask = keep if attacker == "mask" else None
            action_rec.eval()
            privacy_rec.eval()
            # Mean of the raw logits over each video's views (VideoMAE's 5 x 3 test).
            logits[attacker][0].append(action_rec(clips, mask).float().view(-1, views, num_classes).mean(1).cpu())
            logits[attacker][1].append(privacy_rec(clips, mask).float().view(-1, views, num_attributes).mean(1).cpu())
        actions.append(action.cpu())
        privacies.append(privacy.cpu())
        kept.append(1.0 if keep is None else float(keep.float().mean()))
    if not actions:
        raise DatasetError(f"{desc}: no video could be decoded")
    results = {attacker: metrics.summarize(torch.cat(a), torch.cat(actions), torch.cat(p), torch.cat(privacies))
               for attacker, (a, p) in logits.items()}
    return results, sum(kept) / len(kept)


def _mean_losses(losses: list[tuple[float, float]]) -> dict[str, float] | None:
    """The recognizers' mean training losses over an epoch's steps: whether the attacker learned
    anything, and a continuous number that two runs reproducing each other share exactly."""
    if not losses:
        return None
    return {"action": sum(a for a, _ in losses) / len(losses), "privacy": sum(p for _, p in losses) / len(losses)}


def _frames(clips: Tensor, privacy: Tensor, views: int) -> tuple[Tensor, Tensor]:
    """``Tensor[B*V, 3, T, S, S]`` -> frames ``Tensor[B*V*T, 3, S, S]`` with each video's labels."""
    frames = clips.transpose(1, 2).flatten(0, 1)
    labels = privacy.repeat_interleave(views * clips.shape[2], dim=0)
    return frames, labels


def evaluate_frame_level(transform: Anonymizer, train_set: Dataset, test_set: Dataset, model_cfg: STPrivacyConfig,
                         cfg: TrainConfig, *, num_attributes: int, name: str = "anonymizer",
                         init: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """The frame-level privacy protocol: a fresh 2D privacy recognizer on single anonymized frames.

    Dropped tubelets are black pixels to a frame model (it has no keep mask), which is what an
    attacker who only sees the released frames gets. ``init``: an ImageNet ViT state dict the
    recognizer starts from (its head stays random); None = from scratch.

    Returns:
        ``{"frame_f1", "frame_cmap", "frame_ap"}`` over all test frames, ``{"video_f1",
        "video_cmap", "video_ap"}`` with the frame logits averaged per video (``*_ap``: per
        attribute), ``"skipped"`` and ``"seconds"``.
    """
    t0 = time.perf_counter()
    device = torch.device(cfg.device)
    recognizer: nn.Module = FrameClassifier.from_config(model_cfg, num_attributes, multilabel=True,
                                                        **_frame_overrides(cfg))
    if init is not None:
        load_pretrained_vit(recognizer, init)
    recognizer = recognizer.to(device).train()
    optimizer = make_optimizer([recognizer], cfg)
    fit_set, val_set = split_for_validation(train_set, cfg)
    loader = _loader(fit_set, cfg, shuffle=True, seed_offset=5)
    total, warmup, min_lr = _schedule(cfg, len(loader))
    step = 0
    for epoch in range(cfg.eval_epochs):
        for video, _, privacy in _batches(loader, device, f"{name}: frame recognizer {epoch + 1}/{cfg.eval_epochs}",
                                          cfg.progress):
            clips, _, views = _anonymize(transform, video)
            frames, labels = _frames(clips, privacy, views)
            set_lr(optimizer, get_lr(step, total, cfg.peak_lr, warmup, min_lr))
            optimizer.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(recognizer(frames), labels).backward()
            clip_and_step(optimizer, cfg)
            step += 1
    recognizer.eval()
    result = _score_frames(transform, recognizer, test_set, cfg, f"{name}: frame test", num_attributes)
    result["validation"] = _score_frames(transform, recognizer, val_set, cfg, f"{name}: frame validation",
                                         num_attributes)
    result.update(skipped=_skipped(train_set, test_set), seconds=time.perf_counter() - t0)
    return result


@torch.no_grad()
def _score_frames(transform: Anonymizer, recognizer: nn.Module, dataset: Dataset, cfg: TrainConfig, desc: str,
                  num_attributes: int) -> dict[str, Any]:
    """A frame privacy recognizer's F1, cMAP and AP on the anonymized ``dataset``, per frame and
    per video (frame logits averaged over the video)."""
    device = torch.device(cfg.device)
    frame_logits, frame_labels, video_logits, video_labels = [], [], [], []
    for video, _, privacy in _batches(_loader(dataset, cfg, shuffle=False, seed_offset=0), device, desc,
                                      cfg.progress):
        clips, _, views = _anonymize(transform, video)
        frames, labels = _frames(clips, privacy, views)
        logits = recognizer(frames).float()
        frame_logits.append(logits.cpu())
        frame_labels.append(labels.cpu())
        video_logits.append(logits.view(privacy.shape[0], -1, num_attributes).mean(1).cpu())
        video_labels.append(privacy.cpu())
    if not video_labels:
        raise DatasetError(f"{desc}: no video could be decoded")
    frame_y, frame_s = torch.cat(frame_labels), torch.cat(frame_logits)
    video_y, video_s = torch.cat(video_labels), torch.cat(video_logits)
    frame_ap, video_ap = metrics.average_precision(frame_y, frame_s), metrics.average_precision(video_y, video_s)
    return {
        "frame_f1": metrics.privacy_f1(frame_y, frame_s), "frame_cmap": float(frame_ap.mean()),
        "frame_ap": [float(a) for a in frame_ap],
        "video_f1": metrics.privacy_f1(video_y, video_s), "video_cmap": float(video_ap.mean()),
        "video_ap": [float(a) for a in video_ap],
    }


def _frame_overrides(cfg: TrainConfig) -> dict[str, Any]:
    """The recognizer sizes of ``cfg.recognizer`` that a frame model understands."""
    allowed = ("embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "norm_before_pool", "zero_head")
    return {k: v for k, v in cfg.recognizer.items() if k in allowed}


def run_protocol(protocol: str, transform: Anonymizer, train_set: Dataset, test_set: Dataset,
                 model_cfg: STPrivacyConfig, cfg: TrainConfig, *, num_classes: int, num_attributes: int,
                 name: str = "anonymizer", attackers: tuple[str, ...] = ("pixels",),
                 init: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """``"video"`` (:func:`evaluate_streaming`, attacked by ``attackers``) or ``"frame"``
    (:func:`evaluate_frame_level`: a frame model sees pixels only); ``init``: the recognizers'
    ImageNet start, None = from scratch."""
    if protocol == "video":
        return evaluate_streaming(transform, train_set, test_set, model_cfg, cfg, num_classes=num_classes,
                                  num_attributes=num_attributes, name=name, attackers=attackers, init=init)
    if protocol == "frame":
        return evaluate_frame_level(transform, train_set, test_set, model_cfg, cfg, num_attributes=num_attributes,
                                    name=name, init=init)
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def cross_dataset_tag(result: dict[str, Any], trained_on: str, evaluated_on: str) -> dict[str, Any]:
    """Marks a result with the benchmark the anonymizer was trained on and the one it was evaluated
    on (paper Table 2: e.g. trained on VP-UCF101, evaluated on VP-HMDB51)."""
    return {**result, "trained_on": trained_on, "evaluated_on": evaluated_on, "cross_dataset": trained_on != evaluated_on}


# ---- command-line glue for `stprivacy train` / `stprivacy evaluate` ------------------------------

def add_protocol_arguments(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """The protocol options shared by ``train`` and ``evaluate`` (``several``: ``--protocol`` takes
    one or more, each an attacker of the same run; ``args.protocol`` is then a list)."""
    parser.add_argument("--protocol", choices=PROTOCOLS, default=["video"] if several else "video",
                        nargs="+" if several else None,
                        help="video: fresh video recognizers (paper Table 1); frame: a fresh per-frame 2D privacy "
                             "recognizer (Table 3)" + ("; several: each attacks every method" if several else ""))
    parser.add_argument("--eval-dataset", default=None, metavar="NAME",
                        help="evaluate on this dataset instead of the training one: the cross-dataset protocol "
                             "(Table 2), e.g. train on ucf101, evaluate on hmdb51")
    parser.add_argument("--eval-dataset-kwargs", type=json.loads, default=None, metavar="JSON",
                        help='options of --eval-dataset, e.g. \'{"video_root": "...", "split_dir": "..."}\'')


def uses_protocols(args: argparse.Namespace, dataset: Dataset) -> bool:
    """Whether evaluation must go through this module: a frame-level or cross-dataset request, or
    a streamed (real video) dataset, which the in-memory evaluation cannot hold."""
    return (getattr(args, "protocol", "video") != "video" or getattr(args, "eval_dataset", None) is not None
            or hasattr(dataset, "collate_fn"))


def evaluate_with_protocol(model: STPrivacy, cfg: TrainConfig, args: argparse.Namespace, train_set: Dataset,
                           test_set: Dataset, keep_ratios: list[float] | None = None) -> dict[str, dict[str, Any]]:
    """Runs ``args.protocol`` for a frozen STPrivacy model at each deployment keep ratio, on
    ``--eval-dataset`` when given (cross-dataset) or on the given datasets.

    Returns:
        ``{str(ratio): result}``, each result tagged with ``trained_on`` / ``evaluated_on``.
    """
    from ..train.data_factory import build_dataset
    from ..train.evaluation import stprivacy_transform

    evaluated_on = cfg.dataset
    if args.eval_dataset is not None:
        evaluated_on = args.eval_dataset
        geometry = {"frames": model.cfg.frames, "image_size": model.cfg.image_size, "tubelet": model.cfg.tubelet}
        options = args.eval_dataset_kwargs or {}
        train_set = build_dataset(evaluated_on, "train", geometry, **options)
        test_set = build_dataset(evaluated_on, "test", geometry, **options)
    ratios = keep_ratios or cfg.eval_keep_ratios or [model.cfg.alpha]
    results = {}
    for ratio in ratios:
        torch.manual_seed(cfg.seed + 1)  # the fresh recognizers start alike for every ratio
        result = run_protocol(args.protocol, stprivacy_transform(model, ratio), train_set, test_set, model.cfg, cfg,
                              attackers=ATTACKERS,
                              num_classes=int(train_set.num_classes), num_attributes=int(train_set.num_attributes),
                              name=f"stprivacy alpha={ratio:g}")
        results[f"{ratio:g}"] = cross_dataset_tag(result, trained_on=cfg.dataset, evaluated_on=evaluated_on)
    return results


def format_results(results: dict[str, dict[str, Any]]) -> str:
    """A table of :func:`evaluate_with_protocol`'s results, in percent (a multi-label action task:
    action cMAP and F1 where the others have top-1)."""
    first = next(iter(results.values()))
    keys = [k for k in ("top1", "action_cmap", "action_f1", "f1", "cmap", "kept", "frame_f1", "frame_cmap", "video_f1",
                        "video_cmap") if first.get(k) is not None]
    lines = [f"{first['trained_on']} -> {first['evaluated_on']}" + (" (cross-dataset)" if first["cross_dataset"] else ""),
             f"{'alpha':>6} " + " ".join(f"{k + ' %':>12}" for k in keys) + f" {'skipped':>8} {'attacker':>9}"]
    for alpha, r in results.items():
        lines.append(f"{alpha:>6} " + " ".join(f"{100 * r[k]:12.1f}" for k in keys) + f" {r['skipped']:>8}"
                     f" {r.get('privacy_from', 'pixels'):>9}")
    return "\n".join(lines)
