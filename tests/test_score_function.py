"""``STPrivacyConfig.keep_gradient="score_function"``: exact log-probabilities of the sampled keep
decisions and an unbiased REINFORCE gradient, checked against enumeration of every outcome."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from stprivacy.model import STPrivacy, STPrivacyConfig
from stprivacy.model.psb import sample_keep, sample_topk
from stprivacy.train import TrainConfig, build_dataset, train_anonymizer
from stprivacy.train.common import score_function_term
from train_fixtures import TINY_TRAIN, one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


def ordered_draw_probability(score: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """Plackett-Luce probability of drawing ``order`` from ``softmax(score)`` without replacement."""
    p, left = score.new_ones(()), list(range(len(score)))
    for i in order:
        p = p * score[i].exp() / score[left].exp().sum()
        left.remove(i)
    return p


def subset_probabilities(score: torch.Tensor, k: int) -> dict[frozenset, torch.Tensor]:
    out: dict[frozenset, torch.Tensor] = {}
    for order in itertools.permutations(range(len(score)), k):
        key = frozenset(order)
        out[key] = out.get(key, 0) + ordered_draw_probability(score, order)
    return out


def test_topk_draw_log_prob_is_the_plackett_luce_probability_of_its_order():
    torch.manual_seed(0)
    score = torch.randn(3, 2, 6, dtype=torch.float64)
    keep, log_prob = sample_topk(score, 3, torch.Generator().manual_seed(1))
    assert (keep.sum(-1) == 3).all() and not keep.requires_grad
    # Recompute the noise the sampler drew to learn the draw order, then the probability by hand.
    from stprivacy.model import ops
    noise = ops.gumbel_noise(score, torch.Generator().manual_seed(1))
    order = (score + noise).topk(3, dim=-1).indices
    expected = sum(math.log(ordered_draw_probability(score[b, t], tuple(order[b, t].tolist())))
                   for b in range(3) for t in range(2))
    assert log_prob.sum().item() == pytest.approx(expected, rel=1e-10)


def test_topk_draws_follow_the_enumerated_subset_distribution():
    score = torch.tensor([1.5, 0.0, -1.0, 0.5], dtype=torch.float64)
    draws = 40000
    keep, _ = sample_topk(score.expand(draws, 1, 4).contiguous(), 2, torch.Generator().manual_seed(3))
    for subset, p in subset_probabilities(score, 2).items():
        hits = (keep[:, 0, sorted(subset)].sum(-1) == 2).double().mean()
        assert abs(hits - p) < 4 * math.sqrt(p * (1 - p) / draws), (subset, hits.item(), p.item())


def test_keep_decision_log_prob_counts_only_tubelets_still_kept():
    log_probs = torch.log_softmax(torch.randn(4, 10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)),
                                  dim=-1)
    prev = (torch.rand(4, 10, generator=torch.Generator().manual_seed(4)) > 0.3).double()
    keep, log_prob = sample_keep(log_probs, prev, torch.Generator().manual_seed(5))
    assert (keep <= prev).all() and not keep.requires_grad
    expected = torch.where(keep.bool(), log_probs[..., 0], log_probs[..., 1]) * prev
    torch.testing.assert_close(log_prob, expected.sum(-1))
    # Frequencies: a tubelet stays with its keep probability.
    draws = torch.zeros(())
    lp = torch.log_softmax(torch.tensor([[[0.8, -0.4]]], dtype=torch.float64), dim=-1)
    stays, _ = sample_keep(lp.expand(20000, 1, 2).contiguous(), torch.ones(20000, 1, dtype=torch.float64),
                           torch.Generator().manual_seed(6))
    p = lp[0, 0, 0].exp().item()
    draws = stays.mean().item()
    assert abs(draws - p) < 4 * math.sqrt(p * (1 - p) / 20000)


def test_score_function_term_is_an_unbiased_gradient_of_the_expected_loss():
    score = torch.tensor([0.3, -0.2, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    loss_of = {s: float(v) for s, v in zip(itertools.combinations(range(4), 2), (3.0, 1.0, 0.5, 2.0, 0.2, 1.5))}
    exact = sum(p * loss_of[tuple(sorted(s))] for s, p in subset_probabilities(score, 2).items())
    (exact_grad,) = torch.autograd.grad(exact, score)

    draws = 40000
    keep, log_prob = sample_topk(score.expand(draws, 1, 4), 2, torch.Generator().manual_seed(7))
    chosen = keep[:, 0].nonzero()[:, 1].view(draws, 2).tolist()
    per_clip = torch.tensor([loss_of[tuple(c)] for c in chosen], dtype=torch.float64)
    (estimate,) = torch.autograd.grad(score_function_term(per_clip, log_prob), score)
    torch.testing.assert_close(estimate, exact_grad, atol=0.03, rtol=0)
    assert exact_grad.abs().max() > 0.1  # the check is not trivially met by zeros


def test_score_function_term_is_zero_without_log_probabilities():
    assert score_function_term(torch.ones(3), None).item() == 0.0
    one = score_function_term(torch.tensor([2.0]), torch.tensor([-1.0]))  # no other clip: baseline 0
    assert one.item() == pytest.approx(-2.0)


@pytest.mark.parametrize("sampler", ["gumbel", "gumbel_topk"])
def test_model_returns_the_log_prob_only_when_asked(sampler):
    cfg = dict(frames=4, image_size=16, tubelet=(2, 4, 4), embed_dim=24, num_heads=2, depth=1, num_psb=3,
               pab_depth=1, mlp_ratio=2.0, train_sampler=sampler)
    video = torch.rand(3, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = STPrivacy(STPrivacyConfig.small(**cfg, keep_gradient="score_function")).train()
    out = model(video, generator=torch.Generator().manual_seed(1))
    assert out.keep_log_prob.shape == (3,) and not out.keep.requires_grad
    out.keep_log_prob.sum().backward()
    for psb in model.psbs:
        assert psb.predictor.out_conv[0].weight.grad.abs().sum() > 0
    assert model.eval()(video).keep_log_prob is None
    torch.manual_seed(0)
    plain = STPrivacy(STPrivacyConfig.small(**cfg)).train()
    assert plain(video, generator=torch.Generator().manual_seed(1)).keep_log_prob is None


def test_unknown_keep_gradient_is_refused():
    with pytest.raises(ValueError, match="keep_gradient"):
        STPrivacyConfig.small(keep_gradient="reinforce")


def test_training_with_the_score_function_moves_the_predictors():
    cfg = TrainConfig.from_dict({**TINY_TRAIN, "log": "none"})
    model_cfg = STPrivacyConfig.small(embed_dim=24, num_heads=2, depth=1, pab_depth=1, num_psb=2,
                                      train_sampler="gumbel_topk", keep_gradient="score_function")
    geometry = {"frames": model_cfg.frames, "image_size": model_cfg.image_size, "tubelet": model_cfg.tubelet}
    data = build_dataset("synthetic", "train", geometry, **cfg.dataset_kwargs)
    torch.manual_seed(cfg.seed)  # what train_anonymizer seeds before it builds the model
    before = STPrivacy(model_cfg).psbs[0].predictor.out_conv[-2].weight.clone()
    model, history = train_anonymizer(model_cfg, cfg, data, num_classes=data.num_classes,
                                      num_attributes=data.num_attributes)
    assert all(math.isfinite(v) for v in history["initialization"]["loss_action"])
    assert not torch.equal(model.psbs[0].predictor.out_conv[-2].weight, before)
