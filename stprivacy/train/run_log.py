"""Scalar logs of a training run: ``metrics.csv`` or TensorBoard, written by rank 0 only.

The CSV is long-format, one row per value (``phase,epoch,step,key,value``), so phases with
different losses share one file that pandas or a spreadsheet reads directly. Resuming a run drops
the rows written after the checkpoint it resumes from, so the file reads as if the run had never
been interrupted.
"""
from __future__ import annotations

import csv
from pathlib import Path

from .distributed import is_main

PHASES = ("initialization", "adversarial", "evaluation")
CSV_NAME = "metrics.csv"
_FIELDS = ["phase", "epoch", "step", "key", "value"]


class RunLogger:
    """Writes scalars every ``every`` optimizer steps (and at epoch ends).

    Args:
        run_dir: the run directory (None: log nothing).
        kind: "none", "csv" or "tensorboard".
        every: steps between logged rows.
    """

    def __init__(self, run_dir: str | Path | None, kind: str = "none", every: int = 1):
        self.kind = kind if (run_dir is not None and is_main()) else "none"
        self.every = every
        self._writer = None
        self._file = None
        if self.kind == "none":
            return
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "csv":
            path = self.run_dir / CSV_NAME
            new = not path.is_file() or path.stat().st_size == 0
            self._file = open(path, "a", newline="")
            self._csv = csv.writer(self._file)
            if new:
                self._csv.writerow(_FIELDS)
        elif self.kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # imported only when asked for

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        else:
            raise ValueError(f"log must be 'none', 'csv' or 'tensorboard', got {kind!r}")

    def log(self, phase: str, epoch: int, step: int, values: dict[str, float], *, force: bool = False) -> None:
        """Log ``values`` at optimizer step ``step`` (1-based) of ``phase`` when it is due."""
        if self.kind == "none" or not (force or step % self.every == 0):
            return
        if self._file is not None:
            for key, value in values.items():
                self._csv.writerow([phase, epoch, step, key, repr(float(value))])
            self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(f"{phase}/{key}", float(value), step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _order(phase: str) -> int:
    # Evaluation rows are tagged "evaluation/<anonymizer>": all of them come after training.
    return PHASES.index(phase) if phase in PHASES else len(PHASES)


def truncate_csv(run_dir: str | Path, phase: str, step: int) -> None:
    """Drop the rows logged after ``step`` of ``phase`` (and every row of a later phase)."""
    path = Path(run_dir) / CSV_NAME
    if not is_main() or not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if (_order(r["phase"]), int(r["step"])) <= (_order(phase), step)]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_FIELDS)
        writer.writeheader()
        writer.writerows(kept)
    tmp.replace(path)


def read_csv(path: str | Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """``{(phase, key): [(step, value), ...]}`` from a ``metrics.csv``."""
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault((row["phase"], row["key"]), []).append((int(row["step"]), float(row["value"])))
    return out
