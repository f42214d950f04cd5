"""Metrics of the paper's tables: action top-1, privacy cMAP and class-wise F1.

All three equal scikit-learn's definitions (tests/test_metrics.py compares them):

* ``top1`` = ``accuracy_score(y, argmax(logits))``.
* ``privacy_cmap`` = ``average_precision_score(Y, scores, average="macro")``: per attribute,
  AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, highest first (tied scores
  form one threshold, no interpolation), then the mean over attributes.
* ``privacy_f1`` = ``f1_score(Y, sigmoid(logits) >= 0.5, average="macro")`` on the multi-label
  indicator matrix: per attribute F1 = 2 TP / (2 TP + FP + FN), then the mean.

Degenerate attributes are scored as scikit-learn (>= 1.3) scores them, with its default
``zero_division``: an attribute with no positive in ``Y`` has AP = 0 (recall is undefined; its
curve is taken as flat at 0), and an attribute whose 2 TP + FP + FN is 0 (no positive in ``Y``
nor in the prediction) has F1 = 0. Both still count in the mean. scikit-learn also warns in
these cases; we return the same numbers silently.

A multi-label action task (P-HVU's, paper Table 5: several actions per video, multi-hot labels)
has no top-1: its actions are scored like the privacy attributes, by cMAP and macro F1 over the
action classes (``action_cmap``, ``action_f1``, per class ``action_ap``), and ``top1`` is None.
:func:`task_score` gives a result row's action score whichever kind it is.

Values are fractions in [0, 1]; tables print them in percent.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _check_multilabel(targets: np.ndarray, scores: np.ndarray) -> None:
    if targets.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"targets and scores must both be [num_videos, num_attributes], got {targets.shape} and {scores.shape}"
        )
    if not np.isin(targets, (0.0, 1.0)).all():
        raise ValueError("targets must contain only 0 and 1")
    if targets.shape[0] == 0:
        raise ValueError("need at least one video to score")


def top1(logits, labels) -> float:
    """Fraction of videos whose highest logit is the true class.

    Args:
        logits: Tensor[M, num_classes].
        labels: Tensor[M] of class indices.
    """
    logits, labels = _as_numpy(logits), _as_numpy(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be [M, num_classes] and labels [M], got {logits.shape} and {labels.shape}")
    if labels.size == 0:
        raise ValueError("need at least one video to score")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def average_precision(targets, scores) -> np.ndarray:
    """Per-attribute average precision, scikit-learn's (non-interpolated) definition.

    Args:
        targets: [M, P] of 0/1.
        scores: [M, P], any monotone score (logits or probabilities).

    Returns:
        float64 array [P]; 0 for an attribute without positives.
    """
    targets, scores = _as_numpy(targets), _as_numpy(scores)
    _check_multilabel(targets, scores)
    out = np.zeros(targets.shape[1])
    for a in range(targets.shape[1]):
        y, s = targets[:, a], scores[:, a]
        positives = y.sum()
        if positives == 0:
            continue
        order = np.argsort(-s, kind="mergesort")
        y, s = y[order], s[order]
        # The last index of each run of tied scores is where a threshold's counts are read.
        last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
        tp = np.cumsum(y)[last_of_tie]
        fp = (last_of_tie + 1) - tp
        precision = tp / (tp + fp)
        recall = tp / positives
        out[a] = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    return out


def privacy_cmap(targets, scores) -> float:
    """Class-wise mean average precision over privacy attributes (lower = more private)."""
    return float(np.mean(average_precision(targets, scores)))


def privacy_f1(targets, logits, threshold: float = 0.5) -> float:
    """Macro F1 over attributes, predicting an attribute when ``sigmoid(logit) >= threshold``.

    Args:
        targets: [M, P] of 0/1.
        logits: [M, P] raw logits (the sigmoid is applied here).
    """
    targets, logits = _as_numpy(targets), _as_numpy(logits)
    _check_multilabel(targets, logits)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative logits: sigmoid 0
        predicted = (1.0 / (1.0 + np.exp(-logits))) >= threshold
    truth = targets == 1
    tp = np.sum(predicted & truth, axis=0)
    fp = np.sum(predicted & ~truth, axis=0)
    fn = np.sum(~predicted & truth, axis=0)
    denominator = 2 * tp + fp + fn
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    return float(np.mean(f1))


def summarize(action_logits, actions, privacy_logits, privacy) -> dict[str, Any]:
    """The three numbers of a Table-1 row, as fractions: top1, f1, cmap; and ``ap``, the list of
    per-attribute average precisions whose mean is cmap (which attribute leaks, and how much).

    ``actions`` of class indices (``Tensor[M]``) are scored by top-1; multi-hot actions
    (``Tensor[M, K]``, a multi-label task) by ``action_cmap``, ``action_f1`` and ``action_ap``,
    the privacy metrics' definitions over the action classes, with ``top1`` None.
    """
    ap = average_precision(privacy, privacy_logits)
    row: dict[str, Any] = {"top1": None if _is_multi_hot(actions) else top1(action_logits, actions)}
    row.update(f1=privacy_f1(privacy, privacy_logits), cmap=float(np.mean(ap)), ap=[float(a) for a in ap])
    if _is_multi_hot(actions):
        action_ap = average_precision(actions, action_logits)
        row.update(action_cmap=float(np.mean(action_ap)), action_f1=privacy_f1(actions, action_logits),
                   action_ap=[float(a) for a in action_ap])
    return row


def _is_multi_hot(actions) -> bool:
    return np.ndim(actions) == 2


# The result key of each kind of action score -> its name in tables and plots.
TASK_SCORES = {"top1": "action top-1", "action_cmap": "action cMAP"}


def task_score(row: Mapping[str, Any]) -> tuple[str, float | None]:
    """``(key, value)`` of a result row's action score, the number the action task is judged by:
    ``("action_cmap", ...)`` for a multi-label task (its rows carry that key), else ``("top1", ...)``.
    The value is None where no action recognizer ran (a frame-only attack). The name to print is
    ``TASK_SCORES[key]``; higher is better either way."""
    if "action_cmap" in row:
        return "action_cmap", row["action_cmap"]
    return "top1", row.get("top1")
