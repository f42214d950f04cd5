"""Why the demo's STPrivacy (paper) row starts with a reconstruction: ``python benchmarks/paper_row_start.py --seeds 0``.

Trains the paper row's anonymizer (phases 1 and 2 of ``stprivacy.commands.demo``'s paper row, with
``--set SECTION.KEY=VALUE`` changes as ``stprivacy demo`` takes them) under four variants and prints,
per seed, phase 1's action loss (its last epoch and its lowest), phase 2's last action loss and
the share of tubelets kept at the end. ln 4 = 1.386 is chance on the benchmark's four classes:

* the paper's schedule at the demo's learning rate (no start, ``base_lr`` 0.05);
* no start at the paper row's lower rate (``base_lr`` 0.015);
* the reconstruction start (``TrainConfig.reconstruction_epochs`` 20) at the demo's rate;
* the paper row as the demo runs it (the start and the lower rate).

Each variant takes one to two minutes per seed on 2 threads.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from stprivacy.attack.seed_table import git_commit, machine
from stprivacy.commands.demo import FULL, PAPER, _configs, _generate, apply_overrides, benchmark_splits
from stprivacy.train import train_anonymizer

VARIANTS = {
    "no start, demo rate 0.05": ["paper_train.reconstruction_epochs=0", "paper_train.base_lr=0.05"],
    "no start, rate 0.015": ["paper_train.reconstruction_epochs=0"],
    "start, demo rate 0.05": ["paper_train.base_lr=0.05"],
    "start, rate 0.015 (the row)": [],
}


def probe(seed: int, overrides: list[str]) -> dict[str, float]:
    settings = apply_overrides(FULL, overrides)
    model_cfg, cfg = _configs(settings, seed, progress=False)[PAPER]
    train_raw, _, sizes = benchmark_splits(model_cfg, cfg)
    train_set, _ = _generate(train_raw)
    start = time.perf_counter()
    _, history = train_anonymizer(model_cfg, cfg, train_set, **sizes)
    init, adv = history["initialization"], history["adversarial"]
    return {"init_last": init["loss_action"][-1], "init_min": min(init["loss_action"]),
            "adv_last": adv["loss_action"][-1], "kept": adv["keep"][-1], "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a change applied to every variant, as stprivacy demo --set takes it")
    parser.add_argument("--variants", nargs="+", type=int, default=list(range(len(VARIANTS))),
                        help="which variants to run, by position in the list above (default: all four)")
    args = parser.parse_args()
    if any(not 0 <= v < len(VARIANTS) for v in args.variants):
        parser.error(f"--variants must be in 0..{len(VARIANTS) - 1}, got {args.variants}")
    torch.set_num_threads(args.threads)
    changes = f", with {' '.join(args.overrides)}" if args.overrides else ""
    print(f"commit {git_commit()}, {machine()['cpu']}, {args.threads} threads{changes}; ln 4 = {math.log(4):.3f}")
    print("| variant | seed | phase-1 action loss, last (lowest) | phase-2 action loss, last | kept | s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for index, (name, variant) in enumerate(VARIANTS.items()):
        if index not in args.variants:
            continue
        for seed in args.seeds:
            r = probe(seed, [*variant, *args.overrides])
            print(f"| {name} | {seed} | {r['init_last']:.3f} ({r['init_min']:.3f}) | {r['adv_last']:.3f} | "
                  f"{100 * r['kept']:.1f}% | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
