"""``stprivacy evaluate --checkpoint ckpt.pt``: the evaluation protocol for a trained anonymizer.

Freezes the anonymizer of the checkpoint, transforms the dataset, trains fresh action and
privacy recognizers from scratch and tests them, at one or more deployment keep ratios; baselines
can be evaluated alongside. The model section comes from the checkpoint; ``--config`` supplies the
train section (dataset, epochs, recognizer sizes) when it should differ from the checkpoint's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..baselines import BASELINE_NAMES, DETECTOR_BASELINES
from ..errors import UsageError
from ..model import STPrivacy, STPrivacyConfig
from ..protocols import add_protocol_arguments, run_evaluate_command, uses_protocols
from ..train import TrainConfig, dataset_sizes, evaluate_baseline, evaluate_stprivacy, load_checkpoint
from ..train.checkpoint import CheckpointError
from ..train.distributed import init_from_env, is_main, shutdown
from .train import build_datasets, load_run_config, print_results


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="evaluate a trained anonymizer (fresh recognizers, then test)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="initialization.pt or adversarial.pt")
    p.add_argument("--config", type=Path, help="JSON run config whose 'train' section replaces the checkpoint's")
    p.add_argument("--keep-ratios", type=float, nargs="+", metavar="ALPHA",
                   help="deployment keep ratios (default: the config's eval_keep_ratios or the model's alpha)")
    p.add_argument("--baselines", nargs="*", default=[], choices=BASELINE_NAMES + DETECTOR_BASELINES,
                   metavar="NAME", help=f"also evaluate these baselines: {', '.join(BASELINE_NAMES + DETECTOR_BASELINES)}")
    p.add_argument("--out", type=Path, help="write the results to OUT/evaluation.json")
    add_protocol_arguments(p)  # --protocol video|frame, --eval-dataset (cross-dataset)
    return p


def run(args: argparse.Namespace) -> int:
    if args.keep_ratios and any(not 0 < r <= 1 for r in args.keep_ratios):
        raise UsageError(f"--keep-ratios must be in (0, 1], got {args.keep_ratios}")
    checkpoint = load_checkpoint(args.checkpoint)
    model_cfg = _stored_config(args.checkpoint, checkpoint, "model", STPrivacyConfig)
    cfg = load_run_config(args.config)[1] if args.config else _stored_config(args.checkpoint, checkpoint, "train",
                                                                             TrainConfig)
    init_from_env(cfg.device)  # under torchrun: the fresh recognizers train with DDP, metrics over all ranks
    try:
        return _evaluate(args, checkpoint, model_cfg, cfg)
    finally:
        shutdown()


def _stored_config(path: Path, checkpoint: dict, section: str, config_class):
    """A section of the run config the checkpoint carries; a missing or invalid one is a damaged checkpoint."""
    try:
        return config_class.from_dict(checkpoint["config"][section])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds no usable '{section}' config ({type(e).__name__}: {e})") from e


def _evaluate(args: argparse.Namespace, checkpoint: dict, model_cfg: STPrivacyConfig, cfg: TrainConfig) -> int:
    model = STPrivacy(model_cfg)
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{args.checkpoint}: its weights do not fit its model config ({e})") from e
    # A cross-dataset evaluation needs only the target benchmark's videos, not the training one's.
    train_set, test_set = (None, None) if args.eval_dataset else build_datasets(model_cfg, cfg)
    if uses_protocols(args, train_set):  # real videos, frame-level or cross-dataset: stprivacy.protocols
        if not is_main():  # the streaming protocols are not sharded: rank 0 runs them alone
            return 0
        title = f"STPrivacy ({checkpoint['phase']} checkpoint, epoch {checkpoint['epoch']}):"
        return run_evaluate_command(args, model, cfg, train_set, test_set, title)
    num_classes, num_attributes = dataset_sizes(train_set)
    results = evaluate_stprivacy(model, cfg, train_set, test_set, num_classes=num_classes,
                                 num_attributes=num_attributes, keep_ratios=args.keep_ratios)
    if is_main():
        print(f"STPrivacy ({checkpoint['phase']} checkpoint, epoch {checkpoint['epoch']}):")
        print_results(results)
    baselines = {}
    for name in args.baselines:
        baselines[name] = evaluate_baseline(name, model_cfg, cfg, train_set, test_set, num_classes=num_classes,
                                            num_attributes=num_attributes)
        r = baselines[name]
        if is_main():
            print(f"{name:>14}: top-1 {100 * r['top1']:.1f}  F1 {100 * r['f1']:.1f}  cMAP {100 * r['cmap']:.1f}")
    if args.out and is_main():
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "evaluation.json").write_text(json.dumps({"stprivacy": results, "baselines": baselines}, indent=2))
    return 0
