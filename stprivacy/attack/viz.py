"""Pictures of the demo: the paper's Figure 3 (raw / sparsified / anonymized) and the trade-off plot.

matplotlib with the Agg backend: no display is needed, files are PNG.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from .metrics import TASK_SCORES  # noqa: E402


def _check_videos(**videos: Tensor) -> tuple[int, ...]:
    shapes = {name: tuple(v.shape) for name, v in videos.items()}
    first = next(iter(shapes.values()))
    if len(first) != 5 or first[1] != 3 or any(s != first for s in shapes.values()):
        raise ValueError(f"videos must all be Tensor[B, 3, T, H, W] of one shape, got {shapes}")
    return first


def plot_examples(raw: Tensor, sparsified: Tensor, anonymized: Tensor, path: str | Path, *,
                  frames: Sequence[int] | None = None, captions: Sequence[str] | None = None) -> Path:
    """Figure-3-style grid: for each video, rows raw / sparsified / anonymized over a few frames.

    Args:
        raw, sparsified, anonymized: Tensor[B, 3, T, H, W] in [0, 1] (clamped for display).
        path: PNG file to write.
        frames: frame indices shown (default: first, middle, last).
        captions: one caption per video (e.g. its labels).

    Returns:
        The path written.
    """
    B, _, T, _, _ = _check_videos(raw=raw, sparsified=sparsified, anonymized=anonymized)
    frames = list(frames) if frames is not None else sorted({0, T // 2, T - 1})
    if any(not 0 <= t < T for t in frames):
        raise ValueError(f"frames must be in [0, {T}), got {frames}")
    rows = [(b, kind, video) for b in range(B)
            for kind, video in (("raw", raw), ("sparsified", sparsified), ("anonymized", anonymized))]
    fig, axes = plt.subplots(len(rows), len(frames), figsize=(1.4 * len(frames) + 1.2, 1.4 * len(rows)),
                             squeeze=False)
    for r, (b, kind, video) in enumerate(rows):
        for c, t in enumerate(frames):
            ax = axes[r][c]
            ax.imshow(video[b, :, t].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(),
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=8)
            if c == 0:
                label = kind if kind != "raw" or captions is None else f"{captions[b]}\nraw"
                ax.set_ylabel(label, fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_tradeoff(curve: Sequence[Mapping[str, float]], baselines: Mapping[str, Mapping[str, float]],
                  path: str | Path, *, title: str = "action vs privacy", highlight: Sequence[str] = (),
                  curve_label: str = "STPrivacy (alpha)", task: str = "top1") -> Path:
    """The task score (x: action top-1, or action cMAP for multi-label actions) against privacy
    cMAP (y) for STPrivacy over deployment keep ratios (a line, each point labeled with its alpha)
    and for the baselines and ablations (points). Lower-right is better: the action kept, the
    privacy removed.

    Args:
        curve: ``[{"alpha": a, task: t, "cmap": c}, ...]`` as fractions.
        baselines: ``{name: {task: t, "cmap": c}}`` as fractions.
        path: PNG file to write.
        highlight: names among ``baselines`` to mark out (a user's method placed among them):
            a larger black-edged star, labeled beside the point.
        curve_label: the legend's name of the curve.
        task: the key of the x value, ``"top1"`` or ``"action_cmap"``
            (:func:`stprivacy.attack.metrics.task_score`).
    """
    if task not in TASK_SCORES:
        raise ValueError(f"task must be one of {sorted(TASK_SCORES)}, got {task!r}")
    # The legend sits right of the axes: with a dozen rows it would cover points inside them.
    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    if curve:
        pts = sorted(curve, key=lambda p: p["alpha"])
        ax.plot([100 * p[task] for p in pts], [100 * p["cmap"] for p in pts], "o-", color="tab:red",
                label=curve_label)
        for p in pts:
            ax.annotate(f"{p['alpha']:g}", (100 * p[task], 100 * p["cmap"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color="tab:red")
    markers = "sDv^<>pP*hX"
    for i, (name, p) in enumerate(baselines.items()):
        if name in highlight:
            ax.scatter(100 * p[task], 100 * p["cmap"], marker="*", s=160, edgecolors="black", zorder=3, label=name)
            ax.annotate(name, (100 * p[task], 100 * p["cmap"]), textcoords="offset points", xytext=(6, -10),
                        fontsize=7, fontweight="bold")
        else:
            ax.scatter(100 * p[task], 100 * p["cmap"], marker=markers[i % len(markers)], s=40, label=name)
    ax.set_xlabel(f"{TASK_SCORES[task]} (%)  higher is better")
    ax.set_ylabel("privacy cMAP (%), stronger attacker; lower is better")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(sweep: Mapping, path: str | Path) -> Path:
    """Paper Figure 4's layout for one swept setting (``stprivacy sweep``'s ``sweep.json``): per
    value, the median task score (x: action top-1, or action cMAP for multi-label actions, the
    sweep's ``"task"``) and privacy cMAP (y) over seeds, with their min-to-max ranges as error
    bars, joined in the order of the values and labeled with them; raw video as a black star (its
    median and range over the same seeds)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    summary, task = sweep["summary"], sweep.get("task", "top1")

    def median_and_range(s: Mapping, metric: str) -> tuple[float, list[list[float]]]:
        m = 100 * s[metric]["median"]
        return m, [[m - 100 * s[metric]["min"]], [100 * s[metric]["max"] - m]]

    xs, ys = [], []
    for label in sweep["labels"]:
        x, xerr = median_and_range(summary[label], task)
        y, yerr = median_and_range(summary[label], "cmap")
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color="tab:red", ecolor="tab:red", alpha=0.8, capsize=3)
        ax.annotate(f"{label}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8, color="tab:red")
        xs.append(x)
        ys.append(y)
    ax.plot(xs, ys, "-", color="tab:red", alpha=0.5, label=sweep["parameter"])
    x, xerr = median_and_range(sweep["raw"], task)
    y, yerr = median_and_range(sweep["raw"], "cmap")
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="*", markersize=12, color="black", capsize=3, label="raw video")
    ax.set_xlabel(f"{TASK_SCORES[task]} (%)  higher is better")
    ax.set_ylabel("privacy cMAP (%), stronger attacker; lower is better")
    seeds = sweep["seeds"]
    ax.set_title(f"sweep of {sweep['parameter']} (median over {len(seeds)} seed{'s' * (len(seeds) > 1)}, "
                 "bars: min to max)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
