"""Checkpoints: one plain dict per phase, written atomically, read with ``weights_only=True``.

A checkpoint holds ``model`` (and ``recognizers``) state dicts, ``optimizer`` state dicts, the
``scheduler`` position, the ``config`` (model and train sections as plain dicts), the
``phase``, ``epoch`` and ``step``, and the ``rng`` states, so a run can be inspected or resumed.

A run directory keeps ``last.pt`` (the newest state, written every few steps) and
``last.prev.pt`` (the one before it): if ``last.pt`` is ever unreadable, resuming falls back to
``last.prev.pt`` and says so.
"""
from __future__ import annotations

import os
import pickle
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputNotFoundError, UserError


def rng_state() -> dict[str, Any]:
    """The states of every random generator a training run draws from, as safe-to-load types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: a crash leaves the old file or the new one,
    never a torn one (temporary file in the same directory, flush, fsync, ``os.replace``)."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f"checkpoint must be a dict, got {type(checkpoint).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    # fsync the directory too, so the rename itself survives a power loss.
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


LAST, PREVIOUS = "last.pt", "last.prev.pt"


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used: truncated, corrupt, or not an stprivacy checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds more than tensors and plain Python types (a pickle payload that
    would run code when unpickled); it is refused, never executed."""


def read_weights_only(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with a refusal or a damaged file as a clear error.

    Only tensors and plain Python types are accepted, so an untrusted file cannot run code.

    Raises:
        InputNotFoundError: no such file.
        UnsafeCheckpointError: the file carries other pickled objects (custom classes, callables).
        CheckpointError: the file is truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only's refusal; one of its lines names the offending global (e.g. posix.system).
        lines = [line for line in str(e).splitlines() if "GLOBAL" in line or "global" in line]
        detail = lines[0].strip().split(". ")[0].rstrip(".") if lines else type(e).__name__
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains pickled objects other than tensors and plain "
            f"Python types, which could run code ({detail})") from e
    except (RuntimeError, EOFError, KeyError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}: {str(e)[:200]})") from e


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with :func:`read_weights_only`.

    Raises:
        InputNotFoundError: no such file.
        UnsafeCheckpointError: the file carries other pickled objects (custom classes, callables).
        CheckpointError: the file is truncated, corrupt, or not an stprivacy checkpoint.
    """
    checkpoint = read_weights_only(path, map_location)
    # STPrivacy's checkpoints say their phase; a learned competitor's (stprivacy.methods.learned) its method.
    if not isinstance(checkpoint, dict) or not {"phase", "method"} & set(checkpoint):
        raise CheckpointError(f"{path} is not an stprivacy checkpoint (expected a dict with a 'phase' key, or "
                              "a 'method' key for a learned competitor)")
    return checkpoint


def save_rotating(run_dir: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write ``run_dir/last.pt``, first moving the current one to ``last.prev.pt``.

    A kill between the two steps leaves only ``last.prev.pt``, which :func:`load_latest` reads.
    """
    run_dir = Path(run_dir)
    last = run_dir / LAST
    if last.is_file():
        os.replace(last, run_dir / PREVIOUS)
    return save_checkpoint(last, checkpoint)


def load_latest(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest readable checkpoint of a run directory: ``last.pt``, else ``last.prev.pt``
    (with a warning naming what was wrong with ``last.pt``), else None when neither exists.

    A checkpoint refused as unsafe is never skipped over: that raises.
    """
    run_dir = Path(run_dir)
    problem = None
    for name in (LAST, PREVIOUS):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            checkpoint = load_checkpoint(path, map_location)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as e:
            problem = problem or e
            continue
        if problem is not None:
            warnings.warn(f"{problem}; resuming from the previous good checkpoint {path}", stacklevel=2)
        return checkpoint
    if problem is not None:
        raise CheckpointError(f"no readable checkpoint in {run_dir}: {problem}")
    return None
