"""The demo over seeds, as a table a script writes: ``stprivacy demo --seeds 0 1 ... --out DIR``.

Each seed's run leaves ``DIR/seed_<s>/report.json``; :func:`build` reads them back and makes one
table: every method's top-1, cMAP and per-attribute AP on every seed and their spread
(min / median / max); the demo's target for both STPrivacy rows (met on at least 9 in 10 of the
seeds); the paper's finding as a check (STPrivacy (paper) has the best trade-off among the
learned methods); whether each learned row beats the fixed controls; the ablation finding where
the ablations ran (``stprivacy.attack.verdict``); with the commit, the machine and the thread
count the runs came from. :func:`write` saves it as markdown and JSON.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from statistics import median
from typing import Any

import torch

from .verdict import ablation_finding, tradeoff_margin

REQUIRED_FRACTION = 0.9  # the target must be met on at least 9 of 10 seeds


def git_commit() -> str:
    """The commit of the code that runs (short hash, ``+dirty`` with uncommitted changes), or
    "unknown" outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """What a figure was measured on: CPU model, cores, torch threads, platform, torch version."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "torch": torch.__version__}


def finished(path: Path, *, tiny: bool, threads: int, overrides: list[str] | None = None, table1: bool = False,
             ablations: bool = False) -> bool:
    """Whether ``path`` is a complete report of a run with these settings (so a seed list that was
    cut off resumes where it stopped, and a run with other settings is not mistaken for it)."""
    try:
        report = json.loads(Path(path).read_text())
        settings = report["settings"]
        return (settings["tiny"] == tiny and report["machine"]["torch_threads"] == threads
                and settings.get("overrides", []) == list(overrides or [])
                and settings.get("table1", False) == table1 and settings.get("ablations", False) == ablations
                and "targets" in report)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": median(values), "max": max(values)}


def _medians(reports: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per method, over the seeds that ran it: the spread of top-1, cMAP and top-1 - cMAP (points),
    the median AP of each attribute and the median fraction of tubelets kept."""
    out = {}
    for name in methods:
        rows = [r["results"][name] for r in reports if name in r["results"]]
        out[name] = {
            "runs": len(rows),
            "top1": _spread([row["top1"] for row in rows]),
            "cmap": _spread([row["cmap"] for row in rows]),
            "margin_points": _spread([tradeoff_margin(row) for row in rows]),
            "ap": [median(row["ap"][k] for row in rows) for k in range(len(rows[0]["ap"]))],
            "kept": median(row.get("kept", 1.0) for row in rows),
        }
    return out


def _paper_finding(medians: dict[str, dict[str, Any]], paper: str, recipe: str, learned: list[str]) -> dict[str, Any]:
    """The paper's central claim as a check: ``paper`` has the best trade-off (the highest median
    of top-1 - cMAP) among the learned methods; the recipe row is placed beside them too."""
    if not learned:
        return {"checked": False, "why": "the learned methods did not run: stprivacy demo --table1"}
    margin = {name: medians[name]["margin_points"]["median"] for name in [paper, *learned]}
    beaten_by = [name for name in learned if margin[name] >= margin[paper]]
    recipe_margin = medians[recipe]["margin_points"]["median"] if recipe in medians else None
    return {"checked": True, "holds": not beaten_by, "margins": margin, "beaten_by": beaten_by,
            "recipe_margin": recipe_margin,
            "recipe_beats_learned": None if recipe_margin is None else all(recipe_margin > margin[n] for n in learned),
            "definition": "best trade-off = highest median over seeds of (top-1 - cMAP) in points"}


def _controls(medians: dict[str, dict[str, Any]], learned_rows: list[str], controls: list[str]) -> dict[str, Any]:
    """For each learned row and each fixed control: does the row beat the control (a higher
    median top-1 - cMAP)? What learning adds over a fixed transform that hides the same cues."""
    margin = {name: medians[name]["margin_points"]["median"] for name in [*learned_rows, *controls] if name in medians}
    beats = {row: {c: margin[row] > margin[c] for c in controls if c in margin} for row in learned_rows if row in margin}
    return {"beats": beats, "not_beaten": {row: [c for c, b in v.items() if not b] for row, v in beats.items()}}


def build(report_paths: Iterable[str | Path]) -> dict[str, Any]:
    """The seed table of the given ``report.json`` files (one per seed)."""
    reports = [json.loads(Path(p).read_text()) for p in report_paths]
    if not reports:
        raise ValueError("no report to build a seed table from")
    first = reports[0]
    methods = list(dict.fromkeys(name for r in reports for name in r["results"]))
    paper, recipe = first["stprivacy_rows"]
    learned = list(dict.fromkeys(name for r in reports for name in r.get("learned", [])))
    ablations = list(dict.fromkeys(name for r in reports for name in r.get("ablations", [])))
    medians = _medians(reports, methods)
    required = math.ceil(REQUIRED_FRACTION * len(reports))
    verdicts = {}
    for name in first["stprivacy_rows"]:
        met = sum(r["targets"][name]["met"] for r in reports)
        verdicts[name] = {"met": met, "seeds": len(reports), "required": required, "holds": met >= required}
    runs = [{"seed": r["settings"]["seed"], "seconds": r["seconds"], "commit": r.get("commit", "unknown"),
             "rows": {name: {k: row.get(k) for k in ("top1", "cmap", "ap", "kept", "privacy_from", "top1_from")}
                      for name, row in r["results"].items()},
             "targets": r["targets"]} for r in reports]
    settings = first["settings"]
    return {
        "command": "stprivacy demo --seeds " + " ".join(str(r["seed"]) for r in runs)
                   + f" --threads {first['machine']['torch_threads']}"
                   + (" --table1" if settings.get("table1") else "") + (" --ablations" if settings.get("ablations") else "")
                   + "".join(f" --set {o}" for o in settings.get("overrides", [])),
        "commits": sorted({r["commit"] for r in runs}),
        "machine": first["machine"],
        "threads": sorted({r["machine"]["torch_threads"] for r in reports}),
        "attributes": first["attributes"],
        "stprivacy_rows": first["stprivacy_rows"],
        "methods": methods,
        "controls": first["controls"],
        "learned": learned,
        "ablations": ablations,
        "runs": runs,
        "medians": medians,
        "seconds": _spread([r["seconds"] for r in runs]),
        "verdicts": verdicts,
        "paper_finding": _paper_finding(medians, paper, recipe, learned),
        "controls_check": _controls(medians, [paper, recipe, *learned], first["controls"]),
        "ablation": (ablation_finding([r["results"] for r in reports], recipe, ablations) if ablations else None),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _range(s: dict[str, float], points: bool = False) -> str:
    f = (lambda x: f"{x:.1f}") if points else _pct
    return f"{f(s['median'])} ({f(s['min'])} to {f(s['max'])})"


def to_markdown(table: dict[str, Any]) -> str:
    """The seed table as markdown: provenance, the medians, every seed, the verdicts."""
    m, runs, attrs = table["machine"], table["runs"], table["attributes"]
    lines = [
        f"Command: `{table['command']}`; commit {', '.join(table['commits'])}; machine: {m['cpu']}, "
        f"{m['cpu_count']} cores, torch {m['torch']}, {', '.join(map(str, table['threads']))} thread(s). "
        f"Attackers chosen on a validation split of the training videos; test numbers reported.",
        "",
        f"Medians over {len(runs)} seeds (min to max); top-1 higher is better, cMAP and AP lower:",
        "",
        "| method | top-1 | cMAP | top-1 - cMAP | " + " | ".join(f"AP {a}" for a in attrs) + " | kept |",
        "| --- " * (5 + len(attrs)) + "|",
    ]
    for name, med in table["medians"].items():
        lines.append(f"| {name} | {_range(med['top1'])} | {_range(med['cmap'])} | {_range(med['margin_points'], True)} | "
                     + " | ".join(_pct(a) for a in med["ap"]) + f" | {100 * med['kept']:.0f}% |")
    lines += ["", "Every seed, top-1 / cMAP:", "",
              "| method | " + " | ".join(f"seed {r['seed']}" for r in runs) + " |",
              "| --- " * (1 + len(runs)) + "|"]
    for name in table["methods"]:
        cells = [f"{_pct(r['rows'][name]['top1'])} / {_pct(r['rows'][name]['cmap'])}" if name in r["rows"] else "-"
                 for r in runs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Every seed, AP per attribute:", "",
              "| method | seed | " + " | ".join(attrs) + " |", "| --- " * (2 + len(attrs)) + "|"]
    for name in table["methods"]:
        for r in runs:
            if name in r["rows"]:
                lines.append(f"| {name} | {r['seed']} | " + " | ".join(_pct(a) for a in r["rows"][name]["ap"]) + " |")
    s = table["seconds"]
    lines += ["", f"Time per run: {s['min']:.0f} / {s['median']:.0f} / {s['max']:.0f} s (min / median / max).", ""]
    for name, v in table["verdicts"].items():
        lines.append(f"**{name}: the target (top-1 within 5 points of raw, cMAP below every competitive baseline) "
                     f"is met on {v['met']} of {v['seeds']} seeds (required: {v['required']}): "
                     f"{'holds' if v['holds'] else 'does not hold'}.**")
        lines.append("")
    paper, recipe = table["stprivacy_rows"]
    f = table["paper_finding"]
    if not f["checked"]:
        lines.append(f"The paper's finding (\"{paper} has the best trade-off among the learned methods\"): not "
                     f"checked, {f['why']}.")
    else:
        margins = ", ".join(f"{n} {v:.1f}" for n, v in f["margins"].items())
        verdict = "holds" if f["holds"] else f"does not hold: beaten by {', '.join(f['beaten_by'])}"
        lines.append(f"**The paper's finding (\"{paper} has the best trade-off among the learned methods\", "
                     f"{f['definition']}) {verdict}.** Median margins: {margins}; {recipe} {f['recipe_margin']:.1f}.")
    lines.append("")
    lines.append("Learned rows against the fixed controls (a higher median top-1 - cMAP beats the control):")
    lines.append("")
    for row, beaten in table["controls_check"]["beats"].items():
        fails = [c for c, b in beaten.items() if not b]
        lines.append(f"- {row}: " + ("beats every control" if not fails else f"**does not beat {', '.join(fails)}**"))
    a = table["ablation"]
    if a is not None:
        lines += ["", f"Ablation (paper Fig. 4; {a['definition']}):", "",
                  "| method | median top-1 | median cMAP | median top-1 - cMAP | worse than both mechanisms |",
                  "| --- | --- | --- | --- | --- |"]
        for name, med in a["medians"].items():
            worse = "-" if name == recipe else ("yes" if a["ablation_is_worse"][name] else "**no**")
            lines.append(f"| {name} | {_pct(med['top1'])} | {_pct(med['cmap'])} | {med['margin_points']:.1f} | {worse} |")
        lines += ["", f"**The ablation finding {'holds' if a['holds'] else 'does not hold'} in the median.**"]
    return "\n".join(lines) + "\n"


def write_json_and_markdown(data: dict[str, Any], markdown: str, out: str | Path, stem: str) -> list[Path]:
    """``out/<stem>.json`` (``data``) and ``out/<stem>.md`` (``markdown``), creating ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(data, indent=2))
    paths[1].write_text(markdown)
    return paths


def write(table: dict[str, Any], out: str | Path) -> list[Path]:
    """``out/seed_table.json`` and ``out/seed_table.md``."""
    return write_json_and_markdown(table, to_markdown(table), out, "seed_table")
