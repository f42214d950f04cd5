"""Model level: one STPrivacy training step and one inference pass, three providers.

Providers, same weights and inputs in one run:
  stpriv     STPrivacy on the stpriv_ops kernels (masked attention, masked means, Gumbel, top-k)
  reference  the same model on the eager references (DynamicViT-style attention and means)
  unpruned   the same encoder and decoder with nothing dropped: plain ViT blocks on SDPA, the bound

Configs: the small preset everywhere; the paper's ViT-S (16 x 112 x 112, B32, bf16 autocast) on
CUDA, and on CPU (B2, fp32) only with STPRIV_BENCH_VITS=1 since it takes seconds per step there.
Run ``pytest benchmarks/bench_model.py --benchmark-only``; ``--benchmark-disable`` is the smoke
mode (each case once). A training step is forward, loss (pixel energy of the anonymized video plus
the sparsity loss, a stand-in for the recognizers' losses), backward and an AdamW step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os

import pytest
import torch

import stpriv_ops
from stprivacy.model import STPrivacy, STPrivacyConfig, reference_ops

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
PROVIDERS = ["stpriv", "reference", "unpruned"]


def _configs():
    # (name, config, batch, autocast dtype or None)
    cases = [("small", STPrivacyConfig.small(), 32 if CUDA else 8, None)]
    if CUDA:
        cases.append(("vit_s", STPrivacyConfig.vit_s(), 32, torch.bfloat16))
    elif os.environ.get("STPRIV_BENCH_VITS") == "1":
        cases.append(("vit_s", STPrivacyConfig.vit_s(), 2, None))
    return cases


CONFIGS = {name: (cfg, batch, amp) for name, cfg, batch, amp in _configs()}


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _setup(config: str, provider: str, training: bool):
    cfg, batch, amp = CONFIGS[config]
    if provider == "unpruned":
        cfg = dataclasses.replace(cfg, use_psb=False)
    torch.manual_seed(0)
    model = STPrivacy(cfg).to(DEVICE).train(training)
    video = torch.rand(batch, cfg.in_chans, cfg.frames, cfg.image_size, cfg.image_size, device=DEVICE)

    @contextlib.contextmanager
    def context():
        # Entered anew on every call: generator-based context managers are single-use.
        with reference_ops(provider == "reference"), torch.autocast(DEVICE.type, dtype=amp, enabled=amp is not None):
            yield

    return model, video, context


def _record_memory(benchmark, fn):
    if not CUDA:
        return
    torch.cuda.reset_peak_memory_stats()
    fn()
    _sync()
    benchmark.extra_info["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_training_step(benchmark, config, provider):
    model, video, context = _setup(config, provider, training=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    benchmark.group = f"model train step, {config} ({DEVICE.type})"
    losses = []

    def step():
        with context():
            out = model(video)
            loss = out.video.float().square().mean()
            if out.keep_masks:
                loss = loss + stpriv_ops.sparsity_loss(out.keep_masks, out.target_ratios)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync()
        losses.append(loss.detach())

    step()  # warm-up: allocator, Triton compilation, oneDNN primitives
    _record_memory(benchmark, step)
    benchmark(step)
    assert all(torch.isfinite(loss) for loss in losses)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_inference(benchmark, config, provider):
    model, video, context = _setup(config, provider, training=False)
    benchmark.group = f"model inference, {config} ({DEVICE.type})"

    @torch.inference_mode()
    def infer():
        with context():
            out = model(video)
        _sync()
        return out

    out = infer()
    _record_memory(benchmark, infer)
    benchmark(infer)
    expected_kept = 1.0 if provider == "unpruned" else None
    kept = out.keep.float().mean().item()
    benchmark.extra_info["kept_fraction"] = round(kept, 3)
    assert torch.isfinite(out.video).all()
    assert expected_kept is None or kept == expected_kept
