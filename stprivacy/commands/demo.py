"""``stprivacy demo``: the whole method, end to end, on the embedded benchmark, in minutes on a CPU.

Generates the synthetic benchmark (no download), evaluates the baselines (raw, downsampling,
blur) by the evaluation protocol, trains STPrivacy and its two ablations (initialization, then
adversarial phase), evaluates them by the same protocol, STPrivacy at several deployment keep
ratios, then prints a Table-1-style comparison and writes ``report.json``, ``examples.png``
(the paper's Figure 3: raw / sparsified / anonymized) and ``tradeoff.png`` (top-1 vs cMAP).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import viz
from ..baselines import BASELINE_NAMES
from ..data.synthetic import PRIVACY_ATTRIBUTES, materialize
from ..model import STPrivacy, STPrivacyConfig
from ..train import TrainConfig, build_dataset, dataset_sizes, evaluate_baseline, evaluate_stprivacy, train_anonymizer


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of a demo run. ``FULL`` is the demo; ``TINY`` a seconds-long smoke run for tests."""

    train_videos: int = 768
    test_videos: int = 384
    model: dict[str, Any] = field(default_factory=dict)  # overrides of STPrivacyConfig.small()
    recognizer: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # further TrainConfig fields
    batch_size: int = 16
    base_lr: float = 0.1
    warmup_epochs: float = 0.25
    init_epochs: int = 16
    adv_epochs: int = 6
    eval_epochs: int = 8
    alpha: float = 0.7
    tradeoff_alphas: tuple[float, ...] = (0.5, 0.7, 0.9)
    num_classes: int = 4


# Why these choices (each measured, docs/demo_results.md): training from scratch in a few hundred
# steps needs the sparsification warm-up (random deployment-size subsets for 4 epochs, then the
# predictors take over during 4), the exact-budget Gumbel top-k sampler, a PAB that starts as the
# identity (residual), a bounded privacy adversary, and lr 0.05 x batch / 512 for every model..
FULL = DemoSettings(
    model=dict(embed_dim=48, num_heads=3, depth=1, pab_depth=1, pab_residual=True, train_sampler="gumbel_topk"),
    recognizer=dict(embed_dim=48, num_heads=3, depth=1),
    base_lr=0.05,
    train=dict(sparsity_hold_epochs=4, sparsity_ramp_epochs=4, privacy_adversary="entropy"),
)
TINY = dataclasses.replace(
    FULL, train_videos=16, test_videos=8, batch_size=8, init_epochs=1, adv_epochs=1, eval_epochs=1,
    tradeoff_alphas=(0.5, 0.7), train=dict(FULL.train, sparsity_hold_epochs=0.5, sparsity_ramp_epochs=0.5),
    model=dict(FULL.model, embed_dim=24, num_heads=2),
    recognizer=dict(embed_dim=24, num_heads=2, depth=1),
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="run the whole protocol on the embedded synthetic benchmark",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("stprivacy_demo"), help="output directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the benchmark, the weights and the batches")
    p.add_argument("--tiny", action="store_true", default=os.environ.get("STPRIV_DEMO_TINY", "") not in ("", "0"),
                   help="a seconds-long smoke run (default: on when the environment variable STPRIV_DEMO_TINY=1)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def _table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'method':<30} {'Top-1 ↑':>8} {'F1 ↓':>7} {'cMAP ↓':>7} {'kept':>6}", "-" * 62]
    for name, r in rows.items():
        lines.append(f"{name:<30} {100 * r['top1']:8.1f} {100 * r['f1']:7.1f} {100 * r['cmap']:7.1f} "
                     f"{100 * r['kept']:5.0f}%")
    return "\n".join(lines)


def _target(rows: dict[str, dict[str, Any]], main: str) -> dict[str, Any]:
    """The demo's success criterion: STPrivacy's top-1 within 5 points of raw, and its cMAP below
    that of every baseline whose top-1 is within 10 points of raw."""
    raw, ours = rows["raw"], rows[main]
    competitive = [n for n in BASELINE_NAMES if n in rows and rows["raw"]["top1"] - rows[n]["top1"] <= 0.10]
    return {
        "top1_gap_to_raw_points": round(100 * (raw["top1"] - ours["top1"]), 2),
        "top1_within_5_points": raw["top1"] - ours["top1"] <= 0.05,
        "competitive_baselines": competitive,
        "cmap_below_competitive_baselines": all(ours["cmap"] < rows[n]["cmap"] for n in competitive),
    }


@torch.no_grad()
def _figure(model: STPrivacy, test_set, path: Path, alpha: float, count: int = 3) -> Path:
    videos = torch.stack([test_set[i][0] for i in range(count)])
    captions = []
    for i in range(count):
        _, action, privacy = test_set[i]
        present = [a for a, p in zip(PRIVACY_ATTRIBUTES, privacy.tolist()) if p]
        captions.append(f"action {action}\n" + (",".join(present) or "no attribute"))
    out = model.eval()(videos, alpha)
    sparsified = videos * model.keep_to_pixels(out.keep)
    return viz.plot_examples(videos, sparsified, out.video, path, captions=captions)


def run(args: argparse.Namespace) -> int:
    settings = TINY if args.tiny else FULL
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    model_cfg = STPrivacyConfig.small(alpha=settings.alpha, **settings.model)
    cfg = TrainConfig(
        dataset="synthetic",
        dataset_kwargs=dict(train_videos=settings.train_videos, test_videos=settings.test_videos, seed=args.seed,
                            num_classes=settings.num_classes),
        batch_size=settings.batch_size, base_lr=settings.base_lr, warmup_epochs=settings.warmup_epochs,
        init_epochs=settings.init_epochs,
        adv_epochs=settings.adv_epochs, eval_epochs=settings.eval_epochs, recognizer=dict(settings.recognizer),
        seed=args.seed, progress=not args.no_progress, **settings.train,
    )
    geometry = {"frames": model_cfg.frames, "image_size": model_cfg.image_size, "tubelet": model_cfg.tubelet}
    train_raw = build_dataset("synthetic", "train", geometry, **cfg.dataset_kwargs)
    test_raw = build_dataset("synthetic", "test", geometry, **cfg.dataset_kwargs)
    sizes = dict(zip(("num_classes", "num_attributes"), dataset_sizes(train_raw)))
    # Every model below iterates these many times: generate them once.
    train_set, test_set = materialize(train_raw), materialize(test_raw)
    print(f"synthetic benchmark: {len(train_set)} train / {len(test_set)} test videos, "
          f"{sizes['num_classes']} motion classes, {sizes['num_attributes']} privacy attributes")

    rows: dict[str, dict[str, Any]] = {}
    for name in BASELINE_NAMES:
        rows[name] = evaluate_baseline(name, model_cfg, cfg, train_set, test_set, **sizes)
        print(f"  {name}: top-1 {100 * rows[name]['top1']:.1f}, cMAP {100 * rows[name]['cmap']:.1f}")

    histories = {}
    model, histories["stprivacy"] = train_anonymizer(model_cfg, cfg, train_set, **sizes)
    curve = evaluate_stprivacy(model, cfg, train_set, test_set, keep_ratios=list(settings.tradeoff_alphas), **sizes)
    main = f"STPrivacy (alpha={settings.alpha:g})"
    rows[main] = curve[f"{settings.alpha:g}"]
    print(f"  {main}: top-1 {100 * rows[main]['top1']:.1f}, cMAP {100 * rows[main]['cmap']:.1f}")

    ablations = {
        "sparsification only (no PAB)": dataclasses.replace(model_cfg, use_pab=False),
        # alpha = 1 keeps every tubelet; without predictors the training drops none either.
        "anonymization only (alpha=1)": dataclasses.replace(model_cfg, alpha=1.0, use_psb=False),
    }
    for name, ablation_cfg in ablations.items():
        ablation, histories[name] = train_anonymizer(ablation_cfg, cfg, train_set, **sizes)
        rows[name] = next(iter(evaluate_stprivacy(ablation, cfg, train_set, test_set, name=name, **sizes).values()))
        print(f"  {name}: top-1 {100 * rows[name]['top1']:.1f}, cMAP {100 * rows[name]['cmap']:.1f}")

    args.out.mkdir(parents=True, exist_ok=True)
    figure = _figure(model, test_raw, args.out / "examples.png", settings.alpha)
    tradeoff = viz.plot_tradeoff(
        [{"alpha": float(a), **r} for a, r in curve.items()],
        {name: r for name, r in rows.items() if name != main}, args.out / "tradeoff.png",
        title="synthetic benchmark: action vs privacy",
    )
    elapsed = time.perf_counter() - t_start
    report = {
        "results": rows,
        "tradeoff": curve,
        "target": _target(rows, main),
        "histories": histories,
        "settings": dataclasses.asdict(settings) | {"tiny": args.tiny, "seed": args.seed},
        "config": {"model": model_cfg.to_dict(), "train": cfg.to_dict()},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__},
        "seconds": round(elapsed, 1),
        "units": "top1, f1, cmap and kept are fractions in [0, 1]",
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print()
    print(_table(rows))
    t = report["target"]
    verdict = "met" if t["top1_within_5_points"] and t["cmap_below_competitive_baselines"] else "not met"
    print(f"\ntarget (top-1 within 5 points of raw, cMAP below every baseline within 10 points): {verdict}; "
          f"top-1 gap {t['top1_gap_to_raw_points']:.1f} points, competitive baselines: "
          f"{', '.join(t['competitive_baselines']) or 'none'}")
    print(f"wrote {args.out / 'report.json'}, {figure}, {tradeoff} in {elapsed:.0f} s")
    return 0
