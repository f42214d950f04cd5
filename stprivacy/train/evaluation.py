"""Phase 3 of paper §3.4, the evaluation protocol, for STPrivacy and every baseline alike.

Freeze the anonymizer (any transform ``video -> (video, keep)``), transform the training and the
test videos, train a FRESH action recognizer and a FRESH privacy recognizer from scratch on the
transformed training videos, and report top-1, class-wise F1 and cMAP on the transformed test
videos (a multi-label action task: action cMAP and F1 instead of top-1). A validation split of
the training videos (``TrainConfig.validation_fraction``) is left out of the recognizers' training; where a method faces several attackers, their validation
numbers choose which test numbers a row reports (:mod:`stprivacy.attack.verdict`). Recognizers that start from scratch are the point: a privacy attacker who trains on
anonymized data is stronger than one that was trained on raw data.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..attack import metrics
from ..attack.verdict import check_attackers, combine_attackers, split_validation
from ..model import STPrivacy, STPrivacyConfig
from ..progress import progress_bar
from .checkpoint import load_latest, rng_state, save_rotating, set_rng_state
from .common import action_loss, clip_and_step, make_optimizer, make_recognizer, set_lr
from .config import TrainConfig, get_lr
from .distributed import (ResumableBatches, all_reduce_mean, gather_rows, is_main, make_loader, micro_batches,
                          resolve_device, shard_range, usable_on_all_ranks)
from .loop import PHASE_IDS, Progress, StepValues, autocast, prepare
from .run_log import RunLogger

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
    """A fixed transform (raw, downsampling, blur, ...) as an anonymizer.

    A baseline with ``takes_region`` (the person-region ones, the oracle control; see
    :mod:`stprivacy.methods.baselines`) is called ``fn(video, region)``: its anonymizer takes
    ``(video, region=None)`` and carries ``takes_region`` too, so that :func:`transform_dataset`
    hands it each video's ``Tensor[T, H, W]`` bool region where the dataset has
    ``person_region(index)``.
    """
    if getattr(fn, "takes_region", False):
        def transform(video: Tensor, region: Tensor | None = None) -> tuple[Tensor, None]:
            return fn(video, region), None

        transform.takes_region = True
        return transform
    return lambda video: (fn(video), None)


def _region_reader(transform: Anonymizer, dataset: Dataset) -> Callable[[list[int]], Tensor] | None:
    """Reads the regions of a batch of videos (by index) for a transform that takes them from a
    dataset that has them; None otherwise (the transform then finds them itself, or refuses)."""
    if not getattr(transform, "takes_region", False) or not hasattr(dataset, "person_region"):
        return None
    return lambda indices: torch.stack([dataset.person_region(i) for i in indices])


@torch.no_grad()
def transform_dataset(transform: Anonymizer, dataset: Dataset, cfg: TrainConfig, desc: str = "transform"
                      ) -> TensorDataset:
    """Run the frozen transform over a dataset once: (videos, keep, actions, privacy) in memory.

    Where the transform drops nothing at all, ``keep`` is stored as ``Tensor[M]`` of ones, which
    batches to a 1-D tensor that the recognizers' loops read as "no mask". Worth it when the data
    is iterated for many epochs and fits in memory (the synthetic benchmark); real datasets with
    augmentation would transform on the fly instead. Under torchrun each rank transforms its
    contiguous block and every rank receives the whole result, in dataset order.
    """
    device = resolve_device(cfg.device)
    indices = list(shard_range(len(dataset)))
    block = Subset(dataset, indices)
    loader = DataLoader(block, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    read_regions = _region_reader(transform, dataset)
    videos, keeps, actions, privacy = [], [], [], []
    done = 0  # videos of the block transformed so far: the next batch's indices follow (no shuffling)
    for video, action, priv in progress_bar(loader, desc=desc, unit="batch", leave=False,
                                            disable=not (cfg.progress and is_main())):
        if read_regions is None:
            out, keep = transform(video.to(device))
        else:
            region = read_regions(indices[done : done + len(video)]).to(device)
            out, keep = transform(video.to(device), region)
        done += len(video)
        videos.append(out.cpu())
        keeps.append(keep if keep is None else keep.cpu())
        actions.append(action)
        privacy.append(priv.float())
    # Whether anything was dropped must be agreed on by all ranks before gathering.
    dropped_here = any(k is not None for k in keeps)
    if all_reduce_mean(torch.tensor([float(dropped_here)])).item() == 0:
        keep_all = torch.ones(sum(len(v) for v in videos))
    else:
        grid = next(k for k in keeps if k is not None).shape[1:] if dropped_here else _keep_grid(transform, dataset, device)
        keep_all = torch.cat([k if k is not None else torch.ones(len(v), *grid) for k, v in zip(keeps, videos)])
    return TensorDataset(gather_rows(torch.cat(videos)), gather_rows(keep_all), gather_rows(torch.cat(actions)),
                         gather_rows(torch.cat(privacy)))


def _keep_grid(transform: Anonymizer, dataset: Dataset, device: torch.device) -> tuple[int, ...]:
    # A rank whose block dropped nothing still needs the [L, N] shape of the others' masks.
    video = dataset[0][0].unsqueeze(0).to(device)
    _, keep = transform(video)
    if keep is None:
        raise RuntimeError("cannot tell the keep-mask shape: the transform dropped nothing on video 0")
    return tuple(keep.shape[1:])


def fit_recognizers(train_data: TensorDataset, model_cfg: STPrivacyConfig, cfg: TrainConfig, num_classes: int,
                    num_attributes: int, desc: str = "recognizers", logger: RunLogger | None = None,
                    state_dir: Path | None = None, resume: bool = False, init: dict[str, Tensor] | None = None):
    """Train a fresh action and a fresh privacy recognizer on transformed training data.

    Both see the same batches; each has its own AdamW and cosine schedule (``cfg.eval_epochs``).
    Under torchrun both are DDP-wrapped and each rank trains on its share of every batch. With
    ``state_dir``, rank 0 checkpoints there (``last.pt`` / ``last.prev.pt``) like phases 1-2, and
    ``resume`` continues from it exactly. ``init``: an ImageNet ViT state dict both start from
    (:func:`stprivacy.train.common.make_recognizer`); None = from scratch, the paper's protocol.

    Returns:
        (action_rec, privacy_rec, history)
    """
    phase, accum = "evaluation", cfg.grad_accum_steps
    device = resolve_device(cfg.device)
    action_rec = make_recognizer(model_cfg, cfg, num_classes, multilabel=False, init=init)
    privacy_rec = make_recognizer(model_cfg, cfg, num_attributes, multilabel=True, init=init)
    checkpoint = load_latest(state_dir) if state_dir is not None and resume else None
    if checkpoint is not None:  # before DDP, which broadcasts rank 0's weights when it wraps
        if checkpoint["config"]["train"] != cfg.to_dict():
            raise ValueError(f"cannot resume the evaluation in {state_dir}: the train config changed")
        action_rec.load_state_dict(checkpoint["recognizers"]["action"])
        privacy_rec.load_state_dict(checkpoint["recognizers"]["privacy"])
        set_rng_state(checkpoint["rng"])
    rec_action, rec_privacy = prepare(action_rec, device, cfg), prepare(privacy_rec, device, cfg)
    batches = ResumableBatches(len(train_data), min(cfg.batch_size, len(train_data)), accum,
                               seed=cfg.seed * 7919 + PHASE_IDS[phase])
    opt_action = make_optimizer([action_rec], cfg)
    opt_privacy = make_optimizer([privacy_rec], cfg)
    optimizers = {"action": opt_action, "privacy": opt_privacy}
    total = cfg.eval_epochs * len(batches)
    warmup, min_lr = round(cfg.warmup_epochs * len(batches)), cfg.peak_lr * cfg.min_lr_ratio
    progress = Progress.resume(phase, checkpoint, optimizers)
    if logger is not None and checkpoint is not None:
        logger.rewind(f"{phase}/{desc}", progress.step)

    def save() -> None:
        if state_dir is None or not is_main():
            return
        save_rotating(state_dir, {
            "phase": phase, "epoch": progress.epoch, "step": progress.step, "progress": progress.to_dict(),
            "recognizers": {"action": action_rec.state_dict(), "privacy": privacy_rec.state_dict()},
            "optimizer": {name: o.state_dict() for name, o in optimizers.items()},
            "config": {"model": model_cfg.to_dict(), "train": cfg.to_dict()}, "rng": rng_state()})
    while progress.epoch < cfg.eval_epochs:
        t0 = time.perf_counter()
        loader = make_loader(train_data, batches.epoch(progress.epoch, start=progress.batch), cfg.num_workers)
        bar = progress_bar(loader, desc=f"{desc}: fresh recognizers {progress.epoch + 1}/{cfg.eval_epochs}",
                           unit="batch", leave=False, disable=not (cfg.progress and is_main()))
        for batch in bar:
            if not usable_on_all_ranks(batch, accum):  # unreadable videos left a rank with nothing
                progress.skip_batch()
                continue
            lr = get_lr(progress.step, total, cfg.peak_lr, warmup, min_lr)
            set_lr(opt_action, lr)
            set_lr(opt_privacy, lr)
            opt_action.zero_grad(set_to_none=True)
            opt_privacy.zero_grad(set_to_none=True)
            step_values = StepValues(accum)
            for _, (video, keep, action, privacy) in micro_batches(batch, accum, [rec_action, rec_privacy]):
                video, action, privacy = video.to(device), action.to(device), privacy.to(device)
                keep = keep.to(device) if keep.dim() > 1 else None
                with autocast(cfg, device):
                    loss_action = action_loss(rec_action(video, keep), action)
                    loss_privacy = F.binary_cross_entropy_with_logits(rec_privacy(video, keep), privacy)
                ((loss_action + loss_privacy) / accum).backward()  # disjoint parameters: one backward serves both
                step_values.add(loss_action=loss_action, loss_privacy=loss_privacy)
            values = step_values.reduce(progress)
            clip_and_step(opt_action, cfg)
            clip_and_step(opt_privacy, cfg)
            progress.end_step(values)
            bar.set_postfix(action=f"{values['loss_action']:.3f}", privacy=f"{values['loss_privacy']:.3f}")
            if logger is not None:
                logger.log(f"{phase}/{desc}", progress.epoch + 1, progress.step, values)
            if cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0 and progress.batch < len(batches):
                save()
        progress.end_epoch(time.perf_counter() - t0)
        save()
    history = {key: progress.history.get(key, []) for key in ("loss_action", "loss_privacy")}
    return action_rec.eval(), privacy_rec.eval(), history


@torch.no_grad()
def test_recognizers(action_rec, privacy_rec, test_data: TensorDataset, cfg: TrainConfig) -> dict[str, float]:
    """Top-1, F1 and cMAP (fractions) of trained recognizers on transformed test data.

    Under torchrun each rank scores its block of the test set; the logits are gathered, so every
    rank computes the metrics over the whole test set (cMAP needs all scores, not a mean of
    per-rank values).
    """
    device = resolve_device(cfg.device)
    action_rec.eval()
    privacy_rec.eval()
    block = Subset(test_data, list(shard_range(len(test_data))))
    action_logits, privacy_logits, actions, privacy = [], [], [], []
    for video, keep, action, priv in DataLoader(block, batch_size=cfg.batch_size * 2):
        video = video.to(device)
        keep = keep.to(device) if keep.dim() > 1 else None
        with autocast(cfg, device):
            action_logits.append(action_rec(video, keep).float().cpu())
            privacy_logits.append(privacy_rec(video, keep).float().cpu())
        actions.append(action)
        privacy.append(priv)
    return metrics.summarize(*(gather_rows(torch.cat(parts)) for parts in (action_logits, actions, privacy_logits,
                                                                          privacy)))


def without_mask(data: TensorDataset) -> TensorDataset:
    """The same transformed videos for a pixel-only attacker: the keep masks replaced by the 1-D
    "no mask" marker, so the recognizers see every tubelet, dropped ones as the black pixels
    they are."""
    videos, _, actions, privacy = data.tensors
    return TensorDataset(videos, torch.ones(len(videos)), actions, privacy)


def split_for_validation(dataset: Dataset, cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    """``dataset`` (training videos, raw or transformed) as (the videos models train on, the
    validation videos that choose the attackers): :func:`stprivacy.attack.verdict.split_validation`
    with ``cfg``'s fraction and seed. A :class:`TensorDataset` is split into two TensorDatasets,
    anything else into Subsets; both parts keep what the dataset declares (``collate_fn``,
    ``num_classes``, ``num_attributes``, ``attributes``, ``multilabel_actions``)."""
    fit, val = split_validation(len(dataset), cfg.validation_fraction, cfg.seed)
    if isinstance(dataset, TensorDataset):
        parts = tuple(TensorDataset(*(t[idx] for t in dataset.tensors)) for idx in (fit, val))
    else:
        parts = (Subset(dataset, fit), Subset(dataset, val))
    for part in parts:
        for name in ("collate_fn", "num_classes", "num_attributes", "attributes", "multilabel_actions"):
            if hasattr(dataset, name):
                setattr(part, name, getattr(dataset, name))
    return parts


def _has_mask(data: TensorDataset) -> bool:
    return data.tensors[1].dim() > 1


def attack_transformed(train_data: TensorDataset, test_data: TensorDataset, model_cfg: STPrivacyConfig,
                       cfg: TrainConfig, *, num_classes: int, num_attributes: int, name: str = "anonymizer",
                       attackers: tuple[str, ...] = ("pixels",), logger: RunLogger | None = None,
                       state_dir: Path | None = None, resume: bool = False,
                       init: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """Fresh recognizers of each kind in ``attackers`` trained on already transformed data
    (:func:`transform_dataset`'s layout) and tested; combined by
    :func:`stprivacy.attack.verdict.combine_attackers`. ``state_dir`` holds one checkpoint folder per
    attacker; ``init``: see :func:`fit_recognizers`."""
    attackers = check_attackers(attackers)
    # Nothing dropped: the mask-aware attacker is the pixel-only one, run once.
    masked = _has_mask(train_data) or _has_mask(test_data)
    runs = list(dict.fromkeys(a if masked else "pixels" for a in attackers))
    fit_data, val_data = split_for_validation(train_data, cfg)
    results = {}
    for attacker in runs:
        view = (lambda data: data) if attacker == "mask" else without_mask
        torch.manual_seed(cfg.seed + 1)  # every attacker's recognizers start alike
        action_rec, privacy_rec, history = fit_recognizers(
            view(fit_data), model_cfg, cfg, num_classes, num_attributes, desc=f"{name} [{attacker}]", logger=logger,
            state_dir=None if state_dir is None else state_dir / attacker, resume=resume, init=init)
        results[attacker] = test_recognizers(action_rec, privacy_rec, view(test_data), cfg)
        results[attacker]["validation"] = test_recognizers(action_rec, privacy_rec, view(val_data), cfg)
        if history["loss_action"]:  # the last epoch's mean losses: did the attacker learn at all?
            results[attacker]["last_epoch_loss"] = {"action": history["loss_action"][-1],
                                                    "privacy": history["loss_privacy"][-1]}
    return combine_attackers(results)


def evaluate_anonymizer(transform: Anonymizer, train_set: Dataset, test_set: Dataset, model_cfg: STPrivacyConfig,
                        cfg: TrainConfig, *, num_classes: int, num_attributes: int, name: str = "anonymizer",
                        attackers: tuple[str, ...] = ("pixels",), logger: RunLogger | None = None,
                        state_dir: str | Path | None = None, resume: bool = False,
                        init: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """The whole evaluation protocol for one frozen transform (``logger`` logs the recognizers'
    losses under the phase name ``evaluation/<name>``).

    Args:
        attackers: which fresh recognizers attack the output (``stprivacy.attack.verdict.ATTACKERS``):
            "pixels" see the released video only, "mask" also get the transform's keep mask. A
            transform that drops nothing has no mask, so "mask" is then the same attacker as
            "pixels" and runs once. The result combines them by
            :func:`stprivacy.attack.verdict.combine_attackers`; each one's numbers are kept under
            ``"attackers"``.
        state_dir, resume: with ``state_dir``, the recognizers' checkpoints go to
            ``state_dir/<name>/<attacker>/`` and the result to ``state_dir/<name>/result.json``;
            ``resume`` reuses a finished result and continues an unfinished fit exactly.
        init: an ImageNet ViT state dict the fresh recognizers start from (a stronger attacker);
            None = from scratch.

    Returns:
        ``{"top1", "f1", "cmap"}`` as fractions, ``"ap"`` (per attribute), ``"privacy_from"`` /
        ``"top1_from"`` (the attackers they come from), ``"attackers"``, ``"kept"`` (mean
        fraction of tubelets the transform keeps) and ``"seconds"``.
    """
    t0 = time.perf_counter()
    own_dir = Path(state_dir) / re.sub(r"[^A-Za-z0-9._-]+", "_", name) if state_dir is not None else None
    if own_dir is not None and resume and (own_dir / "result.json").is_file():
        return json.loads((own_dir / "result.json").read_text())
    train_data = transform_dataset(transform, train_set, cfg, desc=f"{name}: transform train")
    test_data = transform_dataset(transform, test_set, cfg, desc=f"{name}: transform test")
    result = attack_transformed(train_data, test_data, model_cfg, cfg, num_classes=num_classes,
                                num_attributes=num_attributes, name=name, attackers=attackers, logger=logger,
                                state_dir=own_dir, resume=resume, init=init)
    keep = test_data.tensors[1]
    result["kept"] = float(keep.mean()) if keep.dim() > 1 else 1.0
    result["seconds"] = time.perf_counter() - t0
    if own_dir is not None and is_main():
        own_dir.mkdir(parents=True, exist_ok=True)
        (own_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result
