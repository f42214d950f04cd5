"""VP-HMDB51: HMDB51's videos and official splits joined with the shipped privacy labels.

The user supplies the videos (``<root>/<class>/<video>.avi``, or any layout under ``root``: files
are matched on their stem) and the official split folder ``testTrainMulti_7030_splits`` with one
file ``<class>_test_split<k>.txt`` per class and split k in {1, 2, 3}, whose lines are
``<video>.avi <tag>``: 1 = train, 2 = test, 0 = unused. Action class indices follow the sorted
class folder names (51).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import DatasetError
from .clips import SAMPLING_RATE
from .privacy_labels import load_privacy_labels
from .video_dataset import VideoClipDataset, index_video_files, join_split

_SPLIT_FILE = re.compile(r"^(?P<action>.+)_test_split(?P<split>[123])\.txt$")
_TAGS = {"1": "train", "2": "test", "0": None}


def parse_hmdb51_splits(split_dir: str | Path, split: int = 1) -> dict[str, tuple[str, str]]:
    """Reads one official split.

    Returns:
        ``{video stem: (action class, "train" | "test")}``; unused (tag 0) videos are left out.

    Raises:
        ValueError: no split file for ``split``, a malformed line, or an unknown tag.
    """
    if split not in (1, 2, 3):
        raise DatasetError(f"split must be 1, 2 or 3, got {split!r}")
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetError(f"split_dir must be the testTrainMulti_7030_splits folder, got {split_dir}")
    entries: dict[str, tuple[str, str]] = {}
    files = sorted(split_dir.glob(f"*_test_split{split}.txt"))
    if not files:
        raise DatasetError(f"no '<class>_test_split{split}.txt' files in {split_dir}")
    for file in files:
        action = _SPLIT_FILE.match(file.name)["action"]
        for line_no, line in enumerate(file.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in _TAGS:
                raise DatasetError(f"{file}:{line_no}: expected '<video>.avi <0|1|2>', got {line!r}")
            subset = _TAGS[fields[1]]
            if subset is not None:
                entries[Path(fields[0]).stem] = (action, subset)
    return entries


class HMDB51(VideoClipDataset):
    """VP-HMDB51 clips of one official split (16 frames at rate 2, 112 x 112 by default).

    Args:
        video_root: folder holding the HMDB51 videos.
        split_dir: the official ``testTrainMulti_7030_splits`` folder.
        split: 1, 2 or 3.
        subset: ``"train"`` or ``"test"``.
        **kwargs: sampling options of :class:`VideoClipDataset`.

    Attributes:
        report: the videos of the split left out for lack of a file or a label (also warned).
    """

    def __init__(self, video_root: str | Path, split_dir: str | Path, split: int = 1, subset: str = "train", **kwargs) -> None:
        labels = load_privacy_labels("hmdb51")
        classes = labels.classes
        records, self.report = join_split(
            parse_hmdb51_splits(split_dir, split), subset, labels, index_video_files(video_root),
            {name: i for i, name in enumerate(classes)},
        )
        self.report.warn(f"HMDB51 split {split} {subset}")
        kwargs.setdefault("rate", SAMPLING_RATE["hmdb51"])
        super().__init__(records, subset, attributes=labels.attributes, classes=classes, **kwargs)
