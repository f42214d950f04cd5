"""Does phase 1 find the actor? ``python benchmarks/phase1_probe.py --seeds 2 5 --set model.keep_gradient=straight_through``.

Runs only the initialization phase of the demo's recipe (``stprivacy.commands.demo.FULL``, with
``--set SECTION.KEY=VALUE`` changes as ``stprivacy demo`` takes them) on the embedded benchmark,
then, on the test videos in evaluation mode, prints the share of the actor's tubelets the
predictors keep and the top-1 of phase 1's jointly trained action recognizer. A run whose
predictors lost the actor shows both near zero / chance (25%): the failure that decides most of
the demo's missed seeds, in a minute per seed instead of four. One thread.
"""
from __future__ import annotations

import argparse
import time

import torch

from stprivacy.commands.demo import FULL, _train_config, apply_overrides, benchmark_splits
from stprivacy.data.synthetic import actor_keep_masks, materialize
from stprivacy.model import STPrivacy, STPrivacyConfig
from stprivacy.attack.seed_table import git_commit, machine
from stprivacy.train.anonymizer import train_initialization
from stprivacy.train.common import make_recognizer


def probe(seed: int, overrides: list[str]) -> tuple[float, float, float]:
    """(share of actor tubelets kept, phase-1 recognizer top-1, seconds) for one seed."""
    settings = apply_overrides(FULL, overrides)
    model_cfg = STPrivacyConfig.small(alpha=settings.alpha, **settings.model)
    cfg = _train_config(settings, seed, progress=False, row=settings.train)  # the recipe row's training
    train_raw, test_raw, sizes = benchmark_splits(model_cfg, cfg)
    num_classes = sizes["num_classes"]
    train, test = materialize(train_raw), materialize(test_raw)
    torch.manual_seed(seed)
    model = STPrivacy(model_cfg)
    action_rec = make_recognizer(model_cfg, cfg, num_classes, multilabel=False)
    start = time.perf_counter()
    train_initialization(model, action_rec, train, cfg)
    seconds = time.perf_counter() - start
    model.eval()
    action_rec.eval()
    with torch.no_grad():
        out = model(test.tensors[0])
        top1 = (action_rec(out.video, out.keep).argmax(1) == test.tensors[1]).float().mean().item()
    actor = actor_keep_masks(test_raw, model_cfg.time_steps)
    return ((out.keep * actor).sum() / actor.sum()).item(), top1, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"commit {git_commit()}, {machine()['cpu']}, 1 thread; demo recipe with {args.overrides or 'no change'}")
    print(f"{'seed':>4} {'actor kept':>10} {'phase-1 top-1':>13} {'s':>5}")
    for seed in args.seeds:
        kept, top1, seconds = probe(seed, args.overrides)
        print(f"{seed:>4} {100 * kept:9.1f}% {100 * top1:12.1f}% {seconds:5.0f}")


if __name__ == "__main__":
    main()
