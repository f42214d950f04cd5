"""The three phases chained: train an anonymizer, then evaluate it (and baselines) by the protocol."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..methods.baselines import make_baseline
from ..model import STPrivacy, STPrivacyConfig
from ..model.pretrained import load_pretrained_vit
from ..attack.verdict import ATTACKERS
from .anonymizer import check_filter_prior, train_adversarial, train_initialization, train_reconstruction
from .checkpoint import load_latest, rng_state, save_checkpoint, save_rotating, set_rng_state
from .common import make_recognizer
from .config import TrainConfig
from .distributed import is_main, world_size
from .evaluation import baseline_transform, evaluate_anonymizer, split_for_validation, stprivacy_transform
from .loop import Progress
from .run_log import RunLogger, truncate_csv


def dataset_sizes(dataset: Dataset) -> tuple[int, int]:
    """(num_classes, num_attributes) that a dataset declares."""
    try:
        return int(dataset.num_classes), int(dataset.num_attributes)
    except AttributeError as e:
        raise ValueError("the dataset must expose num_classes and num_attributes") from e


# Config fields that may change between a run and its resumption without changing its results.
# (pretrained: a resumed run's weights come from its checkpoint.)
_RESUMABLE_CHANGES = {"device", "num_workers", "progress", "log", "log_every", "checkpoint_every", "compile",
                      "pretrained"}


def _check_resumable(checkpoint: dict[str, Any], model_cfg: STPrivacyConfig, cfg: TrainConfig) -> None:
    # Read back through from_dict: a checkpoint of an earlier version names some fields differently.
    saved_model = STPrivacyConfig.from_dict(checkpoint["config"]["model"]).to_dict()
    saved_train = TrainConfig.from_dict(checkpoint["config"]["train"]).to_dict()
    if saved_model != model_cfg.to_dict():
        diff = sorted(k for k in saved_model if saved_model[k] != model_cfg.to_dict().get(k))
        raise ValueError(f"cannot resume: the model config differs from the checkpoint's in {diff}")
    current = cfg.to_dict()
    diff = sorted(k for k in current if k not in _RESUMABLE_CHANGES and saved_train.get(k) != current[k])
    if diff:
        raise ValueError(f"cannot resume: the train config differs from the checkpoint's in {diff} "
                         f"(only {sorted(_RESUMABLE_CHANGES)} may change)")
    shards = world_size() * cfg.grad_accum_steps
    if checkpoint.get("shards", shards) != shards:
        warnings.warn(f"resuming with world size x grad_accum_steps = {shards} instead of the checkpoint's "
                      f"{checkpoint['shards']}: training continues, but not bit for bit as it would have",
                      stacklevel=3)


def train_anonymizer(model_cfg: STPrivacyConfig, cfg: TrainConfig, train_set: Dataset, *, num_classes: int,
                     num_attributes: int, out_dir: str | Path | None = None, resume: bool = False
                     ) -> tuple[STPrivacy, dict[str, Any]]:
    """Phases 1 and 2, from scratch or from the newest checkpoint of ``out_dir``.

    With ``out_dir``, rank 0 writes ``last.pt`` (previous one kept as ``last.prev.pt``) every
    ``cfg.checkpoint_every`` steps and at every epoch end, ``initialization.pt`` and
    ``adversarial.pt`` when a phase ends, and the ``cfg.log`` metrics.

    Args:
        resume: continue from ``out_dir``'s newest readable checkpoint (a fresh start when there
            is none): mid-phase and mid-epoch, with the same batches and Gumbel noise, so the
            result equals that of an uninterrupted run.

    Returns:
        The trained anonymizer (eval mode) and ``{"initialization": history, "adversarial": history}``
        (and ``"reconstruction"`` with ``cfg.reconstruction_epochs``).
    """
    check_filter_prior(model_cfg, cfg)  # before phase 1, not after it
    # The validation videos that choose the attackers (stprivacy.attack.verdict) stay unseen by
    # the anonymizer too, so they score its output as the test videos do.
    train_set, _ = split_for_validation(train_set, cfg)
    torch.manual_seed(cfg.seed)
    model = STPrivacy(model_cfg)
    action_rec = make_recognizer(model_cfg, cfg, num_classes, multilabel=False)
    privacy_rec = make_recognizer(model_cfg, cfg, num_attributes, multilabel=True)
    if cfg.pretrained:  # ImageNet ViT-S, inflated to video (a resumed run overwrites it below)
        # The recognizers are wrapped in NormalizedRecognizer; the weights go to the ViT inside.
        for module in (model, action_rec.classifier, privacy_rec.classifier):
            load_pretrained_vit(module, cfg.pretrained)
    out = Path(out_dir) if out_dir is not None else None
    checkpoint = None
    if resume:
        if out is None:
            raise ValueError("resume=True needs out_dir, the run directory to resume from")
        checkpoint = load_latest(out)
    histories: dict[str, Any] = {}
    if checkpoint is not None:
        _check_resumable(checkpoint, model_cfg, cfg)
        model.load_state_dict(checkpoint["model"])
        action_rec.load_state_dict(checkpoint["recognizers"]["action"])
        privacy_rec.load_state_dict(checkpoint["recognizers"]["privacy"])
        set_rng_state(checkpoint["rng"])
        histories.update(checkpoint["history"])
        progress = checkpoint["progress"]
        training_done = progress["phase"] == "adversarial" and progress["epoch"] == cfg.adv_epochs
        truncate_csv(out, progress["phase"], progress["step"], keep_later=training_done)
        if is_main():
            print(f"resuming {out} at the {progress['phase']} phase, epoch {progress['epoch'] + 1}, "
                  f"batch {progress['batch']} (step {progress['step']})")
    epochs = {"reconstruction": cfg.reconstruction_epochs, "initialization": cfg.init_epochs,
              "adversarial": cfg.adv_epochs}

    def save(progress: Progress, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        if out is None or not is_main():
            return
        state = {
            "phase": progress.phase, "epoch": progress.epoch, "step": progress.step,
            "progress": progress.to_dict(),
            "model": model.state_dict(),
            "recognizers": {"action": action_rec.state_dict(), "privacy": privacy_rec.state_dict()},
            "optimizer": {name: o.state_dict() for name, o in optimizers.items()},
            "scheduler": {"step": progress.step, "peak_lr": cfg.peak_lr},
            "config": {"model": model_cfg.to_dict(), "train": cfg.to_dict()},
            "history": {**histories, progress.phase: progress.to_dict()["history"]},
            "rng": rng_state(),
            "shards": world_size() * cfg.grad_accum_steps,
        }
        save_rotating(out, state)
        if progress.epoch == epochs[progress.phase] and progress.batch == 0:
            save_checkpoint(out / f"{progress.phase}.pt", state)

    logger = RunLogger(out, cfg.log, cfg.log_every)
    try:
        if cfg.reconstruction_epochs and (checkpoint is None or checkpoint["phase"] == "reconstruction"):
            histories["reconstruction"] = train_reconstruction(model, train_set, cfg, save=save, resume=checkpoint,
                                                               logger=logger)
        if checkpoint is None or checkpoint["phase"] in ("reconstruction", "initialization"):
            histories["initialization"] = train_initialization(model, action_rec, train_set, cfg, save=save,
                                                               resume=checkpoint, logger=logger)
        histories["adversarial"] = train_adversarial(model, action_rec, privacy_rec, train_set, cfg, save=save,
                                                     resume=checkpoint, logger=logger)
    finally:
        logger.close()
    return model.eval(), histories


def evaluate_stprivacy(model: STPrivacy, cfg: TrainConfig, train_set: Dataset, test_set: Dataset, *,
                       num_classes: int, num_attributes: int, keep_ratios: list[float] | None = None,
                       name: str = "stprivacy", attackers: tuple[str, ...] = ATTACKERS,
                       logger: RunLogger | None = None, state_dir: str | Path | None = None,
                       resume: bool = False) -> dict[str, dict[str, Any]]:
    """Phase 3 at each deployment keep ratio (default: ``cfg.eval_keep_ratios`` or the model's
    alpha), attacked by pixel-only and by mask-aware recognizers (``attackers``). Returns
    ``{str(ratio): result}``; ``attackers``, ``state_dir`` and ``resume``: see
    :func:`evaluate_anonymizer`."""
    ratios = keep_ratios or cfg.eval_keep_ratios or [model.cfg.alpha]
    results = {}
    for ratio in ratios:
        torch.manual_seed(cfg.seed + 1)  # the fresh recognizers start alike for every ratio
        results[f"{ratio:g}"] = evaluate_anonymizer(
            stprivacy_transform(model, ratio), train_set, test_set, model.cfg, cfg,
            num_classes=num_classes, num_attributes=num_attributes, name=f"{name} alpha={ratio:g}",
            attackers=attackers, logger=logger, state_dir=state_dir, resume=resume)
    return results


def evaluate_baseline(name: str, model_cfg: STPrivacyConfig, cfg: TrainConfig, train_set: Dataset,
                      test_set: Dataset, *, num_classes: int, num_attributes: int,
                      logger: RunLogger | None = None) -> dict[str, Any]:
    """Phase 3 for one of ``stprivacy.methods.baselines.BASELINE_NAMES`` (a pixel-only attacker: a baseline
    drops nothing, so it has no mask)."""
    torch.manual_seed(cfg.seed + 1)
    transform = baseline_transform(make_baseline(name, model_cfg.image_size))
    return evaluate_anonymizer(transform, train_set, test_set, model_cfg, cfg, num_classes=num_classes,
                               num_attributes=num_attributes, name=name, logger=logger)
