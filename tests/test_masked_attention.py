"""masked_attention through torch.ops.stpriv (the C++ CPU kernel), against the float64 oracle."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import stpriv_ops
from stpriv_ops import reference
from attention_cases import assert_close_to_oracle, oracle, run_op, sample_inputs
from without_extension import run_without_extension

pytestmark = pytest.mark.skipif(not stpriv_ops.has_ops(), reason="stpriv_ops._C is not built")

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
NAMES = ("out", "dq", "dk", "dv", "dkeep")


def check_against_oracle(B, H, N, d, dtype, *, keep="random", scale=None, eps=1e-6, magnitude=1.0):
    q, k, v, kp, dout = sample_inputs(B, H, N, d, keep=keep, magnitude=magnitude)
    want_out, want_grads = oracle(q, k, v, kp, dout, scale=scale, eps=eps)
    got_out, got_grads = run_op(stpriv_ops.masked_attention, q, k, v, kp, dout, dtype, scale=scale, eps=eps)
    ref_out, ref_grads = run_op(reference.masked_attention, q, k, v, kp, dout, dtype, scale=scale, eps=eps)
    assert got_out.dtype == dtype and got_grads[3].dtype == dtype
    for name, got, want, ref in zip(NAMES, (got_out, *got_grads), (want_out, *want_grads), (ref_out, *ref_grads)):
        assert torch.isfinite(got).all(), f"{name} has non-finite entries"
        assert_close_to_oracle(name, got, want, dtype, same_dtype_ref=ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 37, 32), (1, 2, 130, 64), (2, 1, 1, 16), (1, 2, 200, 128)], ids=str)
def test_matches_oracle(shape, dtype):
    check_against_oracle(*shape, dtype)


@pytest.mark.parametrize("keep", ["zeros", "ones", "soft"])
def test_keep_extremes_and_soft(keep):
    check_against_oracle(2, 2, 67, 32, torch.float32, keep=keep)


def test_eps_zero_and_custom_scale():
    check_against_oracle(2, 2, 45, 16, torch.float64, eps=0.0, scale=0.3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_large_scores(dtype):
    # Scores of magnitude ~1e3: a dropped key can own the row max, so kept keys underflow.
    check_against_oracle(1, 2, 50, 16, dtype, magnitude=12.0)


def test_dkeep_is_nonzero_for_dropped_keys():
    q, k, v, keep, dout = sample_inputs(1, 2, 40, 16, keep="random", seed=3)
    keep[0, :20] = 0
    _, grads = run_op(stpriv_ops.masked_attention, q, k, v, keep, dout, torch.float32)
    assert grads[3][0, :20].abs().min() > 0, "dropped keys must still receive a gradient"


@given(
    B=st.integers(1, 2),
    H=st.integers(1, 3),
    N=st.integers(1, 70),
    d=st.sampled_from([8, 16, 32, 64]),
    keep=st.sampled_from(["random", "zeros", "ones", "soft"]),
    eps=st.sampled_from([0.0, 1e-6, 1e-2]),
)
def test_property_float64(B, H, N, d, keep, eps):
    check_against_oracle(B, H, N, d, torch.float64, keep=keep, eps=eps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradcheck(seed):
    q, k, v, keep, _ = sample_inputs(1, 2, 7, 4, keep="soft", seed=seed)
    inputs = [t.requires_grad_(True) for t in (q, k, v, keep)]
    # eps = 0 makes the output exactly invariant to the row max, whose O(eps) gradient path the
    # kernels drop by design; finite differences would otherwise see it.
    assert torch.autograd.gradcheck(lambda *a: stpriv_ops.masked_attention(*a, eps=0.0), inputs)


def test_opcheck():
    for seed, keep in ((0, "random"), (1, "soft")):
        q, k, v, kp, _ = sample_inputs(2, 2, 19, 16, keep=keep, seed=seed)
        args = [t.float().requires_grad_(True) for t in (q, k, v, kp)]
        torch.library.opcheck(torch.ops.stpriv.masked_attention.default, (*args, None, 1e-6))


def test_torch_compile_fullgraph():
    q, k, v, keep, dout = sample_inputs(2, 2, 33, 16)
    compiled = torch.compile(stpriv_ops.masked_attention, fullgraph=True, backend="aot_eager")
    got_out, got_grads = run_op(compiled, q, k, v, keep, dout, torch.float32)
    want_out, want_grads = oracle(q, k, v, keep, dout)
    for name, got, want in zip(NAMES, (got_out, *got_grads), (want_out, *want_grads)):
        assert_close_to_oracle(name, got, want, torch.float32)


def test_non_contiguous_inputs():
    q, k, v, keep, dout = sample_inputs(2, 3, 29, 16)
    # [B, N, H, d] storage viewed as [B, H, N, d], as a fused qkv Linear produces.
    q_t, k_t, v_t = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not q_t.is_contiguous()
    got = stpriv_ops.masked_attention(q_t.float(), k_t.float(), v_t.float(), keep.float())
    want, _ = oracle(q, k, v, keep, dout)
    assert_close_to_oracle("out", got, want, torch.float32)


def test_double_backward_raises():
    q, k, v, keep, _ = sample_inputs(1, 1, 5, 4)
    q.requires_grad_(True)
    out = stpriv_ops.masked_attention(q, k, v, keep)
    (g,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_row_statistics_are_not_differentiable():
    """row_max and row_sum feed the backward; a gradient through them would be silently dropped."""
    q, k, v, keep, _ = sample_inputs(1, 2, 6, 8, seed=0)
    q.requires_grad_(True)
    out, row_max, row_sum = torch.ops.stpriv.masked_attention(q, k, v, keep, None, 1e-6)
    assert out.requires_grad and not row_max.requires_grad and not row_sum.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        row_max.sum().backward()


class _RecordBackwardMasks(TorchDispatchMode):
    """Records the output_mask of every _masked_attention_backward call."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.stpriv._masked_attention_backward.default:
            self.masks.append(list(args[10]) if len(args) > 10 else [True] * 4)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("wanted", [(True, False, False, False), (False, True, True, False), (False, False, False, True)])
def test_backward_computes_only_requested_gradients(wanted):
    leaves = sample_inputs(1, 2, 9, 8, seed=1)[:4]
    for t, need in zip(leaves, wanted):
        t.requires_grad_(need)
    dout = torch.randn(1, 2, 9, 8, dtype=torch.float64)
    out = stpriv_ops.masked_attention(*leaves)
    with _RecordBackwardMasks() as recorder:
        grads = torch.autograd.grad(out, [t for t in leaves if t.requires_grad], dout)
    assert recorder.masks == [list(wanted)]
    _, want = oracle(*leaves, dout)
    for got, expected in zip(grads, [g for g, need in zip(want, wanted) if need]):
        torch.testing.assert_close(got, expected)


def test_backward_op_returns_empty_tensors_for_gradients_not_asked_for():
    q, k, v, keep, dout = sample_inputs(1, 2, 5, 8, seed=2)
    out, row_max, row_sum = torch.ops.stpriv.masked_attention(q, k, v, keep, None, 1e-6)
    dq, dk, dv, dkeep = torch.ops.stpriv._masked_attention_backward(
        dout, q, k, v, keep, out, row_max, row_sum, None, 1e-6, [False, True, False, True]
    )
    assert dq.numel() == 0 and dv.numel() == 0 and dk.shape == k.shape and dkeep.shape == keep.shape


def _valid():
    return [torch.randn(2, 3, 5, 8) for _ in range(3)] + [torch.ones(2, 5)]


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda a: a.__setitem__(0, torch.randn(2, 5, 8)), ValueError, "q must have 4 dimensions"),
        (lambda a: a.__setitem__(1, torch.randn(2, 3, 6, 8)), ValueError, "k must have shape"),
        (lambda a: a.__setitem__(2, torch.randn(2, 3, 5, 4)), ValueError, "v must have shape"),
        (lambda a: a.__setitem__(3, torch.ones(2, 6)), ValueError, r"keep must have shape \(2, 5\)"),
        (lambda a: a.__setitem__(3, torch.ones(2, 5, 1)), ValueError, "keep must have 2 dimensions"),
        (lambda a: a.__setitem__(0, torch.ones(2, 3, 5, 8, dtype=torch.int64)), TypeError, "q must be float16"),
        (lambda a: a.__setitem__(1, torch.randn(2, 3, 5, 8, dtype=torch.float64)), TypeError, "share one dtype"),
        (lambda a: a.__setitem__(3, "keep"), TypeError, "keep must be a torch.Tensor"),
        (lambda a: a.__setitem__(0, torch.randn(0, 3, 5, 8)), ValueError, "k must have shape"),
    ],
)
def test_bad_inputs(mutate, error, match):
    args = _valid()
    mutate(args)
    with pytest.raises(error, match=match):
        stpriv_ops.masked_attention(*args)


def test_empty_and_negative_eps():
    with pytest.raises(ValueError, match="q must not be empty"):
        e = torch.randn(2, 3, 0, 8)
        stpriv_ops.masked_attention(e, e, e, torch.ones(2, 0))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        stpriv_ops.masked_attention(*_valid(), eps=-1.0)


def test_cpp_errors_name_the_argument():
    # The op is reachable without the Python wrapper, so the kernel checks its inputs too.
    q, k, v, keep = _valid()
    with pytest.raises(RuntimeError, match="keep"):
        torch.ops.stpriv.masked_attention(q, k, v, torch.ones(2, 6), None, 1e-6)


def test_fallback_without_extension_warns_once_and_matches():
    # Hide stpriv_ops._C from the import system: the package must still work, through the reference.
    run_without_extension("""
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import stpriv_ops, torch
    q = torch.randn(1, 2, 9, 8); keep = torch.ones(1, 9)
    out = stpriv_ops.masked_attention(q, q, q, keep)
    stpriv_ops.masked_attention(q, q, q, keep)
msgs = [str(w.message) for w in caught if "stpriv_ops._C" in str(w.message)]
assert not stpriv_ops.has_ops() and len(msgs) == 1, msgs
torch.testing.assert_close(out, stpriv_ops.reference.masked_attention(q, q, q, keep))
print("fallback ok")
""")
