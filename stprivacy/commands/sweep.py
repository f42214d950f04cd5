"""``stprivacy sweep --config RUN.json --set SECTION.KEY=V1,V2,...``: one run per value, one plot.

Paper Figure 4 sweeps one setting at a time (the training keep ratio alpha, the tubelet length
dT, lambda_A, lambda_P) and plots each run's action top-1 against its privacy cMAP (a multi-label
action task: its action cMAP, :func:`stprivacy.attack.metrics.task_score`). This command does that
for any run config (``stprivacy train``'s) and any of its fields:

    stprivacy sweep --config configs/synthetic_paper.json --set train.lambda_privacy=0.25,0.5,1 --seeds 0 1 2
    stprivacy sweep --config configs/synthetic_small.json --set model.tubelet=[1,16,16],[2,16,16],[4,16,16]

Each value is read as JSON (a bare word is a string); ``--seeds`` runs every value once per seed
(``TrainConfig.seed``: weights, batches, Gumbel noise). Every point is a whole ``stprivacy train``
run (the three phases, then the attack protocol) in ``OUT/KEY=VALUE/seed_S``, and the unswept
config's raw video is attacked once per seed in ``OUT/raw/seed_S`` (the protocol of ``stprivacy
evaluate``), the reference the plot marks. A finished point is not rerun; one that was
stopped continues from its last checkpoint (``stprivacy train --resume``).

Writes ``OUT/sweep.json`` (every point, and per value the median, min and max over seeds),
``OUT/sweep.md`` and ``OUT/sweep.png``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..attack import viz
from ..attack.evaluate import baseline_method, build_splits, evaluate_methods
from ..attack.metrics import task_score
from ..attack.report import write_evaluation
from ..attack.seed_table import git_commit, machine
from ..errors import ConfigError, UsageError
from ..model import STPrivacyConfig
from ..train import TrainConfig
from .train import parse_run_config, read_config_file

SECTIONS = ("model", "train")
TASK_HEADERS = {"top1": "top-1", "action_cmap": "action cMAP"}  # the task score's column in sweep.md


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sweep", help="train and evaluate one run per value of a setting (paper Fig. 4)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, type=Path, help="the run config every point starts from")
    p.add_argument("--set", dest="parameter", required=True, metavar="SECTION.KEY=V1,V2,...",
                   help="the swept setting: SECTION is model or train, each value JSON (a bare word is a string)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per value per seed (default: 0)")
    p.add_argument("--out", type=Path, default=Path("runs/sweep"), help="output directory (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (plain lines in a log)")
    return p


def parse_parameter(text: str) -> tuple[str, str, list[Any]]:
    """``"SECTION.KEY=V1,V2"`` -> ``(section, key, [v1, v2])``; commas inside brackets or quotes
    belong to the value (``model.tubelet=[1,16,16],[2,16,16]``). Raises :class:`UsageError`."""
    name, sep, values = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise UsageError(f"--set must be SECTION.KEY=V1,V2,..., got {text!r}")
    if section not in SECTIONS:
        raise UsageError(f"--set {name}: the section must be one of {', '.join(SECTIONS)}, got {section!r}")
    fields = {"model": STPrivacyConfig, "train": TrainConfig}[section]
    known = {f.name for f in dataclasses.fields(fields)}
    if key not in known:
        raise UsageError(f"--set {name}: {key!r} is not a {fields.__name__} field (known: {', '.join(sorted(known))})")
    parsed = [_parse_value(item) for item in _split_top_level(values)]
    if not parsed:
        raise UsageError(f"--set {name}: no values given (expected {name}=V1,V2,...)")
    labels = [_label(v) for v in parsed]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--set {name}: a value is repeated ({values})")
    return section, key, parsed


def _split_top_level(text: str) -> list[str]:
    items, depth, quoted, current = [], 0, False, ""
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "[{":
            depth += 1
        elif not quoted and ch in "]}":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    stripped = [item.strip() for item in items]
    if stripped == [""]:
        return []  # no values at all: the caller names the setting
    if "" in stripped or depth != 0 or quoted:
        raise UsageError(f"--set: cannot split {text!r} into values (an empty value, or an unclosed bracket or quote)")
    return stripped


def _parse_value(item: str) -> Any:
    try:
        return json.loads(item)
    except json.JSONDecodeError:
        return item  # a bare word: a string (train.privacy_adversary=entropy)


def _label(value: Any) -> str:
    """A value as a directory name and a table cell: ``[1, 16, 16]`` -> ``1x16x16``."""
    if isinstance(value, list):
        return "x".join(_label(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def point_configs(config: Path, section: str, key: str, values: list[Any], seeds: list[int]
                  ) -> dict[tuple[str, int], dict[str, Any]]:
    """``{(label, seed): run config}`` for every point, each checked as ``stprivacy train`` checks
    a config (a bad value is one line naming it) before anything trains."""
    base = read_config_file(config)
    points = {}
    for value in values:
        for seed in seeds:
            data = json.loads(json.dumps(base))
            data.setdefault("model", {"preset": "small"})  # what a run config without one trains
            data[section] = {**data.get(section, {}), key: value}
            data.setdefault("train", {})["seed"] = seed
            try:
                parse_run_config(data, str(config))
            except ConfigError as err:
                raise UsageError(f"--set {section}.{key}={json.dumps(value)} is not valid: {err}") from err
            points[(_label(value), seed)] = data
    return points


def _cached(out: Path, data: dict[str, Any], done: str, produce: Callable[[Path], None], code: str
            ) -> dict[str, Any]:
    """``out/done`` of the run config ``data``: read back when a run of the same config finished
    there, else made by ``produce(config_path)`` (``out/config.json`` is written first, and
    ``out/commit.txt``, ``code``: the commit of the code that makes it)."""
    config = out / "config.json"
    text = json.dumps(data, indent=2, sort_keys=True)
    result, commit = out / done, out / "commit.txt"
    if config.is_file():
        if config.read_text() != text:
            raise UsageError(f"{out} holds a run of another config; remove it or choose another --out")
        if result.is_file():
            print(f"{out}: finished, not rerun")
            return {**json.loads(result.read_text()), "sweep_commit": _read_commit(commit)}
    out.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    commit.write_text(code + "\n")  # a later rerun of the sweep may run other code: each point says its own
    produce(config)
    return {**json.loads(result.read_text()), "sweep_commit": _read_commit(commit)}


def _read_commit(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else "unknown"


def _train_point(out: Path, extra: list[str]) -> Callable[[Path], None]:
    def produce(config: Path) -> None:
        from ..cli import main as cli_main  # the command, as a user runs it

        if cli_main(["train", "--config", str(config), "--out", str(out), "--resume", *extra]) != 0:
            raise UsageError(f"the run in {out} failed (its error is above)")
    return produce


def _raw_point(out: Path, source: str, progress: bool) -> Callable[[Path], None]:
    """The unswept config's raw video through the attack protocol (``stprivacy evaluate``'s)."""
    def produce(config: Path) -> None:
        model_cfg, cfg = parse_run_config(json.loads(config.read_text()), source)
        cfg = dataclasses.replace(cfg, progress=cfg.progress and progress)
        train_set, test_set, _ = build_splits(cfg.dataset, model_cfg, cfg, None)
        evaluation = evaluate_methods([baseline_method("raw", model_cfg, train_set, test_set)], model_cfg, cfg)
        write_evaluation(evaluation, out)
    return produce


def _at_alpha(evaluation: dict[str, Any], alpha: float) -> dict[str, Any]:
    """The result at the model's deployment keep ratio (the first evaluated one when it is absent)."""
    return evaluation.get(f"{alpha:g}") or next(iter(evaluation.values()))


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(points: list[dict[str, Any]], labels: list[str], task: str = "top1") -> dict[str, dict[str, Any]]:
    """Per value (``labels`` order): median / min / max over seeds of the task score (``task``:
    "top1", or "action_cmap" for multi-label actions), cMAP and their margin."""
    summary = {}
    for label in labels:
        mine = [p for p in points if p["value"] == label]
        summary[label] = {"seeds": [p["seed"] for p in mine]} | {
            metric: _spread([p[metric] for p in mine]) for metric in (task, "cmap", "margin")}
    return summary


def scores(row: dict[str, Any]) -> dict[str, Any]:
    """A result row's numbers in a sweep point: ``top1`` (None for a multi-label task, whose action
    cMAP ``action_cmap`` follows it), ``cmap`` and ``margin``, the task score minus cMAP."""
    task, score = task_score(row)
    return {"top1": row.get("top1"), **({} if task == "top1" else {task: score}), "cmap": row["cmap"],
            "margin": score - row["cmap"]}


def to_markdown(sweep: dict[str, Any]) -> str:
    name, task = sweep["parameter"], sweep.get("task", "top1")
    score = TASK_HEADERS[task]
    lines = [f"# Sweep of {name}", "",
             f"`{sweep['command']}`, commit {sweep['commit']} (the points ran at "
             f"{', '.join(sorted({p['commit'] for p in sweep['points'] + sweep['raw_points']}))}), "
             f"{sweep['machine']['cpu']}, {sweep['threads']} threads.",
             f"Median (min to max) over seeds {', '.join(map(str, sweep['seeds']))}; percent; the margin is {score} - cMAP.",
             "", f"| {name} | {score} | cMAP | {score} - cMAP | per seed ({score} / cMAP) |",
             "| --- | --- | --- | --- | --- |"]

    def cell(s: dict[str, float]) -> str:
        return f"{100 * s['median']:.1f} ({100 * s['min']:.1f} to {100 * s['max']:.1f})"

    groups = {"raw video": sweep["raw_points"],  # each row's points, one per seed
              **{label: [p for p in sweep["points"] if p["value"] == label] for label in sweep["summary"]}}
    for label, s in {"raw video": sweep["raw"], **sweep["summary"]}.items():
        per_seed = ", ".join(f"{p['seed']}: {100 * p[task]:.1f} / {100 * p['cmap']:.1f}" for p in groups[label])
        lines.append(f"| {label} | {cell(s[task])} | {cell(s['cmap'])} | {cell(s['margin'])} | {per_seed} |")
    attributes = sweep.get("attributes")
    if attributes:  # which attributes each value hides: the median AP over seeds (chance is about 50)
        lines += ["", "Median AP per privacy attribute over the same seeds, and the share of tubelets kept:", "",
                  f"| {name} | " + " | ".join(f"AP {a}" for a in attributes) + " | kept |",
                  "| --- |" + " --- |" * (len(attributes) + 1)]
        for label, mine in groups.items():
            aps = [statistics.median(p["ap"][i] for p in mine) for i in range(len(attributes))]
            kept = [p["kept"] for p in mine if p.get("kept") is not None]
            lines.append(f"| {label} | " + " | ".join(f"{100 * a:.1f}" for a in aps)
                         + f" | {f'{100 * statistics.median(kept):.0f}%' if kept else '100%'} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if len(set(args.seeds)) != len(args.seeds) or any(s < 0 for s in args.seeds):
        raise UsageError(f"--seeds must be distinct integers >= 0, got {args.seeds}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out must be a directory, but {args.out} is a file")
    section, key, values = parse_parameter(args.parameter)
    points_cfg = point_configs(args.config, section, key, values, args.seeds)  # every point checked first
    labels = [_label(v) for v in values]
    commit = git_commit()  # read before anything runs: later edits of the checkout do not change this process's code
    extra = ["--no-progress"] if args.no_progress else []
    points = []
    for (label, seed), data in points_cfg.items():
        print(f"{section}.{key}={label}, seed {seed}")
        point = args.out / f"{key}={label}" / f"seed_{seed}"
        report = _cached(point, data, "report.json", _train_point(point, extra), commit)
        model_cfg, _ = parse_run_config(data, str(args.config))
        r = _at_alpha(report["evaluation"], model_cfg.alpha)
        numbers = scores(r)
        margin = numbers.pop("margin")
        points.append({"value": label, "seed": seed, **numbers, "f1": r.get("f1"), "ap": r.get("ap"),
                       "kept": r.get("kept"), "margin": margin, "commit": report["sweep_commit"]})
    raw_points = []
    base = read_config_file(args.config)
    for seed in args.seeds:
        data = json.loads(json.dumps(base))
        data.setdefault("train", {})["seed"] = seed
        point = args.out / "raw" / f"seed_{seed}"
        evaluation = _cached(point, data, "evaluation.json", _raw_point(point, str(args.config), not args.no_progress),
                             commit)
        raw = evaluation["rows"]["raw"]
        raw_points.append({"seed": seed, **scores(raw), "ap": raw.get("ap"), "commit": evaluation["sweep_commit"]})
    attributes = evaluation["dataset"]["attributes"]  # one dataset for every seed
    task = task_score(points[0])[0]  # one dataset, one kind of action task for every point
    sweep = {
        "parameter": f"{section}.{key}", "values": values, "labels": labels, "seeds": list(args.seeds),
        "task": task, "attributes": attributes, "points": points, "summary": summarize(points, labels, task),
        "raw_points": raw_points,
        "raw": {metric: _spread([p[metric] for p in raw_points]) for metric in (task, "cmap", "margin")},
        "command": "stprivacy " + " ".join(getattr(args, "argv", []) or ["sweep"]),
        "commit": commit, "machine": machine(), "threads": torch.get_num_threads(),
        "units": "top1, cmap, margin, f1, ap (one per attribute) and kept are fractions in [0, 1]" + (
            "; action_cmap too, the task score of a multi-label action task (margin = action_cmap - cmap)"
            if task == "action_cmap" else ""),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(sweep, indent=2))
    markdown = to_markdown(sweep)
    (args.out / "sweep.md").write_text(markdown)
    figure = viz.plot_sweep(sweep, args.out / "sweep.png")
    print()
    print(markdown)
    print(f"wrote {args.out / 'sweep.json'}, {args.out / 'sweep.md'}, {figure}")
    return 0
