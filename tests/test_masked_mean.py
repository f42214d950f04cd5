"""masked_mean (Eq. 2-3): the C++ op and the Triton kernels against the float64 oracle."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import stpriv_ops
from stpriv_ops import reference

requires_ops = pytest.mark.skipif(not stpriv_ops.has_ops(), reason="stpriv_ops._C is not built")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)

# Absolute slack relative to max(|oracle|, 1), per dtype, on top of the rule "at most twice the
# error of the same-dtype eager reference" (flash-attention's rule for low precision).
SLACK = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2**-10, torch.bfloat16: 2**-7}
NAMES = ("spatial", "spatiotemporal", "grad_x", "grad_keep")


def sample_inputs(B, L, N, C, keep="hard", seed=0):
    """float64 x [B, L, N, C], keep [B, L, N] and upstream gradients for both outputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, N, C, generator=g, dtype=torch.float64)
    if keep == "hard":
        kp = (torch.rand(B, L, N, generator=g) < 0.6).double()
    elif keep == "soft":
        kp = torch.rand(B, L, N, generator=g, dtype=torch.float64)
    elif keep == "zeros":
        kp = torch.zeros(B, L, N, dtype=torch.float64)
    elif keep == "ones":
        kp = torch.ones(B, L, N, dtype=torch.float64)
    elif keep == "empty_steps":  # whole frames dropped, and one whole video
        kp = (torch.rand(B, L, N, generator=g) < 0.6).double()
        kp[:, ::2] = 0
        kp[0] = 0
    else:
        raise ValueError(keep)
    grad_s = torch.randn(B, L, C, generator=g, dtype=torch.float64)
    grad_st = torch.randn(B, C, generator=g, dtype=torch.float64)
    return x, kp, grad_s, grad_st


def run(fn, x, keep, grad_s, grad_st, dtype):
    """Forward and backward of fn in dtype; returns the four results in float64."""
    xd = x.to(dtype).requires_grad_(True)
    kd = keep.to(dtype).requires_grad_(True)
    s, stt = fn(xd, kd)
    assert s.dtype == dtype and stt.dtype == dtype
    gx, gk = torch.autograd.grad((s, stt), (xd, kd), (grad_s.to(dtype), grad_st.to(dtype)))
    return tuple(t.detach().double() for t in (s, stt, gx, gk))


def assert_close_to_oracle(got, want, ref, dtype):
    for name, g, w, r in zip(NAMES, got, want, ref):
        assert torch.isfinite(g).all(), f"{name} has non-finite entries"
        scale = max(w.abs().max().item(), 1.0)
        err = (g - w).abs().max().item()
        allowed = 2 * (r - w).abs().max().item() + SLACK[dtype] * scale
        assert err <= allowed, f"{name} ({dtype}): error {err:.3g} > allowed {allowed:.3g}"


def check(fn, B, L, N, C, dtype, keep="hard", seed=0, device="cpu"):
    x, kp, gs, gst = (t.to(device) for t in sample_inputs(B, L, N, C, keep, seed))
    want = run(reference.masked_mean, x, kp, gs, gst, torch.float64)
    ref = run(reference.masked_mean, x, kp, gs, gst, dtype)
    got = run(fn, x, kp, gs, gst, dtype)
    assert_close_to_oracle(got, want, ref, dtype)
    return got


DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(2, 3, 7, 5), (1, 8, 49, 128), (3, 1, 1, 1), (2, 4, 70, 33)]


@requires_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_oracle(shape, dtype):
    check(stpriv_ops.masked_mean, *shape, dtype)


@requires_ops
@pytest.mark.parametrize("keep", ["soft", "zeros", "ones", "empty_steps"])
def test_keep_patterns(keep):
    s, stt, gx, gk = check(stpriv_ops.masked_mean, 3, 4, 9, 6, torch.float32, keep=keep)
    if keep in ("zeros", "empty_steps"):
        # An empty group yields exactly 0 and passes back exactly 0, never NaN.
        assert torch.count_nonzero(stt[0]) == 0 and torch.count_nonzero(s[0]) == 0
        assert torch.count_nonzero(gx[0]) == 0 and torch.count_nonzero(gk[0]) == 0


@requires_ops
@given(
    B=st.integers(1, 3), L=st.integers(1, 5), N=st.integers(1, 40), C=st.integers(1, 40),
    keep=st.sampled_from(["hard", "soft", "zeros", "ones", "empty_steps"]), seed=st.integers(0, 2**16),
)
def test_property_float64(B, L, N, C, keep, seed):
    check(stpriv_ops.masked_mean, B, L, N, C, torch.float64, keep=keep, seed=seed)


@requires_ops
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradcheck(seed):
    x, kp, _, _ = sample_inputs(2, 3, 4, 3, keep="soft", seed=seed)
    kp[1, 0] = 0  # one empty step: its gradient is exactly 0, which finite differences see too
    assert torch.autograd.gradcheck(stpriv_ops.masked_mean, (x.requires_grad_(), kp.requires_grad_()))


@requires_ops
def test_opcheck():
    x, kp, gs, gst = sample_inputs(2, 3, 5, 4)
    torch.library.opcheck(torch.ops.stpriv.masked_mean.default, (x.float(), kp.float()))
    s, stt = torch.ops.stpriv.masked_mean(x.float(), kp.float())
    torch.library.opcheck(
        torch.ops.stpriv._masked_mean_backward.default, (gs.float(), gst.float(), x.float(), kp.float(), s, stt)
    )


@requires_ops
def test_torch_compile_fullgraph():
    x, kp, gs, gst = sample_inputs(2, 3, 5, 4)
    compiled = torch.compile(stpriv_ops.masked_mean, fullgraph=True, backend="aot_eager")
    got = run(compiled, x, kp, gs, gst, torch.float32)
    want = run(reference.masked_mean, x, kp, gs, gst, torch.float64)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@requires_ops
def test_non_contiguous_inputs():
    x, kp, gs, gst = sample_inputs(2, 3, 5, 4)
    x_nc = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided layout
    kp_nc = kp.transpose(1, 2).contiguous().transpose(1, 2)
    for g, w in zip(stpriv_ops.masked_mean(x_nc, kp_nc), reference.masked_mean(x, kp)):
        torch.testing.assert_close(g, w)


@requires_ops
def test_double_backward_raises():
    x, kp, gs, gst = sample_inputs(1, 2, 3, 2)
    x.requires_grad_(True)
    s, stt = stpriv_ops.masked_mean(x, kp)
    (gx,) = torch.autograd.grad(s.sum() + stt.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


@pytest.mark.parametrize(
    "x, keep, error, match",
    [
        ("list", None, TypeError, "x must be a torch.Tensor"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 3), ValueError, "x must have 4 dimensions"),
        (torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 5), ValueError, r"keep must have shape \(2, 3, 4\)"),
        (torch.zeros(2, 3, 4, 5, dtype=torch.int32), torch.zeros(2, 3, 4), TypeError, "x must be float16"),
        (torch.zeros(0, 3, 4, 5), torch.zeros(0, 3, 4), ValueError, "x must not be empty"),
    ],
)
def test_bad_inputs(x, keep, error, match):
    with pytest.raises(error, match=match):
        stpriv_ops.masked_mean([1.0] if isinstance(x, str) else x, keep)


@requires_ops
def test_cpp_errors_name_the_argument():
    with pytest.raises(RuntimeError, match="keep must be"):
        torch.ops.stpriv.masked_mean(torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 5))


# ---- Triton kernels: launchers called directly (CPU tensors under TRITON_INTERPRET=1) ----


def _triton_fn():
    pytest.importorskip("triton", reason="triton is not installed")
    if TRITON_DEVICE is None:
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1")
    from stpriv_ops.triton.masked_mean import masked_mean_backward, masked_mean_forward

    class TritonMaskedMean(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, keep):
            s, stt = masked_mean_forward(x, keep)
            ctx.save_for_backward(x, keep, s, stt)
            return s, stt

        @staticmethod
        def backward(ctx, gs, gst):
            return masked_mean_backward(gs, gst, *ctx.saved_tensors)

    return TritonMaskedMean.apply


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape, keep", [((2, 3, 70, 80), "empty_steps"), ((1, 2, 5, 3), "soft")], ids=str)
def test_triton_matches_oracle(shape, keep, dtype):
    check(_triton_fn(), *shape, dtype, keep=keep, device=TRITON_DEVICE)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_op_matches_oracle(dtype):
    check(stpriv_ops.masked_mean, 4, 8, 49, 128, dtype, keep="empty_steps", device="cuda")


try:
    import triton
    import triton.language as tl

    from stpriv_ops.triton.masked_mean import token_offsets
except ImportError:  # the test below skips
    triton = None
else:

    @triton.jit
    def _last_offsets_kernel(Out_ptr, step, N, C, BLOCK: tl.constexpr):
        n = N - BLOCK + tl.arange(0, BLOCK)
        tl.store(Out_ptr + tl.arange(0, BLOCK), token_offsets(step, n, N) * C + (C - 1))


def test_triton_flat_offsets_are_exact_past_2_31_elements():
    """The kernels' flat index of x's last tokens at a shape past 2^31 elements, not allocated.

    int32 offsets wrap there: ``(step * N + n) * C`` for the last step of x [256, 16, 1568, 384]
    (2.5e9 elements) is about 2.47e9.
    """
    _triton_fn()  # skips without triton or a device to run it on
    B, L, N, C = 256, 16, 1568, 384
    assert B * L * N * C > 2**31
    last_step, block = B * L - 1, 16
    got = torch.zeros(block, dtype=torch.int64, device=TRITON_DEVICE)
    _last_offsets_kernel[(1,)](got, last_step, N, C, BLOCK=block)
    expected = [(last_step * N + n) * C + C - 1 for n in range(N - block, N)]
    assert got.tolist() == expected
    assert expected[-1] == B * L * N * C - 1
