"""Multi-process training (torchrun, gloo, 2 CPU processes) computes what one process computes.

The reference is one process at the same global batch with 2 gradient-accumulation steps: both
runs cut every global batch into the same 2 shards (rank r <-> micro-batch a) and draw each
shard's Gumbel noise from the same per-shard generator, so the only difference left is where
the two shard gradients are summed (DDP's all-reduce vs accumulation in .grad). Summing two
values and halving are exact in floating point, so the runs agree bit for bit; the test allows
a relative 1e-6 to stay meaningful if a backend ever reorders that sum.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from stprivacy.cli import main as cli_main
from stprivacy.train import distributed
from stprivacy.train.distributed import ResumableBatches, micro_batches, shard_generator
from stprivacy.train.run_log import read_csv
from train_fixtures import ROOT, cli_env, one_thread, write_config

_one_thread = pytest.fixture(autouse=True)(one_thread)

TOLERANCE = 1e-6  # relative, per logged value; measured: 0 (bitwise equal)


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


def test_shards_do_not_depend_on_the_split_between_ranks_and_accumulation(monkeypatch):
    # (world 2, accumulation 1) and (world 1, accumulation 2) must see identical shards.
    length, batch, epoch = 37, 8, 3
    _as_rank(monkeypatch, 0, 1)
    single = ResumableBatches(length, batch, 2, seed=11)
    shards_single = []
    for indices in single.epoch(epoch):
        shards_single.append([m[0].tolist() for _, m in micro_batches([torch.tensor(indices)], 2, [])])
    per_rank = []
    for r in range(2):
        _as_rank(monkeypatch, r, 2)
        per_rank.append(ResumableBatches(length, batch, 1, seed=11).epoch(epoch))
    assert len(single) == len(per_rank[0]) == length // batch
    for t, shards in enumerate(shards_single):
        assert shards == [per_rank[0][t], per_rank[1][t]]
    # every global batch is 8 distinct videos, no video twice in an epoch
    flat = [i for shards in shards_single for shard in shards for i in shard]
    assert len(flat) == len(set(flat)) == (length // batch) * batch


def test_resumed_epoch_continues_with_the_same_batches():
    batches = ResumableBatches(40, 8, 1, seed=5)
    assert batches.epoch(2, start=3) == batches.epoch(2)[3:]
    assert batches.epoch(2) != batches.epoch(3)


def test_shard_generators_are_distinct_and_reproducible(monkeypatch):
    draws = {}
    for r in range(2):
        _as_rank(monkeypatch, r, 2)
        draws[r] = torch.rand(4, generator=shard_generator(0, 1, 7, 0))
    _as_rank(monkeypatch, 0, 1)
    assert torch.equal(torch.rand(4, generator=shard_generator(0, 1, 7, 1)), draws[1])  # micro 1 == rank 1
    assert not torch.equal(draws[0], draws[1])


def test_batch_must_split_evenly():
    with pytest.raises(ValueError, match=r"batch_size \(6\) must be divisible by world size x grad_accum_steps"):
        ResumableBatches(32, 6, 4, seed=0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ResumableBatches(4, 8, 1, seed=0)


def test_torchrun_two_gloo_processes_match_one_process(tmp_path):
    # With the reconstruction start too: its loss leaves the keep predictors out, which DDP must allow.
    config = write_config(tmp_path / "run.json", reconstruction_epochs=1)
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "stprivacy.cli", "train", "--config", str(config), "--out", str(tmp_path / "ddp")],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert torchrun.returncode == 0, torchrun.stdout + torchrun.stderr
    # the reference runs here, on one thread like each rank
    assert cli_main(["train", "--config", str(config), "--out", str(tmp_path / "single"), "--grad-accum", "2"]) == 0

    ddp, single = read_csv(tmp_path / "ddp" / "metrics.csv"), read_csv(tmp_path / "single" / "metrics.csv")
    assert ddp.keys() == single.keys()
    assert ("initialization", "loss_action") in ddp and ("adversarial", "loss_privacy") in ddp
    assert ("reconstruction", "loss_reconstruction") in ddp
    assert ("evaluation/stprivacy alpha=0.7 [mask]", "loss_privacy") in ddp  # phase 3: fresh recognizers per attacker
    assert ("evaluation/stprivacy alpha=0.7 [pixels]", "loss_privacy") in ddp
    for key in ddp:
        assert [s for s, _ in ddp[key]] == [s for s, _ in single[key]], key
        for (_, a), (_, b) in zip(ddp[key], single[key]):
            assert math.isfinite(a) and math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=1e-9), (key, a, b)
    # rank 0 alone wrote the run directory; the trained weights agree too
    a = torch.load(tmp_path / "ddp" / "adversarial.pt", weights_only=True)
    b = torch.load(tmp_path / "single" / "adversarial.pt", weights_only=True)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(tensor, b["model"][name], rtol=TOLERANCE, atol=1e-7)
    assert a["shards"] == b["shards"] == 2
    # phase 3: the test metrics, from logits gathered over both ranks
    result_ddp = json.loads((tmp_path / "ddp" / "report.json").read_text())["evaluation"]["0.7"]
    result_single = json.loads((tmp_path / "single" / "report.json").read_text())["evaluation"]["0.7"]
    for key in ("top1", "f1", "cmap", "kept"):
        assert math.isclose(result_ddp[key], result_single[key], rel_tol=TOLERANCE), key
