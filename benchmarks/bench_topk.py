"""Per-frame top-k + token compaction (inference, §3.2): stpriv vs eager, compiled, and a plain gather.

Providers, same inputs in one run:
  stpriv        stpriv_ops.topk_keep + gather_tokens (C++ on CPU, Triton on CUDA)
  eager         stpriv_ops.reference.topk_keep + gather_tokens (stable sort, index arithmetic, gather)
  compile       the eager pipeline through torch.compile
  index_gather  the bound: torch.gather with an index built beforehand (no selection at all)

Modes: ``topk+gather`` and ``scatter`` (back to the full grid, dropped = 0; no index_gather row).
Shape: B32 L8 N49 D384 (ViT-S, 16 x 112 x 112 video), keep 34% (k = 16 per step); float32 on
CPU, bfloat16 on CUDA. Smoke mode (``--benchmark-disable``) shrinks it and skips compile.
"""
from __future__ import annotations

import pytest
import torch

import stpriv_ops
from stpriv_ops import reference

PROVIDERS = ["stpriv", "eager", "compile", "index_gather"]
SHAPE, SMOKE_SHAPE = (32, 8, 49, 384), (2, 2, 9, 16)
KEEP_RATIO = 0.34
_COMPILED: dict = {}


def _compiled(fn):
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn)
    return _COMPILED[fn]


def _eager_select(score, x, k):
    return reference.gather_tokens(x, reference.topk_keep(score, k))


def _stpriv_select(score, x, k):
    return stpriv_ops.gather_tokens(x, stpriv_ops.topk_keep(score, k))


def _inputs(device, smoke):
    B, L, N, D = SMOKE_SHAPE if smoke else SHAPE
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    k = int(N * KEEP_RATIO)
    g = torch.Generator().manual_seed(0)
    score = torch.rand(B, L, N, generator=g).to(device)
    x = torch.randn(B, L * N, D, generator=g).to(device, dtype)
    return score, x, k, (B, L, N, D), dtype


@pytest.mark.parametrize("provider", PROVIDERS)
def test_topk_gather(benchmark, device, smoke, measure, provider):
    if provider == "compile" and smoke:
        pytest.skip("smoke mode skips torch.compile")
    score, x, k, (B, L, N, D), dtype = _inputs(device, smoke)
    if provider == "index_gather":
        idx = reference.topk_keep(score, k)
        flat = (idx + N * torch.arange(L, device=device)[:, None]).reshape(B, L * k, 1).expand(B, L * k, D)

        def run():
            return torch.gather(x, 1, flat)

    else:
        fn = {"stpriv": _stpriv_select, "eager": _eager_select, "compile": _compiled(_eager_select)}[provider]

        def run():
            return fn(score, x, k)

    benchmark.group = f"topk+gather B{B} L{L} N{N} D{D} k{k} {str(dtype).removeprefix('torch.')} ({device.type})"
    benchmark.extra_info.update(shape=[B, L, N, D], k=k, provider=provider)
    out = measure(benchmark, run, device=device, bytes_moved=2.0 * B * L * k * D * x.element_size(),
                  baseline=provider == "index_gather")
    assert out.shape == (B, L * k, D)


@pytest.mark.parametrize("provider", ["stpriv", "eager", "compile"])
def test_scatter(benchmark, device, smoke, measure, provider):
    if provider == "compile" and smoke:
        pytest.skip("smoke mode skips torch.compile")
    score, x, k, (B, L, N, D), dtype = _inputs(device, smoke)
    idx = reference.topk_keep(score, k)
    y = reference.gather_tokens(x, idx)
    fn = {"stpriv": stpriv_ops.scatter_tokens, "eager": reference.scatter_tokens,
          "compile": _compiled(reference.scatter_tokens)}[provider]

    def run():
        return fn(y, idx, N)

    benchmark.group = f"scatter B{B} L{L} N{N} D{D} k{k} {str(dtype).removeprefix('torch.')} ({device.type})"
    benchmark.extra_info.update(shape=[B, L, N, D], k=k, provider=provider)
    out = measure(benchmark, run, device=device, bytes_moved=float((L * k + L * N) * B * D * x.element_size()),
                  baseline=provider == "eager")
    assert out.shape == (B, L * N, D)
