"""The demo over seeds, as a table a script writes: ``stprivacy demo --seeds 0 1 ... --out DIR``.

Each seed's run leaves ``DIR/seed_<s>/report.json``; :func:`build` reads them back and makes one
table: every seed's row, the spread (min / median / max), the verdict (the demo's target met on
at least 9 in 10 of the seeds) and the ablation finding (``stprivacy.attack.verdict``), with the commit,
the machine and the thread count the runs came from. :func:`write` saves it as markdown and JSON.
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

from .verdict import ablation_finding

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


def finished(path: Path, *, tiny: bool, threads: int, overrides: list[str] | None = None) -> bool:
    """Whether ``path`` is a complete report of a run with these settings (so a seed list that was
    cut off resumes where it stopped, and a run with other settings is not mistaken for it)."""
    try:
        report = json.loads(Path(path).read_text())
        return (report["settings"]["tiny"] == tiny and report["machine"]["torch_threads"] == threads
                and report["settings"].get("overrides", []) == list(overrides or []) and "target" in report)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _row(report: dict[str, Any]) -> dict[str, Any]:
    rows, main, target = report["results"], report["main"], report["target"]
    competitive = target["competitive_baselines"]
    best = min(competitive, key=lambda n: rows[n]["cmap"]) if competitive else None
    out = {
        "seed": report["settings"]["seed"],
        "raw_top1": rows["raw"]["top1"],
        "top1": rows[main]["top1"],
        "cmap": rows[main]["cmap"],
        "privacy_from": rows[main].get("privacy_from", "pixels"),
        "top1_gap_points": target["top1_gap_to_raw_points"],
        "best_competitive_baseline": best,
        "best_competitive_cmap": rows[best]["cmap"] if best else None,
        "met": target["met"],
        "seconds": report["seconds"],
    }
    for name in [report["oracle"], *report["ablations"]]:
        out[name] = {"top1": rows[name]["top1"], "cmap": rows[name]["cmap"], "ap": rows[name]["ap"]}
    out["ap"] = rows[main]["ap"]
    return out


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": median(values), "max": max(values)}


def build(report_paths: Iterable[str | Path]) -> dict[str, Any]:
    """The seed table of the given ``report.json`` files (one per seed)."""
    reports = [json.loads(Path(p).read_text()) for p in report_paths]
    if not reports:
        raise ValueError("no report to build a seed table from")
    first = reports[0]
    runs = [_row(r) for r in reports]
    met = sum(r["met"] for r in runs)
    required = math.ceil(REQUIRED_FRACTION * len(runs))
    return {
        "command": "stprivacy demo --seeds " + " ".join(str(r["seed"]) for r in runs)
                   + f" --threads {first['machine']['torch_threads']}"
                   + "".join(f" --set {o}" for o in first["settings"].get("overrides", [])),
        "commits": sorted({r.get("commit", "unknown") for r in reports}),
        "machine": first["machine"],
        "threads": sorted({r["machine"]["torch_threads"] for r in reports}),
        "attributes": first["attributes"],
        "main": first["main"],
        "oracle": first["oracle"],
        "ablations": first["ablations"],
        "runs": runs,
        "spread": {key: _spread([r[key] for r in runs]) for key in ("top1", "cmap", "top1_gap_points", "seconds")},
        "verdict": {"met": met, "seeds": len(runs), "required": required, "holds": met >= required},
        "ablation": ablation_finding([r["results"] for r in reports], first["main"], first["ablations"]),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def to_markdown(table: dict[str, Any]) -> str:
    """The seed table as markdown: provenance, one row per seed, the spread, the verdicts."""
    m = table["machine"]
    oracle, (spars, anon) = table["oracle"], table["ablations"]
    lines = [
        f"Command: `{table['command']}`; commit {', '.join(table['commits'])}; machine: {m['cpu']}, "
        f"{m['cpu_count']} cores, torch {m['torch']}, {', '.join(map(str, table['threads']))} thread(s).",
        "",
        f"| seed | raw top-1 | {table['main']} top-1 | cMAP (attacker) | gap to raw | best competitive baseline cMAP "
        f"| target | sparsification only top-1 / cMAP | anonymization only top-1 / cMAP | oracle top-1 / cMAP | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table["runs"]:
        best = f"{_pct(r['best_competitive_cmap'])} ({r['best_competitive_baseline']})" if r["best_competitive_baseline"] \
            else "none competitive"
        lines.append(
            f"| {r['seed']} | {_pct(r['raw_top1'])} | {_pct(r['top1'])} | {_pct(r['cmap'])} ({r['privacy_from']}) "
            f"| {r['top1_gap_points']:.1f} | {best} | {'met' if r['met'] else '**missed**'} "
            f"| {_pct(r[spars]['top1'])} / {_pct(r[spars]['cmap'])} | {_pct(r[anon]['top1'])} / {_pct(r[anon]['cmap'])} "
            f"| {_pct(r[oracle]['top1'])} / {_pct(r[oracle]['cmap'])} | {r['seconds']:.0f} |")
    s = table["spread"]
    v = table["verdict"]
    lines += [
        "",
        f"Spread over seeds (min / median / max): top-1 {_pct(s['top1']['min'])} / {_pct(s['top1']['median'])} / "
        f"{_pct(s['top1']['max'])}; cMAP {_pct(s['cmap']['min'])} / {_pct(s['cmap']['median'])} / "
        f"{_pct(s['cmap']['max'])}; gap to raw {s['top1_gap_points']['min']:.1f} / "
        f"{s['top1_gap_points']['median']:.1f} / {s['top1_gap_points']['max']:.1f} points; "
        f"{s['seconds']['min']:.0f} / {s['seconds']['median']:.0f} / {s['seconds']['max']:.0f} s per run.",
        "",
        f"**Verdict: the target is met on {v['met']} of {v['seeds']} seeds (required: {v['required']}): "
        f"{'holds' if v['holds'] else 'does not hold'}.**",
        "",
        "Per-attribute AP of STPrivacy (median over seeds): " + ", ".join(
            f"{name} {100 * median(r['ap'][k] for r in table['runs']):.1f}" for k, name in enumerate(table["attributes"])),
        "",
    ]
    a = table["ablation"]
    lines.append(f"Ablation (paper Fig. 4; {a['definition']}):")
    lines.append("")
    lines.append("| method | median top-1 | median cMAP | median top-1 - cMAP | worse than both mechanisms |")
    lines.append("| --- | --- | --- | --- | --- |")
    for name, med in a["medians"].items():
        worse = "-" if name == table["main"] else ("yes" if a["ablation_is_worse"][name] else "**no**")
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
