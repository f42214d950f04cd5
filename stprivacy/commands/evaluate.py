"""``stprivacy evaluate``: the paper's attack protocol for a trained STPrivacy, for any other method's
output, and for the built-in baselines, in one run and one table.

Each method's training videos train fresh action and privacy recognizers (the attackers), which
are then tested on its test videos: top-1, class-wise F1, cMAP and per-attribute AP.

* ``--checkpoint ckpt.pt ...``: STPrivacy at one or more deployment keep ratios, and the learned
  comparison methods (``stprivacy train --method vita|spact|collective`` writes their checkpoints),
  one row each; all must share one clip geometry.
* ``--transformed-root [NAME=]DIR``: a folder of a method's anonymized videos mirroring the
  dataset's ``video_root`` (same relative paths, any container), evaluated with the dataset's own
  labels, splits and clip sampling. Videos missing from DIR or unreadable are named in the report
  and left out of that method's splits (``--on-missing error`` refuses instead).
* ``--baselines raw blur_strong ...``: built-in baselines next to them.

Without a checkpoint, ``--config`` (a run config, as for ``stprivacy train``) gives the dataset,
the clip geometry and the recognizers' training; with one, its ``train`` section replaces the
checkpoint's. ``--protocol video frame`` adds the frame-level attacker, ``--imagenet-vit FILE``
attackers initialized from a local ImageNet ViT-S file, ``--eval-dataset`` the cross-dataset
(novel actions) protocol. ``--out`` receives evaluation.json, evaluation.md (the paper's Table 1
layout) and tradeoff.png.
"""
from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from torch import nn

from ..attack.evaluate import (
    attacker_names,
    baseline_method,
    build_splits,
    evaluate_methods,
    folder_method,
    stprivacy_method,
)
from ..attack.metrics import task_score
from ..attack.protocols import add_protocol_arguments
from ..attack.report import to_markdown, write_evaluation
from ..data.transformed import ON_MISSING
from ..errors import InputNotFoundError, UsageError
from ..methods.baselines import ALL_BASELINES
from ..methods.learned import LearnedMethod, anonymizer_from_checkpoint, is_method_checkpoint, learned_row
from ..model import STPrivacy, STPrivacyConfig
from ..train import TrainConfig, load_checkpoint
from ..train.checkpoint import CheckpointError
from ..train.distributed import barrier, init_from_env, is_main, shutdown
from .train import add_run_arguments, apply_run_arguments, load_run_config


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="evaluate anonymizers by the attack protocol (fresh recognizers, "
                              "then test)", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, nargs="+", metavar="CKPT",
                   help="initialization.pt or adversarial.pt of `stprivacy train` (at most one), and NAME.pt of "
                        "`stprivacy train --method NAME` (learned comparison methods), one row each")
    p.add_argument("--transformed-root", nargs="+", default=[], metavar="[NAME=]DIR",
                   help="a method's anonymized videos mirroring the dataset's video_root; NAME names its row "
                        "(default: the folder's name)")
    p.add_argument("--on-missing", choices=ON_MISSING, default="exclude",
                   help="videos missing from a transformed root or unreadable there: exclude them from that "
                        "method's splits and name them in the report (default), or stop with an error")
    p.add_argument("--config", type=Path,
                   help="JSON run config: its 'train' section (dataset, epochs, recognizer sizes) replaces the "
                        "checkpoint's; without --checkpoint its 'model' section gives the clip geometry")
    p.add_argument("--keep-ratios", type=float, nargs="+", metavar="ALPHA",
                   help="deployment keep ratios (default: the config's eval_keep_ratios or the model's alpha)")
    p.add_argument("--baselines", nargs="*", default=[], choices=ALL_BASELINES,
                   metavar="NAME", help=f"also evaluate these baselines: {', '.join(ALL_BASELINES)}")
    p.add_argument("--imagenet-vit", metavar="FILE|timm:NAME",
                   help="also attack with recognizers initialized from an ImageNet ViT: a local file (timm / DeiT "
                        "layout, e.g. ViT-S/16) or timm:NAME (e.g. timm:deit_small_patch16_224, needs the timm "
                        "extra and its hub once): a stronger attacker, one per --protocol")
    p.add_argument("--out", type=Path, help="write evaluation.json, evaluation.md and tradeoff.png here")
    add_protocol_arguments(p, several=True)  # --protocol video frame, --eval-dataset (cross-dataset)
    add_run_arguments(p)
    return p


def _roots(items: list[str], taken: list[str]) -> list[tuple[str, Path]]:
    """``[NAME=]DIR`` items as (name, folder), each folder checked to exist."""
    roots = []
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or os.sep in name:  # no name given (or the "=" is part of a path)
            name, folder = Path(item).name, item
        if not Path(folder).is_dir():
            raise InputNotFoundError(f"--transformed-root: {folder} is not a directory (expected a folder of a "
                                     f"method's anonymized videos mirroring the dataset's video_root)")
        if name in taken or name in [n for n, _ in roots]:
            raise UsageError(f"--transformed-root: the row name {name!r} is used twice; name the rows with NAME=DIR")
        roots.append((name, Path(folder)))
    return roots


def _stored_config(path: Path, checkpoint: dict, section: str, config_class):
    """A section of the run config the checkpoint carries; a missing or invalid one is a damaged checkpoint."""
    try:
        return config_class.from_dict(checkpoint["config"][section])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds no usable '{section}' config ({type(e).__name__}: {e})") from e


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is None and not args.transformed_root:
        raise UsageError("evaluate needs --checkpoint (a trained STPrivacy) or --transformed-root DIR (a method's "
                         "anonymized videos), or both")
    if args.keep_ratios and args.checkpoint is None:
        raise UsageError("--keep-ratios sets STPrivacy's deployment keep ratios: it needs --checkpoint")
    if args.keep_ratios and any(not 0 < r <= 1 for r in args.keep_ratios):
        raise UsageError(f"--keep-ratios must be in (0, 1], got {args.keep_ratios}")
    roots = _roots(args.transformed_root, list(args.baselines))
    model, learned = None, []
    if args.checkpoint is not None:
        loaded = [(path, load_checkpoint(path)) for path in args.checkpoint]
        stprivacy = [(path, c) for path, c in loaded if not is_method_checkpoint(c)]
        if len(stprivacy) > 1:
            raise UsageError(f"--checkpoint: give at most one STPrivacy checkpoint, got {[str(p) for p, _ in stprivacy]}")
        if args.keep_ratios and not stprivacy:
            raise UsageError("--keep-ratios sets STPrivacy's deployment keep ratios: it needs an STPrivacy --checkpoint")
        # The evaluation's clip geometry and recognizers' training: STPrivacy's run, else the first method's.
        path, checkpoint = stprivacy[0] if stprivacy else loaded[0]
        model_cfg = _stored_config(path, checkpoint, "model", STPrivacyConfig)
        cfg = load_run_config(args.config)[1] if args.config else _stored_config(path, checkpoint, "train",
                                                                                 TrainConfig)
        if stprivacy:
            model = STPrivacy(model_cfg)
            try:
                model.load_state_dict(checkpoint["model"])
            except (KeyError, RuntimeError) as e:
                raise CheckpointError(f"{path}: its weights do not fit its model config ({e})") from e
        for path, checkpoint in loaded:
            if is_method_checkpoint(checkpoint):
                _check_geometry(path, _stored_config(path, checkpoint, "model", STPrivacyConfig), model_cfg)
                learned.append(anonymizer_from_checkpoint(path, checkpoint))
        titles = [method.title for method, _ in learned]
        if len(set(titles)) < len(titles):
            raise UsageError(f"--checkpoint: one checkpoint per learned method, got {titles}")
    elif args.config is None:
        raise UsageError("--config is required without --checkpoint: its run config gives the dataset, the clip "
                         "geometry and the recognizers' training")
    else:
        model_cfg, cfg = load_run_config(args.config)
    cfg = apply_run_arguments(cfg, args)
    init_from_env(cfg.device)  # under torchrun the in-memory protocol trains the attackers with DDP
    try:
        return _evaluate(args, model, learned, model_cfg, cfg, roots)
    finally:
        shutdown()


def _check_geometry(path: Path, trained: STPrivacyConfig, evaluated: STPrivacyConfig) -> None:
    """A learned method's clips must be the evaluation's: the attack protocol feeds it those."""
    got, want = (trained.frames, trained.image_size), (evaluated.frames, evaluated.image_size)
    if got != want:
        raise CheckpointError(f"{path} was trained on clips of {got[0]} frames of {got[1]}x{got[1]}, but this "
                              f"evaluation's are {want[0]} frames of {want[1]}x{want[1]}")


def _evaluate(args: argparse.Namespace, model: STPrivacy | None, learned: list[tuple[LearnedMethod, nn.Module]],
              model_cfg: STPrivacyConfig, cfg: TrainConfig, roots: list[tuple[str, Path]]) -> int:
    # Cross-dataset: the methods were trained on cfg.dataset and are evaluated on --eval-dataset.
    name = args.eval_dataset or cfg.dataset
    kwargs = (args.eval_dataset_kwargs or {}) if args.eval_dataset else cfg.dataset_kwargs
    train_set, test_set, name = build_splits(name, model_cfg, cfg, kwargs)
    streaming = hasattr(train_set, "collate_fn") or "frame" in args.protocol
    if streaming and not is_main():
        return 0  # the streaming protocols are not sharded: rank 0 runs them alone
    methods = [baseline_method(b, model_cfg, train_set, test_set) for b in args.baselines]
    if model is not None:
        ratios = args.keep_ratios or cfg.eval_keep_ratios or [model.cfg.alpha]
        methods += [stprivacy_method(model, ratio, train_set, test_set) for ratio in ratios]
    methods += [learned_row(method, anonymizer, cfg, train_set, test_set) for method, anonymizer in learned]
    if roots and "video_root" not in kwargs:
        raise UsageError(f"--transformed-root needs a dataset of video files (hmdb51, ucf101, pa_hmdb51, folder_csv) "
                         f"with a video_root; {name!r} has none (a generated benchmark: evaluate a transform of it "
                         f"from Python with stprivacy.evaluate_transform)")
    for row, root in roots:
        methods.append(folder_method(row, root, train_set, test_set, kwargs["video_root"], on_missing=args.on_missing,
                                     progress=cfg.progress and is_main()))
        left_out = methods[-1].info["left_out"]
        if left_out["count"] and is_main():
            named = [f"{split}: {p} (missing)" for split in ("train", "test") for p in left_out[split]["missing"]]
            named += [f"{split}: {p} (unreadable)" for split in ("train", "test")
                      for p in left_out[split]["unreadable"]]
            print(f"{row}: {left_out['count']} videos of {root} left out of its splits: {'; '.join(named)}")

    def show(row_name: str, row: dict) -> None:
        if is_main():
            task, score = task_score(row)
            shown = "-" if score is None else f"{100 * score:.1f}"
            print(f"  {row_name}: {'action cMAP' if task == 'action_cmap' else 'top-1'} {shown}, "
                  f"cMAP {100 * row['cmap']:.1f} ({row['privacy_from']} attacker)")

    attackers = attacker_names(args.protocol, imagenet=args.imagenet_vit is not None)
    evaluation = evaluate_methods(methods, model_cfg, cfg, attackers=attackers, imagenet_vit=args.imagenet_vit,
                                  trained_on=cfg.dataset, evaluated_on=name, on_result=show)
    if not streaming:
        barrier()  # every rank is here: leave together (gloo aborts a rank whose peer tore the group down)
    if not is_main():
        return 0
    evaluation["command"] = shlex.join(["stprivacy", *getattr(args, "argv", [])])
    print()
    print(to_markdown(evaluation))
    if args.out:
        print("wrote " + ", ".join(str(p) for p in write_evaluation(evaluation, args.out)))
    return 0
