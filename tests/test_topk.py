"""topk_keep, gather_tokens and scatter_tokens (inference compaction, §3.2) against the reference."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import stpriv_ops
from stpriv_ops import reference
from without_extension import run_without_extension

requires_ops = pytest.mark.skipif(not stpriv_ops.has_ops(), reason="stpriv_ops._C is not built")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def scores(B, L, N, kind="random", seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        s = torch.randn(B, L, N, generator=g)
    elif kind == "ties":  # few distinct values: ties everywhere, the lower index must win
        s = torch.randint(0, 3, (B, L, N), generator=g).float()
    elif kind == "special":  # +-inf and NaN (NaN ranks like +inf)
        s = torch.randn(B, L, N, generator=g)
        s.view(-1)[:: 3] = float("inf")
        s.view(-1)[1:: 5] = float("nan")
        s.view(-1)[2:: 7] = float("-inf")
    else:
        raise ValueError(kind)
    return s.to(dtype)


def brute_force_topk(score, k):
    """Independent oracle: sort by (value descending, index ascending) with Python's sort."""
    out = torch.empty(*score.shape[:2], k, dtype=torch.int64)
    for b in range(score.shape[0]):
        for l in range(score.shape[1]):
            row = [float("inf") if v != v else v for v in score[b, l].double().tolist()]
            best = sorted(range(len(row)), key=lambda n: (-row[n], n))[:k]
            out[b, l] = torch.tensor(sorted(best), dtype=torch.int64)
    return out


@requires_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["random", "ties", "special"])
@pytest.mark.parametrize("shape, k", [((2, 8, 49), 16), ((1, 3, 7), 7), ((2, 2, 5), 0), ((1, 1, 1), 1)], ids=str)
def test_topk_keep_matches_oracles(shape, k, kind, dtype):
    s = scores(*shape, kind=kind, dtype=dtype)
    idx = stpriv_ops.topk_keep(s, k)
    assert idx.dtype == torch.int64 and idx.shape == (*shape[:2], k)
    assert torch.equal(idx, reference.topk_keep(s, k))
    assert torch.equal(idx, brute_force_topk(s, k))


@requires_ops
@given(B=st.integers(1, 3), L=st.integers(1, 5), N=st.integers(1, 80), data=st.data(),
       kind=st.sampled_from(["random", "ties", "special"]), seed=st.integers(0, 2**16))
def test_topk_keep_property(B, L, N, data, kind, seed):
    k = data.draw(st.integers(0, N))
    s = scores(B, L, N, kind, seed)
    idx = stpriv_ops.topk_keep(s, k)
    assert torch.equal(idx, reference.topk_keep(s, k))
    assert (idx.diff(dim=-1) > 0).all(), "indices must be strictly ascending"


def tokens(B, L, N, D, k, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L * N, D, generator=g).to(dtype)
    idx = reference.topk_keep(torch.randn(B, L, N, generator=g), k)
    y = torch.randn(B, L * k, D, generator=g).to(dtype)
    return x, idx, y


@requires_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 8, 49, 384, 16), (1, 3, 5, 7, 5), (2, 2, 4, 3, 0), (1, 1, 1, 1, 1)], ids=str)
def test_gather_scatter_match_reference(shape, dtype):
    B, L, N, D, k = shape
    x, idx, y = tokens(B, L, N, D, k, dtype=dtype)
    out = stpriv_ops.gather_tokens(x, idx)
    assert out.dtype == dtype and torch.equal(out, reference.gather_tokens(x, idx))
    full = stpriv_ops.scatter_tokens(y, idx, N)
    assert full.dtype == dtype and torch.equal(full, reference.scatter_tokens(y, idx, N))
    # Round trip: the kept tokens come back in place, the dropped ones are 0.
    back = stpriv_ops.scatter_tokens(out, idx, N)
    mask = torch.zeros(B, L, N, dtype=torch.bool).scatter(-1, idx, True).reshape(B, L * N, 1)
    assert torch.equal(back, torch.where(mask, x, torch.zeros((), dtype=dtype)))


@requires_ops
def test_scatter_accumulates_repeated_indices():
    y = torch.randn(1, 3, 4, dtype=torch.float64)
    idx = torch.tensor([[[2, 2, 0]]])
    full = stpriv_ops.scatter_tokens(y, idx, 4)
    torch.testing.assert_close(full[0, 2], y[0, 0] + y[0, 1])
    torch.testing.assert_close(full, reference.scatter_tokens(y, idx, 4))


@requires_ops
@given(B=st.integers(1, 3), L=st.integers(1, 4), N=st.integers(1, 30), D=st.integers(1, 20), data=st.data(),
       seed=st.integers(0, 2**16))
def test_gather_scatter_property(B, L, N, D, data, seed):
    k = data.draw(st.integers(0, N))
    x, idx, y = tokens(B, L, N, D, k, seed)
    assert torch.equal(stpriv_ops.gather_tokens(x, idx), reference.gather_tokens(x, idx))
    assert torch.equal(stpriv_ops.scatter_tokens(y, idx, N), reference.scatter_tokens(y, idx, N))


@requires_ops
@pytest.mark.parametrize("seed", [0, 1])
def test_gradcheck(seed):
    x, idx, y = tokens(2, 3, 5, 4, 2, seed)
    assert torch.autograd.gradcheck(lambda t: stpriv_ops.gather_tokens(t, idx), (x.requires_grad_(),))
    assert torch.autograd.gradcheck(lambda t: stpriv_ops.scatter_tokens(t, idx, 5), (y.requires_grad_(),))
    # Each is the other's backward, so double backward works too.
    assert torch.autograd.gradgradcheck(lambda t: stpriv_ops.gather_tokens(t, idx), (x,))


@requires_ops
def test_opcheck():
    x, idx, y = tokens(2, 3, 5, 4, 2, dtype=torch.float32)
    torch.library.opcheck(torch.ops.stpriv.topk_keep.default, (torch.randn(2, 3, 5), 2))
    torch.library.opcheck(torch.ops.stpriv.gather_tokens.default, (x, idx))
    torch.library.opcheck(torch.ops.stpriv.scatter_tokens.default, (y, idx, 5))


@requires_ops
def test_torch_compile_fullgraph():
    x, idx, y = tokens(2, 3, 5, 4, 2, dtype=torch.float32)
    score = torch.randn(2, 3, 5)

    def prune_and_restore(score, x):
        idx = stpriv_ops.topk_keep(score, 2)
        return stpriv_ops.scatter_tokens(stpriv_ops.gather_tokens(x, idx) * 2, idx, 5)

    compiled = torch.compile(prune_and_restore, fullgraph=True, backend="aot_eager")
    x.requires_grad_(True)
    got = compiled(score, x)
    want = prune_and_restore(score, x)
    torch.testing.assert_close(got, want)
    (g1,) = torch.autograd.grad(got.sum(), x)
    (g2,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: stpriv_ops.topk_keep(torch.zeros(2, 5), 1), ValueError, "score must have 3 dimensions"),
        (lambda: stpriv_ops.topk_keep(torch.zeros(2, 3, 5), 6), ValueError, r"k must be in \[0, N=5\]"),
        (lambda: stpriv_ops.topk_keep(torch.zeros(2, 3, 5), 1.5), TypeError, "k must be an int"),
        (lambda: stpriv_ops.gather_tokens(torch.zeros(2, 14, 4), torch.zeros(2, 3, 2, dtype=torch.long)),
         ValueError, "x must be"),
        (lambda: stpriv_ops.gather_tokens(torch.zeros(2, 15, 4), torch.zeros(2, 3, 2, dtype=torch.int32)),
         TypeError, "idx must be int64"),
        (lambda: stpriv_ops.gather_tokens(torch.zeros(2, 15, 4), torch.zeros(3, 3, 2, dtype=torch.long)),
         ValueError, "idx must be"),
        (lambda: stpriv_ops.scatter_tokens(torch.zeros(2, 5, 4), torch.zeros(2, 3, 2, dtype=torch.long), 5),
         ValueError, "y must be"),
        (lambda: stpriv_ops.scatter_tokens(torch.zeros(2, 6, 4), torch.zeros(2, 3, 2, dtype=torch.long), 0),
         ValueError, "num_tokens_per_step must be >= 1"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


@requires_ops
def test_out_of_range_index_raises():
    idx = torch.tensor([[[0, 5]]])
    with pytest.raises(RuntimeError, match=r"idx values must be in \[0, N=5\)"):
        stpriv_ops.gather_tokens(torch.zeros(1, 5, 2), idx)
    with pytest.raises(RuntimeError, match=r"idx values must be in \[0, N=5\)"):
        stpriv_ops.scatter_tokens(torch.zeros(1, 2, 2), idx, 5)


# ---- Triton kernels: launchers called directly (CPU tensors under TRITON_INTERPRET=1) ----


def _triton():
    pytest.importorskip("triton", reason="triton is not installed")
    if TRITON_DEVICE is None:
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1")
    from stpriv_ops.triton import topk

    return topk


@pytest.mark.parametrize("kind", ["random", "ties", "special"])
@pytest.mark.parametrize("shape, k", [((2, 3, 49), 16), ((1, 2, 200), 68), ((1, 1, 1), 1), ((1, 2, 6), 0)], ids=str)
def test_triton_topk_keep(shape, k, kind):
    tk = _triton()
    s = scores(*shape, kind=kind)
    assert torch.equal(tk.topk_keep_forward(s.to(TRITON_DEVICE), k).cpu(), reference.topk_keep(s, k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 49, 40, 16), (1, 2, 70, 5, 23), (1, 1, 3, 1, 3)], ids=str)
def test_triton_gather_scatter(shape, dtype):
    tk = _triton()
    B, L, N, D, k = shape
    x, idx, y = (t.to(TRITON_DEVICE) for t in tokens(B, L, N, D, k, dtype=dtype))
    assert torch.equal(tk.gather_tokens_forward(x, idx), reference.gather_tokens(x, idx))
    assert torch.equal(tk.scatter_tokens_forward(y, idx, N), reference.scatter_tokens(y, idx, N))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_ops(dtype):
    s = scores(32, 8, 49, kind="ties", dtype=dtype).cuda()
    idx = stpriv_ops.topk_keep(s, 16)
    assert torch.equal(idx, reference.topk_keep(s, 16))
    x = torch.randn(32, 8 * 49, 384, device="cuda", dtype=dtype, requires_grad=True)
    out = stpriv_ops.gather_tokens(x, idx)
    assert torch.equal(out, reference.gather_tokens(x, idx))
    (gx,) = torch.autograd.grad(out, x, out.detach())
    assert torch.equal(gx, reference.scatter_tokens(out.detach(), idx, 49))


def test_triton_topk_keep_float64_keeps_fine_differences():
    tk = _triton()
    # Differences below float32 resolution must still order float64 scores.
    s = torch.tensor([[[1.0, 1.0 + 1e-12, 1.0, 0.5, 1.0 + 2e-12]]], dtype=torch.float64)
    assert tk.topk_keep_forward(s.to(TRITON_DEVICE), 2).cpu().tolist() == [[[1, 4]]]


def test_all_pruning_ops_fall_back_to_the_reference_without_extension():
    # Hide stpriv_ops._C: every token-pruning op must still run, through its reference.
    run_without_extension("""
import warnings
warnings.simplefilter("ignore")
import stpriv_ops, torch
from stpriv_ops import reference as R
assert not stpriv_ops.has_ops()
x = torch.randn(2, 3, 5, 4); keep = (torch.rand(2, 3, 5) < 0.5).float()
for got, want in zip(stpriv_ops.masked_mean(x, keep), R.masked_mean(x, keep)):
    torch.testing.assert_close(got, want)
lp = torch.randn(2, 15, 2); prev = torch.ones(2, 15); noise = torch.randn(2, 15)
assert torch.equal(stpriv_ops.gumbel_keep(lp, prev, noise=noise), R.gumbel_keep(lp, prev, noise))
g = torch.Generator().manual_seed(0)
a = stpriv_ops.gumbel_keep(lp, prev, generator=g)
assert ((a == 0) | (a == 1)).all()
score = torch.randn(2, 3, 5)
assert (stpriv_ops.gumbel_topk(score, 2, generator=g).sum(-1) == 2).all()
idx = stpriv_ops.topk_keep(score, 2)
assert torch.equal(idx, R.topk_keep(score, 2))
tokens = torch.randn(2, 15, 4)
assert torch.equal(stpriv_ops.scatter_tokens(stpriv_ops.gather_tokens(tokens, idx), idx, 5),
                   R.scatter_tokens(R.gather_tokens(tokens, idx), idx, 5))
print("fallback ok")
""")
