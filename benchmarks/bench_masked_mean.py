"""masked_mean (Eq. 2-3): stpriv vs the eager and the compiled reference.

Providers, same inputs in one run:
  stpriv   torch.ops.stpriv.masked_mean (C++ on CPU, Triton on CUDA): both means in one pass
  eager    stpriv_ops.reference.masked_mean (multiply, two sums, two guarded divisions)
  compile  the same reference through torch.compile

Modes: ``fwd`` (no autograd) and ``fwd+bwd`` (backward into x and keep).
Shape: B32 L8 N49 C128 float32 (the predictor's features at ViT-S width / 3), on CPU and CUDA.
Minimum bytes: fwd reads x once; fwd+bwd reads x twice and writes grad_x. Smoke mode
(``--benchmark-disable``) shrinks the shape and skips the compile provider.
"""
from __future__ import annotations

import pytest
import torch

import stpriv_ops
from stpriv_ops import reference

PROVIDERS = ["stpriv", "eager", "compile"]
MODES = ["fwd", "fwd+bwd"]
SHAPE = (32, 8, 49, 128)
SMOKE_SHAPE = (2, 2, 9, 16)
KEEP_RATIO = 0.7


def masked_mean_bytes(B: int, L: int, N: int, C: int, mode: str, element_size: int = 4) -> float:
    x = B * L * N * C * element_size
    return float(x if mode == "fwd" else 3 * x)


def _function(provider: str):
    if provider == "stpriv":
        return stpriv_ops.masked_mean
    if provider == "eager":
        return reference.masked_mean
    if provider == "compile":
        if not hasattr(_function, "compiled"):
            _function.compiled = torch.compile(reference.masked_mean)
        return _function.compiled
    raise ValueError(f"unknown provider {provider!r}")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
def test_masked_mean(benchmark, device, smoke, measure, mode, provider):
    if provider == "compile" and smoke:
        pytest.skip("smoke mode skips torch.compile: compiling takes tens of seconds on CPU")
    B, L, N, C = SMOKE_SHAPE if smoke else SHAPE
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, N, C, generator=g).to(device)
    keep = (torch.rand(B, L, N, generator=g) < KEEP_RATIO).float().to(device)
    grad_s = torch.randn(B, L, C, generator=g).to(device)
    grad_st = torch.randn(B, C, generator=g).to(device)
    fn = _function(provider)
    backward = mode == "fwd+bwd"
    x.requires_grad_(backward)
    keep.requires_grad_(backward)

    if backward:

        def run():
            x.grad = keep.grad = None
            torch.autograd.backward(fn(x, keep), (grad_s, grad_st))

    else:

        def run():
            with torch.no_grad():
                return fn(x, keep)

    benchmark.group = f"masked_mean {mode} B{B} L{L} N{N} C{C} float32 ({device.type})"
    benchmark.extra_info.update(shape=[B, L, N, C], mode=mode, provider=provider)
    measure(benchmark, run, device=device, bytes_moved=masked_mean_bytes(B, L, N, C, mode), baseline=provider == "eager")
    if backward:
        assert torch.isfinite(x.grad).all() and torch.isfinite(keep.grad).all()


def test_bytes_formula():
    assert masked_mean_bytes(32, 8, 49, 128, "fwd") == 32 * 8 * 49 * 128 * 4
    assert masked_mean_bytes(1, 1, 1, 1, "fwd+bwd") == 12
