"""Model level: one STPrivacy training step and one inference pass, three providers.

Providers, same weights and inputs in one run:
  stpriv     STPrivacy on the stpriv_ops kernels (masked attention, masked means, Gumbel, top-k)
  reference  the same model on the eager references (DynamicViT-style attention and means)
  unpruned   the same encoder and decoder with nothing dropped: plain ViT blocks on SDPA (baseline)
  xformers   stpriv with the unmasked attention on xformers' memory-efficient kernel (the optional
             extra; skipped where xformers is not installed)

Configs: ``small`` (the CPU preset, B8 on CPU, B32 on CUDA) and ``vit_s`` (the paper's model,
16 x 112 x 112: B32 with bf16 autocast on CUDA; on CPU B2 in float32, only with
STPRIV_BENCH_VITS=1 since a step takes seconds there). A training step is forward, loss (pixel
energy of the anonymized video plus the sparsity loss, a stand-in for the recognizers' losses),
backward and an AdamW step; inference is ``model.eval()`` under ``torch.inference_mode``.

``pytest benchmarks/bench_model.py --benchmark-only`` measures; smoke mode (``--benchmark-disable``)
runs the small config once per case.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os

import pytest
import torch

import stpriv_ops
from stprivacy.model import STPrivacy, STPrivacyConfig, attention_backend, reference_ops

PROVIDERS = ["stpriv", "reference", "unpruned", "xformers"]
CONFIGS = {"small": STPrivacyConfig.small(), "vit_s": STPrivacyConfig.vit_s()}
BATCH = {("small", "cpu"): 8, ("small", "cuda"): 32, ("vit_s", "cpu"): 2, ("vit_s", "cuda"): 32}


def _setup(config: str, provider: str, device: torch.device, smoke: bool, training: bool):
    if config == "vit_s" and smoke:
        pytest.skip("smoke mode runs the small config only")
    if config == "vit_s" and device.type == "cpu" and os.environ.get("STPRIV_BENCH_VITS") != "1":
        pytest.skip("ViT-S on CPU takes seconds per step; set STPRIV_BENCH_VITS=1 to run it")
    if provider == "xformers":
        pytest.importorskip("xformers.ops", reason="xformers (the optional extra) is not installed")
    cfg = CONFIGS[config]
    if provider == "unpruned":
        cfg = dataclasses.replace(cfg, use_psb=False)
    torch.manual_seed(0)
    model = STPrivacy(cfg).to(device).train(training)
    batch = BATCH[config, device.type]
    video = torch.rand(batch, cfg.in_chans, cfg.frames, cfg.image_size, cfg.image_size, device=device)
    amp = torch.bfloat16 if device.type == "cuda" and config == "vit_s" else None

    def context():
        # Fresh context objects per call: the benchmark enters them many times.
        stack = contextlib.ExitStack()
        stack.enter_context(reference_ops(provider == "reference"))
        stack.enter_context(attention_backend("xformers" if provider == "xformers" else "sdpa"))
        stack.enter_context(torch.autocast(device.type, dtype=amp, enabled=amp is not None))
        return stack

    return model, video, context


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_training_step(benchmark, measure, device, smoke, config, provider):
    model, video, context = _setup(config, provider, device, smoke, training=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    benchmark.group = f"model train step, {config} ({device.type})"

    def step():
        with context():
            out = model(video)
            loss = out.video.float().square().mean()
            if out.keep_masks:
                loss = loss + stpriv_ops.sparsity_loss(out.keep_masks, out.target_ratios)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    loss = measure(benchmark, step, device=device, baseline=provider == "unpruned")
    assert torch.isfinite(loss)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_inference(benchmark, measure, device, smoke, config, provider):
    model, video, context = _setup(config, provider, device, smoke, training=False)
    benchmark.group = f"model inference, {config} ({device.type})"

    @torch.inference_mode()
    def infer():
        with context():
            return model(video)

    out = measure(benchmark, infer, device=device, baseline=provider == "unpruned")
    kept = out.keep.float().mean().item()
    benchmark.extra_info["kept_fraction"] = round(kept, 3)
    assert torch.isfinite(out.video).all()
    if provider == "unpruned":
        assert kept == 1.0
    else:  # top-k after the last PSB: floor(N * alpha^3) of N per time step
        N = model.cfg.tokens_per_step
        assert kept == pytest.approx(int(N * model.cfg.alpha**3 + 1e-9) / N)


def anonymization_flops(cfg: STPrivacyConfig, keep_ratio: float | None = None) -> float:
    """Floating-point operations of one evaluation-mode anonymization pass of one clip, counted by
    ``torch.utils.flop_counter`` (matrix products, convolutions and attention: what dominates).

    The counter has no formula for the CPU flash-attention kernel that SDPA dispatches to here, so
    it gets the standard one (``4 * B * H * Nq * Nk * d``: the two products of attention)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa_flops(query, key, value, *args, **kwargs):
        return sdpa_flop_count(query, key, value)

    torch.manual_seed(0)
    model = STPrivacy(cfg).eval()
    video = torch.rand(1, cfg.in_chans, cfg.frames, cfg.image_size, cfg.image_size)
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flops})
    with torch.inference_mode(), counter:
        model(video, keep_ratio)
    return float(counter.get_total_flops())


@pytest.mark.parametrize("config", list(CONFIGS))
def test_anonymization_flops(benchmark, config):
    """The deployment cost of the kept-only decoder: FLOPs of the pruned anonymization pass at
    alpha 0.7 against the same 12 blocks with nothing dropped (an unpruned ViT-S plus the pixel
    head), on one clip. Target for ViT-S: at most 0.65x."""
    cfg = CONFIGS[config]
    pruned = anonymization_flops(cfg, 0.7)
    unpruned = anonymization_flops(dataclasses.replace(cfg, use_psb=False))
    ratio = pruned / unpruned
    benchmark.group = f"anonymization FLOPs per clip, {config}"
    benchmark.extra_info.update(pruned_gflops=round(pruned / 1e9, 3), unpruned_gflops=round(unpruned / 1e9, 3),
                                ratio=round(ratio, 3))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the figures are counts, not times
    print(f"\n{config}: anonymization pass {pruned / 1e9:.3f} GFLOP vs unpruned {unpruned / 1e9:.3f} GFLOP "
          f"= {ratio:.3f}x (alpha 0.7)")
    assert 0 < ratio < 1
    if config == "vit_s":
        assert ratio <= 0.65
