"""The sparsity loss of Eq. 7."""
from __future__ import annotations

import pytest
import torch

import stpriv_ops


def test_value_by_hand():
    # Block 0: step ratios 0.5 and 1.0 against 0.5 -> errors 0, 0.5; block 1: ratio 0 against 0.25.
    keep0 = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    keep1 = torch.zeros(1, 2, 2)
    loss = stpriv_ops.sparsity_loss([keep0, keep1], [0.5, 0.25])
    expected = ((0.0 + 0.5**2) / 2 + 0.25**2) / 2
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expected)


def test_matches_per_step_formula_and_gradient():
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(3, 4, 9, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3)]
    targets = [0.7, 0.49, 0.343]
    loss = stpriv_ops.sparsity_loss(masks, targets)
    want = sum(((m.mean(-1) - t) ** 2).mean() for m, t in zip(masks, targets)) / 3
    torch.testing.assert_close(loss, want)
    assert loss.dtype == torch.float64
    assert torch.autograd.gradcheck(lambda *m: stpriv_ops.sparsity_loss(list(m), targets), tuple(masks))


def test_zero_when_every_step_hits_its_target():
    keep = torch.zeros(2, 3, 10)
    keep[..., :7] = 1
    assert stpriv_ops.sparsity_loss([keep], [0.7]).item() == pytest.approx(0.0, abs=1e-12)


def test_low_precision_masks_reduce_in_float32():
    keep = (torch.rand(2, 8, 49) < 0.5).to(torch.bfloat16)
    loss = stpriv_ops.sparsity_loss([keep], [0.5])
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, stpriv_ops.sparsity_loss([keep.float()], [0.5]))


@pytest.mark.parametrize(
    "masks, targets, error, match",
    [
        (torch.zeros(1, 2, 3), [0.5], TypeError, "keep_masks must be a list"),
        ([torch.zeros(1, 2, 3)], 0.5, TypeError, "targets must be a list"),
        ([], [], ValueError, "at least one mask"),
        ([torch.zeros(1, 2, 3)], [0.5, 0.2], ValueError, "one ratio per mask"),
        ([torch.zeros(2, 3)], [0.5], ValueError, r"keep_masks\[0\] must have 3 dimensions"),
        ([torch.zeros(1, 2, 3)], [1.5], ValueError, r"targets\[0\] must be a float in \[0, 1\]"),
        ([torch.zeros(1, 0, 3)], [0.5], ValueError, r"keep_masks\[0\] must not be empty"),
    ],
)
def test_bad_inputs(masks, targets, error, match):
    with pytest.raises(error, match=match):
        stpriv_ops.sparsity_loss(masks, targets)
