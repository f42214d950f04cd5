"""Does the adversarial phase hide the actor's attributes? ``python benchmarks/phase2_probe.py --seeds 4 --set train.lambda_privacy=1``.

Runs the demo's recipe (``stprivacy.commands.demo.FULL`` with ``--set SECTION.KEY=VALUE`` changes
as ``stprivacy demo`` takes them) for one STPrivacy model: phase 1 (cached under ``--cache``
per seed and phase-1 settings, so that phase-2 variants start from the same anonymizer; clear
the cache when the phase-1 code changes), phase
2, then the evaluation protocol at the demo's alpha against both attackers. Prints top-1, cMAP
and the per-attribute AP of the stronger attacker: the STPrivacy row of a demo run in about a
third of its time. One thread.

A reference replaces phase 2 with ``--fit-grey``, to separate what the anonymization block *can*
output from what the adversarial phase makes it output: the parameters phase 2 would train
(``train.adversarial_trains``) are fitted for as many steps, at phase 2's learning rates, to a
supervised target, every kept tubelet's pixels turned grey (each channel the mean of the three).
That is the anonymization the tint asks for, given directly: if the block cannot learn it, no
adversary can teach it.

Besides the protocol's attackers, the ``tint`` column is the AP of ``skin_color`` for a logistic
regression (4-fold cross-validated) on seven colour statistics of each clip's kept pixels (the
mean and standard deviation of each channel, the covariance of red minus blue with the
brightness): what is left of the tint for even a linear reader of summary statistics.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import cross_val_predict

from stprivacy.commands.demo import FULL, TINY, _train_config, apply_overrides, benchmark_splits
from stprivacy.data.synthetic import CELL_ACTOR, PRIVACY_ATTRIBUTES, materialize
from stprivacy.model import STPrivacy, STPrivacyConfig
from stprivacy.attack.seed_table import git_commit, machine
from stprivacy.train import evaluate_stprivacy
from stprivacy.train.anonymizer import _trainable, train_adversarial, train_initialization
from stprivacy.train.common import backbone_lr, clip_and_step, make_optimizer, make_recognizer, set_lr
from stprivacy.train.config import get_lr

# TrainConfig fields that only phase 2 (or 3) reads: changing them reuses the cached phase 1.
_PHASE2_FIELDS = {"adv_epochs", "eval_epochs", "adversarial_trains", "lambda_action", "lambda_privacy",
                  "privacy_adversary", "privacy_steps", "eval_keep_ratios", "lambda_filter"}


def phase1(seed: int, overrides: list[str], cache: Path, tiny: bool = False):
    """The demo recipe's data, configs and phase-1 models for ``seed`` (phase 1 run once and cached):
    ``(settings, model_cfg, cfg, train, test, test_raw, model, action_rec, privacy_rec, seconds)``
    (``test_raw``: the test split as generated, with its layouts); ``tiny``:
    the demo's seconds-long smoke settings instead."""
    settings = apply_overrides(TINY if tiny else FULL, overrides)
    model_cfg = STPrivacyConfig.small(alpha=settings.alpha, **settings.model)
    cfg = _train_config(settings, seed, progress=False, row=settings.train)  # the recipe row's training
    train_raw, test_raw, sizes = benchmark_splits(model_cfg, cfg)
    num_classes, num_attributes = sizes["num_classes"], sizes["num_attributes"]
    train, test = materialize(train_raw), materialize(test_raw)
    torch.manual_seed(seed)  # as stprivacy.train.train_anonymizer builds them
    model = STPrivacy(model_cfg)
    action_rec = make_recognizer(model_cfg, cfg, num_classes, multilabel=False)
    privacy_rec = make_recognizer(model_cfg, cfg, num_attributes, multilabel=True)
    phase1_fields = {k: v for k, v in cfg.to_dict().items() if k not in _PHASE2_FIELDS and k != "progress"}
    # The filter starts as the identity and phase 1 (initialization_trains="sparsifier") leaves
    # the PAB as initialized, so phase 1 is the same with or without it.
    model_fields = {k: v for k, v in model_cfg.to_dict().items() if k not in ("pab_filter", "pab_filter_sigma")}
    key = hashlib.sha256(json.dumps([model_fields, phase1_fields], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    path = cache / f"seed{seed}_{key}.pt"
    start = time.perf_counter()
    if path.exists():
        state = torch.load(path, weights_only=True)
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        # (With the filter the PAB has no head; load_state_dict skips the cached head's keys.)
        assert not unexpected and all(".filter." in k for k in missing), (missing, unexpected)
        action_rec.load_state_dict(state["action"])
        torch.set_rng_state(state["rng"])
    else:
        train_initialization(model, action_rec, train, cfg)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "action": action_rec.state_dict(), "rng": torch.get_rng_state()},
                   path)
    return settings, model_cfg, cfg, train, test, test_raw, model, action_rec, privacy_rec, time.perf_counter() - start


def fit_grey(model: STPrivacy, train, cfg) -> list[float]:
    """Fit what phase 2 trains (``cfg.adversarial_trains``) for phase 2's number of steps and
    learning rates to make every kept tubelet grey; returns the mean squared error per epoch."""
    videos = train.tensors[0]
    batches = len(videos) // cfg.batch_size
    total, warmup, peak = cfg.adv_epochs * batches, round(cfg.warmup_epochs * batches), cfg.peak_lr
    order = torch.Generator().manual_seed(cfg.seed)
    errors = []
    with _trainable(model, cfg.adversarial_trains):
        optimizer = make_optimizer([model], cfg)
        model.train()
        for step in range(total):
            lr = get_lr(step, total, peak, warmup, peak * cfg.min_lr_ratio)
            set_lr(optimizer, lr, backbone_lr(lr, step, cfg, batches))
            video = videos[torch.randint(len(videos), (cfg.batch_size,), generator=order)]
            out = model(video, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + step))
            loss = grey_error(model, out, video)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_and_step(optimizer, cfg)
            errors.append(loss.item())
    return [sum(errors[i:i + batches]) / batches for i in range(0, total, batches)]


def grey_error(model: STPrivacy, out, video: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the kept tubelets of ``out`` and the same pixels of
    ``video`` turned grey (each channel the mean of the three)."""
    kept = model.keep_to_pixels(out.keep)
    grey = video.mean(dim=1, keepdim=True)
    return ((out.video - grey) ** 2 * kept).sum() / (kept.sum() * video.shape[1])


def tint_leak(model: STPrivacy, test) -> float:
    """AP of a cross-validated logistic regression reading ``skin_color`` from seven colour
    statistics of each test clip's kept pixels (see the module docstring)."""
    video, privacy = test.tensors[0], test.tensors[2][:, PRIVACY_ATTRIBUTES.index("skin_color")]
    with torch.no_grad():
        out = model.eval()(video)
    kept = model.keep_to_pixels(out.keep)  # [B, 1, T, H, W]
    count = kept.sum(dim=(2, 3, 4)).clamp(min=1)  # [B, 1]
    mean = (out.video * kept).sum(dim=(2, 3, 4)) / count  # [B, 3]
    centred = (out.video - mean[..., None, None, None]) * kept
    std = (centred.pow(2).sum(dim=(2, 3, 4)) / count).sqrt()
    cov = ((centred[:, 0] - centred[:, 2]) * centred.mean(dim=1)).sum(dim=(1, 2, 3)) / count[:, 0]
    features = torch.cat([mean, std, cov[:, None]], dim=1).double().numpy()
    labels = privacy.numpy()
    if min(labels.sum(), len(labels) - labels.sum()) < 4:  # too few clips of one value for 4 folds
        return float("nan")
    features = (features - features.mean(0)) / (features.std(0) + 1e-12)
    scores = cross_val_predict(LogisticRegression(max_iter=2000), features, labels, cv=4,
                               method="predict_proba")[:, 1]
    return float(average_precision_score(labels, scores))


def probe(seed: int, overrides: list[str], cache: Path, supervised_grey: bool = False, tiny: bool = False) -> dict:
    """Phase 2 (with ``supervised_grey``, :func:`fit_grey` instead) and the protocol."""
    settings, _, cfg, train, test, test_raw, model, action_rec, privacy_rec, seconds = phase1(
        seed, overrides, cache, tiny)
    num_classes, num_attributes = action_rec.num_classes, privacy_rec.num_classes
    t1 = time.perf_counter()
    history = {"loss_privacy": []}
    if supervised_grey:
        history = {"loss_privacy": [], "grey_mse": fit_grey(model, train, cfg)}
    else:
        history = train_adversarial(model, action_rec, privacy_rec, train, cfg)
    t2 = time.perf_counter()
    row = evaluate_stprivacy(model.eval(), cfg, train, test, keep_ratios=[settings.alpha],
                             num_classes=num_classes, num_attributes=num_attributes)[f"{settings.alpha:g}"]
    t3 = time.perf_counter()
    return row | {"seconds": (seconds, t2 - t1, t3 - t2), "loss_privacy": history["loss_privacy"],
                  "grey_mse": history.get("grey_mse"), "tint_leak": tint_leak(model, test),
                  "filter_gates": filter_gates(model, test_raw)}


def filter_gates(model: STPrivacy, dataset) -> dict[str, tuple[float, float]] | None:
    """With ``model.pab_filter``: the mean (desaturation, blur) gates of the tubelets that the
    deployed model keeps from the test clips, on the actor's cells and on the others (None
    without the filter). The gates and the kept positions are read off one evaluation forward."""
    if model.pab is None or model.pab.filter is None:
        return None
    videos = torch.stack([dataset[i][0] for i in range(len(dataset))])
    on_actor = torch.stack([(dataset.layout(i) == CELL_ACTOR).flatten() for i in range(len(dataset))])  # [B, N]
    seen = {}
    gates, last_psb = model.pab.filter.gates, model.psbs[-1]
    forward_eval = last_psb.forward_eval

    def record_gates(tokens):
        seen["gates"] = gates(tokens)
        return seen["gates"]

    def record_index(*args, **kwargs):
        x, seen["index"] = forward_eval(*args, **kwargs)
        return x, seen["index"]

    model.pab.filter.gates, last_psb.forward_eval = record_gates, record_index
    try:
        with torch.no_grad():
            model.eval()(videos)
    finally:  # the instance attributes shadowed the methods; removing them restores the methods
        del model.pab.filter.gates, last_psb.forward_eval
    actor = on_actor.gather(1, seen["index"].flatten(1))  # [B, L*k], the kept tokens in the PAB's order
    return {name: tuple(seen["gates"][where].mean(dim=0).tolist()) for name, where in
            (("actor", actor), ("other", ~actor))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[4])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--fit-grey", action="store_true",
                        help="no phase 2: fit what it trains to make the kept tubelets grey (a supervised reference)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/stpriv_phase1_cache"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"commit {git_commit()}, {machine()['cpu']}, 1 thread; demo recipe with {args.overrides or 'no change'}")
    names = " ".join(f"{a[:6]:>6}" for a in PRIVACY_ATTRIBUTES)
    print(f"{'seed':>4} {'top-1':>6} {'cMAP':>6} {'from':>6}  AP: {names}   tint   s (phase 1 / 2 / 3)")
    for seed in args.seeds:
        r = probe(seed, args.overrides, args.cache, supervised_grey=args.fit_grey)
        ap = " ".join(f"{100 * a:6.1f}" for a in r["ap"])
        s = " / ".join(f"{x:.0f}" for x in r["seconds"])
        print(f"{seed:>4} {100 * r['top1']:6.1f} {100 * r['cmap']:6.1f} {r['privacy_from']:>6}      {ap}  "
              f"{100 * r['tint_leak']:5.1f}   {s}", flush=True)
        if r["grey_mse"] is not None:
            print("     squared error to grey per epoch:", " ".join(f"{x:.4f}" for x in r["grey_mse"]))
        else:
            print("     phase-2 privacy recognizer's loss per epoch:", " ".join(f"{x:.3f}" for x in r["loss_privacy"]))
        if r["filter_gates"] is not None:
            print("     filter gates (desaturation, blur) of the kept tubelets:",
                  "; ".join(f"{k} {g[0]:.2f}, {g[1]:.2f}" for k, g in r["filter_gates"].items()), flush=True)


if __name__ == "__main__":
    main()
