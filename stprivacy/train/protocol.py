"""The three phases chained: train an anonymizer, then evaluate it (and baselines) by the protocol."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..baselines import make_baseline
from ..model import STPrivacy, STPrivacyConfig
from .anonymizer import train_adversarial, train_initialization
from .common import make_recognizer
from .config import TrainConfig
from .evaluation import baseline_transform, evaluate_anonymizer, stprivacy_transform


def dataset_sizes(dataset: Dataset) -> tuple[int, int]:
    """(num_classes, num_attributes) that a dataset declares."""
    try:
        return int(dataset.num_classes), int(dataset.num_attributes)
    except AttributeError as e:
        raise ValueError("the dataset must expose num_classes and num_attributes") from e


def train_anonymizer(model_cfg: STPrivacyConfig, cfg: TrainConfig, train_set: Dataset, *, num_classes: int,
                     num_attributes: int, out_dir: str | Path | None = None) -> tuple[STPrivacy, dict[str, Any]]:
    """Phases 1 and 2 from scratch; checkpoints ``initialization.pt`` and ``adversarial.pt`` in
    ``out_dir`` when given. Returns the trained anonymizer and the per-epoch histories."""
    torch.manual_seed(cfg.seed)
    model = STPrivacy(model_cfg)
    action_rec = make_recognizer(model_cfg, cfg, num_classes, multilabel=False)
    privacy_rec = make_recognizer(model_cfg, cfg, num_attributes, multilabel=True)
    out = Path(out_dir) if out_dir is not None else None
    history = {
        "initialization": train_initialization(
            model, action_rec, train_set, cfg, checkpoint_path=out / "initialization.pt" if out else None),
        "adversarial": train_adversarial(
            model, action_rec, privacy_rec, train_set, cfg, checkpoint_path=out / "adversarial.pt" if out else None),
    }
    return model.eval(), history


def evaluate_stprivacy(model: STPrivacy, cfg: TrainConfig, train_set: Dataset, test_set: Dataset, *,
                       num_classes: int, num_attributes: int, keep_ratios: list[float] | None = None,
                       name: str = "stprivacy") -> dict[str, dict[str, Any]]:
    """Phase 3 at each deployment keep ratio (default: ``cfg.eval_keep_ratios`` or the model's
    alpha). Returns ``{str(ratio): {"top1", "f1", "cmap", "kept", "seconds"}}``."""
    ratios = keep_ratios or cfg.eval_keep_ratios or [model.cfg.alpha]
    results = {}
    for ratio in ratios:
        torch.manual_seed(cfg.seed + 1)  # the fresh recognizers start alike for every ratio
        results[f"{ratio:g}"] = evaluate_anonymizer(
            stprivacy_transform(model, ratio), train_set, test_set, model.cfg, cfg,
            num_classes=num_classes, num_attributes=num_attributes, name=f"{name} alpha={ratio:g}")
    return results


def evaluate_baseline(name: str, model_cfg: STPrivacyConfig, cfg: TrainConfig, train_set: Dataset,
                      test_set: Dataset, *, num_classes: int, num_attributes: int) -> dict[str, Any]:
    """Phase 3 for one of ``stprivacy.baselines.BASELINE_NAMES``."""
    torch.manual_seed(cfg.seed + 1)
    transform = baseline_transform(make_baseline(name, model_cfg.image_size))
    return evaluate_anonymizer(transform, train_set, test_set, model_cfg, cfg, num_classes=num_classes,
                               num_attributes=num_attributes, name=name)
