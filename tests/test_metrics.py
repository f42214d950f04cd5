"""Metric parity with scikit-learn, including ties and degenerate attributes."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, average_precision_score, f1_score

from stprivacy.attack import metrics


def _sklearn_scores(targets, scores):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on attributes without positives
        cmap = average_precision_score(targets, scores, average="macro")
        probs = 1 / (1 + np.exp(-scores))
        f1 = f1_score(targets, (probs >= 0.5).astype(int), average="macro")
    return cmap, f1


@given(
    num_videos=st.integers(1, 40),
    num_attributes=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
    tie_levels=st.sampled_from([0, 2, 5]),
    positive_rate=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
)
def test_cmap_and_f1_match_sklearn(num_videos, num_attributes, seed, tie_levels, positive_rate):
    rng = np.random.default_rng(seed)
    targets = (rng.random((num_videos, num_attributes)) < positive_rate).astype(np.float64)
    scores = rng.normal(size=(num_videos, num_attributes)) * 3
    if tie_levels:  # quantized scores exercise sklearn's grouping of tied thresholds
        scores = np.round(scores / 3 * tie_levels) / tie_levels
    want_cmap, want_f1 = _sklearn_scores(targets, scores)
    assert metrics.privacy_cmap(targets, scores) == pytest.approx(want_cmap, abs=1e-12)
    assert metrics.privacy_f1(torch.from_numpy(targets), torch.from_numpy(scores)) == pytest.approx(want_f1, abs=1e-12)


@given(num_videos=st.integers(1, 50), num_classes=st.integers(2, 9), seed=st.integers(0, 2**31 - 1))
def test_top1_matches_sklearn(num_videos, num_classes, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(num_videos, num_classes))
    labels = rng.integers(0, num_classes, size=num_videos)
    assert metrics.top1(torch.from_numpy(logits), torch.from_numpy(labels)) == pytest.approx(
        accuracy_score(labels, logits.argmax(1))
    )


def test_known_values():
    targets = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], dtype=float)
    perfect = targets * 4 - 2
    assert metrics.privacy_cmap(targets, perfect) == 1.0
    assert metrics.privacy_f1(targets, perfect) == 1.0
    assert metrics.privacy_f1(targets, -perfect) == 0.0
    # All scores tied: AP is the positive rate.
    assert metrics.average_precision(targets, np.zeros_like(targets)) == pytest.approx([0.5, 0.5])


def test_degenerate_attributes_follow_sklearn():
    targets = np.array([[0, 1], [0, 1], [0, 0]], dtype=float)  # attribute 0 has no positive
    scores = np.array([[-1.0, 2.0], [-2.0, 1.0], [-3.0, -1.0]])  # and none is predicted
    assert metrics.average_precision(targets, scores)[0] == 0.0
    want_cmap, want_f1 = _sklearn_scores(targets, scores)
    assert metrics.privacy_cmap(targets, scores) == pytest.approx(want_cmap)
    assert metrics.privacy_f1(targets, scores) == pytest.approx(want_f1)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="targets and scores"):
        metrics.privacy_cmap(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        metrics.privacy_f1(np.full((3, 2), 0.5), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="logits must be"):
        metrics.top1(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="threshold"):
        metrics.privacy_f1(np.zeros((3, 2)), np.zeros((3, 2)), threshold=1.5)
