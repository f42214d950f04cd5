"""Builders of the real benchmarks for ``stprivacy.train.data_factory.build_dataset``.

Each takes ``(split, geometry, **options)`` like the synthetic one: ``geometry`` (the model's
``frames`` and ``image_size``) sets the clip length and crop size, so the clips always fit the
model; ``options`` come from ``TrainConfig.dataset_kwargs`` (``--dataset-kwargs`` on the command
line), for example ``{"video_root": "hmdb51/videos", "split_dir": "testTrainMulti_7030_splits"}``.
The "train" split samples one random clip and crop per video; "test" gives the 5 x 3 views.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from .folder_csv import FolderCSV
from .hmdb51 import HMDB51
from .pa_hmdb51 import PAHMDB51
from .ucf101 import UCF101


def _clip_options(geometry: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    options.setdefault("clip_len", geometry["frames"])
    options.setdefault("crop_size", geometry["image_size"])
    return options


def build_hmdb51(split: str, geometry: dict[str, Any], *, video_root: str, split_dir: str, split_index: int = 1,
                 **options: Any) -> Dataset:
    """VP-HMDB51 (official split ``split_index``), 16 frames at rate 2 by default."""
    return HMDB51(video_root, split_dir, split=split_index, subset=split, **_clip_options(geometry, options))


def build_ucf101(split: str, geometry: dict[str, Any], *, video_root: str, split_dir: str, split_index: int = 1,
                 **options: Any) -> Dataset:
    """VP-UCF101 (official split ``split_index``), 16 frames at rate 4 by default."""
    return UCF101(video_root, split_dir, split=split_index, subset=split, **_clip_options(geometry, options))


def build_pa_hmdb51(split: str, geometry: dict[str, Any], *, video_root: str, annotation_dir: str,
                    **options: Any) -> Dataset:
    """PA-HMDB51 with video-level labels (every annotated video, in either split)."""
    return PAHMDB51(video_root, annotation_dir, subset=split, **_clip_options(geometry, options))


def build_folder_csv(split: str, geometry: dict[str, Any], *, video_root: str, csv_path: str, **options: Any) -> Dataset:
    """Any folder of videos with a label CSV (see :mod:`stprivacy.data.folder_csv`)."""
    return FolderCSV(video_root, csv_path, subset=split, **_clip_options(geometry, options))


REAL_DATASETS: dict[str, Callable[..., Dataset]] = {
    "hmdb51": build_hmdb51,
    "ucf101": build_ucf101,
    "pa_hmdb51": build_pa_hmdb51,
    "folder_csv": build_folder_csv,
}
