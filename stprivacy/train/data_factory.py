"""``build_dataset(name, split, ...)``: the one place that maps a dataset name to its loader.

Every builder takes ``(split, geometry, **kwargs)``: ``geometry`` is the model's input
(``frames``, ``image_size``, ``tubelet``) so a loader can sample clips of the right size, and
``kwargs`` come from ``TrainConfig.dataset_kwargs``. A dataset yields
``(video Tensor[3, T, H, W] in [0, 1], action int, privacy Tensor[P])`` and exposes
``num_classes``, ``num_attributes`` and ``attributes``. Add a dataset by adding a builder to
``DATASETS``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from ..data.real_datasets import REAL_DATASETS
from ..data.synthetic import SyntheticVideos
from ..errors import ConfigError


def _synthetic(split: str, geometry: dict[str, Any], *, train_videos: int = 1024, test_videos: int = 512,
               seed: int = 0, **spec: Any) -> Dataset:
    """The embedded benchmark, sized to the model's input unless ``spec`` says otherwise."""
    spec.setdefault("frames", geometry["frames"])
    spec.setdefault("size", geometry["image_size"])
    spec.setdefault("cell", geometry["tubelet"][1])
    num_videos = train_videos if split == "train" else test_videos
    return SyntheticVideos(split, num_videos=num_videos, seed=seed, **spec)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "synthetic": _synthetic,
    **REAL_DATASETS,  # hmdb51, ucf101, pa_hmdb51, folder_csv: see stprivacy.data.real_datasets
}


def build_dataset(name: str, split: str, geometry: dict[str, Any], **kwargs: Any) -> Dataset:
    """Build split ``split`` ("train" or "test") of dataset ``name``.

    Args:
        name: a key of ``DATASETS``.
        split: "train" or "test".
        geometry: ``{"frames": T, "image_size": H, "tubelet": (dT, dH, dW)}`` of the model.
        **kwargs: the dataset's own options.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    missing = {"frames", "image_size", "tubelet"} - set(geometry)
    if missing:
        raise ValueError(f"geometry lacks {sorted(missing)}")
    try:
        return DATASETS[name](split, geometry, **kwargs)
    except TypeError as e:  # an unknown keyword: say which dataset rejected it
        raise ConfigError(f"bad dataset_kwargs for {name!r}: {e}") from e
