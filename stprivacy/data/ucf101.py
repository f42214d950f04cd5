"""VP-UCF101: UCF101's videos and official splits joined with the shipped privacy labels.

The user supplies the videos (``<root>/<class>/v_<class>_gXX_cYY.avi``, or any layout: files are
matched on their stem) and the official ``ucfTrainTestlist`` folder: ``classInd.txt`` (lines
``<1-based index> <class>``), ``trainlist0k.txt`` (lines ``<class>/<video>.avi <1-based index>``)
and ``testlist0k.txt`` (lines ``<class>/<video>.avi``), k in {1, 2, 3}. Action class indices are
classInd's, minus one.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from ..errors import DatasetError
from .clips import SAMPLING_RATE
from .privacy_labels import load_privacy_labels
from .video_dataset import VideoClipDataset, index_video_files, join_split


def parse_class_index(split_dir: str | Path) -> list[str]:
    """Class names by 0-based index, from ``classInd.txt``."""
    path = Path(split_dir) / "classInd.txt"
    if not path.is_file():
        raise DatasetError(f"split_dir must be the ucfTrainTestlist folder holding classInd.txt, got {split_dir}")
    by_index: dict[int, str] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit():
            raise DatasetError(f"{path}:{line_no}: expected '<index> <class>', got {line!r}")
        by_index[int(fields[0])] = fields[1]
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise DatasetError(f"{path}: class indices must be 1..{len(by_index)}, got {sorted(by_index)}")
    return [by_index[i] for i in range(1, len(by_index) + 1)]


def parse_ucf101_splits(split_dir: str | Path, split: int = 1) -> dict[str, tuple[str, str]]:
    """Reads ``trainlist0k.txt`` and ``testlist0k.txt`` of split k.

    Returns:
        ``{video stem: (action class, "train" | "test")}``.

    Raises:
        ValueError: a missing list, a malformed line, or a train label that disagrees with the
            video's class folder.
    """
    if split not in (1, 2, 3):
        raise DatasetError(f"split must be 1, 2 or 3, got {split!r}")
    classes = parse_class_index(split_dir)
    entries: dict[str, tuple[str, str]] = {}
    for subset in ("train", "test"):
        path = Path(split_dir) / f"{subset}list0{split}.txt"
        if not path.is_file():
            raise DatasetError(f"missing official split list {path}")
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            video = PurePosixPath(fields[0].replace("\\", "/"))
            expected_fields = 2 if subset == "train" else 1
            if len(fields) != expected_fields or len(video.parts) != 2:
                raise DatasetError(f"{path}:{line_no}: expected '<class>/<video>.avi{' <index>' if subset == 'train' else ''}', got {line!r}")
            action = video.parts[0]
            if action not in classes:
                raise DatasetError(f"{path}:{line_no}: class {action!r} is not in classInd.txt")
            if subset == "train" and fields[1] != str(classes.index(action) + 1):
                raise DatasetError(f"{path}:{line_no}: label {fields[1]} disagrees with classInd's {action!r}")
            entries[video.stem] = (action, subset)
    return entries


class UCF101(VideoClipDataset):
    """VP-UCF101 clips of one official split (16 frames at rate 4, 112 x 112 by default).

    Args:
        video_root: folder holding the UCF101 videos.
        split_dir: the official ``ucfTrainTestlist`` folder.
        split: 1, 2 or 3.
        subset: ``"train"`` or ``"test"``.
        **kwargs: sampling options of :class:`VideoClipDataset`.

    Attributes:
        report: the videos of the split left out for lack of a file or a label (also warned).
    """

    def __init__(self, video_root: str | Path, split_dir: str | Path, split: int = 1, subset: str = "train", **kwargs) -> None:
        labels = load_privacy_labels("ucf101")
        classes = parse_class_index(split_dir)
        records, self.report = join_split(
            parse_ucf101_splits(split_dir, split), subset, labels, index_video_files(video_root),
            {name: i for i, name in enumerate(classes)},
        )
        self.report.warn(f"UCF101 split {split} {subset}")
        kwargs.setdefault("rate", SAMPLING_RATE["ucf101"])
        super().__init__(records, subset, attributes=labels.attributes, classes=classes, **kwargs)
