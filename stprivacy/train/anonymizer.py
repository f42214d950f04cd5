"""Phases 1 and 2 of paper §3.4: train the anonymizer (PSBs + PAB).

Phase 1, initialization: ``L_spars + L'_action``. An action recognizer ``f'_T`` is trained
jointly on the anonymized videos, so the anonymizer learns to keep what the action needs.

Phase 2, adversarial: the anonymizer minimizes ``L_spars + lambda_A L_action - lambda_P
L_privacy`` against an action and a privacy recognizer, which in turn minimize their own losses
on the (detached) anonymized videos; one update of each side per batch.

Both loops are written flat, top to bottom, like nanoGPT's: set the learning rate, forward,
losses, backward, step; a checkpoint at the end of every epoch.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from stpriv_ops import sparsity_loss
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..model import STPrivacy
from .checkpoint import rng_state, save_checkpoint
from .common import clip_and_step, make_loader, make_optimizer, privacy_adversary_loss, set_lr, to_device
from .config import TrainConfig, get_lr


def _spars(out) -> torch.Tensor:
    # "anonymization only" (alpha = 1 or no PSB) has no masks: nothing to regularize.
    if not out.keep_masks:
        return out.video.new_zeros(())
    return sparsity_loss(out.keep_masks, out.target_ratios)


def _schedule(cfg: TrainConfig, epochs: int, steps_per_epoch: int) -> tuple[int, int, float]:
    total = epochs * steps_per_epoch
    return total, round(cfg.warmup_epochs * steps_per_epoch), cfg.peak_lr * cfg.min_lr_ratio


def _checkpoint(path, phase, epoch, step, total, cfg, model, recognizers, optimizers, history) -> None:
    save_checkpoint(path, {
        "phase": phase, "epoch": epoch, "step": step,
        "model": model.state_dict(),
        "recognizers": {name: r.state_dict() for name, r in recognizers.items()},
        "optimizer": {name: o.state_dict() for name, o in optimizers.items()},
        "scheduler": {"step": step, "total_steps": total, "peak_lr": cfg.peak_lr},
        "config": {"model": model.cfg.to_dict(), "train": cfg.to_dict()},
        "history": dict(history),
        "rng": rng_state(),
    })


def train_initialization(model: STPrivacy, action_rec: nn.Module, train_set: Dataset, cfg: TrainConfig, *,
                         checkpoint_path: str | Path | None = None) -> dict[str, list[float]]:
    """Phase 1: ``L_spars + L'_action`` for ``cfg.init_epochs`` epochs.

    Args:
        model: the anonymizer, trained in place.
        action_rec: the jointly trained action recognizer ``f'_T``, trained in place.
        train_set: yields ``(video, action, privacy)``.
        cfg: the training configuration.
        checkpoint_path: where to write the phase's checkpoint after every epoch (None: nowhere).

    Returns:
        Per-epoch means: ``{"loss_spars": [...], "loss_action": [...], "keep": [...]}``.
    """
    device = torch.device(cfg.device)
    model.to(device).train()
    action_rec.to(device).train()
    loader = make_loader(train_set, cfg, shuffle=True, seed_offset=1)
    optimizer = make_optimizer([model, action_rec], cfg)
    total, warmup, min_lr = _schedule(cfg, cfg.init_epochs, len(loader))
    history, step = defaultdict(list), 0
    for epoch in range(cfg.init_epochs):
        sums, t0 = defaultdict(float), time.perf_counter()
        bar = tqdm(loader, desc=f"init {epoch + 1}/{cfg.init_epochs}", leave=False, disable=not cfg.progress)
        for batch in bar:
            video, action, _ = to_device(batch, device)
            set_lr(optimizer, get_lr(step, total, cfg.peak_lr, warmup, min_lr))
            out = model(video)
            loss_spars = _spars(out)
            loss_action = F.cross_entropy(action_rec(out.video, out.keep), action)
            loss = loss_spars + loss_action
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_and_step(optimizer, cfg)
            step += 1
            sums["loss_spars"] += loss_spars.item()
            sums["loss_action"] += loss_action.item()
            sums["keep"] += out.keep.mean().item()
            bar.set_postfix(action=f"{loss_action.item():.3f}", spars=f"{loss_spars.item():.4f}")
        for key, value in sums.items():
            history[key].append(value / len(loader))
        history["seconds"].append(time.perf_counter() - t0)
        if checkpoint_path is not None:
            _checkpoint(checkpoint_path, "initialization", epoch + 1, step, total, cfg, model,
                        {"action": action_rec}, {"anonymizer": optimizer}, history)
    return dict(history)


def train_adversarial(model: STPrivacy, action_rec: nn.Module, privacy_rec: nn.Module, train_set: Dataset,
                      cfg: TrainConfig, *, checkpoint_path: str | Path | None = None) -> dict[str, list[float]]:
    """Phase 2: alternate anonymizer and recognizer updates for ``cfg.adv_epochs`` epochs.

    Args:
        model: the anonymizer (after phase 1), trained in place.
        action_rec: the action recognizer ``f_T`` (phase 1's, continued), trained in place.
        privacy_rec: the privacy recognizer ``f_B`` (multi-label), trained in place.
        train_set: yields ``(video, action, privacy)``.
        cfg: the training configuration.
        checkpoint_path: where to write the phase's checkpoint after every epoch (None: nowhere).

    Returns:
        Per-epoch means of the anonymizer's and the recognizers' losses and the keep ratio.
    """
    device = torch.device(cfg.device)
    for module in (model, action_rec, privacy_rec):
        module.to(device).train()
    loader = make_loader(train_set, cfg, shuffle=True, seed_offset=2)
    opt_anonymizer = make_optimizer([model], cfg)
    opt_recognizers = make_optimizer([action_rec, privacy_rec], cfg)
    total, warmup, min_lr = _schedule(cfg, cfg.adv_epochs, len(loader))
    history, step = defaultdict(list), 0
    for epoch in range(cfg.adv_epochs):
        sums, t0 = defaultdict(float), time.perf_counter()
        bar = tqdm(loader, desc=f"adversarial {epoch + 1}/{cfg.adv_epochs}", leave=False, disable=not cfg.progress)
        for batch in bar:
            video, action, privacy = to_device(batch, device)
            lr = get_lr(step, total, cfg.peak_lr, warmup, min_lr)
            set_lr(opt_anonymizer, lr)
            set_lr(opt_recognizers, lr)

            # The anonymizer's step: keep the action, defeat the privacy recognizer.
            out = model(video)
            loss_spars = _spars(out)
            loss_action = F.cross_entropy(action_rec(out.video, out.keep), action)
            privacy_logits = privacy_rec(out.video, out.keep)
            loss_adversary = privacy_adversary_loss(privacy_logits, privacy, cfg.privacy_adversary)
            loss = loss_spars + cfg.lambda_action * loss_action + cfg.lambda_privacy * loss_adversary
            opt_anonymizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_and_step(opt_anonymizer, cfg)

            # The recognizers' step, on the same anonymized clips with the anonymizer held fixed.
            anonymized, keep = out.video.detach(), out.keep.detach()
            rec_action = F.cross_entropy(action_rec(anonymized, keep), action)
            rec_privacy = F.binary_cross_entropy_with_logits(privacy_rec(anonymized, keep), privacy)
            opt_recognizers.zero_grad(set_to_none=True)  # also clears what the anonymizer's step left
            (rec_action + rec_privacy).backward()
            clip_and_step(opt_recognizers, cfg)
            step += 1

            sums["loss_spars"] += loss_spars.item()
            sums["loss_action"] += rec_action.item()
            sums["loss_privacy"] += rec_privacy.item()
            sums["loss_anonymizer"] += loss.item()
            sums["keep"] += out.keep.mean().item()
            bar.set_postfix(action=f"{rec_action.item():.3f}", privacy=f"{rec_privacy.item():.3f}")
        for key, value in sums.items():
            history[key].append(value / len(loader))
        history["seconds"].append(time.perf_counter() - t0)
        if checkpoint_path is not None:
            _checkpoint(checkpoint_path, "adversarial", epoch + 1, step, total, cfg, model,
                        {"action": action_rec, "privacy": privacy_rec},
                        {"anonymizer": opt_anonymizer, "recognizers": opt_recognizers}, history)
    return dict(history)
