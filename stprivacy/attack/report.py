"""What an evaluation (:func:`stprivacy.attack.evaluate_methods`) leaves in ``--out``.

* ``evaluation.json``: the evaluation as it is, every attacker's numbers included.
* ``evaluation.md``: the paper's Table 1 layout, one row per method and, per attacker, action
  top-1, privacy cMAP and class-wise F1 (in percent); then the per-attribute AP of each method's
  stronger attacker, and the videos a transformed folder did not supply, by name. A multi-label
  action task (paper Table 5) shows action cMAP and action F1 where the others show top-1.
* ``tradeoff.png``: the task score (action top-1, or action cMAP) against privacy cMAP (the
  stronger attacker of each method), STPrivacy's keep ratios as a line, the user's methods marked
  among the baselines (:func:`stprivacy.attack.viz.plot_tradeoff`). Needs a video attacker (the
  frame one has no action recognizer).

The command line prints the same markdown.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .metrics import task_score
from .seed_table import _pct, write_json_and_markdown
from .verdict import ATTACKER_PROTOCOL

ATTACKER_TITLES = {
    "video": "video ViT from scratch (paper Table 1)",
    "frame": "2D ViT per frame (paper Table 3)",
    "video_imagenet": "video ViT from ImageNet",
    "frame_imagenet": "2D ViT per frame from ImageNet",
}


def _columns(attacker: str, multilabel: bool = False) -> list[tuple[str, str]]:
    """(header, result key) of an attacker's columns; ``multilabel``: the actions are multi-label,
    scored by cMAP and F1 instead of top-1."""
    if ATTACKER_PROTOCOL[attacker] == "video" and multilabel:
        return [(f"{attacker}: action cMAP ↑", "action_cmap"), (f"{attacker}: action F1 ↑", "action_f1"),
                (f"{attacker}: cMAP ↓", "cmap"), (f"{attacker}: F1 ↓", "f1")]
    if ATTACKER_PROTOCOL[attacker] == "video":
        return [(f"{attacker}: top-1 ↑", "top1"), (f"{attacker}: cMAP ↓", "cmap"), (f"{attacker}: F1 ↓", "f1")]
    return [(f"{attacker}: cMAP ↓ (frames)", "frame_cmap"), (f"{attacker}: F1 ↓ (frames)", "frame_f1"),
            (f"{attacker}: cMAP ↓ (videos)", "video_cmap")]


def _left_out(row: dict[str, Any]) -> str:
    if "left_out" not in row:
        return "-"
    return str(row["left_out"]["count"])


def to_markdown(evaluation: dict[str, Any]) -> str:
    """The evaluation as markdown (see the module docstring)."""
    d, m = evaluation["dataset"], evaluation["machine"]
    rows, attackers = evaluation["rows"], evaluation["attackers"]
    multilabel = bool(d.get("multilabel_actions"))  # evaluations written before the key: single-label
    where = f"{d['evaluated_on']}" + (f", methods trained on {d['trained_on']} (cross-dataset: novel actions)"
                                      if d["cross_dataset"] else "")
    command = f"Command: `{evaluation['command']}`; " if evaluation.get("command") else ""
    lines = [
        f"# Evaluation on {where}",
        "",
        f"{command}commit {evaluation['commit']}; machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}, "
        f"{m['torch_threads']} thread(s); {evaluation['seconds']:.0f} s.",
        "",
        f"{d['train_videos']} train / {d['test_videos']} test videos, {d['num_classes']} action classes"
        + (" (multi-label: scored by action cMAP and F1)" if multilabel else "") + ", "
        f"{len(d['attributes'])} privacy attributes. Fresh recognizers trained on each method's transformed "
        f"training videos, tested on its transformed test videos; numbers in percent. Attackers: "
        + "; ".join(f"`{a}` = {ATTACKER_TITLES[a]}" for a in attackers) + ".",
        "",
    ]
    columns = [c for a in attackers for c in _columns(a, multilabel)]
    lines.append("| Method | " + " | ".join(h for h, _ in columns) + " | kept | videos left out |")
    lines.append("| --- " * (len(columns) + 3) + "|")
    for name, row in rows.items():
        shown = f"**{name}**" if name in evaluation["highlight"] else name
        cells = [_pct(row["attackers"][a].get(key)) for a in attackers for _, key in _columns(a, multilabel)]
        lines.append(f"| {shown} | " + " | ".join(cells) + f" | {_pct(row['kept'])} | {_left_out(row)} |")
    names = d["attributes"]
    task = "action cMAP ↑" if multilabel else "top-1 ↑"
    lines += ["", "Per-attribute AP (%) of each method's stronger privacy attacker (higher per-video cMAP; "
              "the trade-off plot's point):", "",
              f"| Method | attacker | {task} | cMAP ↓ | F1 ↓ | " + " | ".join(names) + " |",
              "| --- " * (len(names) + 5) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['privacy_from']} | {_pct(task_score(row)[1])} | {_pct(row['cmap'])} | "
                     f"{_pct(row['f1'])} | " + " | ".join(_pct(a) for a in row["ap"]) + " |")
    left = {name: row["left_out"] for name, row in rows.items() if row.get("left_out", {}).get("count")}
    if left:
        lines += ["", "Videos a transformed folder did not supply (left out of that method's split, named here; "
                  "the baselines keep them):", ""]
        for name, splits in left.items():
            for split in ("train", "test"):
                for path in splits[split]["missing"]:
                    lines.append(f"- {name}, {split}: `{path}` missing")
                for path, why in splits[split]["unreadable"].items():
                    lines.append(f"- {name}, {split}: `{path}` unreadable ({why})")
    return "\n".join(lines) + "\n"


def write_evaluation(evaluation: dict[str, Any], out: str | Path) -> list[Path]:
    """``out/evaluation.json``, ``out/evaluation.md`` and (with a video attacker) ``out/tradeoff.png``."""
    from . import viz  # matplotlib: only when a picture is drawn

    out = Path(out)
    paths = write_json_and_markdown(evaluation, to_markdown(evaluation), out, "evaluation")
    rows = evaluation["rows"]
    if any(task_score(row)[1] is not None for row in rows.values()):
        task = task_score(next(iter(rows.values())))[0]
        curve = [{"alpha": row["alpha"], task: row[task], "cmap": row["cmap"]}
                 for row in rows.values() if row["kind"] == "stprivacy"]
        points = {name: row for name, row in rows.items() if row["kind"] != "stprivacy"}
        paths.append(viz.plot_tradeoff(curve, points, out / "tradeoff.png", highlight=evaluation["highlight"],
                                       title=f"{evaluation['dataset']['evaluated_on']}: action vs privacy",
                                       task=task))
    return paths
