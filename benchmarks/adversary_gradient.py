"""Where does the adversarial gradient push the anonymizer's colours? ``python benchmarks/adversary_gradient.py --seeds 7``.

Takes the demo recipe's phase-1 anonymizer with a colour skip (``model.pab_color_skip``, the
identity after phase 1; cached by ``benchmarks/phase2_probe.py``), trains ``--recognizers`` fresh
privacy recognizers on its (sparsified) output until they read the actor's tint, then takes the
gradient of each adversary loss of phase 2 (summed over the recognizers) with respect to the
colour skip's 3 x 3 weights, averaged over 8 batches. Prints, per loss, the descent direction and
its cosine with the steepest descent of the tint the skip passes on, ``T = sum_c (W_cR - W_cB)^2``
(0 exactly when every output channel weighs red and blue alike, so that the benchmark's tint,
red against blue at equal brightness, cancels). A cosine near 0 says the adversary's gradient
does not lead the anonymizer towards hiding the attribute, however long phase 2 runs. One thread.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from phase2_probe import phase1
from stprivacy.attack.seed_table import git_commit, machine
from stprivacy.train.common import make_optimizer, make_recognizer, privacy_adversary_loss

LOSSES = ("negative_bce", "entropy", "uniform")


def _fit(recognizer, model, videos, privacy, cfg, steps: int) -> list[float]:
    optimizer = make_optimizer([recognizer], cfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(len(videos), (cfg.batch_size,), generator=g)
        with torch.no_grad():
            out = model(videos[i])
        loss = F.binary_cross_entropy_with_logits(recognizer(out.video, out.keep), privacy[i], reduction="none")
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    return loss.mean(0).tolist()


def directions(seed: int, recognizers: int, steps: int, cache) -> dict[str, tuple[list[list[float]], float]]:
    _, model_cfg, cfg, train, _, _, model, _, _, _ = phase1(seed, ["model.pab_color_skip=true"], cache)
    videos, _, privacy = train.tensors
    privacy = privacy.float()
    model.train()
    recs = []
    for r in range(recognizers):
        torch.manual_seed(1000 + r)
        recs.append(make_recognizer(model_cfg, cfg, privacy.shape[1], multilabel=True))
        losses = _fit(recs[-1], model, videos, privacy, cfg, steps)
        print(f"  recognizer {r}: per-attribute BCE after {steps} steps", " ".join(f"{x:.3f}" for x in losses))
    weight = model.pab.color_skip.weight
    red, blue = 0, 2
    with torch.no_grad():  # -grad T, T = sum_c (W_cR - W_cB)^2
        untint = torch.zeros_like(weight)
        difference = weight[:, red] - weight[:, blue]
        untint[:, red], untint[:, blue] = -difference, difference
        untint /= untint.norm()
    g = torch.Generator().manual_seed(1)
    result = {}
    for kind in LOSSES:
        grads = []
        for _ in range(8):
            i = torch.randint(len(videos), (cfg.batch_size,), generator=g)
            out = model(videos[i], generator=torch.Generator().manual_seed(len(grads)))
            loss = sum(privacy_adversary_loss(rec(out.video, out.keep), privacy[i], kind) for rec in recs)
            grads.append(torch.autograd.grad(loss, weight)[0])
        descent = -torch.stack(grads).mean(0)
        result[kind] = ((descent / descent.norm()).tolist(), float((descent * untint).sum() / descent.norm()))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7])
    parser.add_argument("--recognizers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150, help="training steps of each privacy recognizer")
    parser.add_argument("--cache", default="/tmp/stpriv_phase1_cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"commit {git_commit()}, {machine()['cpu']}, 1 thread; {args.recognizers} recognizers, {args.steps} steps")
    for seed in args.seeds:
        print(f"seed {seed}")
        for kind, (direction, cosine) in directions(seed, args.recognizers, args.steps, Path(args.cache)).items():
            rows = "; ".join(" ".join(f"{w:+.2f}" for w in row) for row in direction)
            print(f"  {kind:>12}: cos(descent, tint removal) {cosine:+.2f}   descent rows R; G; B: {rows}")


if __name__ == "__main__":
    main()
