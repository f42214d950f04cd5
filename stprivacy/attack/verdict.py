"""How results are judged: which attacker a row's numbers come from, the demo's target, and the
ablation finding. One place, shared by ``stprivacy demo``, the seed table and ``stprivacy evaluate``.

Attackers. A method is attacked by fresh recognizers trained on its output (the evaluation
protocol). Two kinds exist:

* ``"pixels"``: ViTs that see only the released video (a dropped tubelet is black pixels). Every
  method, baselines and STPrivacy alike, faces this attacker: it is what anyone holding the
  released frames can train.
* ``"mask"``: ViTs that also receive STPrivacy's keep mask (masked attention, masked pooling),
  the paper's recognizers. Only methods that drop tubelets have one.

A row reports, per method, the privacy numbers (cMAP, F1, per-attribute AP) of the attacker that
recovers more privacy and the top-1 of the action recognizer that does better (a user deploys the
better one); ``privacy_from`` and ``top1_from`` name them. Which attacker that is, is decided on a
**validation split** carved from the training videos (:func:`split_validation`), never on the test
set: every attacker trains on the rest of the training videos, is scored on the validation videos
and on the test videos, and the row reports the test numbers of the attackers that did better on
validation. The same rule holds for every row of every table (:data:`SELECTION_RULE`).

A multi-label action task (its rows carry ``action_cmap``, see :func:`stprivacy.attack.metrics.task_score`)
is judged by its action cMAP wherever a single-label one is judged by top-1: the action recognizer
with the higher validation action cMAP gives the row's action numbers (``top1_from`` names it;
``top1`` stays None), and the trade-off margin is action cMAP minus privacy cMAP
(:data:`SELECTION_RULE_MULTILABEL`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from statistics import median
from typing import Any

import torch

from .metrics import task_score

ATTACKERS = ("pixels", "mask")  # what a video attacker of a method that drops tubelets sees
# attacker name -> the protocol it runs (stprivacy.attack.evaluate, stprivacy.attack.protocols)
ATTACKER_PROTOCOL = {"video": "video", "frame": "frame", "video_imagenet": "video", "frame_imagenet": "frame"}
TOP1_GAP_POINTS = 5.0  # STPrivacy's top-1 may trail raw by at most this many points
COMPETITIVE_POINTS = 10.0  # a baseline within this many top-1 points of raw is "competitive"


SELECTION_RULE = ("attackers chosen on a validation split of the training videos: privacy from the attacker with "
                  "the higher validation cMAP, top-1 from the action recognizer with the higher validation top-1; "
                  "the test numbers of those are reported")
SELECTION_RULE_MULTILABEL = ("attackers chosen on a validation split of the training videos: privacy from the "
                             "attacker with the higher validation cMAP, the multi-label actions (cMAP, F1) from the "
                             "action recognizer with the higher validation action cMAP; the test numbers of those are "
                             "reported")
# A row's action numbers, all from one action recognizer: top-1, or the multi-label scores.
ACTION_KEYS = ("top1", "action_cmap", "action_f1", "action_ap")


def selection_rule(row: Mapping[str, Any]) -> str:
    """The sentence that says how ``row``'s attackers were chosen (by its kind of action task)."""
    return SELECTION_RULE_MULTILABEL if task_score(row)[0] == "action_cmap" else SELECTION_RULE


def split_validation(num_videos: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The training videos split into those the attackers train on and those that choose them.

    A seeded random permutation (real datasets are often listed class by class), the same for a
    given ``(num_videos, fraction, seed)`` on any machine, so that the anonymizer's training and
    every attacker of every row leave out the same videos.

    Returns:
        ``(fit_indices, validation_indices)``, each sorted; ``round(fraction * num_videos)``
        validation videos, at least 1, and at least 1 left to fit on.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction!r}")
    if num_videos < 2:
        raise ValueError(f"a validation split needs at least 2 training videos, got {num_videos}")
    count = min(max(1, round(fraction * num_videos)), num_videos - 1)
    order = torch.randperm(num_videos, generator=torch.Generator().manual_seed(7919 * seed + 104729)).tolist()
    return sorted(order[count:]), sorted(order[:count])


def _points(fraction: float) -> float:
    # Percentage points, rounded far below any reported digit, so 0.951 - 0.902 is 4.9, not 4.9000000001.
    return round(100.0 * fraction, 6)


def check_attackers(attackers) -> tuple[str, ...]:
    """``attackers`` as a tuple, refused unless it is a non-empty subset of :data:`ATTACKERS`."""
    attackers = tuple(attackers)
    if not attackers or any(a not in ATTACKERS for a in attackers):
        raise ValueError(f"attackers must be a non-empty subset of {ATTACKERS}, got {attackers!r}")
    return attackers


def combine_attackers(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One row from the results of each attacker (``{"pixels": {...}, "mask": {...}}``), each
    holding its test metrics and, under ``"validation"``, its metrics on the validation split.

    Privacy (cmap, f1, ap) comes from the attacker with the higher validation cMAP, the action
    numbers (top-1; or action cMAP, F1 and AP for multi-label actions) from the action recognizer
    with the higher validation task score (:func:`~stprivacy.attack.metrics.task_score`); ties go
    to the first attacker in ``ATTACKERS`` order. The row's numbers are those attackers' test numbers.
    """
    if not results:
        raise ValueError("results must hold at least one attacker's result")
    unknown = sorted(set(results) - set(ATTACKERS))
    if unknown:
        raise ValueError(f"unknown attackers {unknown}; expected a subset of {ATTACKERS}")
    order = [a for a in ATTACKERS if a in results]
    missing = [a for a in order if "validation" not in results[a]]
    if missing:
        raise ValueError(f"attackers {missing} have no validation metrics to be chosen by")
    privacy_from = max(order, key=lambda a: (results[a]["validation"]["cmap"], -order.index(a)))
    top1_from = max(order, key=lambda a: (task_score(results[a]["validation"])[1], -order.index(a)))
    row = dict(results[privacy_from])
    row.update(_action_numbers(results[top1_from]))
    # The row's validation numbers come from the same attackers as its test numbers, so that rows
    # can be combined again by the same rule (stprivacy.attack.evaluate.summarize_attackers).
    row["validation"] = {**results[privacy_from]["validation"], **_action_numbers(results[top1_from]["validation"])}
    row.update(privacy_from=privacy_from, top1_from=top1_from, selection=selection_rule(row),
               attackers={a: {k: v for k, v in results[a].items() if k != "attackers"} for a in order})
    return row


def _action_numbers(result: Mapping[str, Any]) -> dict[str, Any]:
    return {key: result[key] for key in ACTION_KEYS if key in result}


def demo_target(rows: Mapping[str, Mapping[str, Any]], main: str, baselines: Iterable[str], raw: str = "raw"
                ) -> dict[str, Any]:
    """The demo's success criterion: ``main``'s top-1 within 5 points of ``raw``'s, and its cMAP
    below that of every baseline whose top-1 is within 10 points of raw (both judged on rows made
    by :func:`combine_attackers`: the stronger privacy attacker of each method).

    Returns:
        ``{"met", "top1_gap_to_raw_points", "top1_within_5_points", "competitive_baselines",
        "cmap_below_competitive_baselines", "privacy_from"}``.
    """
    for name in (raw, main):
        if name not in rows:
            raise ValueError(f"rows has no {name!r} row")
    gap = _points(rows[raw]["top1"]) - _points(rows[main]["top1"])
    competitive = [n for n in baselines if n in rows
                   and _points(rows[raw]["top1"]) - _points(rows[n]["top1"]) <= COMPETITIVE_POINTS]
    within = round(gap, 6) <= TOP1_GAP_POINTS
    below = all(rows[main]["cmap"] < rows[n]["cmap"] for n in competitive)
    return {
        "met": bool(within and below),
        "top1_gap_to_raw_points": round(gap, 2),
        "top1_within_5_points": bool(within),
        "competitive_baselines": competitive,
        "cmap_below_competitive_baselines": bool(below),
        "privacy_from": {name: rows[name].get("privacy_from", "pixels") for name in [main, *competitive]},
    }


def tradeoff_margin(row: Mapping[str, Any]) -> float:
    """The scalar a trade-off is ranked by: the task score (top-1, or action cMAP for multi-label
    actions) minus privacy cMAP, in points (action kept minus privacy leaked; higher is better)."""
    return _points(task_score(row)[1]) - _points(row["cmap"])


def ablation_finding(runs: list[Mapping[str, Mapping[str, Any]]], full: str, ablations: Iterable[str]
                     ) -> dict[str, Any]:
    """Paper Fig. 4 (first column) over seeds: does each mechanism alone have a worse trade-off
    than both together?

    "Worse" means a lower median, over the runs, of :func:`tradeoff_margin` (top-1 minus cMAP, in
    points). Medians of top-1 and cMAP are reported beside it.

    Args:
        runs: one ``{method: row}`` per seed.
        full: the method with both mechanisms.
        ablations: the methods with one mechanism each.
    """
    if not runs:
        raise ValueError("runs must hold at least one run")
    methods = [full, *ablations]
    medians = {}
    for name in methods:
        rows = [run[name] for run in runs if name in run]
        if not rows:
            raise ValueError(f"no run has a {name!r} row")
        medians[name] = {
            "top1": median(r["top1"] for r in rows), "cmap": median(r["cmap"] for r in rows),
            "margin_points": median(tradeoff_margin(r) for r in rows), "runs": len(rows),
        }
    worse = {name: medians[name]["margin_points"] < medians[full]["margin_points"] for name in ablations}
    return {"definition": "worse = lower median over seeds of (top-1 - cMAP) in points",
            "medians": medians, "ablation_is_worse": worse, "holds": all(worse.values())}
