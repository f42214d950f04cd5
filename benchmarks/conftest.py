"""Shared helpers for the pytest-benchmark suites (one file per op family).

* ``device``: CUDA when present, else CPU; ``STPRIV_BENCH_DEVICE=cpu`` forces the CPU.
* ``smoke``: True under ``--benchmark-disable`` (CI runs every case once there, so suites should
  switch to small shapes and skip slow setup such as ``torch.compile``).
* ``measure`` fixture, ``measure(benchmark, fn, ...)``: times ``fn`` with the device synchronized inside the timed
  call, and records FLOPs, bytes, achieved GFLOP/s and peak memory in ``benchmark.extra_info``.
* At the end of a run, a table per benchmark group gives each row's median and its ratio to the
  group's baseline row (the one measured with ``baseline=True``), so ratios come from one run.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

DEFAULT_ROUNDS = {"cpu": 7, "cuda": 50}


def bench_device() -> torch.device:
    forced = os.environ.get("STPRIV_BENCH_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return bench_device()


def is_smoke(config: pytest.Config) -> bool:
    return bool(config.getoption("benchmark_disable", default=False))


@pytest.fixture(scope="session")
def smoke(request: pytest.FixtureRequest) -> bool:
    return is_smoke(request.config)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak extra memory of one call of ``fn``, in MiB, above what was allocated before it.

    CUDA: the caching allocator's peak statistic. CPU: PyTorch keeps no such statistic, so the
    allocations and frees that the profiler records (``profile_memory=True``) are replayed in
    time order and their running sum's maximum is taken.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def measure(
    benchmark,
    fn: Callable[[], object],
    *,
    device: torch.device,
    flops: float | None = None,
    bytes_moved: float | None = None,
    baseline: bool = False,
    rounds: int | None = None,
    warmup_rounds: int = 2,
):
    """Times ``fn`` (device synchronized inside the timed call) and annotates the row.

    Args:
        benchmark: the pytest-benchmark fixture.
        fn: the work to time, no arguments.
        device: where it runs.
        flops: floating-point operations of one call, for GFLOP/s and distance from the bound.
        bytes_moved: minimum bytes one call must read and write, for GB/s.
        baseline: this row is the group's reference for the ratio table printed at the end.
        rounds: timed repetitions (after ``warmup_rounds``); a per-device default when None.

    Returns:
        What ``fn`` returned on its last call.
    """

    def timed():
        result = fn()
        synchronize(device)
        return result

    info = benchmark.extra_info
    info["device"] = device.type
    info["baseline"] = baseline
    if flops is not None:
        info["flops"] = float(flops)
    if bytes_moved is not None:
        info["bytes"] = float(bytes_moved)
    if benchmark.disabled:  # smoke mode: run once, no memory probe
        return benchmark(timed)
    timed()  # warm-up outside the memory probe: first calls allocate workspaces and caches
    info["peak_memory_mib"] = round(peak_memory_mib(timed, device), 1)
    rounds = rounds or int(os.environ.get("STPRIV_BENCH_ROUNDS", DEFAULT_ROUNDS.get(device.type, 7)))
    result = benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    median = benchmark.stats.stats.median
    if flops is not None and median > 0:
        info["gflops_per_s"] = round(flops / median / 1e9, 1)
    if bytes_moved is not None and median > 0:
        info["gb_per_s"] = round(bytes_moved / median / 1e9, 1)
    return result


@pytest.fixture(name="measure")
def measure_fixture():
    """``measure`` as a fixture: bench files need no import of this conftest (which would clash
    with tests/conftest.py under pytest's default import mode)."""
    return measure


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Per group: median, ratio to the baseline row, GFLOP/s and peak memory, from this run."""
    session = getattr(config, "_benchmarksession", None)
    rows = [b for b in getattr(session, "benchmarks", []) if getattr(b, "stats", None) is not None]
    if not rows:
        return
    groups: dict[str, list] = {}
    for b in rows:
        groups.setdefault(b.group or "", []).append(b)
    tr = terminalreporter
    tr.write_sep("-", "ratios to each group's baseline (medians of this run)")
    for group, members in groups.items():
        base = next((b for b in members if b.extra_info.get("baseline")), None)
        tr.write_line(f"{group}")
        for b in sorted(members, key=lambda b: b.stats.median):
            med_ms = b.stats.median * 1e3
            ratio = f"{b.stats.median / base.stats.median:6.2f}x" if base is not None else "      -"
            gf = b.extra_info.get("gflops_per_s")
            mem = b.extra_info.get("peak_memory_mib")
            extra = (f"  {gf:8.1f} GFLOP/s" if gf is not None else "") + (f"  {mem:8.1f} MiB" if mem is not None else "")
            tr.write_line(f"    {b.name:70s} {med_ms:10.3f} ms {ratio}{extra}")
