"""What every training loop of the three phases shares: where it is (``Progress``, which a
checkpoint holds to continue exactly), precision, module preparation and the end of a step
(losses averaged over ranks and checked for NaN/inf before any update)."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from .config import TrainConfig
from .distributed import all_reduce_mean, wrap

# Seeds the per-shard Gumbel generators and the epoch permutations of each phase.
PHASE_IDS = {"initialization": 1, "adversarial": 2, "evaluation": 3, "reconstruction": 4}

# save(progress, optimizers) -> None: writes a checkpoint of the whole run at this point.
SaveFn = Callable[["Progress", dict[str, torch.optim.Optimizer]], None]


class NonFiniteLossError(UserError, FloatingPointError):
    """A loss became NaN or infinite; raised before the optimizer step, so the weights and the
    last checkpoint are those of the last good step. A user error: the fix is in the run's
    config (a lower learning rate, ``grad_clip``), and the message names the step."""


@dataclass
class Progress:
    """Position of a phase, in units that survive a restart.

    Attributes:
        phase: "reconstruction", "initialization", "adversarial" or "evaluation".
        epoch: epochs completed.
        batch: batches of the epoch's order consumed so far, skipped ones included (where a
            resumed epoch starts).
        step: optimizer steps completed in the phase (drives the learning-rate schedule).
        sums: running sums of the current epoch's step values (for exact epoch means).
        epoch_steps: optimizer steps taken in the current epoch (the divisor of those means).
        history: per-epoch means of the completed epochs, plus "seconds".
        seconds: time spent in the current epoch so far.
    """

    phase: str
    epoch: int = 0
    batch: int = 0
    step: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    epoch_steps: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def resume(cls, phase: str, checkpoint: dict[str, Any] | None,
               optimizers: dict[str, torch.optim.Optimizer]) -> Progress:
        """A fresh start, or the state of ``checkpoint`` when it belongs to ``phase`` (its
        optimizer states are loaded into ``optimizers``)."""
        if checkpoint is None or checkpoint.get("phase") != phase:
            return cls(phase)
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(checkpoint["optimizer"][name])
        return cls(**checkpoint["progress"])

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "epoch": self.epoch, "batch": self.batch, "step": self.step,
                "sums": dict(self.sums), "epoch_steps": self.epoch_steps, "history": {k: list(v) for k, v in self.history.items()},
                "seconds": self.seconds}

    def end_step(self, values: dict[str, float]) -> None:
        self.step += 1
        self.batch += 1
        self.epoch_steps += 1
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def skip_batch(self) -> None:
        """A batch with no usable video on some rank: consumed, but no step."""
        self.batch += 1

    def end_epoch(self, epoch_seconds: float) -> dict[str, float]:
        """Close the epoch: append its means to the history; returns them."""
        means = {key: total / max(1, self.epoch_steps) for key, total in self.sums.items()}
        for key, value in means.items():
            self.history.setdefault(key, []).append(value)
        self.history.setdefault("seconds", []).append(self.seconds + epoch_seconds)
        self.epoch += 1
        self.batch, self.epoch_steps, self.sums, self.seconds = 0, 0, {}, 0.0
        return means


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast when ``cfg.precision == "bf16"`` (CPU and CUDA), else nothing."""
    if cfg.precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def prepare(module: nn.Module, device: torch.device, cfg: TrainConfig, *, find_unused_parameters: bool = False
            ) -> nn.Module:
    """Move to ``device`` in training mode, wrap in DDP under torchrun (``find_unused_parameters``:
    see :func:`~stprivacy.train.distributed.wrap`), compile when asked.

    The bare module keeps the parameters (optimizers and state dicts use it); the returned
    wrapper is what the loop calls.
    """
    module.to(device).train()
    wrapped = wrap(module, device, find_unused_parameters=find_unused_parameters)
    return torch.compile(wrapped) if cfg.compile else wrapped


class StepValues:
    """Accumulates a step's scalar values over micro-batches without a device sync per value."""

    def __init__(self, accumulation: int):
        self.scale = 1.0 / accumulation
        self.values: dict[str, Tensor] = {}

    def add(self, **values: Tensor) -> None:
        for key, value in values.items():
            value = value.detach().float() * self.scale
            self.values[key] = value if key not in self.values else self.values[key] + value

    def reduce(self, progress: Progress) -> dict[str, float]:
        """Mean over ranks (one collective), as floats; raises :class:`NonFiniteLossError` on every
        rank alike when any value is NaN or infinite."""
        keys = list(self.values)
        reduced = all_reduce_mean(torch.stack([self.values[k] for k in keys])).tolist()
        out = dict(zip(keys, reduced))
        bad = {k: v for k, v in out.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss in the {progress.phase} phase at step {progress.step + 1} (epoch "
                f"{progress.epoch + 1}, batch {progress.batch + 1}): {bad}; training stopped before the "
                f"update, the last checkpoint is the last good state (try a lower learning rate, "
                f"grad_clip, or precision fp32)")
        return out
