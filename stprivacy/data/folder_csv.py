"""A folder of videos plus a CSV of labels: for attribute sets beyond VP-HMDB51 / VP-UCF101
(the paper's CelebV-HQ and P-HVU tasks are of this kind).

CSV format: a header, one row per video.

* ``video`` (required): a path relative to the video root, or just a file name / stem (matched
  on the stem, like the shipped labels).
* ``action`` (optional): the action class, a name or an integer. Names are indexed in sorted
  order; without the column every action is -1 (privacy-only tasks).
* ``split`` (optional): ``train`` or ``test``; rows of the other subset are left out.
* every other column: one binary attribute, 0 or 1.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..errors import DatasetError
from .video_dataset import JoinReport, VideoClipDataset, VideoRecord, index_video_files

RESERVED_COLUMNS = ("video", "action", "split")


class FolderCSV(VideoClipDataset):
    """Videos under ``video_root`` labeled by ``csv_path``.

    Args:
        video_root: folder holding the videos.
        csv_path: the label file (format above).
        subset: ``"train"`` or ``"test"``: the sampling protocol, and the rows kept when the CSV
            has a ``split`` column.
        **kwargs: sampling options of :class:`VideoClipDataset` (``rate`` defaults to 2).

    Attributes:
        report: rows whose video file was not found (also warned).
    """

    def __init__(self, video_root: str | Path, csv_path: str | Path, subset: str = "train", **kwargs) -> None:
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise DatasetError(f"csv_path must be an existing CSV file, got {csv_path}")
        with csv_path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            rows = list(reader)
        if "video" not in columns:
            raise DatasetError(f"{csv_path}: the header must have a 'video' column, got {columns}")
        attributes = [c for c in columns if c not in RESERVED_COLUMNS]
        classes = self._classes(rows, columns)  # from every row, so train and test agree
        if "split" in columns:
            rows = [r for r in rows if r["split"].strip() == subset]
        root = Path(video_root)
        files = index_video_files(root)
        records, self.report = [], JoinReport()
        for row in rows:
            values = [row[a].strip() for a in attributes]
            if any(v not in ("0", "1") for v in values):
                raise DatasetError(f"{csv_path}: video {row['video']!r}: attribute values must be 0 or 1, got {values}")
            path = root / row["video"]
            path = path if path.is_file() else files.get(Path(row["video"]).stem)
            if path is None:
                self.report.missing_file.append(row["video"])
                continue
            action = -1 if "action" not in columns else self._action(row["action"].strip(), classes)
            records.append(VideoRecord(path, action, torch.tensor([float(v) for v in values])))
        self.report.warn(f"{csv_path.name} {subset}")
        kwargs.setdefault("rate", 2)
        super().__init__(records, subset, attributes=attributes, classes=classes, **kwargs)

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
