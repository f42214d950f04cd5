"""gumbel_keep (Eq. 6) and gumbel_topk: exact given the noise, straight-through gradients, statistics.

The forward of a straight-through estimator is piecewise constant, so finite differences
(gradcheck) see 0 for log_probs/score; we check instead that the backward is exactly the gradient
of the documented soft surrogate, in float64. gradcheck does apply to prev (the output is linear in it).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import stpriv_ops
from stpriv_ops import reference

requires_ops = pytest.mark.skipif(not stpriv_ops.has_ops(), reason="stpriv_ops._C is not built")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Chi-square critical values at p = 0.001 (df -> value): a correct sampler fails 1 run in 1000,
# and the seeds are fixed, so the tests are deterministic.
CHI2_999 = {7: 24.32, 8: 26.12}


def keep_inputs(B, T, seed=0, prev="hard"):
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.log_softmax(2 * torch.randn(B, T, 2, generator=g, dtype=torch.float64), dim=-1)
    prev_t = (torch.rand(B, T, generator=g) < 0.7).double() if prev == "hard" else torch.rand(B, T, generator=g).double()
    noise = reference.logistic_noise(torch.rand(B, T, generator=g, dtype=torch.float64).clamp(1e-9, 1 - 1e-9))
    grad = torch.randn(B, T, generator=g, dtype=torch.float64)
    return log_probs, prev_t, noise, grad


def keep_grads(fn, log_probs, prev, grad, dtype, **kwargs):
    lp = log_probs.to(dtype).requires_grad_(True)
    pv = prev.to(dtype).requires_grad_(True)
    out = fn(lp, pv, **kwargs)
    g_lp, g_prev = torch.autograd.grad(out, (lp, pv), grad.to(dtype))
    return out.detach(), g_lp.double(), g_prev.double()


# ---------------------------------------------------------------------------------------------
# gumbel_keep
# ---------------------------------------------------------------------------------------------
@requires_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 7), (4, 392), (1, 1)], ids=str)
def test_keep_bit_exact_given_noise_and_gradients(shape, dtype):
    lp, prev, noise, grad = keep_inputs(*shape)
    got = keep_grads(stpriv_ops.gumbel_keep, lp, prev, grad, dtype, tau=0.7, noise=noise)
    ref = keep_grads(lambda a, b: reference.gumbel_keep(a, b, noise.to(torch.float32 if dtype != torch.float64 else dtype), 0.7), lp, prev, grad, dtype)
    want = keep_grads(lambda a, b: reference.gumbel_keep(a, b, noise, 0.7), lp, prev, grad, torch.float64)
    assert got[0].dtype == dtype
    assert torch.equal(got[0], ref[0]), "forward must match the reference bit for bit"
    for name, g, r, w in zip(("grad_log_probs", "grad_prev"), got[1:], ref[1:], want[1:]):
        slack = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
        err, ref_err = (g - w).abs().max().item(), (r - w).abs().max().item()
        assert err <= 2 * ref_err + slack * max(w.abs().max().item(), 1.0), f"{name}: {err} vs ref {ref_err}"


@requires_ops
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_keep_matches_torch_gumbel_softmax(tau):
    # F.gumbel_softmax draws gumbels = -log(Exponential(1)); replay the same draws to get our noise.
    lp, prev, _, grad = keep_inputs(3, 50, seed=5)
    torch.manual_seed(123)
    gumbels = -torch.empty_like(lp).exponential_().log()
    noise = gumbels[..., 0] - gumbels[..., 1]

    def torch_version(a, b):
        torch.manual_seed(123)
        return F.gumbel_softmax(a, tau=tau, hard=True)[..., 0] * b

    got = keep_grads(stpriv_ops.gumbel_keep, lp, prev, grad, torch.float64, tau=tau, noise=noise)
    want = keep_grads(torch_version, lp, prev, grad, torch.float64)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[2], want[2], rtol=1e-9, atol=1e-12)


@requires_ops
@given(B=st.integers(1, 3), T=st.integers(1, 300), seed=st.integers(0, 2**16), prev=st.sampled_from(["hard", "soft"]),
       tau=st.sampled_from([0.1, 1.0, 5.0]))
def test_keep_property_float64(B, T, seed, prev, tau):
    lp, pv, noise, grad = keep_inputs(B, T, seed, prev)
    got = keep_grads(stpriv_ops.gumbel_keep, lp, pv, grad, torch.float64, tau=tau, noise=noise)
    want = keep_grads(lambda a, b: reference.gumbel_keep(a, b, noise, tau), lp, pv, grad, torch.float64)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[2], want[2], rtol=0, atol=0)


@requires_ops
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keep_gradcheck_prev(seed):
    lp, prev, noise, _ = keep_inputs(2, 9, seed, prev="soft")
    fn = lambda p: stpriv_ops.gumbel_keep(lp, p, tau=0.5, noise=noise)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (prev.requires_grad_(),))


def _chi_square(counts, trials, probs):
    expected = trials * probs
    return (((counts - expected) ** 2) / (expected * (1 - probs))).sum().item()


def _keep_frequency_statistic(draw):
    # 8 probability levels, 4000 tokens each, one draw per token.
    p_keep = torch.tensor([0.02, 0.1, 0.25, 0.4, 0.5, 0.7, 0.9, 0.97], dtype=torch.float64)
    lp = torch.stack([p_keep.log(), (1 - p_keep).log()], dim=-1).repeat(4000, 1).reshape(1, -1, 2).float()
    keep = draw(lp, torch.ones(lp.shape[:2]))
    counts = keep.reshape(4000, 8).sum(0).double()
    return _chi_square(counts, 4000, p_keep)


@requires_ops
def test_keep_frequencies_match_softmax_chi_square():
    gen = torch.Generator().manual_seed(0)
    stat = _keep_frequency_statistic(lambda lp, prev: stpriv_ops.gumbel_keep(lp, prev, generator=gen))
    assert stat < CHI2_999[8], f"chi-square {stat:.2f} over 8 levels: keep frequencies do not match softmax"


@requires_ops
def test_keep_reproducible_from_generator_and_manual_seed():
    lp, prev, _, _ = keep_inputs(4, 392)
    a = stpriv_ops.gumbel_keep(lp, prev, generator=torch.Generator().manual_seed(7))
    b = stpriv_ops.gumbel_keep(lp, prev, generator=torch.Generator().manual_seed(7))
    c = stpriv_ops.gumbel_keep(lp, prev, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = stpriv_ops.gumbel_keep(lp, prev)
    torch.manual_seed(3)
    assert torch.equal(d, stpriv_ops.gumbel_keep(lp, prev))


@requires_ops
def test_keep_opcheck():
    lp, prev, noise, grad = keep_inputs(2, 5)
    op = torch.ops.stpriv.gumbel_keep.default
    torch.library.opcheck(op, (lp.float(), prev.float(), noise.float(), None, 0.5))
    torch.library.opcheck(op, (lp.float(), prev.float(), None, torch.tensor(2**40 + 1), 0.5))
    _, logit = op(lp.float(), prev.float(), noise.float(), None, 0.5)
    torch.library.opcheck(torch.ops.stpriv._gumbel_keep_backward.default, (grad.float(), logit, prev.float(), 0.5))


@requires_ops
def test_keep_torch_compile_fullgraph():
    lp, prev, noise, grad = keep_inputs(2, 30)
    compiled = torch.compile(stpriv_ops.gumbel_keep, fullgraph=True, backend="aot_eager")
    got = keep_grads(compiled, lp, prev, grad, torch.float32, tau=0.5, noise=noise)
    want = keep_grads(stpriv_ops.gumbel_keep, lp, prev, grad, torch.float32, tau=0.5, noise=noise)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    torch.manual_seed(0)
    sampled = torch.compile(lambda a, b: stpriv_ops.gumbel_keep(a, b), fullgraph=True, backend="aot_eager")(lp, prev)
    assert ((sampled == 0) | (sampled == prev)).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(log_probs=torch.zeros(2, 3)), ValueError, "log_probs must have 3 dimensions"),
        (dict(log_probs=torch.zeros(2, 3, 3)), ValueError, r"log_probs must be \[B, T, 2\]"),
        (dict(prev=torch.zeros(2, 4)), ValueError, r"prev must have shape \(2, 3\)"),
        (dict(tau=0.0), ValueError, "tau must be > 0"),
        (dict(tau="1"), TypeError, "tau must be a float"),
        (dict(noise=torch.zeros(3, 2)), ValueError, r"noise must have shape \(2, 3\)"),
        (dict(generator=123), TypeError, "generator must be a torch.Generator"),
        (dict(prev=torch.zeros(2, 3, dtype=torch.long)), TypeError, "prev must be float16"),
    ],
)
def test_keep_bad_inputs(kwargs, error, match):
    args = dict(log_probs=torch.zeros(2, 3, 2), prev=torch.ones(2, 3))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        stpriv_ops.gumbel_keep(**args)


@requires_ops
def test_keep_cpp_errors_name_the_argument():
    with pytest.raises(RuntimeError, match="pass either noise or seed"):
        torch.ops.stpriv.gumbel_keep(torch.zeros(2, 3, 2), torch.ones(2, 3), None, None, 1.0)
    with pytest.raises(RuntimeError, match="prev must be"):
        torch.ops.stpriv.gumbel_keep(torch.zeros(2, 3, 2), torch.ones(3, 3), None, torch.tensor(1), 1.0)


# ---------------------------------------------------------------------------------------------
# gumbel_topk
# ---------------------------------------------------------------------------------------------
def topk_inputs(B, L, N, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    score = torch.randn(B, L, N, generator=g, dtype=torch.float64)
    noise = reference.gumbel_noise(torch.rand(B, L, N, generator=g, dtype=torch.float64).clamp(1e-9, 1 - 1e-9))
    if ties:  # equal perturbed scores: the lower index must win
        score = torch.zeros(B, L, N, dtype=torch.float64)
        noise = torch.randint(0, 3, (B, L, N), generator=g).double()
    grad = torch.randn(B, L, N, generator=g, dtype=torch.float64)
    return score, noise, grad


def topk_grads(fn, score, grad, dtype, **kwargs):
    s = score.to(dtype).requires_grad_(True)
    out = fn(s, **kwargs)
    (g,) = torch.autograd.grad(out, s, grad.to(dtype))
    return out.detach(), g.double()


@requires_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape, k",
    # N <= 64 selects by counting ranks in C++, longer steps by nth_element: both sides of 64.
    [((2, 3, 49), 16), ((1, 2, 5), 5), ((2, 1, 9), 0), ((1, 1, 1), 1), ((1, 2, 64), 21), ((2, 2, 65), 22),
     ((1, 3, 196), 67)],
    ids=str,
)
def test_topk_exact_given_noise(shape, k, dtype):
    score, noise, grad = topk_inputs(*shape)
    noise_c = noise.to(torch.promote_types(dtype, torch.float32))
    got = topk_grads(stpriv_ops.gumbel_topk, score, grad, dtype, k=k, tau=0.5, noise=noise)
    ref = topk_grads(lambda s: reference.gumbel_topk(s, k, noise_c, 0.5), score, grad, dtype)
    want = topk_grads(lambda s: reference.gumbel_topk(s, k, noise, 0.5), score, grad, torch.float64)
    assert got[0].dtype == dtype and torch.equal(got[0], ref[0])
    assert (got[0].sum(-1) == k).all()
    slack = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    err, ref_err = (got[1] - want[1]).abs().max().item(), (ref[1] - want[1]).abs().max().item()
    assert err <= 2 * ref_err + slack * max(want[1].abs().max().item(), 1.0)


@requires_ops
@given(B=st.integers(1, 2), L=st.integers(1, 4), N=st.integers(1, 60), data=st.data(), ties=st.booleans(),
       seed=st.integers(0, 2**16))
def test_topk_property_float64(B, L, N, data, ties, seed):
    k = data.draw(st.integers(0, N))
    score, noise, grad = topk_inputs(B, L, N, seed, ties)
    got = topk_grads(stpriv_ops.gumbel_topk, score, grad, torch.float64, k=k, tau=0.7, noise=noise)
    want = topk_grads(lambda s: reference.gumbel_topk(s, k, noise, 0.7), score, grad, torch.float64)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)


@requires_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("N", [49, 100], ids=lambda n: f"N{n}")
def test_topk_ties_go_to_the_lower_index(N, dtype):
    # Many equal perturbed scores: the C++ ranking's second pass (ties straddling the k-th place).
    score, noise, _ = topk_inputs(3, 4, N, seed=4, ties=True)
    for k in (1, 7, N // 3, N - 1):
        keep, _ = torch.ops.stpriv.gumbel_topk(score.to(dtype), k, noise.float(), None, 1.0)
        want = reference.gumbel_topk(score.to(dtype), k, noise.float(), 1.0)
        assert torch.equal(keep, want), f"k={k}"


@requires_ops
@pytest.mark.parametrize("N", [49, 100], ids=lambda n: f"N{n}")
def test_topk_soft_at_extreme_scores(N):
    # The float32 softmax uses its own exp: check it where exp underflows (spreads of ~100/tau),
    # at -inf scores (softmax 0), against torch.softmax; a NaN score makes its step NaN, as there.
    g = torch.Generator().manual_seed(3)
    score = torch.randn(4, 3, N, generator=g) * torch.tensor([1.0, 30.0, 300.0]).view(1, 3, 1)
    score[0, 0, :3] = float("-inf")
    score[1, 2, 5] = float("nan")
    noise = reference.gumbel_noise(torch.rand(4, 3, N, generator=g).clamp(1e-6, 1 - 1e-6))
    for tau in (0.3, 1.0):
        keep, soft = torch.ops.stpriv.gumbel_topk(score, 7, noise, None, tau)
        # The kernel's float32 (score + noise) / tau, exactly; the softmax of it in float64, and in
        # float32 by torch (whose error, from rounding x - max in float32, sets the bar).
        scaled = (score + noise) / tau
        want, peer = torch.softmax(scaled.double(), dim=-1), torch.softmax(scaled, dim=-1).double()
        # Below the smallest normal float the kernel's exp flushes to 0: absolute error there.
        tiny = torch.finfo(torch.float32).tiny
        assert torch.equal(soft.isnan(), want.isnan())
        normal = want >= tiny
        rel_err = ((soft.double() - want).abs() / want)[normal].max().item()
        peer_err = ((peer - want).abs() / want)[normal].max().item()
        assert rel_err <= 2 * peer_err + 1e-6, f"softmax relative error {rel_err:.3g} (torch float32: {peer_err:.3g})"
        assert (soft.double() - want)[~normal & ~want.isnan()].abs().max().item() <= tiny
        assert soft[1, 2].isnan().all() and not soft[1, :2].isnan().any() and (soft[0, 0, :3] == 0).all()
        # (reference.gumbel_topk's straight-through sum is NaN on a NaN step: compare the hard mask.)
        hard = torch.zeros_like(score).scatter(-1, reference.topk_keep(score + noise, 7), 1.0)
        assert torch.equal(keep, hard) and keep[1, 2, 5] == 1


@requires_ops
def test_topk_exactly_k_per_step_when_sampling():
    score = torch.randn(8, 4, 49)
    score[0, 0] = 0.0  # all tied
    score[1, 1, :5] = float("inf")
    for k in (0, 1, 16, 49):
        keep = stpriv_ops.gumbel_topk(score, k, generator=torch.Generator().manual_seed(k))
        assert (keep.sum(-1) == k).all() and ((keep == 0) | (keep == 1)).all()


@requires_ops
def test_topk_k1_frequencies_match_softmax_chi_square():
    # With k = 1 Gumbel top-k is the Gumbel-max trick: P(n) = softmax(score)_n exactly.
    score = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 0.6, 1.0, 1.5])
    keep = stpriv_ops.gumbel_topk(score.expand(20000, 1, 8), 1, generator=torch.Generator().manual_seed(1))
    counts = keep.reshape(-1, 8).sum(0).double()
    stat = _chi_square(counts, 20000, torch.softmax(score.double(), 0))
    assert stat < CHI2_999[8], f"chi-square {stat:.2f}: Gumbel-max frequencies do not match softmax"


@requires_ops
def test_topk_inclusion_frequencies_rise_with_score():
    score = torch.linspace(-2, 2, 9)
    keep = stpriv_ops.gumbel_topk(score.expand(8000, 1, 9), 3, generator=torch.Generator().manual_seed(2))
    freq = keep.reshape(-1, 9).mean(0)
    # Neighbouring inclusion probabilities differ by > 0.03 here; the sampling error is ~0.005.
    assert (freq.diff() > 0).all(), f"inclusion frequencies must rise with the score, got {freq}"
    assert abs(freq.sum().item() - 3) < 1e-4


@requires_ops
def test_topk_reproducible():
    score = torch.randn(4, 8, 49)
    a = stpriv_ops.gumbel_topk(score, 16, generator=torch.Generator().manual_seed(5))
    b = stpriv_ops.gumbel_topk(score, 16, generator=torch.Generator().manual_seed(5))
    c = stpriv_ops.gumbel_topk(score, 16, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@requires_ops
def test_sampling_does_not_depend_on_the_thread_count():
    # Two threads split the tokens at chunk edges that are not Philox-block aligned (49 per step).
    seed = torch.tensor(2**40 + 12345)
    score = torch.randn(32, 8, 49)
    lp, prev = torch.log_softmax(torch.randn(16, 3000, 2), -1), torch.ones(16, 3000)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append((torch.ops.stpriv.gumbel_topk(score, 16, None, seed, 0.5),
                            torch.ops.stpriv.gumbel_keep(lp, prev, None, seed, 1.0)))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert all(torch.equal(a, b) for a, b in zip(one, two))


@requires_ops
def test_topk_opcheck_and_compile():
    score, noise, grad = topk_inputs(2, 3, 10)
    op = torch.ops.stpriv.gumbel_topk.default
    torch.library.opcheck(op, (score.float(), 4, noise.float(), None, 0.5))
    torch.library.opcheck(op, (score.float(), 4, None, torch.tensor(2**40 + 3), 0.5))
    _, soft = op(score.float(), 4, noise.float(), None, 0.5)
    torch.library.opcheck(torch.ops.stpriv._gumbel_topk_backward.default, (grad.float(), soft, 0.5))
    compiled = torch.compile(stpriv_ops.gumbel_topk, fullgraph=True, backend="aot_eager")
    got = topk_grads(compiled, score, grad, torch.float32, k=4, tau=0.5, noise=noise)
    want = topk_grads(stpriv_ops.gumbel_topk, score, grad, torch.float32, k=4, tau=0.5, noise=noise)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(score=torch.zeros(2, 3)), ValueError, "score must have 3 dimensions"),
        (dict(k=6), ValueError, r"k must be in \[0, N=5\]"),
        (dict(k=-1), ValueError, r"k must be in \[0, N=5\]"),
        (dict(k=2.0), TypeError, "k must be an int"),
        (dict(tau=-1.0), ValueError, "tau must be > 0"),
        (dict(noise=torch.zeros(2, 3, 4)), ValueError, r"noise must have shape \(2, 3, 5\)"),
    ],
)
def test_topk_bad_inputs(kwargs, error, match):
    args = dict(score=torch.zeros(2, 3, 5), k=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        stpriv_ops.gumbel_topk(**args)


# ---------------------------------------------------------------------------------------------
# Triton kernels: launchers called directly (CPU tensors under TRITON_INTERPRET=1)
# ---------------------------------------------------------------------------------------------
def _triton():
    pytest.importorskip("triton", reason="triton is not installed")
    if TRITON_DEVICE is None:
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1")
    from stpriv_ops.triton import gumbel

    return gumbel


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_triton_keep_exact_given_noise(dtype):
    tg = _triton()
    lp, prev, noise, grad = (t.to(TRITON_DEVICE) for t in keep_inputs(3, 1100))
    compute = torch.promote_types(dtype, torch.float32)
    keep, logit = tg.gumbel_keep_forward(lp.to(dtype), prev.to(dtype), noise.to(compute), None, 0.7)
    ref = keep_grads(lambda a, b: reference.gumbel_keep(a, b, noise.to(compute), 0.7), lp, prev, grad, dtype)
    assert torch.equal(keep, ref[0])
    g_lp, g_prev = tg.gumbel_keep_backward(grad.to(dtype), logit, prev.to(dtype), 0.7)
    torch.testing.assert_close(g_lp.double(), ref[1], rtol=1e-2 if dtype == torch.float16 else 1e-5, atol=1e-3)
    assert torch.equal(g_prev.double(), ref[2])


@requires_ops
def test_triton_draws_the_same_noise_as_cpp():
    tg = _triton()
    lp, prev, _, _ = (t.float() for t in keep_inputs(2, 700))
    seed = torch.tensor(2**41 + 99)
    keep, logit = tg.gumbel_keep_forward(lp.to(TRITON_DEVICE), prev.to(TRITON_DEVICE), None, seed, 1.0)
    keep_c, logit_c = torch.ops.stpriv.gumbel_keep(lp, prev, None, seed, 1.0)
    assert torch.equal(keep.cpu(), keep_c)
    torch.testing.assert_close(logit.cpu(), logit_c, rtol=0, atol=1e-5)  # log() may differ by an ulp
    score = torch.randn(3, 2, 49)
    keep_t, soft_t = tg.gumbel_topk_forward(score.to(TRITON_DEVICE), 16, None, seed, 0.5)
    keep_c, soft_c = torch.ops.stpriv.gumbel_topk(score, 16, None, seed, 0.5)
    assert torch.equal(keep_t.cpu(), keep_c)
    torch.testing.assert_close(soft_t.cpu(), soft_c)


def test_triton_keep_frequencies_chi_square():
    tg = _triton()

    def draw(lp, prev):
        return tg.gumbel_keep_forward(lp.to(TRITON_DEVICE), prev.to(TRITON_DEVICE), None, torch.tensor(2**33 + 5), 1.0)[0].cpu()

    stat = _keep_frequency_statistic(draw)
    assert stat < CHI2_999[8], f"chi-square {stat:.2f}: Triton keep frequencies do not match softmax"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape, k, ties", [((2, 3, 49), 16, False), ((1, 2, 70), 23, True), ((1, 1, 3), 3, False)], ids=str)
def test_triton_topk_exact_given_noise(shape, k, ties, dtype):
    tg = _triton()
    score, noise, grad = (t.to(TRITON_DEVICE) for t in topk_inputs(*shape, ties=ties))
    compute = torch.promote_types(dtype, torch.float32)
    keep, soft = tg.gumbel_topk_forward(score.to(dtype), k, noise.to(compute), None, 0.5)
    ref = topk_grads(lambda s: reference.gumbel_topk(s, k, noise.to(compute), 0.5), score, grad, dtype)
    assert torch.equal(keep, ref[0])
    g = tg.gumbel_topk_backward(grad.to(dtype), soft, 0.5)
    torch.testing.assert_close(g.double(), ref[1], rtol=1e-2 if dtype == torch.float16 else 1e-5, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_ops_match_reference(dtype):
    lp, prev, noise, grad = (t.cuda() for t in keep_inputs(32, 392))
    got = keep_grads(stpriv_ops.gumbel_keep, lp, prev, grad, dtype, tau=0.7, noise=noise)
    ref = keep_grads(lambda a, b: reference.gumbel_keep(a, b, noise.float(), 0.7), lp, prev, grad, dtype)
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], rtol=2e-2, atol=1e-3)
    score, noise, grad = (t.cuda() for t in topk_inputs(32, 8, 49))
    got = topk_grads(stpriv_ops.gumbel_topk, score, grad, dtype, k=16, tau=0.5, noise=noise)
    ref = topk_grads(lambda s: reference.gumbel_topk(s, 16, noise.float(), 0.5), score, grad, dtype)
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], rtol=2e-2, atol=1e-3)


@pytest.mark.cuda
def test_cuda_sampling_reproducible_and_calibrated():
    gen = torch.Generator(device="cuda").manual_seed(0)
    stat = _keep_frequency_statistic(lambda lp, prev: stpriv_ops.gumbel_keep(lp.cuda(), prev.cuda(), generator=gen).cpu())
    assert stat < CHI2_999[8]
    lp = torch.randn(4, 392, 2, device="cuda")
    prev = torch.ones(4, 392, device="cuda")
    torch.manual_seed(1)
    a = stpriv_ops.gumbel_keep(lp, prev)
    torch.manual_seed(1)
    assert torch.equal(a, stpriv_ops.gumbel_keep(lp, prev))
