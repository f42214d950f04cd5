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

PHASES = ("reconstruction", "initialization", "adversarial", "evaluation")
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

    def rewind(self, phase: str, step: int) -> None:
        """Drop the CSV rows of ``phase`` after ``step`` (a resumed phase writes them again)."""
        if self._file is None:
            return
        self._file.close()
        truncate_csv(self.run_dir, phase, step)
        self._file = open(self.run_dir / CSV_NAME, "a", newline="")
        self._csv = csv.writer(self._file)

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


def _kept(row: dict[str, str], phase: str, step: int, keep_later: bool) -> bool:
    if row["phase"] == phase:
        return int(row["step"]) <= step
    # Rows of other evaluation fits (all ordered last) stay: they finished before this one began.
    return (_order(row["phase"]) < _order(phase) or _order(row["phase"]) == _order(phase) == len(PHASES)
            or (keep_later and _order(row["phase"]) > _order(phase)))


def truncate_csv(run_dir: str | Path, phase: str, step: int, keep_later: bool = False) -> None:
    """Drop the rows logged after ``step`` of ``phase``, and every row of a later phase unless
    ``keep_later`` (resuming at the very end of training keeps the evaluation's rows, which its
    fits rewind themselves)."""
    path = Path(run_dir) / CSV_NAME
    if not is_main() or not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if _kept(r, phase, step, keep_later)]
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
