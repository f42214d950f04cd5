"""``stprivacy demo``: the paper's comparison, end to end, on the embedded benchmark, in minutes on a CPU.

Generates the synthetic benchmark (no download) and judges every method by one protocol:

* the paper's fixed baselines: raw, downsampling 2x / 4x and weak / strong blur of the whole frame,
  and the person-region ones the paper takes from SPAct (blackening, strong and weak blur of the
  actor's region, which the benchmark knows);
* the controls that show what learning adds: greyscale, grey + blur of the whole frame, the
  oracle sparsifier (the actor's tubelets, raw pixels, everything else black) and the oracle
  followed by grey + blur of the kept tubelets;
* two STPrivacy rows, trained (initialization, then adversarial phase) at the same scale:
  ``STPrivacy (paper)``, the paper's equations and the release's model and nothing else, and
  ``STPrivacy + stpriv recipe``, our options on top (listed in the row's note, ``RECIPE_NOTE``),
  the latter also at several deployment keep ratios;
* with ``--table1``, the learned methods the paper compares with (VITA, SPAct, Collective), each
  trained by its own paper's recipe (:mod:`stprivacy.methods`); with ``--ablations``, the two
  ablations of paper Fig. 4 (column 1) of the recipe row.

Every row's privacy and top-1 come from fresh attackers (:mod:`stprivacy.attack.verdict`) chosen on a
validation split of the training videos, which no anonymizer trains on. It prints a Table-1-style
comparison with the per-attribute AP and writes ``report.json``, ``examples.png`` (the paper's
Figure 3 for both STPrivacy rows: raw / sparsified / anonymized) and ``tradeoff.png`` (top-1 vs
cMAP). ``--seeds`` runs the demo once per seed and writes the seed table
(:mod:`stprivacy.attack.seed_table`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from ..attack import seed_table, viz
from ..attack.evaluate import checked_transform
from ..attack.verdict import ATTACKERS, demo_target, tradeoff_margin
from ..data.synthetic import PRIVACY_ATTRIBUTES, SyntheticVideos, actor_region, make_video
from ..errors import UsageError
from ..methods.baselines import BASELINE_NAMES, CONTROLS, PERSON_BASELINES
from ..methods.learned import get_method, method_config, method_names, train_method
from ..model import STPrivacy, STPrivacyConfig, VideoClassifier
from ..train import TrainConfig, build_dataset, dataset_sizes, evaluate_baseline, evaluate_stprivacy, train_anonymizer
from ..train.anonymizer import check_filter_prior
from ..train.evaluation import attack_transformed, evaluate_anonymizer

PAPER = "STPrivacy (paper)"
RECIPE = "STPrivacy + stpriv recipe"
ORACLE = "oracle: actor tubelets only"
SPARSIFICATION_ONLY = "recipe: sparsification only (no PAB)"
ANONYMIZATION_ONLY = "recipe: anonymization only (alpha=1)"
# The rows the demo's fixed baselines and controls are, in table order (the oracle comes after them).
FIXED_ROWS = BASELINE_NAMES + PERSON_BASELINES + CONTROLS


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of a demo run. ``FULL`` is the demo; ``TINY`` a seconds-long smoke run for tests.

    ``model``/``train`` are the recipe row's overrides of ``STPrivacyConfig.small()`` and of the
    ``TrainConfig`` its anonymizer trains with; ``paper_model``/``paper_train`` the paper row's
    (its scale only: the rest is the defaults, which are the paper's). The protocol (data,
    attackers, the learned methods' training) takes the other fields, the same for every row.
    ``learned``: per learned method, overrides of its config.
    """

    train_videos: int = 768
    test_videos: int = 384
    model: dict[str, Any] = field(default_factory=dict)
    paper_model: dict[str, Any] = field(default_factory=dict)
    recognizer: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    paper_train: dict[str, Any] = field(default_factory=dict)
    learned: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_size: int = 16
    base_lr: float = 0.1
    warmup_epochs: float = 0.25
    init_epochs: int = 16
    adv_epochs: int = 6
    eval_epochs: int = 8
    alpha: float = 0.7
    tradeoff_alphas: tuple[float, ...] = (0.5, 0.7, 0.9)
    num_classes: int = 4


# The model's sizes at the demo's scale (both STPrivacy rows): blocks 1, predictor, 1, predictor,
# 1, predictor, then a one-block PAB, D = 48.
DEMO_SIZES = dict(embed_dim=48, num_heads=3, depth=1, pab_depth=1)
# The recipe row: why each option (each measured, docs/demo_results.md). Training from scratch in a
# few hundred steps needs the sparsification warm-up (random deployment-size subsets for 6 epochs,
# then the predictors take over during 6), the exact-budget Gumbel top-k sampler with the
# score-function keep gradient (the straight-through one pushed the predictors off the actor), a
# PAB that starts as the identity (residual) and stays so in phase 1 (the predictors learn on the
# sparsified video; the PAB learns in the adversarial phase, the sparsifier frozen then as in the
# release), standardized input, a bounded privacy adversary updated 4 times per batch, and the
# per-tubelet filter PAB (pab_filter) with its prior (lambda_filter): a pixel head could not grey
# the textured actor. The release has none of these options except the freezing.
RECIPE_MODEL = dict(pab_residual=True, pab_filter=True, train_sampler="gumbel_topk", keep_gradient="score_function",
                    normalize_input=True)
RECIPE_TRAIN = dict(sparsity_hold_epochs=6, sparsity_ramp_epochs=6, initialization_trains="sparsifier",
                    privacy_adversary="entropy", privacy_steps=4, lambda_filter=0.1)
RECIPE_NOTE = ("stpriv's options: " + ", ".join(f"{k}={v}" for k, v in {**RECIPE_MODEL, **RECIPE_TRAIN}.items()))
# The paper row at the demo's scale. The paper starts every block from an ImageNet ViT-S, whose
# features carry the pixels the PAB's head decodes; there is none at this size, and from random
# weights the head is a random projection on which phase 1 does not learn the action (its loss
# stays at ln 4 at the demo's learning rate and at 0.3 of it). Learning to reproduce the training
# videos first (TrainConfig.reconstruction_epochs, stpriv's) stands in for that start; the
# reconstruction then survives phase 1 only at the lower rate. benchmarks/paper_row_start.py
# measures the four combinations (docs/demo_results.md, "The paper row's start").
PAPER_SCALE_TRAIN = dict(reconstruction_epochs=20, base_lr=0.015)
PAPER_NOTE = ("the paper's equations with the release's model: straight-through Gumbel-softmax keep decisions, "
              "L_spars, the pixel-decoder PAB trained in both phases, -L_privacy with lambda_A = lambda_P = 0.5; "
              f"scaled to the demo (sizes, epochs, learning rate {PAPER_SCALE_TRAIN['base_lr']:g} x batch / 512, the "
              "recognizers shared with every row) and, for the ImageNet start it has no weights for at this size, "
              f"{PAPER_SCALE_TRAIN['reconstruction_epochs']} epochs of reconstruction of the training videos "
              "(stpriv's reconstruction_epochs)")
# Both rows share the demo's scale: batch 16, lr 0.05 x 16 / 512, 24 + 12 epochs, and the
# recognizers (attackers and the trained ones) normalize before pooling and start with a random
# head: on this benchmark the release's pool-then-norm recognizer stays near chance on the motion
# for 8 epochs; 12 epochs let the attackers learn the scene glyphs.
FULL = DemoSettings(
    model={**DEMO_SIZES, **RECIPE_MODEL},
    paper_model=dict(DEMO_SIZES),
    paper_train=dict(PAPER_SCALE_TRAIN),
    recognizer=dict(embed_dim=48, num_heads=3, depth=1, norm_before_pool=True, zero_head=False),
    base_lr=0.05,
    init_epochs=24,
    adv_epochs=12,
    eval_epochs=12,
    train=dict(RECIPE_TRAIN),
)
_TINY_SIZES = dict(embed_dim=24, num_heads=2)
TINY = dataclasses.replace(
    FULL, train_videos=20, test_videos=8, batch_size=8, init_epochs=1, adv_epochs=1, eval_epochs=1,
    tradeoff_alphas=(0.5, 0.7), train=dict(FULL.train, sparsity_hold_epochs=0.5, sparsity_ramp_epochs=0.5),
    model=dict(FULL.model, **_TINY_SIZES), paper_model=dict(FULL.paper_model, **_TINY_SIZES),
    paper_train=dict(FULL.paper_train, reconstruction_epochs=1),
    recognizer=dict(embed_dim=24, num_heads=2, depth=1, norm_before_pool=True, zero_head=False),
    learned={"vita": dict(identity_epochs=1, target_epochs=1, budget_epochs=1, adv_epochs=1, restart_every=2,
                          restart_steps=1),
             "spact": dict(init_epochs=1, privacy_epochs=1, target_epochs=1, epochs=1),
             "collective": dict(epochs=1, lossnet_epochs=1)},
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="run the paper's comparison on the embedded synthetic benchmark",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("stprivacy_demo"), help="output directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the benchmark, the weights and the batches")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="run the demo once per seed (OUT/seed_<s>/, a finished seed is not rerun) and write "
                        "OUT/seed_table.md and OUT/seed_table.json")
    p.add_argument("--table1", action="store_true",
                   help="also train and attack the learned methods the paper compares with (" +
                        ", ".join(get_method(n).title for n in method_names()) + "), each by its own paper's recipe")
    p.add_argument("--ablations", action="store_true",
                   help="also train the two ablations of the recipe row (paper Fig. 4, column 1): sparsification "
                        "only, anonymization only")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's, usually one per core); results depend on it")
    p.add_argument("--tiny", action="store_true", default=os.environ.get("STPRIV_DEMO_TINY", "") not in ("", "0"),
                   help="a seconds-long smoke run (default: on when the environment variable STPRIV_DEMO_TINY=1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="change one setting, e.g. --set train.privacy_steps=1 or --set recognizer.depth=2; SECTION "
                        "is model / train (the recipe row's STPrivacyConfig / TrainConfig), paper_model / "
                        "paper_train (the paper row's), recognizer (every VideoClassifier) or demo (DemoSettings: "
                        "eval_epochs, init_epochs, ...); VALUE is JSON, or a plain string. Repeatable; recorded "
                        "in report.json")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


_SECTIONS = ("model", "paper_model", "recognizer", "train", "paper_train", "demo")


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
            if key not in {f.name for f in dataclasses.fields(DemoSettings)} or key in _SECTIONS or key == "learned":
                raise UsageError(f"--set demo.{key}: DemoSettings has no field {key!r}")
            settings = dataclasses.replace(settings, **{key: tuple(value) if isinstance(value, list) else value})
        else:
            settings = dataclasses.replace(settings, **{section: {**getattr(settings, section), key: value}})
    return settings


def _table(rows: dict[str, dict[str, Any]]) -> str:
    names = " ".join(f"{a[:8]:>8}" for a in PRIVACY_ATTRIBUTES)
    width = max(len(n) for n in rows)
    lines = [f"{'method':<{width}} {'Top-1 ↑':>8} {'F1 ↓':>6} {'cMAP ↓':>7} {'kept':>5} {'attacker':>8}  AP: {names}",
             "-" * (width + 47 + 9 * len(PRIVACY_ATTRIBUTES))]
    for name, r in rows.items():
        ap = " ".join(f"{100 * a:8.1f}" for a in r["ap"])
        lines.append(f"{name:<{width}} {100 * r['top1']:8.1f} {100 * r['f1']:6.1f} {100 * r['cmap']:7.1f} "
                     f"{100 * r['kept']:4.0f}% {r.get('privacy_from', 'pixels'):>8}      {ap}")
    return "\n".join(lines)


@torch.no_grad()
def _figure(models: dict[str, STPrivacy], test_set, path: Path, alpha: float, count: int = 3) -> Path:
    """Paper Fig. 3 for each trained STPrivacy row: raw / sparsified / anonymized test videos."""
    videos = torch.stack([test_set[i][0] for i in range(count)])
    captions = []
    for i in range(count):
        _, action, privacy = test_set[i]
        present = [a for a, p in zip(PRIVACY_ATTRIBUTES, privacy.tolist()) if p]
        captions.append(f"action {action}\n" + (",".join(present) or "no attribute"))
    sparsified, anonymized = [], []
    for model in models.values():
        out = model.eval()(videos, alpha)
        sparsified.append(videos * model.keep_to_pixels(out.keep))
        anonymized.append(out.video)
    # One picture: the rows' outputs stacked as further videos, captioned by the row's name.
    tags = [f"{name}\n{c}" for name in models for c in captions]
    return viz.plot_examples(videos.repeat(len(models), 1, 1, 1, 1), torch.cat(sparsified), torch.cat(anonymized),
                             path, captions=tags)


def _generate(raw: SyntheticVideos) -> tuple[TensorDataset, torch.Tensor]:
    """Every video of the benchmark generated once, into memory (every model below iterates them
    many times), with each video's actor region ``Tensor[M, T, H, W]`` bool from its layout.

    The dataset also answers ``person_region(index)``, as the benchmark does, for the
    person-region baselines and the oracle control."""
    videos, actions, privacy, regions = [], [], [], []
    for i in range(len(raw)):
        video, action, attributes, layout = make_video(raw.spec, raw.video_seed(i), return_layout=True)
        videos.append(video)
        actions.append(action)
        privacy.append(attributes)
        regions.append(actor_region(layout, raw.spec.cell).expand(raw.spec.frames, -1, -1))
    data = TensorDataset(torch.stack(videos), torch.tensor(actions), torch.stack(privacy))
    data.num_classes, data.num_attributes, data.attributes = raw.num_classes, raw.num_attributes, raw.attributes
    region = torch.stack(regions)
    data.person_region = lambda index: region[index]
    return data, region


def _oracle_data(data: TensorDataset, regions: torch.Tensor, model: STPrivacy) -> TensorDataset:
    """The oracle sparsifier's output: the actor's tubelets, raw pixels, everything else black,
    with its keep masks (the benchmark's cell is the tubelet's spatial size)."""
    cfg = model.cfg
    cells = regions[:, 0, :: cfg.tubelet[1], :: cfg.tubelet[2]].flatten(1).float()  # [M, N]: one pixel per cell
    keep = cells[:, None, :].expand(-1, cfg.time_steps, -1).contiguous()
    if keep.shape[-1] != cfg.tokens_per_step:
        raise ValueError("the oracle needs the benchmark's cell to be the tubelet's spatial size")
    videos, actions, privacy = data.tensors
    return TensorDataset(videos * model.keep_to_pixels(keep), keep, actions, privacy.float())


def benchmark_splits(model_cfg: STPrivacyConfig, cfg: TrainConfig
                     ) -> tuple[SyntheticVideos, SyntheticVideos, dict[str, int]]:
    """The benchmark's train and test splits at the model's clip geometry, as ``cfg`` sizes them,
    and ``{"num_classes", "num_attributes"}`` (the demo's and the probes' data)."""
    geometry = {"frames": model_cfg.frames, "image_size": model_cfg.image_size, "tubelet": model_cfg.tubelet}
    train_raw = build_dataset("synthetic", "train", geometry, **cfg.dataset_kwargs)
    test_raw = build_dataset("synthetic", "test", geometry, **cfg.dataset_kwargs)
    return train_raw, test_raw, dict(zip(("num_classes", "num_attributes"), dataset_sizes(train_raw)))


def _train_config(settings: DemoSettings, seed: int, progress: bool, row: dict[str, Any] | None = None
                  ) -> TrainConfig:
    """The demo's shared settings (the protocol's: data, attackers, the learned methods' training),
    with ``row``, a row's own overrides of its anonymizer's training, on top."""
    kwargs = dict(
        dataset="synthetic",
        dataset_kwargs=dict(train_videos=settings.train_videos, test_videos=settings.test_videos, seed=seed,
                            num_classes=settings.num_classes),
        batch_size=settings.batch_size, base_lr=settings.base_lr, warmup_epochs=settings.warmup_epochs,
        init_epochs=settings.init_epochs, adv_epochs=settings.adv_epochs, eval_epochs=settings.eval_epochs,
        recognizer=dict(settings.recognizer), seed=seed, progress=progress,
    )
    return TrainConfig(**{**kwargs, **(row or {})})


def _configs(settings: DemoSettings, seed: int, progress: bool
             ) -> dict[str, tuple[STPrivacyConfig, TrainConfig]]:
    """The two STPrivacy rows' (model, train) configs, checked: a bad ``--set`` is one line."""
    configs = {}
    for name, paper in ((PAPER, True), (RECIPE, False)):
        try:
            model_cfg = STPrivacyConfig.small(alpha=settings.alpha,
                                              **(settings.paper_model if paper else settings.model))
            cfg = _train_config(settings, seed, progress, settings.paper_train if paper else settings.train)
            check_filter_prior(model_cfg, cfg)
            VideoClassifier.from_config(model_cfg, 2, **cfg.recognizer)  # the recognizer options, checked now
        except (TypeError, ValueError) as err:
            section = "paper_model / paper_train" if paper else "model / train"
            raise UsageError(f"the {name} row's settings are not valid ({err}); check the --set {section} "
                             "options") from err
        configs[name] = (model_cfg, cfg)
    return configs


def run_demo(seed: int, out: Path, *, tiny: bool = False, progress: bool = True,
             overrides: list[str] | None = None, commit: str | None = None, table1: bool = False,
             ablations: bool = False) -> dict[str, Any]:
    """One demo run: every row of the table, the figures and ``out/report.json`` (returned).
    ``overrides``: ``--set`` items changing the settings; ``commit``: the code's commit, as read
    when the process started (later edits of the checkout do not change the code that runs);
    ``table1``: also the learned comparison methods; ``ablations``: also the recipe's ablations."""
    settings = apply_overrides(TINY if tiny else FULL, overrides or [])
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    configs = _configs(settings, seed, progress)
    model_cfg = configs[RECIPE][0]
    # The protocol's settings (data, attackers, validation split): the same for every row, whatever
    # a row's own training takes (the paper row's learning rate, for one).
    cfg = _train_config(settings, seed, progress)
    train_raw, test_raw, sizes = benchmark_splits(model_cfg, cfg)
    (train_set, train_regions), (test_set, test_regions) = _generate(train_raw), _generate(test_raw)
    print(f"synthetic benchmark (seed {seed}): {len(train_set)} train ({round(cfg.validation_fraction * 100)}% of "
          f"them the validation split that chooses the attackers) / {len(test_set)} test videos, "
          f"{sizes['num_classes']} motion classes, {sizes['num_attributes']} privacy attributes, "
          f"{torch.get_num_threads()} threads")

    rows: dict[str, dict[str, Any]] = {}

    def show(name: str) -> None:
        r = rows[name]
        print(f"  {name}: top-1 {100 * r['top1']:.1f}, cMAP {100 * r['cmap']:.1f} ({r.get('privacy_from', 'pixels')} "
              f"attacker)")

    for name in FIXED_ROWS:
        rows[name] = evaluate_baseline(name, model_cfg, cfg, train_set, test_set, **sizes)
        show(name)
    geometry_model = STPrivacy(model_cfg)  # only its geometry: keep masks to pixels
    oracle_test = _oracle_data(test_set, test_regions, geometry_model)
    rows[ORACLE] = attack_transformed(_oracle_data(train_set, train_regions, geometry_model), oracle_test, model_cfg,
                                      cfg, name="oracle", attackers=ATTACKERS, **sizes)
    rows[ORACLE]["kept"] = float(oracle_test.tensors[1].mean())
    show(ORACLE)

    histories, models, curve = {}, {}, {}
    for name, (row_model_cfg, row_cfg) in configs.items():
        models[name], histories[name] = train_anonymizer(row_model_cfg, row_cfg, train_set, **sizes)
        ratios = list(settings.tradeoff_alphas) if name == RECIPE else [settings.alpha]
        results = evaluate_stprivacy(models[name], cfg, train_set, test_set, keep_ratios=ratios, name=name, **sizes)
        rows[name] = {**results[f"{settings.alpha:g}"], "note": PAPER_NOTE if name == PAPER else RECIPE_NOTE}
        if name == RECIPE:
            curve = results
        show(name)

    learned = []
    if table1:
        paper_model_cfg = configs[PAPER][0]  # the model's geometry and sizes, which their networks follow
        for method_name in method_names():
            method = get_method(method_name)
            method_cfg = method_config(method, settings.learned.get(method_name))
            torch.manual_seed(seed)
            anonymizer, histories[method.title] = train_method(method_name, method_cfg, paper_model_cfg, cfg,
                                                               train_set, **sizes)
            transform = checked_transform(anonymizer, f"the {method.title} anonymizer")  # drops nothing
            rows[method.title] = evaluate_anonymizer(transform, train_set, test_set, paper_model_cfg, cfg,
                                                     name=method.title, **sizes)
            rows[method.title]["note"] = method.citation
            learned.append(method.title)
            show(method.title)

    ablation_rows = []
    if ablations:
        recipe_model_cfg, recipe_cfg = configs[RECIPE]
        variants = {
            SPARSIFICATION_ONLY: dataclasses.replace(recipe_model_cfg, use_pab=False),
            # alpha = 1 keeps every tubelet; without predictors the training drops none either.
            ANONYMIZATION_ONLY: dataclasses.replace(recipe_model_cfg, alpha=1.0, use_psb=False),
        }
        for name, variant_cfg in variants.items():
            ablation, histories[name] = train_anonymizer(variant_cfg, recipe_cfg, train_set, **sizes)
            rows[name] = next(iter(evaluate_stprivacy(ablation, cfg, train_set, test_set, name=name,
                                                      **sizes).values()))
            ablation_rows.append(name)
            show(name)

    out.mkdir(parents=True, exist_ok=True)
    figure = _figure(models, test_raw, out / "examples.png", settings.alpha)
    tradeoff = viz.plot_tradeoff(
        [{"alpha": float(a), **r} for a, r in curve.items()],
        {name: r for name, r in rows.items() if name != RECIPE}, out / "tradeoff.png",
        title="synthetic benchmark: action vs privacy", curve_label=f"{RECIPE} (alpha)", highlight=[PAPER],
    )
    elapsed = time.perf_counter() - t_start
    report = {
        "results": rows,
        "tradeoff": curve,
        "stprivacy_rows": [PAPER, RECIPE],
        "main": RECIPE,
        "baselines": list(BASELINE_NAMES + PERSON_BASELINES),
        "controls": [*CONTROLS, ORACLE],
        "learned": learned,
        "ablations": ablation_rows,
        "oracle": ORACLE,
        "attributes": list(PRIVACY_ATTRIBUTES),
        "targets": {name: demo_target(rows, name, BASELINE_NAMES + PERSON_BASELINES) for name in (PAPER, RECIPE)},
        # What learning adds: does each learned row have a better trade-off than each fixed control?
        "controls_check": {row: {c: tradeoff_margin(rows[row]) > tradeoff_margin(rows[c]) for c in (*CONTROLS, ORACLE)}
                           for row in (PAPER, RECIPE, *learned)},
        "histories": histories,
        "settings": dataclasses.asdict(settings) | {"tiny": tiny, "seed": seed, "overrides": list(overrides or []),
                                                    "table1": table1, "ablations": ablations},
        "config": {name: {"model": m.to_dict(), "train": c.to_dict()} for name, (m, c) in configs.items()},
        "machine": seed_table.machine(),
        "commit": commit or seed_table.git_commit(),
        "seconds": round(elapsed, 1),
        "units": "top1, f1, cmap, ap and kept are fractions in [0, 1]",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print()
    print(_table(rows))
    print()
    for name, t in report["targets"].items():
        print(f"{name}: target (top-1 within 5 points of raw, cMAP below every baseline within 10 points) "
              f"{'met' if t['met'] else 'not met'}; top-1 gap {t['top1_gap_to_raw_points']:.1f} points, competitive "
              f"baselines: {', '.join(t['competitive_baselines']) or 'none'}")
    for name, beaten in report["controls_check"].items():
        print(f"{name}: " + ("beats every fixed control" if all(beaten.values()) else
                            "does not beat " + ", ".join(c for c, b in beaten.items() if not b))
              + " (by top-1 - cMAP)")
    if not table1:
        print("the learned methods the paper compares with (VITA, SPAct, Collective): stprivacy demo --table1")
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
    options = dict(tiny=args.tiny, progress=not args.no_progress, overrides=args.overrides, commit=commit,
                   table1=args.table1, ablations=args.ablations)
    if args.seeds is None:
        run_demo(args.seed, args.out, **options)
        return 0
    for seed in args.seeds:
        seed_dir = args.out / f"seed_{seed}"
        if seed_table.finished(seed_dir / "report.json", tiny=args.tiny, threads=torch.get_num_threads(),
                               overrides=args.overrides, table1=args.table1, ablations=args.ablations):
            print(f"seed {seed}: {seed_dir / 'report.json'} is already there, not rerun")
            continue
        run_demo(seed, seed_dir, **options)
    reports = [args.out / f"seed_{seed}" / "report.json" for seed in args.seeds]
    table = seed_table.build(reports)
    paths = seed_table.write(table, args.out)
    print()
    print(seed_table.to_markdown(table))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
