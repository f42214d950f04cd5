"""Does the adversarial phase hide the actor's attributes? ``python benchmarks/phase2_probe.py --seeds 4 --set train.lambda_privacy=1``.

Runs the demo's recipe (``stprivacy.commands.demo.FULL`` with ``--set SECTION.KEY=VALUE`` changes
as ``stprivacy demo`` takes them) for one STPrivacy model: phase 1 (cached under ``--cache``
per seed and phase-1 settings, so that phase-2 variants start from the same anonymizer; clear
the cache when the phase-1 code changes), phase
2, then the evaluation protocol at the demo's alpha against both attackers. Prints top-1, cMAP
and the per-attribute AP of the stronger attacker: the STPrivacy row of a demo run in about a
third of its time. One thread.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from stprivacy.commands.demo import FULL, _train_config, apply_overrides
from stprivacy.data.synthetic import PRIVACY_ATTRIBUTES, materialize
from stprivacy.model import STPrivacy, STPrivacyConfig
from stprivacy.seed_table import git_commit, machine
from stprivacy.train import build_dataset, dataset_sizes, evaluate_stprivacy
from stprivacy.train.anonymizer import train_adversarial, train_initialization
from stprivacy.train.common import make_recognizer

# TrainConfig fields that only phase 2 (or 3) reads: changing them reuses the cached phase 1.
_PHASE2_FIELDS = {"adv_epochs", "eval_epochs", "adversarial_trains", "lambda_action", "lambda_privacy",
                  "privacy_adversary", "privacy_restart_epochs", "adversarial_lr_scale", "eval_keep_ratios"}


def phase1(seed: int, overrides: list[str], cache: Path):
    """The demo recipe's data, configs and phase-1 models for ``seed`` (phase 1 run once and cached):
    ``(settings, model_cfg, cfg, train, test, model, action_rec, privacy_rec, seconds)``."""
    settings = apply_overrides(FULL, overrides)
    model_cfg = STPrivacyConfig.small(alpha=settings.alpha, **settings.model)
    cfg = _train_config(settings, seed, progress=False)
    geometry = {"frames": model_cfg.frames, "image_size": model_cfg.image_size, "tubelet": model_cfg.tubelet}
    train_raw = build_dataset("synthetic", "train", geometry, **cfg.dataset_kwargs)
    test_raw = build_dataset("synthetic", "test", geometry, **cfg.dataset_kwargs)
    num_classes, num_attributes = dataset_sizes(train_raw)
    train, test = materialize(train_raw), materialize(test_raw)
    torch.manual_seed(seed)  # as stprivacy.train.train_anonymizer builds them
    model = STPrivacy(model_cfg)
    action_rec = make_recognizer(model_cfg, cfg, num_classes, multilabel=False)
    privacy_rec = make_recognizer(model_cfg, cfg, num_attributes, multilabel=True)
    phase1_fields = {k: v for k, v in cfg.to_dict().items() if k not in _PHASE2_FIELDS and k != "progress"}
    # The colour skip starts as the identity and phase 1 (initialization_trains="sparsifier") leaves
    # the PAB as initialized, so phase 1 is the same with or without it.
    model_fields = {k: v for k, v in model_cfg.to_dict().items() if k != "pab_color_skip"}
    key = hashlib.sha256(json.dumps([model_fields, phase1_fields], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    path = cache / f"seed{seed}_{key}.pt"
    start = time.perf_counter()
    if path.exists():
        state = torch.load(path, weights_only=True)
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        assert not unexpected and all(".color_skip." in k for k in missing), (missing, unexpected)
        action_rec.load_state_dict(state["action"])
        torch.set_rng_state(state["rng"])
    else:
        train_initialization(model, action_rec, train, cfg)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "action": action_rec.state_dict(), "rng": torch.get_rng_state()},
                   path)
    return settings, model_cfg, cfg, train, test, model, action_rec, privacy_rec, time.perf_counter() - start


def probe(seed: int, overrides: list[str], cache: Path, grey: bool = False) -> dict:
    """Phase 2 (or, with ``grey``, no phase 2 but the colour skip set to grey) and the protocol."""
    settings, model_cfg, cfg, train, test, model, action_rec, privacy_rec, seconds = phase1(seed, overrides, cache)
    num_classes, num_attributes = action_rec.num_classes, privacy_rec.num_classes
    t1 = time.perf_counter()
    history = {"loss_privacy": []}
    if grey:
        if model.pab is None or model.pab.color_skip is None:
            raise SystemExit("--grey needs --set model.pab_color_skip=true")
        with torch.no_grad():  # every output channel the mean of the input's: no colour left
            model.pab.color_skip.weight.fill_(1.0 / model_cfg.in_chans)
    else:
        history = train_adversarial(model, action_rec, privacy_rec, train, cfg)
    t2 = time.perf_counter()
    row = evaluate_stprivacy(model.eval(), cfg, train, test, keep_ratios=[settings.alpha],
                             num_classes=num_classes, num_attributes=num_attributes)[f"{settings.alpha:g}"]
    t3 = time.perf_counter()
    skip = model.pab.color_skip if model.pab is not None else None
    return row | {"seconds": (seconds, t2 - t1, t3 - t2), "loss_privacy": history["loss_privacy"],
                  "color_skip": None if skip is None else skip.weight.detach().tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[4])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--grey", action="store_true",
                        help="no phase 2: set the phase-1 anonymizer's colour skip to grey (model.pab_color_skip)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/stpriv_phase1_cache"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"commit {git_commit()}, {machine()['cpu']}, 1 thread; demo recipe with {args.overrides or 'no change'}")
    names = " ".join(f"{a[:6]:>6}" for a in PRIVACY_ATTRIBUTES)
    print(f"{'seed':>4} {'top-1':>6} {'cMAP':>6} {'from':>6}  AP: {names}   s (phase 1 / 2 / 3)")
    for seed in args.seeds:
        r = probe(seed, args.overrides, args.cache, grey=args.grey)
        ap = " ".join(f"{100 * a:6.1f}" for a in r["ap"])
        s = " / ".join(f"{x:.0f}" for x in r["seconds"])
        print(f"{seed:>4} {100 * r['top1']:6.1f} {100 * r['cmap']:6.1f} {r['privacy_from']:>6}      {ap}   {s}",
              flush=True)
        print("     phase-2 privacy recognizer's loss per epoch:", " ".join(f"{x:.3f}" for x in r["loss_privacy"]))
        if r["color_skip"] is not None:
            print("     colour skip weights:", [[round(w, 2) for w in row] for row in r["color_skip"]], flush=True)


if __name__ == "__main__":
    main()
