"""A method's anonymized copy of a dataset, read from its folder: ``--transformed-root DIR``.

Someone else's anonymizer is evaluated on its output: a folder that mirrors the dataset's
``video_root`` (the same relative paths; any container PyAV reads, so ``a/b.avi`` may come back
as ``a/b.mp4``). :func:`transformed_folder` turns a split of the dataset into the same split
over those files: the same records in the same order, the same labels and the same clip sampling
(:meth:`VideoClipDataset.with_records`), so the evaluation protocol runs on it unchanged. A byte
copy of the dataset therefore gives the raw baseline's numbers exactly.

Videos the method did not deliver are found before any training, by decoding every file of the
folder once (:func:`stprivacy.data.video.verify_video`: the check a loader would fail later):

* ``missing``: no file at the relative path, under any video extension;
* ``unreadable``: a file that does not open, fails part way or is truncated (with the reason).

With ``on_missing="exclude"`` (the default) they are left out of this method's split, named in
:class:`LeftOut` (which the evaluation report carries), and the method is scored on the videos
it delivered; the baselines keep the whole dataset. ``on_missing="error"`` refuses instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError, InputNotFoundError, UsageError
from ..progress import progress_bar
from .video import VIDEO_EXTENSIONS, VideoDecodeError, verify_video
from .video_dataset import VideoClipDataset

ON_MISSING = ("exclude", "error")


@dataclass
class LeftOut:
    """The videos of one split that a transformed folder could not supply (relative paths)."""

    missing: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # relative path -> why

    def __len__(self) -> int:
        return len(self.missing) + len(self.unreadable)

    def to_dict(self) -> dict:
        return {"missing": list(self.missing), "unreadable": dict(self.unreadable), "count": len(self)}


def find_transformed(root: Path, relative: Path) -> Path | None:
    """The method's file for ``relative``: the same path, else the same path under another video
    extension (in ``VIDEO_EXTENSIONS`` order); None when there is none."""
    exact = root / relative
    if exact.is_file():
        return exact
    for suffix in VIDEO_EXTENSIONS:
        for candidate in (root / relative.with_suffix(suffix), root / relative.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


def transformed_folder(dataset: VideoClipDataset, root: str | Path, video_root: str | Path, *,
                       on_missing: str = "exclude", progress: bool = False) -> tuple[VideoClipDataset, LeftOut]:
    """This split of ``dataset`` with every video read from ``root`` instead of ``video_root``.

    Args:
        dataset: a split of a video-file dataset (hmdb51, ucf101, pa_hmdb51, folder_csv).
        root: the method's folder, mirroring ``video_root``.
        video_root: the folder the dataset's videos were found under.
        on_missing: "exclude" (leave them out and report them) or "error" (refuse).

    Returns:
        (the split over the method's files, what was left out of it).

    Raises:
        InputNotFoundError: ``root`` is not a directory.
        DatasetError: with ``on_missing="error"``, a missing or unreadable video.
    """
    root, video_root = Path(root), Path(video_root)
    if not root.is_dir():
        raise InputNotFoundError(f"--transformed-root: {root} is not a directory (expected a folder mirroring "
                                 f"the dataset's video_root {video_root})")
    if on_missing not in ON_MISSING:
        raise UsageError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
    if not isinstance(dataset, VideoClipDataset):
        raise UsageError(f"--transformed-root needs a dataset of video files (hmdb51, ucf101, pa_hmdb51, "
                         f"folder_csv), got {type(dataset).__name__}")
    records, left_out = [], LeftOut()
    for record in progress_bar(dataset.records, desc=f"check {root.name} ({dataset.subset})", unit="video",
                               leave=False, disable=not progress):
        try:
            relative = record.path.relative_to(video_root)
        except ValueError as e:
            raise UsageError(f"video {record.path} is not under the dataset's video_root {video_root}") from e
        path = find_transformed(root, relative)
        if path is None:
            left_out.missing.append(relative.as_posix())
            continue
        try:
            verify_video(path)
        except VideoDecodeError as e:
            left_out.unreadable[relative.as_posix()] = str(e)
            continue
        records.append(type(record)(path, record.action, record.privacy))
    if left_out and on_missing == "error":
        names = left_out.missing + list(left_out.unreadable)
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise DatasetError(f"--transformed-root {root}: {len(left_out.missing)} missing and {len(left_out.unreadable)} "
                           f"unreadable {dataset.subset} videos ({shown}); --on-missing exclude evaluates the rest")
    if not records:
        example = (left_out.missing + list(left_out.unreadable) + ["?"])[0]
        raise DatasetError(f"--transformed-root {root}: none of the {len(dataset)} {dataset.subset} videos of the "
                           f"dataset is there and readable (expected paths like {example})")
    return dataset.with_records(records), left_out
