"""The dataset every real benchmark builds on: labeled video files -> clips, robust to bad files.

A sample is ``(video, action, privacy)`` like the synthetic benchmark's: ``video`` is
``Tensor[3, T, S, S]`` in training and ``Tensor[V, 3, T, S, S]`` (V = clips x crops views, clip
major) in testing, ``action`` an int (or, for a dataset with ``multilabel_actions``, a float multi-hot
``Tensor[num_classes]``), ``privacy`` ``Tensor[P]`` of 0/1. A file that cannot be
decoded yields ``None`` with a warning and is counted; :func:`collate_videos` (the dataset's
``collate_fn``) drops it, so one broken video never stops an epoch. The count lives in shared
memory, so the loads that DataLoader worker processes skip show up in the main process's
``dataset.num_skipped`` and ``dataset.summary()``.
"""
from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import DatasetError
from .clips import average_views, eval_clip_indices, train_clip_indices
from .privacy_labels import PrivacyLabelTable
from .transforms import eval_views, train_transform
from .video import VideoDecodeError, list_videos, probe_video, read_frames

SUBSETS = ("train", "test")


@dataclass(frozen=True)
class VideoRecord:
    """One labeled video file: ``action`` a class index, or a float multi-hot ``Tensor[K]`` for
    multi-label actions; ``privacy`` is ``Tensor[P]`` of 0/1 (empty when unlabeled)."""

    path: Path
    action: int | Tensor
    privacy: Tensor


@dataclass
class JoinReport:
    """What did not match when labels, split files and video files were joined."""

    missing_file: list[str] = field(default_factory=list)  # listed and labeled, no video file
    missing_label: list[str] = field(default_factory=list)  # listed, with no privacy label row

    def warn(self, dataset: str) -> None:
        """One warning per kind of mismatch, naming the first few videos."""
        for what, names in (("no video file", self.missing_file), ("no privacy label", self.missing_label)):
            if names:
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                warnings.warn(f"{dataset}: {len(names)} videos of the split have {what}, left out: {shown}", stacklevel=3)


def index_video_files(root: str | Path) -> dict[str, Path]:
    """Maps each video file's stem to its path, for everything under ``root``.

    Labels name ``.mp4`` files while the archives hold ``.avi`` ones, so matching is on the stem.
    """
    index: dict[str, Path] = {}
    for path in list_videos(root):
        index.setdefault(path.stem, path)
    return index


def join_split(
    entries: dict[str, tuple[str, str]],
    subset: str,
    labels: PrivacyLabelTable,
    files: dict[str, Path],
    class_index: dict[str, int],
) -> tuple[list[VideoRecord], JoinReport]:
    """Records of the split's ``subset`` that have both a label row and a video file."""
    rows = labels.index()
    records, report = [], JoinReport()
    for stem, (action, entry_subset) in sorted(entries.items()):
        if entry_subset != subset:
            continue
        if action not in class_index:
            raise DatasetError(f"split lists {stem!r} under unknown class {action!r}")
        if stem not in rows:
            report.missing_label.append(stem)
        elif stem not in files:
            report.missing_file.append(stem)
        else:
            records.append(VideoRecord(files[stem], class_index[action], labels.labels[rows[stem]]))
    return records, report


def collate_videos(samples: Sequence[tuple[Tensor, int | Tensor, Tensor] | None]
                   ) -> tuple[Tensor, Tensor, Tensor] | None:
    """DataLoader ``collate_fn``: stacks the decodable samples, dropping the ``None`` of skipped
    ones; ``None`` when every sample of the batch was skipped (the loop then moves on).

    The actions batch as ``Tensor[B]`` int64 class indices, or as ``Tensor[B, K]`` float32
    multi-hot rows where the samples carry multi-label actions (the losses tell them apart by dtype).
    """
    good = [s for s in samples if s is not None]
    if not good:
        return None
    video = torch.stack([s[0] for s in good])
    if isinstance(good[0][1], Tensor):
        action = torch.stack([s[1] for s in good]).float()
    else:
        action = torch.tensor([s[1] for s in good], dtype=torch.long)
    privacy = torch.stack([s[2] for s in good])
    return video, action, privacy


class VideoClipDataset(Dataset):
    """Clips of labeled video files, sampled as in the paper.

    Args:
        records: the videos.
        subset: ``"train"`` (one random clip and crop per access) or ``"test"`` (all views).
        clip_len: frames per clip (16).
        rate: frames between two sampled frames (2 for HMDB51, 4 for UCF101).
        crop_size: side of the square crop (112).
        num_clips, num_crops: test views per video (5 x 3).
        train_short_side: the short side before the random training crop.
        attributes: names of the privacy attributes (for reports).
        classes: names of the action classes, by index.
        multilabel_actions: each video may show several of the classes at once (P-HVU): its action
            is a float multi-hot ``Tensor[num_classes]``, learned with BCE and scored by cMAP and F1
            instead of top-1.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        subset: str = "train",
        clip_len: int = 16,
        rate: int = 2,
        crop_size: int = 112,
        num_clips: int = 5,
        num_crops: int = 3,
        train_short_side: int = 128,
        attributes: Sequence[str] = (),
        classes: Sequence[str] = (),
        multilabel_actions: bool = False,
    ) -> None:
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
        self.records = list(records)
        self.subset = subset
        self.clip_len, self.rate, self.crop_size = clip_len, rate, crop_size
        self.num_clips, self.num_crops, self.train_short_side = num_clips, num_crops, train_short_side
        self.attributes, self.classes = tuple(attributes), tuple(classes)
        self.multilabel_actions = bool(multilabel_actions)
        # Shared memory: workers (forked or spawned) add to the counter the main process reads.
        self._skipped = multiprocessing.Value("i", 0)

    collate_fn = staticmethod(collate_videos)

    def with_records(self, records: Sequence[VideoRecord]) -> VideoClipDataset:
        """Another set of files with this dataset's sampling, class and attribute names (a
        method's anonymized copies of the videos: :mod:`stprivacy.data.transformed`)."""
        return VideoClipDataset(records, self.subset, clip_len=self.clip_len, rate=self.rate, crop_size=self.crop_size,
                                num_clips=self.num_clips, num_crops=self.num_crops,
                                train_short_side=self.train_short_side, attributes=self.attributes,
                                classes=self.classes, multilabel_actions=self.multilabel_actions)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    @property
    def num_skipped(self) -> int:
        """Loads that failed and were skipped so far, in every process (a file counts once per epoch)."""
        return self._skipped.value

    def summary(self) -> str:
        """One line for the run's summary."""
        return f"{len(self)} videos, {self.num_skipped} unreadable video loads skipped"

    @property
    def num_views(self) -> int:
        """Views per video in testing (clips x crops); 1 in training."""
        return self.num_clips * self.num_crops if self.subset == "test" else 1

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> Tensor:
        """The clip(s) of video ``index``; raises VideoDecodeError for a broken file."""
        record = self.records[index]
        num_frames = probe_video(record.path).num_frames
        if self.subset == "train":
            indices = train_clip_indices(num_frames, self.clip_len, self.rate)
            return train_transform(read_frames(record.path, indices, num_frames), self.crop_size, self.train_short_side)
        indices = eval_clip_indices(num_frames, self.clip_len, self.rate, self.num_clips)
        frames = read_frames(record.path, indices.reshape(-1), num_frames)
        frames = frames.reshape(self.num_clips, self.clip_len, *frames.shape[1:])
        # [clips, crops, 3, T, S, S] -> [clips * crops, 3, T, S, S]: views are clip-major.
        return torch.cat([eval_views(clip, self.crop_size, self.num_crops) for clip in frames])

    def __getitem__(self, index: int) -> tuple[Tensor, int | Tensor, Tensor] | None:
        record = self.records[index]
        try:
            video = self.load(index)
        except VideoDecodeError as exc:
            with self._skipped.get_lock():
                self._skipped.value += 1
            warnings.warn(f"skipping unreadable video: {exc}", stacklevel=2)
            return None
        return video, record.action, record.privacy


def forward_views(fn: Callable[[Tensor], Tensor], video: Tensor) -> Tensor:
    """Applies a clip model to a batch, averaging its logits over test views when there are any.

    Args:
        fn: ``Tensor[B', 3, T, S, S] -> Tensor[B', K]`` (e.g. anonymizer then recognizer).
        video: ``Tensor[B, 3, T, S, S]`` (one view) or ``Tensor[B, V, 3, T, S, S]`` (test views).

    Returns:
        ``Tensor[B, K]``: the logits, averaged over the V views (VideoMAE's 5 x 3 protocol).
    """
    if video.dim() == 5:
        return fn(video)
    if video.dim() != 6:
        raise ValueError(f"video must be [B, 3, T, S, S] or [B, V, 3, T, S, S], got shape {tuple(video.shape)}")
    batch, views = video.shape[:2]
    return average_views(fn(video.flatten(0, 1)), num_views=views)


class SkippingDataLoader(DataLoader):
    """A DataLoader that leaves out the batches in which every video was skipped (``collate_videos``
    returned None), so a training loop never sees an empty batch."""

    def __iter__(self):
        return (batch for batch in super().__iter__() if batch is not None)
