"""Cases specific to the C++ CPU kernel of masked_attention (csrc/cpu/masked_attention.cpp).

The kernel tiles queries in blocks of 64 and keys in blocks of at most 512 (several key blocks
mean online rescaling in the forward and, for float16/bfloat16, D taken from the rounded output
in the backward), keeps the row statistics in the accumulation dtype, and must give bitwise the
same results whatever the thread count. The general semantics are in test_masked_attention.py.
"""
from __future__ import annotations

import pytest
import torch

import stpriv_ops
from attention_cases import assert_close_to_oracle, oracle, run_op, sample_inputs
from stpriv_ops import reference

pytestmark = pytest.mark.skipif(not stpriv_ops.has_ops(), reason="stpriv_ops._C is not built")

NAMES = ("out", "dq", "dk", "dv", "dkeep")


def check(B, H, N, d, dtype, keep="random", eps=1e-6, seed=None):
    q, k, v, kp, dout = sample_inputs(B, H, N, d, keep=keep, seed=seed)
    want_out, want_grads = oracle(q, k, v, kp, dout, eps=eps)
    got_out, got_grads = run_op(stpriv_ops.masked_attention, q, k, v, kp, dout, dtype, eps=eps)
    ref_out, ref_grads = run_op(reference.masked_attention, q, k, v, kp, dout, dtype, eps=eps)
    for name, got, want, ref in zip(NAMES, (got_out, *got_grads), (want_out, *want_grads), (ref_out, *ref_grads)):
        assert torch.isfinite(got).all(), f"{name} has non-finite entries"
        assert_close_to_oracle(name, got, want, dtype, same_dtype_ref=ref)


@pytest.mark.parametrize("N", [63, 64, 65, 128, 129])
def test_query_block_edges(N):
    check(1, 2, N, 16, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("N", [513, 1100])
def test_several_key_blocks(N, dtype):
    # N > 512: the forward rescales its running sums across key blocks.
    check(1, 2, N, 16, dtype)


@pytest.mark.parametrize("keep", ["zeros", "soft"])
def test_several_key_blocks_extreme_keep(keep):
    check(1, 1, 700, 32, torch.float32, keep=keep)


@pytest.mark.parametrize("d", [16, 48, 80, 128])
def test_head_dims(d):
    check(2, 1, 70, d, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_row_statistics(dtype):
    q, k, v, keep, _ = sample_inputs(2, 2, 90, 16, keep="soft")
    eps = 1e-3
    _, row_max, row_sum = torch.ops.stpriv.masked_attention(*(t.to(dtype) for t in (q, k, v, keep)), None, eps)
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert row_max.dtype == stats_dtype and row_sum.dtype == stats_dtype
    # The oracle's m_i and Z_i, from the inputs as the kernel sees them.
    q, k, keep = (t.to(dtype).double() for t in (q, k, keep))
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    m = scores.amax(-1)
    w = keep[:, None, None, :].expand_as(scores).clone()
    w.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    z = (w * (scores - m[..., None]).exp()).sum(-1) + eps
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(row_max.double(), m, atol=tol, rtol=tol)
    torch.testing.assert_close(row_sum.double(), z, atol=tol, rtol=tol)


def test_fake_kernel_matches_float64_stats():
    q, k, v, keep, _ = sample_inputs(1, 2, 9, 8, keep="soft", seed=0)
    torch.library.opcheck(torch.ops.stpriv.masked_attention.default, (q, k, v, keep, None, 1e-6))


def test_bitwise_deterministic_across_thread_counts():
    q, k, v, keep, dout = (t.float() for t in sample_inputs(2, 3, 600, 32, seed=1))
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            out, row_max, row_sum = torch.ops.stpriv.masked_attention(q, k, v, keep, None, 1e-6)
            grads = torch.ops.stpriv._masked_attention_backward(dout, q, k, v, keep, out, row_max, row_sum, None, 1e-6)
            results.append((out, *grads))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for name, a, b in zip(NAMES, results[0], other):
            assert torch.equal(a, b), f"{name} changed with the thread count"


def test_backward_checks_its_inputs():
    q, k, v, keep, dout = (t.float() for t in sample_inputs(1, 2, 5, 8, seed=2))
    out, row_max, row_sum = torch.ops.stpriv.masked_attention(q, k, v, keep, None, 1e-6)
    with pytest.raises(RuntimeError, match="row_sum must be"):
        torch.ops.stpriv._masked_attention_backward(dout, q, k, v, keep, out, row_max, row_sum[:, :1], None, 1e-6)
    with pytest.raises(RuntimeError, match="grad_out must have the shape"):
        torch.ops.stpriv._masked_attention_backward(dout[:, :1], q, k, v, keep, out, row_max, row_sum, None, 1e-6)
