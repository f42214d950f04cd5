"""Tiny training runs for the scale-out and fault-tolerance tests: seconds on one CPU thread."""
from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL = {"preset": "small", "embed_dim": 24, "num_heads": 2, "depth": 1, "pab_depth": 1, "num_psb": 2}
# 20 training videos: the anonymizer and the attackers train on the 16 left once the validation
# split (TrainConfig.validation_fraction, 20%) is carved out, 2 batches of 8 per epoch.
TINY_TRAIN = {
    "dataset": "synthetic", "dataset_kwargs": {"train_videos": 20, "test_videos": 8},
    "batch_size": 8, "init_epochs": 1, "adv_epochs": 1, "eval_epochs": 1,
    "recognizer": {"embed_dim": 24, "num_heads": 2, "depth": 1}, "progress": False,
    "log": "csv", "log_every": 1,
}


def write_config(path: Path, **train_overrides) -> Path:
    path.write_text(json.dumps({"model": TINY_MODEL, "train": {**TINY_TRAIN, **train_overrides}}))
    return path


def cli_env() -> dict[str, str]:
    """One thread per process (what torchrun gives each rank), so runs are bitwise comparable."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def one_thread():
    """Generator for an autouse fixture: tiny models run fastest on one intra-op thread, and far
    faster than on several when the machine's cores are busy (OpenMP threads then spin)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
