"""Code paths of the C++ CPU kernels that the small shapes of the per-op tests do not reach.

* masked_mean sums channels in register tiles of 64 (csrc/cpu/masked_mean.cpp): full tiles, a
  partial last tile, and C below one tile, in the vectorized float32 clone and the other dtypes.
* scatter_tokens switches to streaming (non-temporal) stores for outputs of 4 MiB and more
  (csrc/cpu/topk.cpp, kStreamBytes): rows that are not 16-byte aligned, repeated and unsorted
  indices, and every dtype, on both sides of that size.
Both kernels run their loops in parallel, so each case also runs with one and with two threads.
"""
from __future__ import annotations

import pytest
import torch

import stpriv_ops
from stpriv_ops import reference

requires_ops = pytest.mark.skipif(not stpriv_ops.has_ops(), reason="stpriv_ops._C is not built")
STREAM_BYTES = 4 << 20  # kStreamBytes in csrc/cpu/topk.cpp


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}thread")
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@requires_ops
@pytest.mark.parametrize("C", [1, 63, 64, 65, 128, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_masked_mean_channel_tiles(threads, C, dtype):
    g = torch.Generator().manual_seed(C)
    x = torch.randn(3, 4, 11, C, generator=g, dtype=torch.float64)
    keep = torch.rand(3, 4, 11, generator=g, dtype=torch.float64)
    keep[1, 2] = 0  # an empty step: its spatial mean must be exactly 0
    want = reference.masked_mean(x, keep)
    ref = reference.masked_mean(x.to(dtype), keep.to(dtype))
    got = stpriv_ops.masked_mean(x.to(dtype), keep.to(dtype))
    for name, g_, w, r in zip(("spatial", "spatiotemporal"), got, want, ref):
        err = (g_.double() - w).abs().max().item()
        allowed = 2 * (r.double() - w).abs().max().item() + 4 * torch.finfo(dtype).eps
        assert err <= allowed, f"{name} C={C} {dtype}: error {err:.3g} > allowed {allowed:.3g}"
    assert torch.count_nonzero(got[0][1, 2]) == 0


def step_indices(B, L, N, k, seed, repeats=False):
    """idx [B, L, k]: sorted distinct indices, or (repeats=True) unsorted ones with repeats."""
    g = torch.Generator().manual_seed(seed)
    if repeats:
        return torch.randint(0, N, (B, L, k), generator=g)
    return torch.rand(B, L, N, generator=g).argsort(dim=-1)[..., :k].sort(dim=-1).values


@requires_ops
@pytest.mark.parametrize(
    "dtype, D",
    [(torch.float32, 384), (torch.float32, 385), (torch.float64, 97), (torch.float16, 771), (torch.bfloat16, 770)],
    ids=str,
)
@pytest.mark.parametrize("repeats", [False, True], ids=["distinct", "repeats"])
def test_scatter_streaming_stores(threads, dtype, D, repeats):
    B, L, N, k = 10, 6, 49, 17
    element = torch.empty((), dtype=dtype).element_size()
    # float64 at D=97 stays under the threshold: the same checks on the plain-store path.
    assert (B * L * N * D * element >= STREAM_BYTES) == (dtype != torch.float64)
    idx = step_indices(B, L, N, k, seed=D, repeats=repeats)
    y = torch.randn(B, L * k, D, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = stpriv_ops.scatter_tokens(y, idx, N)
    want = reference.scatter_tokens(y, idx, N)
    assert torch.equal(got, want)


@requires_ops
def test_scatter_streaming_output_unaligned_rows(threads):
    # 2-byte rows of odd length make every row start at a different offset within 16 bytes.
    B, L, N, k, D = 4, 8, 49, 20, 1539
    idx = step_indices(B, L, N, k, seed=3)
    y = torch.randn(B, L * k, D, dtype=torch.float16)
    assert B * L * N * D * 2 >= STREAM_BYTES
    assert torch.equal(stpriv_ops.scatter_tokens(y, idx, N), reference.scatter_tokens(y, idx, N))
