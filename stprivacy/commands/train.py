"""``stprivacy train --config run.json``: the three phases on a dataset, checkpoints and a report.

The config file is JSON with two sections, and one per learned comparison method it configures::

    {"model": {"preset": "small", "embed_dim": 64},      # STPrivacyConfig fields; preset: small | vit_s
     "train": {"dataset": "synthetic", "batch_size": 32, "init_epochs": 10, ...},   # TrainConfig fields
     "vita": {"adv_epochs": 8, ...}}                      # VITAConfig fields, read with --method vita

``--method NAME`` trains a learned comparison method (vita, spact, collective: stprivacy.methods)
instead of STPrivacy, by its own paper's recipe, on the same data: the "model" section then gives
the clip geometry, "train" the data, batch size, seed and the recognizers' sizes, and the method's
section its own settings. It writes OUT/NAME.pt and, unless --skip-evaluation, attacks the method
by the protocol of ``stprivacy evaluate``.

Options given on the command line (--seed, --precision, ...) replace the config's values.
Several processes: ``torchrun --nproc_per_node=N -m stprivacy.cli train ...`` (DDP; NCCL on GPUs,
gloo on the CPU; batch_size stays the global batch). A killed run continues exactly with the
same command plus ``--resume``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..attack import evaluate_methods
from ..attack.metrics import task_score
from ..attack.protocols import add_protocol_arguments, evaluate_with_protocol, format_results, uses_protocols
from ..attack.report import to_markdown
from ..errors import ConfigError, InputNotFoundError, UsageError
from ..methods.learned import get_method, learned_row, method_config, method_names, train_method
from ..model import STPrivacyConfig
from ..model.config import upgrade_model_dict
from ..train import TrainConfig, build_dataset, dataset_sizes, evaluate_stprivacy, train_anonymizer
from ..train.anonymizer import check_filter_prior
from ..train.distributed import barrier, init_from_env, is_main, shutdown
from ..train.run_log import RunLogger

PRESETS = {"small": STPrivacyConfig.small, "vit_s": STPrivacyConfig.vit_s}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train STPrivacy (initialization, adversarial, evaluation)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, type=Path, help="JSON file with 'model' and 'train' sections")
    p.add_argument("--method", default="stprivacy", metavar="NAME",
                   help="stprivacy (default), or a learned comparison method: " + ", ".join(method_names())
                        + " (trained by its own paper's recipe; settings in the config's section of that name)")
    p.add_argument("--out", type=Path, default=Path("runs/stprivacy"), help="checkpoints and report.json go here")
    add_protocol_arguments(p)  # --protocol video|frame, --eval-dataset (cross-dataset)
    p.add_argument("--skip-evaluation", action="store_true", help="stop after the adversarial phase")
    add_run_arguments(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (or OUT/last.prev.pt if last.pt is unreadable)")
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


# command-line flag -> TrainConfig field, for the options a real run tunes most often.
RUN_OPTIONS = {"seed": "seed", "device": "device", "precision": "precision", "grad_accum": "grad_accum_steps",
               "grad_clip": "grad_clip", "compile": "compile", "log": "log", "log_every": "log_every",
               "checkpoint_every": "checkpoint_every", "num_workers": "num_workers"}


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Overrides of the config's train section (see ``TrainConfig``)."""
    g = p.add_argument_group("run options (override the config's 'train' section)")
    g.add_argument("--seed", type=_non_negative_int, help="seeds weights, batches and Gumbel noise")
    g.add_argument("--device", help="cpu, cuda or cuda:<i> (under torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--precision", choices=["fp32", "bf16"], help="bf16 = bfloat16 autocast")
    g.add_argument("--grad-accum", type=_positive_int, metavar="STEPS", help="gradient-accumulation steps")
    g.add_argument("--grad-clip", type=_non_negative_float, metavar="NORM", help="max gradient norm (0 = off)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the trained modules")
    g.add_argument("--log", choices=["none", "csv", "tensorboard"], help="OUT/metrics.csv or OUT/tensorboard")
    g.add_argument("--log-every", type=_positive_int, metavar="STEPS", help="steps between logged rows")
    g.add_argument("--checkpoint-every", type=_non_negative_int, metavar="STEPS",
                   help="steps between OUT/last.pt checkpoints inside an epoch (0 = at epoch ends only)")
    g.add_argument("--num-workers", type=_non_negative_int, help="DataLoader worker processes")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars on a terminal, and no per-phase progress lines in a log")


def apply_run_arguments(cfg: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """``cfg`` with the given command-line overrides (validated again by TrainConfig)."""
    overrides = {field: getattr(args, flag) for flag, field in RUN_OPTIONS.items()
                 if getattr(args, flag, None) is not None}
    if getattr(args, "no_progress", False):
        overrides["progress"] = False
    if not overrides:
        return cfg
    try:
        return dataclasses.replace(cfg, **overrides)
    except (ValueError, TypeError) as e:  # TrainConfig's own validation of the new values
        raise UsageError(f"command-line options: {e}") from e


def model_config_from_dict(section: dict[str, Any]) -> STPrivacyConfig:
    """``{"preset": name, **overrides}`` (or plain fields) -> STPrivacyConfig."""
    if not isinstance(section, dict):
        raise ConfigError(f"the 'model' section must be an object, got {type(section).__name__}")
    section = upgrade_model_dict(dict(section))  # configs written before a field was renamed or removed
    preset = section.pop("preset", None)
    if preset is None:
        return STPrivacyConfig.from_dict(section)
    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; expected one of {sorted(PRESETS)}")
    base = PRESETS[preset]().to_dict()
    unknown = sorted(set(section) - set(base))
    if unknown:
        raise ConfigError(f"unknown STPrivacyConfig keys: {unknown}")
    return STPrivacyConfig.from_dict({**base, **section})


def read_config_file(path: Path) -> dict[str, Any]:
    """A run config file's JSON object, its sections checked by name (not yet their values)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object with 'model' and 'train' sections")
    unknown = sorted(set(data) - {"model", "train", *method_names()})
    if unknown:
        raise ConfigError(f"unknown sections in {path}: {unknown}; expected 'model' and 'train', and one per "
                          f"learned method it configures ({', '.join(method_names())})")
    return data


def load_run_config(path: Path) -> tuple[STPrivacyConfig, TrainConfig]:
    """Read a run config file (see the module docstring).

    Raises:
        InputNotFoundError: no such file.
        ConfigError: not JSON, unknown sections or keys, or values the configs reject.
    """
    return parse_run_config(read_config_file(path), str(path))


def parse_run_config(data: dict[str, Any], source: str) -> tuple[STPrivacyConfig, TrainConfig]:
    """The configs of a run config's object; ``source`` names it in errors (a file, a ``--set``).

    Raises:
        ConfigError: unknown keys, or values the configs reject.
    """
    try:
        # The config classes validate their fields with ValueError / TypeError: here every such
        # error is about a value in this object.
        model_cfg = model_config_from_dict(data.get("model", {"preset": "small"}))
        cfg = TrainConfig.from_dict(data.get("train", {}))
        check_filter_prior(model_cfg, cfg)
        return model_cfg, cfg
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: {e}") from e


def load_method_config(path: Path, name: str) -> Any:
    """The config of the learned method ``name`` from its section of the run config (its defaults
    where the file has none)."""
    method = get_method(name)
    try:
        return method_config(method, read_config_file(path).get(name))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: section '{name}': {e}") from e


def build_datasets(model_cfg: STPrivacyConfig, cfg: TrainConfig):
    geometry = {"frames": model_cfg.frames, "image_size": model_cfg.image_size, "tubelet": model_cfg.tubelet}
    train_set = build_dataset(cfg.dataset, "train", geometry, **cfg.dataset_kwargs)
    test_set = build_dataset(cfg.dataset, "test", geometry, **cfg.dataset_kwargs)
    return train_set, test_set


def print_results(results: dict[str, dict[str, Any]]) -> None:
    """One line per keep ratio: the action score (top-1; multi-label actions: action cMAP and F1),
    then privacy F1 and cMAP and the tubelets kept, in percent."""
    if task_score(next(iter(results.values())))[0] == "action_cmap":
        print(f"{'alpha':>6} {'action cMAP %':>13} {'action F1 %':>11} {'F1 %':>6} {'cMAP %':>7} {'kept %':>7}")
        for alpha, r in results.items():
            print(f"{alpha:>6} {100 * r['action_cmap']:13.1f} {100 * r['action_f1']:11.1f} {100 * r['f1']:6.1f} "
                  f"{100 * r['cmap']:7.1f} {100 * r['kept']:7.1f}")
        return
    print(f"{'alpha':>6} {'top-1 %':>8} {'F1 %':>6} {'cMAP %':>7} {'kept %':>7}")
    for alpha, r in results.items():
        print(f"{alpha:>6} {100 * r['top1']:8.1f} {100 * r['f1']:6.1f} {100 * r['cmap']:7.1f} {100 * r['kept']:7.1f}")


def run(args: argparse.Namespace) -> int:
    model_cfg, cfg = load_run_config(args.config)
    cfg = apply_run_arguments(cfg, args)
    if args.method != "stprivacy":
        method_cfg = load_method_config(args.config, args.method)
        if args.resume:
            raise UsageError(f"--resume continues an STPrivacy run; a {args.method} run trains again from its seed")
        return _train_method(args, model_cfg, cfg, method_cfg)
    init_from_env(cfg.device)
    try:
        return _train(args, model_cfg, cfg)
    finally:
        shutdown()


def _train_method(args: argparse.Namespace, model_cfg: STPrivacyConfig, cfg: TrainConfig, method_cfg: Any) -> int:
    """A learned comparison method: trained on one process, then attacked as ``stprivacy evaluate`` does."""
    train_set, test_set = build_datasets(model_cfg, cfg)
    num_classes, num_attributes = dataset_sizes(train_set)
    args.out.mkdir(parents=True, exist_ok=True)
    anonymizer, history = train_method(args.method, method_cfg, model_cfg, cfg, train_set, num_classes=num_classes,
                                       num_attributes=num_attributes, out_dir=args.out)
    report: dict[str, Any] = {"method": args.method, "config": {"model": model_cfg.to_dict(), "train": cfg.to_dict(),
                              args.method: method_cfg.to_dict()}, "history": history}
    if not args.skip_evaluation:
        row = learned_row(get_method(args.method), anonymizer, cfg, train_set, test_set)
        evaluation = evaluate_methods([row], model_cfg, cfg, trained_on=cfg.dataset, evaluated_on=cfg.dataset)
        report["evaluation"] = evaluation
        print(to_markdown(evaluation))
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"{args.out / (args.method + '.pt')} and report.json written to {args.out}")
    return 0


def _train(args: argparse.Namespace, model_cfg: STPrivacyConfig, cfg: TrainConfig) -> int:
    train_set, test_set = build_datasets(model_cfg, cfg)
    num_classes, num_attributes = dataset_sizes(train_set)
    if is_main():
        args.out.mkdir(parents=True, exist_ok=True)
    model, history = train_anonymizer(model_cfg, cfg, train_set, num_classes=num_classes,
                                      num_attributes=num_attributes, out_dir=args.out, resume=args.resume)
    report: dict[str, Any] = {"config": {"model": model_cfg.to_dict(), "train": cfg.to_dict()}, "history": history}
    # Real videos, frame-level or cross-dataset: stprivacy.attack.protocols, which are not sharded (rank 0 runs them alone).
    streaming = not args.skip_evaluation and uses_protocols(args, train_set)
    if not args.skip_evaluation:
        if streaming:
            if not is_main():
                return 0
            report["evaluation"] = evaluate_with_protocol(model, cfg, args, train_set, test_set)
            print(format_results(report["evaluation"]))
        else:
            logger = RunLogger(args.out, cfg.log, cfg.log_every)
            try:
                report["evaluation"] = evaluate_stprivacy(model, cfg, train_set, test_set, num_classes=num_classes,
                                                          num_attributes=num_attributes, logger=logger,
                                                          state_dir=args.out / "evaluation", resume=args.resume)
            finally:
                logger.close()
            if is_main():
                print_results(report["evaluation"])
    if not streaming:
        barrier()  # every rank is here: leave together (gloo aborts a rank whose peer tore the group down)
    if is_main():
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
        print(f"checkpoints and report.json written to {args.out}")
    return 0
