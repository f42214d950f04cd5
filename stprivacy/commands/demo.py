"""``stprivacy demo``: the whole method, end to end, on the embedded benchmark, in minutes on a CPU.

Generates the synthetic benchmark (no download), evaluates the baselines (raw, downsampling,
blur) and an oracle sparsifier (the actor's tubelets, raw pixels) by the evaluation protocol,
trains STPrivacy and its two ablations (initialization, then adversarial phase), evaluates them by
the same protocol, STPrivacy at several deployment keep ratios, then prints a Table-1-style
comparison with the per-attribute AP and writes ``report.json``, ``examples.png`` (the paper's
Figure 3: raw / sparsified / anonymized) and ``tradeoff.png`` (top-1 vs cMAP).

Every method is attacked by pixel-only recognizers; the ones that drop tubelets also by
mask-aware ones, and each row reports its stronger attacker (``stprivacy.attack.verdict``).
``--seeds`` runs the demo once per seed and writes the seed table (``stprivacy.attack.seed_table``).
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
from torch.utils.data import TensorDataset

from ..attack import seed_table, viz
from ..errors import UsageError
from ..methods.baselines import BASELINE_NAMES
from ..data.synthetic import PRIVACY_ATTRIBUTES, SyntheticVideos, actor_keep_masks, materialize
from ..model import STPrivacy, STPrivacyConfig, VideoClassifier
from ..train import TrainConfig, build_dataset, dataset_sizes, evaluate_baseline, evaluate_stprivacy, train_anonymizer
from ..train.anonymizer import check_filter_prior
from ..train.evaluation import attack_transformed
from ..attack.verdict import ATTACKERS, demo_target

ORACLE = "oracle: actor tubelets only"
SPARSIFICATION_ONLY = "sparsification only (no PAB)"
ANONYMIZATION_ONLY = "anonymization only (alpha=1)"


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
# steps needs the sparsification warm-up (random deployment-size subsets for 6 epochs, then the
# predictors take over during 6), the exact-budget Gumbel top-k sampler with the score-function keep
# gradient (the straight-through one pushed the predictors off the actor), a PAB that
# starts as the identity (residual) and stays so in phase 1 (the predictors learn on the sparsified
# video; the PAB learns in the adversarial phase, the sparsifier frozen then as in the release),
# standardized input, a bounded privacy adversary, and lr 0.05 x batch / 512 for every model.
# The PAB is the per-tubelet filter (pab_filter: a pixel head could not grey the textured actor,
# nor could a global colour mixing learn to), and phase 2 runs 12 epochs with 4 updates of the
# privacy recognizer per batch (privacy_steps), so that its adversary learns, once the tint is
# greyed away, to read the face marking that the fresh attackers read. The filter prior
# (lambda_filter 0.1) closes the gates the action does not hold open: the adversary alone left
# the actor's blur half closed on most seeds, and fresh attackers read the face through the half
# left. The release has none of these options except the freezing.
# The recognizers (attackers and the trained ones) normalize before pooling and start with a
# random head: on this benchmark the release's pool-then-norm recognizer stays near chance on the
# motion for 8 epochs; 12 epochs let the attackers learn the scene glyphs.
FULL = DemoSettings(
    model=dict(embed_dim=48, num_heads=3, depth=1, pab_depth=1, pab_residual=True, pab_filter=True,
               train_sampler="gumbel_topk", keep_gradient="score_function", normalize_input=True),
    recognizer=dict(embed_dim=48, num_heads=3, depth=1, norm_before_pool=True, zero_head=False),
    base_lr=0.05,
    init_epochs=24,
    adv_epochs=12,
    eval_epochs=12,
    train=dict(sparsity_hold_epochs=6, sparsity_ramp_epochs=6, initialization_trains="sparsifier",
               privacy_adversary="entropy", privacy_steps=4, lambda_filter=0.1),
)
TINY = dataclasses.replace(
    FULL, train_videos=16, test_videos=8, batch_size=8, init_epochs=1, adv_epochs=1, eval_epochs=1,
    tradeoff_alphas=(0.5, 0.7), train=dict(FULL.train, sparsity_hold_epochs=0.5, sparsity_ramp_epochs=0.5),
    model=dict(FULL.model, embed_dim=24, num_heads=2),
    recognizer=dict(embed_dim=24, num_heads=2, depth=1, norm_before_pool=True, zero_head=False),
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="run the whole protocol on the embedded synthetic benchmark",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("stprivacy_demo"), help="output directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the benchmark, the weights and the batches")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="run the demo once per seed (OUT/seed_<s>/, a finished seed is not rerun) and write "
                        "OUT/seed_table.md and OUT/seed_table.json")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's, usually one per core); results depend on it")
    p.add_argument("--tiny", action="store_true", default=os.environ.get("STPRIV_DEMO_TINY", "") not in ("", "0"),
                   help="a seconds-long smoke run (default: on when the environment variable STPRIV_DEMO_TINY=1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="change one setting of the recipe, e.g. --set train.adversarial_trains=all or "
                        "--set recognizer.norm_before_pool=false; SECTION is model (STPrivacyConfig), recognizer "
                        "(VideoClassifier), train (TrainConfig) or demo (DemoSettings: eval_epochs, init_epochs, ...); "
                        "VALUE is JSON, or a plain string. Repeatable; recorded in report.json")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


_SECTIONS = ("model", "recognizer", "train", "demo")


def apply_overrides(settings: DemoSettings, overrides: list[str]) -> DemoSettings:
    """``settings`` with each ``SECTION.KEY=VALUE`` of ``--set`` applied (see :func:`add_parser`);
    the values are checked when the configs are built."""
    for item in overrides:
        target, sep, raw = item.partition("=")
        section, dot, key = target.partition(".")
        if not sep or not dot or section not in _SECTIONS or not key:
            raise UsageError(f"--set takes SECTION.KEY=VALUE with SECTION one of {_SECTIONS}, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if section == "demo":
            if key not in {f.name for f in dataclasses.fields(DemoSettings)} or key in _SECTIONS:
                raise UsageError(f"--set demo.{key}: DemoSettings has no field {key!r}")
            settings = dataclasses.replace(settings, **{key: tuple(value) if isinstance(value, list) else value})
        else:
            settings = dataclasses.replace(settings, **{section: {**getattr(settings, section), key: value}})
    return settings


def _table(rows: dict[str, dict[str, Any]]) -> str:
    names = " ".join(f"{a[:8]:>8}" for a in PRIVACY_ATTRIBUTES)
    lines = [f"{'method':<30} {'Top-1 ↑':>8} {'F1 ↓':>6} {'cMAP ↓':>7} {'kept':>5} {'attacker':>8}  AP: {names}",
             "-" * (77 + 9 * len(PRIVACY_ATTRIBUTES))]
    for name, r in rows.items():
        ap = " ".join(f"{100 * a:8.1f}" for a in r["ap"])
        lines.append(f"{name:<30} {100 * r['top1']:8.1f} {100 * r['f1']:6.1f} {100 * r['cmap']:7.1f} "
                     f"{100 * r['kept']:4.0f}% {r.get('privacy_from', 'pixels'):>8}      {ap}")
    return "\n".join(lines)


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


def _oracle_data(raw: SyntheticVideos, data: TensorDataset, model: STPrivacy) -> TensorDataset:
    """The oracle sparsifier's output: the actor's tubelets, raw pixels, everything else black."""
    keep = actor_keep_masks(raw, model.cfg.time_steps)
    if keep.shape[-1] != model.cfg.tokens_per_step:
        raise ValueError("the oracle needs the benchmark's cell to be the tubelet's spatial size")
    videos, actions, privacy = data.tensors
    return TensorDataset(videos * model.keep_to_pixels(keep), keep, actions, privacy.float())


def _train_config(settings: DemoSettings, seed: int, progress: bool) -> TrainConfig:
    return TrainConfig(
        dataset="synthetic",
        dataset_kwargs=dict(train_videos=settings.train_videos, test_videos=settings.test_videos, seed=seed,
                            num_classes=settings.num_classes),
        batch_size=settings.batch_size, base_lr=settings.base_lr, warmup_epochs=settings.warmup_epochs,
        init_epochs=settings.init_epochs, adv_epochs=settings.adv_epochs, eval_epochs=settings.eval_epochs,
        recognizer=dict(settings.recognizer), seed=seed, progress=progress, **settings.train,
    )


def run_demo(seed: int, out: Path, *, tiny: bool = False, progress: bool = True,
             overrides: list[str] | None = None, commit: str | None = None) -> dict[str, Any]:
    """One demo run: every row of the table, the figures and ``out/report.json`` (returned).
    ``overrides``: ``--set`` items changing the recipe; ``commit``: the code's commit, as read when
    the process started (later edits of the checkout do not change the code that runs)."""
    settings = apply_overrides(TINY if tiny else FULL, overrides or [])
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    try:
        model_cfg = STPrivacyConfig.small(alpha=settings.alpha, **settings.model)
        cfg = _train_config(settings, seed, progress)
        check_filter_prior(model_cfg, cfg)
        VideoClassifier.from_config(model_cfg, 2, **cfg.recognizer)  # the recognizer options, checked now
    except (TypeError, ValueError) as err:
        raise UsageError(f"the recipe is not valid ({err}); check the --set options") from err
    geometry = {"frames": model_cfg.frames, "image_size": model_cfg.image_size, "tubelet": model_cfg.tubelet}
    train_raw = build_dataset("synthetic", "train", geometry, **cfg.dataset_kwargs)
    test_raw = build_dataset("synthetic", "test", geometry, **cfg.dataset_kwargs)
    sizes = dict(zip(("num_classes", "num_attributes"), dataset_sizes(train_raw)))
    # Every model below iterates these many times: generate them once.
    train_set, test_set = materialize(train_raw), materialize(test_raw)
    print(f"synthetic benchmark (seed {seed}): {len(train_set)} train / {len(test_set)} test videos, "
          f"{sizes['num_classes']} motion classes, {sizes['num_attributes']} privacy attributes, "
          f"{torch.get_num_threads()} threads")

    def show(name: str) -> None:
        r = rows[name]
        print(f"  {name}: top-1 {100 * r['top1']:.1f}, cMAP {100 * r['cmap']:.1f} ({r.get('privacy_from', 'pixels')} "
              f"attacker)")

    rows: dict[str, dict[str, Any]] = {}
    for name in BASELINE_NAMES:
        rows[name] = evaluate_baseline(name, model_cfg, cfg, train_set, test_set, **sizes)
        show(name)
    geometry_model = STPrivacy(model_cfg)  # only its geometry: keep masks to pixels
    oracle_test = _oracle_data(test_raw, test_set, geometry_model)
    rows[ORACLE] = attack_transformed(_oracle_data(train_raw, train_set, geometry_model), oracle_test, model_cfg, cfg,
                                      name="oracle", attackers=ATTACKERS, **sizes)
    rows[ORACLE]["kept"] = float(oracle_test.tensors[1].mean())
    show(ORACLE)

    histories = {}
    model, histories["stprivacy"] = train_anonymizer(model_cfg, cfg, train_set, **sizes)
    curve = evaluate_stprivacy(model, cfg, train_set, test_set, keep_ratios=list(settings.tradeoff_alphas), **sizes)
    main = f"STPrivacy (alpha={settings.alpha:g})"
    rows[main] = curve[f"{settings.alpha:g}"]
    show(main)

    ablations = {
        SPARSIFICATION_ONLY: dataclasses.replace(model_cfg, use_pab=False),
        # alpha = 1 keeps every tubelet; without predictors the training drops none either.
        ANONYMIZATION_ONLY: dataclasses.replace(model_cfg, alpha=1.0, use_psb=False),
    }
    for name, ablation_cfg in ablations.items():
        ablation, histories[name] = train_anonymizer(ablation_cfg, cfg, train_set, **sizes)
        rows[name] = next(iter(evaluate_stprivacy(ablation, cfg, train_set, test_set, name=name, **sizes).values()))
        show(name)

    out.mkdir(parents=True, exist_ok=True)
    figure = _figure(model, test_raw, out / "examples.png", settings.alpha)
    tradeoff = viz.plot_tradeoff(
        [{"alpha": float(a), **r} for a, r in curve.items()],
        {name: r for name, r in rows.items() if name != main}, out / "tradeoff.png",
        title="synthetic benchmark: action vs privacy",
    )
    elapsed = time.perf_counter() - t_start
    report = {
        "results": rows,
        "tradeoff": curve,
        "main": main,
        "baselines": list(BASELINE_NAMES),
        "ablations": [SPARSIFICATION_ONLY, ANONYMIZATION_ONLY],
        "oracle": ORACLE,
        "attributes": list(PRIVACY_ATTRIBUTES),
        "target": demo_target(rows, main, BASELINE_NAMES),
        "histories": histories,
        "settings": dataclasses.asdict(settings) | {"tiny": tiny, "seed": seed, "overrides": list(overrides or [])},
        "config": {"model": model_cfg.to_dict(), "train": cfg.to_dict()},
        "machine": seed_table.machine(),
        "commit": commit or seed_table.git_commit(),
        "seconds": round(elapsed, 1),
        "units": "top1, f1, cmap, ap and kept are fractions in [0, 1]",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print()
    print(_table(rows))
    t = report["target"]
    print(f"\ntarget (top-1 within 5 points of raw, cMAP below every baseline within 10 points, stronger attacker): "
          f"{'met' if t['met'] else 'not met'}; top-1 gap {t['top1_gap_to_raw_points']:.1f} points, competitive "
          f"baselines: {', '.join(t['competitive_baselines']) or 'none'}")
    print(f"wrote {out / 'report.json'}, {figure}, {tradeoff} in {elapsed:.0f} s")
    return report


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out must be a directory, but {args.out} is a file")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    commit = seed_table.git_commit()
    if args.seeds is None:
        run_demo(args.seed, args.out, tiny=args.tiny, progress=not args.no_progress, overrides=args.overrides,
                 commit=commit)
        return 0
    for seed in args.seeds:
        seed_dir = args.out / f"seed_{seed}"
        if seed_table.finished(seed_dir / "report.json", tiny=args.tiny, threads=torch.get_num_threads(),
                               overrides=args.overrides):
            print(f"seed {seed}: {seed_dir / 'report.json'} is already there, not rerun")
            continue
        run_demo(seed, seed_dir, tiny=args.tiny, progress=not args.no_progress, overrides=args.overrides,
                 commit=commit)
    reports = [args.out / f"seed_{seed}" / "report.json" for seed in args.seeds]
    table = seed_table.build(reports)
    paths = seed_table.write(table, args.out)
    print()
    print(seed_table.to_markdown(table))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
