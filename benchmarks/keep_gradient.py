"""Which way the keep gradient points on the embedded benchmark: ``python benchmarks/keep_gradient.py``.

The predictors of STPrivacy learn from the derivative of the recognizers' loss with respect to the
keep mask (through the straight-through Gumbel decision). At a kept tubelet that derivative is
taken at keep = 1: it says what slightly *up-weighting* the tubelet does, not what dropping it does.
This script trains a mask-aware action recognizer on the raw benchmark (every tubelet kept), then
prints the mean ``dL/dkeep`` at the all-kept mask over the actor's tubelets and over the others,
for the clips it classifies correctly and for those it gets wrong. A positive value on the actor
means the gradient pushes the predictors to drop the actor, whatever dropping it would really do.

Options: ``--seed`` (benchmark and weights), ``--epochs`` (the recognizer's training),
``--videos`` (test clips probed). One thread, a minute or two on a CPU.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from stprivacy.commands.demo import FULL, _train_config
from stprivacy.data.synthetic import actor_keep_masks, materialize
from stprivacy.model import STPrivacyConfig
from stprivacy.attack.seed_table import git_commit, machine
from stprivacy.train import build_dataset, dataset_sizes
from stprivacy.train.evaluation import fit_recognizers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--videos", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_cfg = STPrivacyConfig.small(alpha=FULL.alpha, **FULL.model)
    cfg = dataclasses.replace(_train_config(FULL, args.seed, progress=False), eval_epochs=args.epochs)
    geometry = {"frames": model_cfg.frames, "image_size": model_cfg.image_size, "tubelet": model_cfg.tubelet}
    train_raw = build_dataset("synthetic", "train", geometry, **cfg.dataset_kwargs)
    test_raw = build_dataset("synthetic", "test", geometry, **cfg.dataset_kwargs)
    num_classes, num_attributes = dataset_sizes(train_raw)
    train, test = materialize(train_raw), materialize(test_raw)
    L, N = model_cfg.time_steps, model_cfg.tokens_per_step
    everything = torch.ones(len(train), L, N)
    data = TensorDataset(train.tensors[0], everything, train.tensors[1], train.tensors[2].float())
    torch.manual_seed(args.seed + 1)
    action_rec, _, _ = fit_recognizers(data, model_cfg, cfg, num_classes, num_attributes, desc="probe")
    video, action = test.tensors[0][: args.videos], test.tensors[1][: args.videos]
    actor = actor_keep_masks(test_raw, L)[: args.videos].bool()
    keep = torch.ones(len(video), L, N, requires_grad=True)
    logits = action_rec(video, keep)
    F.cross_entropy(logits, action, reduction="sum").backward()
    right = (logits.argmax(1) == action)[:, None, None].expand_as(actor)
    grad = keep.grad
    print(f"commit {git_commit()}, {machine()['cpu']}, 1 thread; seed {args.seed}, {args.epochs} epochs, "
          f"{len(video)} test clips, recognizer top-1 {100 * right[:, 0, 0].float().mean():.1f}%")
    print(f"{'clips':<14} {'dL/dkeep, actor':>16} {'dL/dkeep, other':>16}")
    for name, rows in (("all", torch.ones_like(right)), ("classified", right), ("misclassified", ~right)):
        if rows.any():
            print(f"{name:<14} {grad[actor & rows].mean():16.3e} {grad[~actor & rows].mean():16.3e}")


if __name__ == "__main__":
    main()
