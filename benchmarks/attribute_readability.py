"""Can the demo's attackers read every privacy attribute on raw video? ``python benchmarks/attribute_readability.py --seeds 0 1 2``.

For each benchmark seed, builds the embedded synthetic benchmark as ``stprivacy demo`` does and
runs the raw baseline's evaluation protocol (``stprivacy.train.evaluate_baseline``) with the
demo's FULL attacker settings (``stprivacy.commands.demo.FULL``: fresh ViT recognizers, the same
epochs, batch and learning rate). Prints, per seed, the action top-1 and each attribute's test
AP, then the minimum of each column and the verdict: is every attribute read with AP >= 90 on
every seed? A benchmark whose raw video hides an attribute from these attackers cannot show an
anonymizer hiding it.

``--baselines blur_strong downsample_4x`` adds those baselines' rows (the same protocol), to see
that whole-frame blur and downsampling still degrade the fine details. ``--train-videos`` /
``--test-videos`` size the splits (default: the demo's); the attackers fit on the training videos
less the protocol's validation split (``TrainConfig.validation_fraction``: 614 of the demo's 768).
``--out`` writes the table as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from stprivacy.attack.seed_table import git_commit, machine
from stprivacy.attack.verdict import split_validation
from stprivacy.commands.demo import FULL, _train_config, benchmark_splits
from stprivacy.data.synthetic import PRIVACY_ATTRIBUTES, materialize
from stprivacy.methods.baselines import BASELINE_NAMES
from stprivacy.model import STPrivacyConfig
from stprivacy.train import evaluate_baseline

THRESHOLD = 0.90  # the AP every attribute must reach on raw video, on every seed


def probe_seed(seed: int, baselines: list[str], train_videos: int, test_videos: int) -> dict[str, dict[str, Any]]:
    """The protocol's result for each of ``baselines`` on benchmark seed ``seed``:
    ``{name: {"top1", "ap": [per attribute], "seconds"}}`` (fractions)."""
    settings = dataclasses.replace(FULL, train_videos=train_videos, test_videos=test_videos)
    model_cfg = STPrivacyConfig.small(alpha=settings.alpha, **settings.model)
    cfg = _train_config(settings, seed, progress=False)
    train_raw, test_raw, sizes = benchmark_splits(model_cfg, cfg)
    num_classes, num_attributes = sizes["num_classes"], sizes["num_attributes"]
    train_set, test_set = materialize(train_raw), materialize(test_raw)
    torch.manual_seed(seed)  # as run_demo does before its rows
    rows = {}
    for name in baselines:
        start = time.perf_counter()
        result = evaluate_baseline(name, model_cfg, cfg, train_set, test_set, num_classes=num_classes,
                                   num_attributes=num_attributes)
        rows[name] = {"top1": float(result["top1"]), "ap": [float(a) for a in result["ap"]],
                      "seconds": round(time.perf_counter() - start, 1)}
    return rows


def fit_videos(train_videos: int) -> int:
    """How many of ``train_videos`` the protocol's attackers train on (the rest choose them)."""
    cfg = _train_config(dataclasses.replace(FULL, train_videos=train_videos), seed=0, progress=False)
    return len(split_validation(train_videos, cfg.validation_fraction, cfg.seed)[0])


def summarize(results: dict[int, dict[str, dict[str, Any]]], baseline: str) -> dict[str, Any]:
    """Per-attribute minimum AP over seeds and top-1 range for one baseline's rows."""
    aps = [results[s][baseline]["ap"] for s in results]
    top1 = [results[s][baseline]["top1"] for s in results]
    minimum = [min(column) for column in zip(*aps)]
    return {"min_ap": dict(zip(PRIVACY_ATTRIBUTES, minimum)), "min_top1": min(top1), "max_top1": max(top1),
            "every_ap_at_least_threshold": all(m >= THRESHOLD for m in minimum)}


def format_table(results: dict[int, dict[str, dict[str, Any]]], baselines: list[str]) -> str:
    """Markdown table: one row per (baseline, seed), then each baseline's minimum row."""
    names = " | ".join(PRIVACY_ATTRIBUTES)
    lines = [f"| baseline | seed | top-1 | {names} |", "|---|---:|---:|" + "---:|" * len(PRIVACY_ATTRIBUTES)]
    for name in baselines:
        for seed, rows in results.items():
            r = rows[name]
            aps = " | ".join(f"{100 * a:.1f}" for a in r["ap"])
            lines.append(f"| {name} | {seed} | {100 * r['top1']:.1f} | {aps} |")
        s = summarize(results, name)
        mins = " | ".join(f"**{100 * a:.1f}**" for a in s["min_ap"].values())
        lines.append(f"| {name} | min | {100 * s['min_top1']:.1f} | {mins} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="benchmark seeds (default 0-9)")
    parser.add_argument("--train-videos", type=int, default=FULL.train_videos,
                        help="training videos the attackers learn from (default: the demo's %(default)s)")
    parser.add_argument("--test-videos", type=int, default=FULL.test_videos,
                        help="test videos (default: the demo's %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--baselines", nargs="*", default=[], choices=[n for n in BASELINE_NAMES if n != "raw"],
                        help="also run these baselines' rows, e.g. blur_strong downsample_4x")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.train_videos < 1 or args.test_videos < 1:
        parser.error("--threads, --train-videos and --test-videos must be >= 1")
    torch.set_num_threads(args.threads)
    baselines = ["raw", *args.baselines]
    commit = git_commit()
    fit = fit_videos(args.train_videos)
    print(f"commit {commit}, {machine()['cpu']}, {args.threads} thread(s); demo FULL attackers, "
          f"{args.train_videos} train videos (the attackers fit on {fit}) / {args.test_videos} test videos")
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in args.seeds:
        results[seed] = probe_seed(seed, baselines, args.train_videos, args.test_videos)
        for name, r in results[seed].items():
            aps = " ".join(f"{a[:8]} {100 * v:5.1f}" for a, v in zip(PRIVACY_ATTRIBUTES, r["ap"]))
            print(f"seed {seed} {name}: top-1 {100 * r['top1']:5.1f}  AP {aps}  ({r['seconds']:.0f} s)", flush=True)
    print()
    print(format_table(results, baselines))
    verdict = summarize(results, "raw")["every_ap_at_least_threshold"]
    print(f"\nevery attribute AP >= {100 * THRESHOLD:.0f} on every seed: {'yes' if verdict else 'no'}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": "python benchmarks/attribute_readability.py", "args": {k: str(v) for k, v in vars(args).items()},
            "commit": commit, "machine": machine(), "fit_videos": fit, "threshold": THRESHOLD, "attributes": list(PRIVACY_ATTRIBUTES),
            "results": {str(s): r for s, r in results.items()},
            "summary": {name: summarize(results, name) for name in baselines}, "verdict": verdict,
        }, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
