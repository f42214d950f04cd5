"""Phases 1 and 2 of paper §3.4: train the anonymizer (PSBs + PAB).

Before them, with ``TrainConfig.reconstruction_epochs`` (stpriv's, off by default), a start for an
anonymizer without pretrained weights: it learns to reproduce its training videos.

Phase 1, initialization: ``L_spars + L'_action``. An action recognizer ``f'_T`` is trained
jointly on the anonymized videos, so the anonymizer learns to keep what the action needs.

Phase 2, adversarial: the anonymizer minimizes ``L_spars + lambda_A L_action - lambda_P
L_privacy`` against an action and a privacy recognizer, which in turn minimize their own losses
on the (detached) anonymized videos; one update of each side per batch. By default only the
anonymization block learns in this phase, the sparsification stays as phase 1 left it (the
release's freezing; ``TrainConfig.adversarial_trains``).

Both loops are written flat, top to bottom, like nanoGPT's: set the learning rate, forward and
backward per micro-batch, average the losses over ranks (and stop on NaN/inf), step, log, and
checkpoint every ``cfg.checkpoint_every`` steps and at the end of every epoch. Under torchrun
the modules are DDP-wrapped and every rank trains on its share of each global batch (see
``stprivacy.train.distributed``); a run resumed from a checkpoint continues exactly.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from stpriv_ops import sparsity_loss
from torch import nn
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..model import STPrivacy
from ..progress import progress_bar
from .common import (action_loss, backbone_lr, clip_and_step, make_optimizer, privacy_adversary_loss,
                     score_function_term, set_lr, to_device)
from .config import TrainConfig, get_lr, sparsity_warmup
from .distributed import (ResumableBatches, is_main, make_loader, micro_batches, resolve_device, shard_generator,
                          sync_gradients, usable_on_all_ranks)
from .loop import PHASE_IDS, Progress, SaveFn, StepValues, autocast, prepare
from .run_log import RunLogger


def _spars(out) -> torch.Tensor:
    # "anonymization only" (alpha = 1 or no PSB) has no masks: nothing to regularize.
    if not out.keep_masks:
        return out.video.new_zeros(())
    return sparsity_loss(out.keep_masks, out.target_ratios)


def check_filter_prior(model_cfg, cfg: TrainConfig) -> None:
    """``TrainConfig.lambda_filter`` rewards the gates of ``STPrivacyConfig.pab_filter``: a model
    with an anonymization block but no filter has nothing for it to act on (one without any
    block, the "sparsification only" ablation, trains no anonymizer in phase 2). Raises
    :class:`~stprivacy.errors.ConfigError`; the commands call it before they write anything."""
    if cfg.lambda_filter and model_cfg.use_pab and not model_cfg.pab_filter:
        raise ConfigError(f"lambda_filter={cfg.lambda_filter} rewards the gates of the PAB's filter: it needs "
                         "STPrivacyConfig.pab_filter=True (or lambda_filter=0)")


def _filter_prior(out) -> torch.Tensor:
    """The mean filter gate over the kept tubelets (``TrainConfig.lambda_filter``; 0 without a filter)."""
    if out.filter_gates is None:
        return out.video.new_zeros(())
    keep = out.keep.detach()
    return (out.filter_gates.mean(-1) * keep).sum() / keep.sum().clamp(min=1)


def _schedule(cfg: TrainConfig, epochs: int, steps_per_epoch: int) -> tuple[int, int, float]:
    total = epochs * steps_per_epoch
    return total, round(cfg.warmup_epochs * steps_per_epoch), cfg.peak_lr * cfg.min_lr_ratio


def _warmup_schedule(model: STPrivacy, remaining: float) -> tuple[float | None, float]:
    """(keep_ratio, score_scale) of the forward pass while ``remaining`` (1 -> 0) of the
    sparsification warm-up is left; see ``TrainConfig.sparsity_hold_epochs``."""
    if model.cfg.train_sampler == "gumbel_topk":
        return None, 1.0 - remaining  # deployment-size subsets, picked at random at first
    return 1.0 - (1.0 - model.cfg.alpha) * (1.0 - remaining), 1.0  # nothing dropped at first


def _batches(train_set: Dataset, cfg: TrainConfig, phase: str) -> ResumableBatches:
    return ResumableBatches(len(train_set), min(cfg.batch_size, len(train_set)), cfg.grad_accum_steps,
                            seed=cfg.seed * 7919 + PHASE_IDS[phase])


def _log_and_checkpoint(phase: str, progress: Progress, values: dict[str, float], cfg: TrainConfig,
                        logger: RunLogger | None, save: SaveFn | None, optimizers: dict[str, Any],
                        steps_per_epoch: int, t0: float) -> float:
    """After an optimizer step: log it, and every ``cfg.checkpoint_every`` steps inside an epoch
    save a checkpoint (the epoch's end saves anyway). Returns the epoch timer's new start, since
    the time spent so far is banked in ``progress`` before saving."""
    if logger is not None:
        logger.log(phase, progress.epoch + 1, progress.step, values)
    if save is not None and cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0 \
            and progress.batch < steps_per_epoch:
        progress.seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        save(progress, optimizers)
    return t0


@contextlib.contextmanager
def _trainable(model: STPrivacy, scope: str) -> Iterator[None]:
    """Within the context only the anonymizer parameters of ``scope`` require gradients: "all",
    "pab" (the anonymization block) or "sparsifier" (everything but the anonymization block);
    the previous flags come back after it (``TrainConfig.initialization_trains`` /
    ``adversarial_trains``)."""
    flags = {p: p.requires_grad for p in model.parameters()}
    if scope != "all":
        for name, p in model.named_parameters():
            in_pab = name.startswith("pab.")
            p.requires_grad_(p.requires_grad and (in_pab if scope == "pab" else not in_pab))
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def train_reconstruction(model: STPrivacy, train_set: Dataset, cfg: TrainConfig, *,
                         save: SaveFn | None = None, resume: dict[str, Any] | None = None,
                         logger: RunLogger | None = None) -> dict[str, list[float]]:
    """The reconstruction start (``TrainConfig.reconstruction_epochs``): every anonymizer parameter
    but the keep predictors learns to reproduce the training videos, every tubelet kept, by mean
    squared error, at the run's learning rate and schedule. Arguments as
    :func:`train_initialization`; returns per-epoch means ``{"loss_reconstruction": [...],
    "seconds": [...]}``."""
    phase, accum = "reconstruction", cfg.grad_accum_steps
    device = resolve_device(cfg.device)
    net = prepare(model, device, cfg, find_unused_parameters=True)  # the predictors take no part
    batches = _batches(train_set, cfg, phase)
    optimizer = make_optimizer([model], cfg)
    optimizers = {"anonymizer": optimizer}
    progress = Progress.resume(phase, resume, optimizers)
    total, warmup, min_lr = _schedule(cfg, cfg.reconstruction_epochs, len(batches))
    while progress.epoch < cfg.reconstruction_epochs:
        t0 = time.perf_counter()
        loader = make_loader(train_set, batches.epoch(progress.epoch, start=progress.batch), cfg.num_workers)
        bar = progress_bar(loader, desc=f"reconstruction {progress.epoch + 1}/{cfg.reconstruction_epochs}",
                           initial=progress.batch, unit="batch", total=len(batches), leave=False,
                           disable=not (cfg.progress and is_main()))
        for batch in bar:
            if not usable_on_all_ranks(batch, accum):
                progress.skip_batch()
                continue
            set_lr(optimizer, get_lr(progress.step, total, cfg.peak_lr, warmup, min_lr))
            optimizer.zero_grad(set_to_none=True)
            step_values = StepValues(accum)
            for _, micro in micro_batches(batch, accum, [net]):
                video, _, _ = to_device(micro, device)
                with autocast(cfg, device):
                    loss = F.mse_loss(net(video, keep_all=True).video.float(), video)
                (loss / accum).backward()
                step_values.add(loss_reconstruction=loss)
            values = step_values.reduce(progress)
            clip_and_step(optimizer, cfg)
            progress.end_step(values)
            bar.set_postfix(mse=f"{values['loss_reconstruction']:.4f}")
            t0 = _log_and_checkpoint(phase, progress, values, cfg, logger, save, optimizers, len(batches), t0)
        progress.end_epoch(time.perf_counter() - t0)
        if save is not None:
            save(progress, optimizers)
    return progress.history


def train_initialization(model: STPrivacy, action_rec: nn.Module, train_set: Dataset, cfg: TrainConfig, *,
                         save: SaveFn | None = None, resume: dict[str, Any] | None = None,
                         logger: RunLogger | None = None) -> dict[str, list[float]]:
    """Phase 1: ``L_spars + L'_action`` for ``cfg.init_epochs`` epochs.

    Args:
        model: the anonymizer, trained in place.
        action_rec: the jointly trained action recognizer ``f'_T``, trained in place.
        train_set: yields ``(video, action, privacy)``.
        cfg: the training configuration.
        save: writes a checkpoint of the run (None: no checkpoints).
        resume: a checkpoint to continue from (its module weights already loaded by the
            caller); ignored unless its phase is "initialization".
        logger: per-step scalar log.

    Returns:
        Per-epoch means: ``{"loss_spars": [...], "loss_action": [...], "keep": [...], "seconds": [...]}``.
    """
    if cfg.initialization_trains == "sparsifier" and model.pab is not None and not model.cfg.pab_residual:
        raise ValueError("initialization_trains='sparsifier' keeps the PAB as initialized, which is the identity "
                         "only with STPrivacyConfig.pab_residual=True")
    with _trainable(model, "sparsifier" if cfg.initialization_trains == "sparsifier" else "all"):
        return _initialization_loop(model, action_rec, train_set, cfg, save=save, resume=resume, logger=logger)


def _initialization_loop(model: STPrivacy, action_rec: nn.Module, train_set: Dataset, cfg: TrainConfig, *,
                         save: SaveFn | None, resume: dict[str, Any] | None,
                         logger: RunLogger | None) -> dict[str, list[float]]:
    phase, accum = "initialization", cfg.grad_accum_steps
    device = resolve_device(cfg.device)
    net, rec = prepare(model, device, cfg), prepare(action_rec, device, cfg)
    batches = _batches(train_set, cfg, phase)
    optimizer = make_optimizer([model, action_rec], cfg)
    optimizers = {"anonymizer": optimizer}
    progress = Progress.resume(phase, resume, optimizers)
    total, warmup, min_lr = _schedule(cfg, cfg.init_epochs, len(batches))
    hold, ramp = round(cfg.sparsity_hold_epochs * len(batches)), round(cfg.sparsity_ramp_epochs * len(batches))
    while progress.epoch < cfg.init_epochs:
        t0 = time.perf_counter()
        loader = make_loader(train_set, batches.epoch(progress.epoch, start=progress.batch), cfg.num_workers)
        bar = progress_bar(loader, desc=f"init {progress.epoch + 1}/{cfg.init_epochs}", initial=progress.batch,
                           unit="batch", total=len(batches), leave=False, disable=not (cfg.progress and is_main()))
        for batch in bar:
            if not usable_on_all_ranks(batch, accum):  # unreadable videos left a rank with nothing
                progress.skip_batch()
                continue
            lr = get_lr(progress.step, total, cfg.peak_lr, warmup, min_lr)
            set_lr(optimizer, lr, backbone_lr(lr, progress.step, cfg, len(batches)))
            keep_ratio, score_scale = _warmup_schedule(model, sparsity_warmup(progress.step, hold, ramp))
            optimizer.zero_grad(set_to_none=True)
            step_values = StepValues(accum)
            for a, micro in micro_batches(batch, accum, [net, rec]):
                video, action, _ = to_device(micro, device)
                with autocast(cfg, device):
                    out = net(video, keep_ratio, score_scale=score_scale,
                              generator=shard_generator(cfg.seed, PHASE_IDS[phase], progress.step, a))
                    loss_spars = _spars(out)
                    action_per_clip = action_loss(rec(out.video, out.keep), action, reduction="none")
                    loss_action = action_per_clip.mean()
                    loss_keep = score_function_term(action_per_clip, out.keep_log_prob)
                ((loss_spars + loss_action + loss_keep) / accum).backward()
                step_values.add(loss_spars=loss_spars, loss_action=loss_action, keep=out.keep.mean())
            values = step_values.reduce(progress)  # raises on NaN/inf before the update
            clip_and_step(optimizer, cfg)
            progress.end_step(values)
            bar.set_postfix(action=f"{values['loss_action']:.3f}", spars=f"{values['loss_spars']:.4f}")
            t0 = _log_and_checkpoint(phase, progress, values, cfg, logger, save, optimizers, len(batches), t0)
        progress.end_epoch(time.perf_counter() - t0)
        if save is not None:
            save(progress, optimizers)
    return progress.history


def train_adversarial(model: STPrivacy, action_rec: nn.Module, privacy_rec: nn.Module, train_set: Dataset,
                      cfg: TrainConfig, *, save: SaveFn | None = None, resume: dict[str, Any] | None = None,
                      logger: RunLogger | None = None) -> dict[str, list[float]]:
    """Phase 2: alternate anonymizer and recognizer updates for ``cfg.adv_epochs`` epochs.

    Args:
        model: the anonymizer (after phase 1), trained in place.
        action_rec: the action recognizer ``f_T`` (phase 1's, continued), trained in place.
        privacy_rec: the privacy recognizer ``f_B`` (multi-label), trained in place.
        train_set: yields ``(video, action, privacy)``.
        cfg: the training configuration.
        save, resume, logger: as for :func:`train_initialization` (phase "adversarial").

    Returns:
        Per-epoch means of the anonymizer's and the recognizers' losses, the keep ratio and seconds.
    """
    check_filter_prior(model.cfg, cfg)
    with _trainable(model, cfg.adversarial_trains):
        return _adversarial_loop(model, action_rec, privacy_rec, train_set, cfg, save=save, resume=resume,
                                 logger=logger)


def _adversarial_loop(model: STPrivacy, action_rec: nn.Module, privacy_rec: nn.Module, train_set: Dataset,
                      cfg: TrainConfig, *, save: SaveFn | None, resume: dict[str, Any] | None,
                      logger: RunLogger | None) -> dict[str, list[float]]:
    phase, accum = "adversarial", cfg.grad_accum_steps
    device = resolve_device(cfg.device)
    # Nothing of the anonymizer to train (sparsification only, scope "pab"): it only produces
    # the videos the recognizers keep training on.
    learns = any(p.requires_grad for p in model.parameters())
    net = prepare(model, device, cfg) if learns else model.to(device)
    rec_action, rec_privacy = prepare(action_rec, device, cfg), prepare(privacy_rec, device, cfg)
    batches = _batches(train_set, cfg, phase)
    opt_anonymizer = make_optimizer([model], cfg) if learns else None
    opt_recognizers = make_optimizer([action_rec, privacy_rec], cfg)
    optimizers = ({"anonymizer": opt_anonymizer} if learns else {}) | {"recognizers": opt_recognizers}
    progress = Progress.resume(phase, resume, optimizers)
    total, warmup, min_lr = _schedule(cfg, cfg.adv_epochs, len(batches))
    while progress.epoch < cfg.adv_epochs:
        t0 = time.perf_counter()
        loader = make_loader(train_set, batches.epoch(progress.epoch, start=progress.batch), cfg.num_workers)
        bar = progress_bar(loader, desc=f"adversarial {progress.epoch + 1}/{cfg.adv_epochs}", initial=progress.batch,
                           unit="batch", total=len(batches), leave=False, disable=not (cfg.progress and is_main()))
        for batch in bar:
            if not usable_on_all_ranks(batch, accum):  # unreadable videos left a rank with nothing
                progress.skip_batch()
                continue
            lr = get_lr(progress.step, total, cfg.peak_lr, warmup, min_lr)
            if learns:
                set_lr(opt_anonymizer, lr, backbone_lr(lr, progress.step, cfg, len(batches)))
            set_lr(opt_recognizers, lr)
            step_values = StepValues(accum)

            # The anonymizer's step: keep the action, defeat the privacy recognizer. The recognizers
            # run unwrapped here: their gradients from this loss are discarded, not all-reduced.
            if learns:
                opt_anonymizer.zero_grad(set_to_none=True)
            anonymized = []
            for a, micro in micro_batches(batch, accum, [net]):
                video, action, privacy = to_device(micro, device)
                with autocast(cfg, device), torch.set_grad_enabled(learns):
                    out = net(video, generator=shard_generator(cfg.seed, PHASE_IDS[phase], progress.step, a))
                    loss_spars = _spars(out)
                    per_clip = (cfg.lambda_action * action_loss(action_rec(out.video, out.keep), action,
                                                                reduction="none")
                                + cfg.lambda_privacy * privacy_adversary_loss(privacy_rec(out.video, out.keep),
                                                                              privacy, cfg.privacy_adversary,
                                                                              reduction="none"))
                    filter_gate = _filter_prior(out)
                    loss = loss_spars + per_clip.mean() - cfg.lambda_filter * filter_gate
                    loss_keep = score_function_term(per_clip, out.keep_log_prob)  # its value means nothing
                if learns:
                    ((loss + loss_keep) / accum).backward()
                anonymized.append((out.video.detach(), out.keep.detach(), action, privacy))
                step_values.add(loss_spars=loss_spars, loss_anonymizer=loss, keep=out.keep.mean(),
                                filter_gate=filter_gate)

            # The recognizers' step, on the same anonymized clips with the anonymizer held fixed
            # (it has not stepped yet, which changes nothing: their inputs are detached).
            opt_recognizers.zero_grad(set_to_none=True)  # also clears what the anonymizer's step left
            for a, (video, keep, action, privacy) in enumerate(anonymized):
                with sync_gradients(a == accum - 1, [rec_action, rec_privacy]):
                    with autocast(cfg, device):
                        loss_rec_action = action_loss(rec_action(video, keep), action)
                        loss_rec_privacy = F.binary_cross_entropy_with_logits(rec_privacy(video, keep), privacy)
                    ((loss_rec_action + loss_rec_privacy) / accum).backward()
                step_values.add(loss_action=loss_rec_action, loss_privacy=loss_rec_privacy)

            values = step_values.reduce(progress)  # raises on NaN/inf before either update
            if learns:
                clip_and_step(opt_anonymizer, cfg)
            clip_and_step(opt_recognizers, cfg)
            for _ in range(cfg.privacy_steps - 1):  # the privacy recognizer's further updates, alone
                opt_recognizers.zero_grad(set_to_none=True)  # the action recognizer's grads stay None: no step
                for a, (video, keep, action, privacy) in enumerate(anonymized):
                    with sync_gradients(a == accum - 1, [rec_privacy]), autocast(cfg, device):
                        loss_rec_privacy = F.binary_cross_entropy_with_logits(rec_privacy(video, keep), privacy)
                    (loss_rec_privacy / accum).backward()
                clip_and_step(opt_recognizers, cfg)
            progress.end_step(values)
            bar.set_postfix(action=f"{values['loss_action']:.3f}", privacy=f"{values['loss_privacy']:.3f}")
            t0 = _log_and_checkpoint(phase, progress, values, cfg, logger, save, optimizers, len(batches), t0)
        progress.end_epoch(time.perf_counter() - t0)
        if save is not None:
            save(progress, optimizers)
    return progress.history
