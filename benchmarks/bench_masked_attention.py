"""masked_attention: stpriv vs the eager reference, the compiled reference, and unmasked SDPA.

Providers, same inputs in one run:
  stpriv    torch.ops.stpriv.masked_attention (C++ on CPU, Triton on CUDA), with dkeep
  eager     stpriv_ops.reference.masked_attention: DynamicViT's softmax_with_policy, N x N in memory
  compile   the same reference through torch.compile
  sdpa      F.scaled_dot_product_attention with no mask at all: the bound (it computes no dkeep)
  flex      FlexAttention with score + log(keep) (CUDA only; its dkeep is not finite at dropped keys)

Modes: ``fwd`` (no autograd) and ``fwd+bwd`` (forward, then backward into q, k, v and keep).
Shapes: B x 6 x 392 x 64 (ViT-S on 16 x 112 x 112 video) and B x 6 x 1568 x 64 (16 x 224 x 224);
B = 4 and 1 on CPU in float32, 32 and 8 on CUDA in bfloat16.

``pytest benchmarks/bench_masked_attention.py --benchmark-only`` measures. Smoke mode
(``--benchmark-disable``, what CI runs) shrinks the shapes to B1 H2 N96 d32 and skips the
compile provider, whose compilation alone takes tens of seconds on a 2-core CPU.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import stpriv_ops
from stpriv_ops import reference

PROVIDERS = ["stpriv", "eager", "compile", "sdpa", "flex"]
MODES = ["fwd", "fwd+bwd"]
SHAPES = {  # name -> (CPU shape, CUDA shape)
    "N392": ((4, 6, 392, 64), (32, 6, 392, 64)),
    "N1568": ((1, 6, 1568, 64), (8, 6, 1568, 64)),
}
SMOKE_SHAPE = (1, 2, 96, 32)
KEEP_RATIO = 0.7


def attention_flops(B: int, H: int, N: int, d: int, mode: str) -> float:
    """Matrix-product FLOPs: 2 products of 2·B·H·N²·d forward, 5 backward (S recomputed, dP, dV, dQ, dK)."""
    product = 2.0 * B * H * N * N * d
    return product * (2 if mode == "fwd" else 7)


def _compiled_reference():
    if not hasattr(_compiled_reference, "fn"):
        _compiled_reference.fn = torch.compile(reference.masked_attention)
    return _compiled_reference.fn


def _flex_attention(keep: torch.Tensor):
    from torch.nn.attention.flex_attention import flex_attention

    # Computed once, outside the timed call, and detached: FlexAttention gives no usable keep
    # gradient (log(0) = -inf at dropped keys), so like SDPA it is timed for q, k, v gradients only.
    # (Keeping it attached made the second timed backward run through a freed graph on an H200.)
    log_keep = keep.detach().log()

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.where(q_idx == kv_idx, score, score + log_keep[b, kv_idx])

    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, score_mod=score_mod)


def _attention_fn(provider: str, keep: torch.Tensor):
    if provider == "stpriv":
        return lambda q, k, v: stpriv_ops.masked_attention(q, k, v, keep)
    if provider == "eager":
        return lambda q, k, v: reference.masked_attention(q, k, v, keep)
    if provider == "compile":
        compiled = _compiled_reference()
        return lambda q, k, v: compiled(q, k, v, keep)
    if provider == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
    if provider == "flex":
        return _flex_attention(keep)
    raise ValueError(f"unknown provider {provider!r}")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_masked_attention(benchmark, device, smoke, measure, shape_name, mode, provider):
    if provider == "flex" and device.type != "cuda":
        pytest.skip("FlexAttention is benchmarked on CUDA only")
    if provider == "compile" and smoke:
        pytest.skip("smoke mode skips torch.compile: compiling alone takes tens of seconds on CPU")
    cpu_shape, cuda_shape = SHAPES[shape_name]
    B, H, N, d = SMOKE_SHAPE if smoke else (cuda_shape if device.type == "cuda" else cpu_shape)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    g = torch.Generator().manual_seed(0)
    q, k, v, grad_out = (torch.randn(B, H, N, d, generator=g).to(device, dtype) for _ in range(4))
    keep = (torch.rand(B, N, generator=g) < KEEP_RATIO).to(device, dtype)
    backward = mode == "fwd+bwd"
    for t in (q, k, v, keep):
        t.requires_grad_(backward)
    attention = _attention_fn(provider, keep)

    if backward:

        def run():
            q.grad = k.grad = v.grad = keep.grad = None
            attention(q, k, v).backward(grad_out)

    else:

        def run():
            with torch.no_grad():
                return attention(q, k, v)

    benchmark.group = f"masked_attention {mode} B{B} H{H} N{N} d{d} {str(dtype).removeprefix('torch.')} ({device.type})"
    benchmark.extra_info.update(shape=[B, H, N, d], dtype=str(dtype), mode=mode, provider=provider)
    measure(
        benchmark,
        run,
        device=device,
        flops=attention_flops(B, H, N, d, mode),
        baseline=provider == "sdpa",
    )
    if backward and provider == "stpriv":
        assert keep.grad is not None and bool(torch.isfinite(keep.grad).all()), "stpriv must return a finite dkeep"


def test_flops_formula():
    # 392 tokens, 6 heads of 64, batch 4: 4·B·H·N²·d forward.
    assert attention_flops(4, 6, 392, 64, "fwd") == 4 * 4 * 6 * 392**2 * 64
    assert math.isclose(attention_flops(4, 6, 392, 64, "fwd+bwd") / attention_flops(4, 6, 392, 64, "fwd"), 3.5)
