"""gumbel_keep (Eq. 6) and gumbel_topk: stpriv vs eager and compiled PyTorch, noise drawn every call.

Providers, same inputs in one run:
  stpriv   torch.ops.stpriv.gumbel_keep / gumbel_topk: noise from in-kernel Philox, one launch
           forward and one backward
  eager    what the STPrivacy release does: ``F.gumbel_softmax(log_probs, tau, hard=True)[..., 0] * prev``;
           for top-k, torch.rand -> Gumbel noise -> stpriv_ops.reference.gumbel_topk
  compile  the eager function through torch.compile

Mode ``fwd+bwd`` (forward, then backward into log_probs and prev / score), the training path.
Shapes: gumbel_keep B32 T392 (8 steps x 49 tubelets); gumbel_topk B32 L8 N49, k = 16 (34%).
Smoke mode (``--benchmark-disable``) shrinks the shapes and skips the compile provider.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import stpriv_ops
from stpriv_ops import reference

PROVIDERS = ["stpriv", "eager", "compile"]
KEEP_SHAPE, SMOKE_KEEP_SHAPE = (32, 392), (2, 20)
TOPK_SHAPE, SMOKE_TOPK_SHAPE = (32, 8, 49), (2, 2, 9)
TAU = 1.0


def _eager_keep(log_probs, prev):
    return F.gumbel_softmax(log_probs, tau=TAU, hard=True)[..., 0] * prev


def _eager_topk(score, k):
    u = torch.rand_like(score).clamp_(min=2.0**-24, max=1 - 2.0**-24)
    return reference.gumbel_topk(score, k, reference.gumbel_noise(u), TAU)


_COMPILED: dict = {}


def _compiled(fn):
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn)
    return _COMPILED[fn]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_gumbel_keep(benchmark, device, smoke, measure, provider):
    if provider == "compile" and smoke:
        pytest.skip("smoke mode skips torch.compile")
    B, T = SMOKE_KEEP_SHAPE if smoke else KEEP_SHAPE
    g = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(B, T, 2, generator=g), -1).to(device).requires_grad_(True)
    prev = (torch.rand(B, T, generator=g) < 0.8).float().to(device).requires_grad_(True)
    grad = torch.randn(B, T, generator=g).to(device)
    fn = {
        "stpriv": lambda lp, p: stpriv_ops.gumbel_keep(lp, p, tau=TAU),
        "eager": _eager_keep,
        "compile": _compiled(_eager_keep),
    }[provider]

    def run():
        log_probs.grad = prev.grad = None
        fn(log_probs, prev).backward(grad)

    benchmark.group = f"gumbel_keep fwd+bwd B{B} T{T} float32 ({device.type})"
    benchmark.extra_info.update(shape=[B, T], provider=provider)
    # Minimum bytes: read log_probs, prev, grad; write keep, grad_log_probs, grad_prev (noise in-kernel).
    measure(benchmark, run, device=device, bytes_moved=4.0 * B * T * 8, baseline=provider == "eager")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_gumbel_topk(benchmark, device, smoke, measure, provider):
    if provider == "compile" and smoke:
        pytest.skip("smoke mode skips torch.compile")
    B, L, N = SMOKE_TOPK_SHAPE if smoke else TOPK_SHAPE
    k = int(N * 0.34)
    g = torch.Generator().manual_seed(0)
    score = torch.randn(B, L, N, generator=g).to(device).requires_grad_(True)
    grad = torch.randn(B, L, N, generator=g).to(device)
    fn = {
        "stpriv": lambda s, k: stpriv_ops.gumbel_topk(s, k, tau=TAU),
        "eager": _eager_topk,
        "compile": _compiled(_eager_topk),
    }[provider]

    def run():
        score.grad = None
        keep = fn(score, k)
        keep.backward(grad)
        return keep

    benchmark.group = f"gumbel_topk fwd+bwd B{B} L{L} N{N} k{k} float32 ({device.type})"
    benchmark.extra_info.update(shape=[B, L, N], k=k, provider=provider)
    keep = measure(benchmark, run, device=device, bytes_moved=4.0 * B * L * N * 5, baseline=provider == "eager")
    assert (keep.sum(-1) == k).all()
