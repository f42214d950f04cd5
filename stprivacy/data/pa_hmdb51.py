"""PA-HMDB51: frame-span privacy annotations of 515+ HMDB51 videos, turned into video-level labels.

The annotations are one JSON file per action, ``<action>.json``, mapping a video file name to
``{attribute: [[start, end, value], ...], "review": ..., "note": ...}`` for the attributes
``skin_color, face, gender, nudity, relationship``. A value is an int level (e.g. face: 0 none,
1 partial, 2 complete; nudity: 0-2; gender: 0 cannot tell, 1 male, 2 female) or a list of levels
when several people differ (``[1, 2]``: a man and a woman).

Video-level rule (the one VP-HMDB51's binary labels use): an attribute is 1 when **any** span of
the video has a value > 0 (for a list, any element > 0), else 0. A missing attribute, or one
with no spans, is 0. Attribute levels are not kept: the benchmark's task is binary.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import DatasetError
from .privacy_labels import PRIVACY_ATTRIBUTES, PrivacyLabelTable, load_privacy_labels
from .video_dataset import JoinReport, VideoClipDataset, VideoRecord, index_video_files


def span_value_present(value: object) -> bool:
    """Whether one span's value marks the attribute as identifiable (> 0, or any element > 0)."""
    if isinstance(value, list):
        return any(span_value_present(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetError(f"span values must be numbers or lists of numbers, got {value!r}")
    return value > 0


def video_level_labels(annotation: dict, attributes: tuple[str, ...] = PRIVACY_ATTRIBUTES) -> list[float]:
    """Binary labels of one video from its ``{attribute: [[start, end, value], ...]}`` entry."""
    labels = []
    for name in attributes:
        spans = annotation.get(name) or []
        for span in spans:
            if not isinstance(span, list) or len(span) != 3:
                raise DatasetError(f"attribute {name!r}: spans must be [start, end, value], got {span!r}")
        labels.append(float(any(span_value_present(span[2]) for span in spans)))
    return labels


def load_pa_hmdb51_labels(annotation_dir: str | Path) -> PrivacyLabelTable:
    """Reads every ``<action>.json`` under ``annotation_dir`` into video-level labels."""
    annotation_dir = Path(annotation_dir)
    files = sorted(annotation_dir.glob("*.json"))
    if not files:
        raise DatasetError(f"annotation_dir must hold PA-HMDB51's <action>.json files, found none in {annotation_dir}")
    stems, actions, values = [], [], []
    for file in files:
        try:
            videos = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{file} is not valid JSON: {exc}") from exc
        if not isinstance(videos, dict):
            raise DatasetError(f"{file}: expected an object mapping video names to annotations")
        for video, annotation in sorted(videos.items()):
            try:
                values.append(video_level_labels(annotation))
            except ValueError as exc:
                raise DatasetError(f"{file}: video {video!r}: {exc}") from exc
            stems.append(Path(video).stem)
            actions.append(file.stem)
    labels = torch.tensor(values, dtype=torch.float32).reshape(len(values), len(PRIVACY_ATTRIBUTES))
    return PrivacyLabelTable(tuple(stems), tuple(actions), labels, PRIVACY_ATTRIBUTES)


class PAHMDB51(VideoClipDataset):
    """PA-HMDB51 videos with video-level labels; action indices are HMDB51's (sorted, 51 classes),
    so an HMDB51-trained model is evaluated on it directly.

    Args:
        video_root: folder holding the HMDB51 videos (matched on the stem).
        annotation_dir: PA-HMDB51's folder of ``<action>.json`` files.
        subset: ``"test"`` (5 x 3 views, the default: PA-HMDB51 is an evaluation set) or ``"train"``.
        **kwargs: sampling options of :class:`VideoClipDataset` (rate 2 by default).
    """

    def __init__(self, video_root: str | Path, annotation_dir: str | Path, subset: str = "test", **kwargs) -> None:
        labels = load_pa_hmdb51_labels(annotation_dir)
        classes = load_privacy_labels("hmdb51").classes
        class_index = {name: i for i, name in enumerate(classes)}
        files = index_video_files(video_root)
        records, self.report = [], JoinReport()
        for stem, action, row in zip(labels.stems, labels.action_names, labels.labels):
            if action not in class_index:
                raise DatasetError(f"annotation file {action}.json does not name an HMDB51 class")
            if stem in files:
                records.append(VideoRecord(files[stem], class_index[action], row))
            else:
                self.report.missing_file.append(stem)
        self.report.warn("PA-HMDB51")
        kwargs.setdefault("rate", 2)
        super().__init__(records, subset, attributes=labels.attributes, classes=classes, **kwargs)
