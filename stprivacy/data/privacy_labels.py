"""The VP-HMDB51 and VP-UCF101 video-level privacy labels that ship inside the package.

The two CSV files in ``labels/`` (MIT, see ``labels/LICENSE`` and ``labels/README.md``) hold one row
per video: ``<class folder>/<video name>.mp4`` and five 0/1 attributes. The video archives ship
``.avi`` files, so everything here is keyed on the file *stem*, which is unique in both benchmarks
(HMDB51 and UCF101 names embed the class name).
"""
from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources

import torch
from torch import Tensor

from ..errors import DatasetError

PRIVACY_ATTRIBUTES = ("skin_color", "face", "gender", "nudity", "relationship")
_BINARY = frozenset(("0", "1"))
LABEL_FILES = {"hmdb51": "hmdb51_privacy_labels.csv", "ucf101": "ucf101_privacy_labels.csv"}


@dataclass(frozen=True)
class PrivacyLabelTable:
    """Video-level labels of one benchmark.

    Attributes:
        stems: video file stems, in file order.
        action_names: the class folder of each video, aligned with ``stems``.
        labels: ``Tensor[V, P]`` float32 0/1, aligned with ``stems``.
        attributes: the P attribute names (column order of the CSV).
    """

    stems: tuple[str, ...]
    action_names: tuple[str, ...]
    labels: Tensor
    attributes: tuple[str, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        """The action classes, sorted: the class index used everywhere is a position in this."""
        return tuple(sorted(set(self.action_names)))

    def index(self) -> dict[str, int]:
        """Maps a video stem to its row."""
        return {stem: row for row, stem in enumerate(self.stems)}

    def __len__(self) -> int:
        return len(self.stems)


def parse_label_csv(text: str, source: str = "<labels>") -> PrivacyLabelTable:
    """Parses ``video,<attr>,...`` CSV text (the shipped format) into a table.

    Raises:
        ValueError: a header without a ``video`` first column, a malformed row, a value other
            than 0/1, or a stem that appears twice.
    """
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not rows[0] or rows[0][0] != "video":
        raise DatasetError(f"{source}: expected a header starting with 'video', got {rows[:1]}")
    attributes = tuple(rows[0][1:])
    stems, actions, values, seen = [], [], [], set()
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(attributes) + 1:
            raise DatasetError(f"{source}:{line_no}: expected {len(attributes) + 1} fields, got {row}")
        parts = row[0].split("/")
        if len(parts) != 2 or not all(parts):
            raise DatasetError(f"{source}:{line_no}: expected '<class>/<video>', got {row[0]!r}")
        stem = parts[1].rsplit(".", 1)[0]
        if stem in seen:
            raise DatasetError(f"{source}:{line_no}: video {stem!r} is listed twice")
        if not _BINARY.issuperset(row[1:]):
            raise DatasetError(f"{source}:{line_no}: attribute values must be 0 or 1, got {row[1:]}")
        seen.add(stem)
        stems.append(stem)
        actions.append(parts[0])
        values.append([v == "1" for v in row[1:]])
    labels = torch.tensor(values, dtype=torch.float32).reshape(len(values), len(attributes))
    return PrivacyLabelTable(tuple(stems), tuple(actions), labels, attributes)


@functools.lru_cache(maxsize=None)
def load_privacy_labels(dataset: str) -> PrivacyLabelTable:
    """Loads the shipped labels of ``"hmdb51"`` (6,766 videos) or ``"ucf101"`` (13,320 videos).

    Parsed once per process and shared: treat the returned table as read-only.
    """
    if dataset not in LABEL_FILES:
        raise DatasetError(f"dataset must be one of {sorted(LABEL_FILES)}, got {dataset!r}")
    resource = resources.files("stprivacy.data").joinpath("labels", LABEL_FILES[dataset])
    return parse_label_csv(resource.read_text(encoding="utf-8"), source=LABEL_FILES[dataset])
