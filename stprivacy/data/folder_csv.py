"""A folder of videos plus a CSV of labels: for attribute sets beyond VP-HMDB51 / VP-UCF101
(the paper's CelebV-HQ and P-HVU tasks are of this kind).

CSV format: a header, one row per video.

* ``video`` (required): a path relative to the video root, or just a file name / stem (matched
  on the stem, like the shipped labels).
* The action, in one of two ways (neither: every action is -1, a privacy-only task):

  * ``action``: one class per video, a name or an integer. Names are indexed in sorted order.
  * ``action:<class>`` columns, one per class, each 0 or 1 (multi-hot): a video may show several
    actions at once (P-HVU). The dataset is then ``multilabel_actions``; its classes are the
    names after the prefix, in column order, and a video's action is a float ``Tensor[K]``.

  Both kinds in one file is an error.
* ``split`` (optional): ``train`` or ``test``; rows of the other subset are left out.
* every other column: one binary privacy attribute, 0 or 1 (P-HVU's objects and scenes,
  CelebV-HQ's appearance attributes).

A CSV without a ``split`` column can be split at random with ``train_fraction`` (CelebV-HQ has
no official split; the paper's FAPDER takes 60/40): the rows are permuted by ``split_seed``, the
first ``round(train_fraction * n)`` are the training videos and the rest the test videos. The
permutation depends on the seed and the row count only, so the "train" and the "test" dataset
built from one file and seed never share a video. Without either, every row is in both subsets.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError, DatasetError
from .video_dataset import JoinReport, VideoClipDataset, VideoRecord, index_video_files

RESERVED_COLUMNS = ("video", "action", "split")
ACTION_PREFIX = "action:"  # a multi-hot action column: action:<class name>


class FolderCSV(VideoClipDataset):
    """Videos under ``video_root`` labeled by ``csv_path``.

    Args:
        video_root: folder holding the videos.
        csv_path: the label file (format above).
        subset: ``"train"`` or ``"test"``: the sampling protocol, and the rows kept when the CSV
            has a ``split`` column or ``train_fraction`` is given.
        train_fraction: for a CSV without a ``split`` column, the fraction of rows (in (0, 1))
            drawn at random as training videos; None keeps every row.
        split_seed: the seed of that draw.
        **kwargs: sampling options of :class:`VideoClipDataset` (``rate`` defaults to 2).

    Attributes:
        report: rows whose video file was not found (also warned).
    """

    def __init__(self, video_root: str | Path, csv_path: str | Path, subset: str = "train", *,
                 train_fraction: float | None = None, split_seed: int = 0, **kwargs) -> None:
        csv_path = Path(csv_path)
        columns, rows = _read_csv(csv_path)
        action_columns = [c for c in columns if c.startswith(ACTION_PREFIX)]
        if action_columns and "action" in columns:
            raise DatasetError(f"{csv_path}: give the action either as one 'action' column (one class per video) or "
                               f"as '{ACTION_PREFIX}<class>' columns (multi-label), not both")
        attributes = [c for c in columns if c not in RESERVED_COLUMNS and c not in action_columns]
        if action_columns:
            classes = _multilabel_classes(action_columns, csv_path)
        else:
            classes = self._classes(rows, columns)  # from every row, so train and test agree
        rows = _subset_rows(rows, "split" in columns, subset, train_fraction, split_seed, csv_path)
        root = Path(video_root)
        files = index_video_files(root)
        records, self.report = [], JoinReport()
        for row in rows:
            privacy = _binary(row, attributes, csv_path, "attribute")
            path = root / row["video"]
            path = path if path.is_file() else files.get(Path(row["video"]).stem)
            if path is None:
                self.report.missing_file.append(row["video"])
                continue
            if action_columns:
                action = _binary(row, action_columns, csv_path, "action")
            else:
                action = -1 if "action" not in columns else self._action(row["action"].strip(), classes)
            records.append(VideoRecord(path, action, privacy))
        self.report.warn(f"{csv_path.name} {subset}")
        kwargs.setdefault("rate", 2)
        super().__init__(records, subset, attributes=attributes, classes=classes,
                         multilabel_actions=bool(action_columns), **kwargs)

    @staticmethod
    def _classes(rows: list[dict], columns: list[str]) -> tuple[str, ...]:
        if "action" not in columns:
            return ()
        names = {r["action"].strip() for r in rows}
        if all(n.isdigit() for n in names):
            return tuple(str(i) for i in range(max(map(int, names), default=-1) + 1))
        return tuple(sorted(names))

    @staticmethod
    def _action(value: str, classes: tuple[str, ...]) -> int:
        return int(value) if value.isdigit() else classes.index(value)


def _read_csv(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of the label file, checked for a ``video`` column and unique names."""
    if not csv_path.is_file():
        raise DatasetError(f"csv_path must be an existing CSV file, got {csv_path}")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    if "video" not in columns:
        raise DatasetError(f"{csv_path}: the header must have a 'video' column, got {columns}")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DatasetError(f"{csv_path}: the header names these columns twice: {repeated}")
    return columns, rows


def _multilabel_classes(action_columns: list[str], csv_path: Path) -> tuple[str, ...]:
    classes = tuple(c[len(ACTION_PREFIX):].strip() for c in action_columns)
    if not all(classes):
        raise DatasetError(f"{csv_path}: a multi-label action column must name its class, "
                           f"'{ACTION_PREFIX}<class>', got {action_columns}")
    return classes


def _binary(row: dict[str, str], columns: list[str], csv_path: Path, what: str) -> Tensor:
    """``Tensor[len(columns)]`` float32 of a row's 0/1 values in ``columns``."""
    values = [(row[c] or "").strip() for c in columns]
    if any(v not in ("0", "1") for v in values):
        raise DatasetError(f"{csv_path}: video {row['video']!r}: {what} values must be 0 or 1, got {values}")
    return torch.tensor([float(v) for v in values])


def _subset_rows(rows: list[dict[str, str]], has_split: bool, subset: str, train_fraction: float | None,
                 split_seed: int, csv_path: Path) -> list[dict[str, str]]:
    """The rows of ``subset``: by the ``split`` column, by the seeded random split, or all of them."""
    if has_split:
        if train_fraction is not None:
            raise DatasetError(f"{csv_path} has a 'split' column: leave out train_fraction (it splits a CSV without "
                               "one at random), or remove the column")
        return [r for r in rows if r["split"].strip() == subset]
    if train_fraction is None:
        return rows
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) \
            or not 0.0 < train_fraction < 1.0:
        raise ConfigError(f"train_fraction must be a number in (0, 1), got {train_fraction!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
        raise ConfigError(f"split_seed must be an integer >= 0, got {split_seed!r}")
    num_train = round(train_fraction * len(rows))
    if not 0 < num_train < len(rows):
        raise DatasetError(f"{csv_path}: train_fraction={train_fraction} of {len(rows)} rows leaves "
                           f"{num_train} training and {len(rows) - num_train} test videos; each needs at least one")
    # A CPU generator: the same permutation on every machine, for both subsets.
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(split_seed)).tolist()
    chosen = sorted(order[:num_train] if subset == "train" else order[num_train:])
    return [rows[i] for i in chosen]
