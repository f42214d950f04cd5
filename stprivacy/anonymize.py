"""Anonymize whole video files with a trained STPrivacy model.

A video of any length and size goes through the model, which sees fixed clips of
``cfg.frames x cfg.image_size x cfg.image_size``, like this:

* **Time.** Frames are taken in windows of ``frames * stride`` consecutive frames; a window is
  split into ``stride`` interleaved clips (frames ``i, i + stride, ...``), so with ``stride``
  equal to the training sampling rate the model sees motion at the speed it was trained on,
  and still every frame is anonymized exactly once. The last window is padded by repeating the
  last frame, and the padding is dropped from the output.
* **Space.** A frame is resized to ``S x n*S`` (``n = max(1, round(W / H))``, S = image size)
  and cut into ``n`` square tiles side by side (or stacked, for portrait video), which the model
  anonymizes independently; the result is resized back to the input's size. Tiles never
  overlap, so a tubelet that the model dropped stays black (no blending with a neighbor).
* **Output.** An H.264 ``.mp4`` (or MPEG-4 with ``codec="mpeg4"``) with the input's frame count
  and frame rate. Audio is not copied: voices are personal data too.

The checkpoint is read with ``torch.load(weights_only=True)`` (or safetensors), so a checkpoint
file from elsewhere cannot run code.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data.transforms import frames_to_tensor, resize, tensor_to_frames
from .data.video import VIDEO_EXTENSIONS, iter_frames, list_videos, probe_video, write_video
from .model import STPrivacy, STPrivacyConfig


def load_anonymizer(checkpoint: str | Path, config: str | Path | STPrivacyConfig | None = None,
                    device: str | torch.device = "cpu") -> STPrivacy:
    """An evaluation-mode :class:`STPrivacy` from a checkpoint file.

    Accepted files: a training checkpoint (``{"model": state_dict, "config": {"model": {...}}}``,
    as ``stprivacy train`` writes), a ``{"model": ..., "config": {...}}`` dict, or a bare state dict
    (``.pt``/``.pth`` or ``.safetensors``) together with ``config`` (an :class:`STPrivacyConfig` or
    a JSON file of its fields).

    Raises:
        ValueError: the file is missing, holds something else, or its weights do not fit the config.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"checkpoint must be an existing file, got {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        payload: object = load_file(str(path), device="cpu")
    else:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict):
        raise ValueError(f"{path} must hold a dict (a checkpoint or a state dict), got {type(payload).__name__}")
    state, stored = payload, None
    if isinstance(payload.get("model"), dict):
        state = payload["model"]
        stored = payload.get("config")
        if isinstance(stored, dict) and isinstance(stored.get("model"), dict):
            stored = stored["model"]
    cfg = _resolve_config(config, stored, path)
    model = STPrivacy(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not fit the model config: {exc}") from exc
    return model.to(device).eval()


def _resolve_config(config, stored, path: Path) -> STPrivacyConfig:
    if isinstance(config, STPrivacyConfig):
        return config
    if config is not None:
        return STPrivacyConfig.from_dict(json.loads(Path(config).read_text()))
    if isinstance(stored, dict):
        return STPrivacyConfig.from_dict(stored)
    raise ValueError(f"{path} holds no model config: pass config (an STPrivacyConfig or a JSON file of its fields)")


def tile_layout(height: int, width: int) -> tuple[int, bool]:
    """(number of square tiles, whether they are stacked vertically) for an ``height x width`` frame."""
    if width >= height:
        return max(1, round(width / height)), False
    return max(1, round(height / width)), True


@torch.no_grad()
def anonymize_window(model: STPrivacy, frames: np.ndarray, stride: int = 1, keep_ratio: float | None = None) -> np.ndarray:
    """Anonymizes ``frames * stride`` consecutive frames (see the module docstring).

    Args:
        model: an :class:`STPrivacy` (put in evaluation mode here).
        frames: ``uint8[cfg.frames * stride, H, W, 3]``.
        stride: interleaved clips per window.
        keep_ratio: deployment keep ratio (``cfg.alpha`` when None).

    Returns:
        ``uint8[cfg.frames * stride, H, W, 3]``.
    """
    cfg = model.cfg
    size, clip_len = cfg.image_size, cfg.frames
    if frames.shape[0] != clip_len * stride:
        raise ValueError(f"frames must hold frames * stride = {clip_len * stride} frames, got {frames.shape[0]}")
    height, width = frames.shape[1:3]
    tiles, vertical = tile_layout(height, width)
    device = next(model.parameters()).device
    video = frames_to_tensor(frames).to(device)  # [3, T*stride, H, W]
    grid = (size * tiles, size) if vertical else (size, size * tiles)
    video = resize(video, grid)
    # [3, T*stride, ...] -> [stride, 3, T, ...]: clip s holds frames s, s + stride, ...
    clips = video.reshape(3, clip_len, stride, *grid).permute(2, 0, 1, 3, 4)
    axis = -2 if vertical else -1
    batch = torch.cat(clips.split(size, dim=axis))  # [tiles * stride, 3, T, S, S], tile-major
    out = model.anonymize(batch, keep_ratio)
    out = torch.cat(out.split(stride), dim=axis)  # back to [stride, 3, T, *grid]
    out = out.permute(1, 2, 0, 3, 4).reshape(3, clip_len * stride, *grid)
    return tensor_to_frames(resize(out.clamp(0, 1), (height, width)))


def _windows(frames: Iterable[np.ndarray], length: int) -> Iterator[tuple[np.ndarray, int]]:
    """Groups frames into windows of ``length``, padding the last one; yields (window, real frames)."""
    window: list[np.ndarray] = []
    for frame in frames:
        window.append(frame)
        if len(window) == length:
            yield np.stack(window), length
            window = []
    if window:
        real = len(window)
        window += [window[-1]] * (length - real)
        yield np.stack(window), real


def anonymize_video(model: STPrivacy, source: str | Path, target: str | Path, *, keep_ratio: float | None = None,
                    stride: int = 1, codec: str = "libx264", progress: bool = True) -> int:
    """Anonymizes one video file into ``target``; returns the number of frames written.

    The output has the input's frame count, frame rate and size (rounded up to even sides, which
    H.264's 4:2:0 video needs).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    info = probe_video(source)
    length = model.cfg.frames * stride
    bar = tqdm(total=info.num_frames, desc=Path(source).name, unit="frame", disable=not progress)

    def anonymized() -> Iterator[np.ndarray]:
        for window, real in _windows(iter_frames(source), length):
            yield from anonymize_window(model, window, stride, keep_ratio)[:real]
            bar.update(real)

    try:
        return write_video(target, anonymized(), fps=info.fps, codec=codec)
    finally:
        bar.close()


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def plan_jobs(source: str | Path, output: str | Path, overwrite: bool = False) -> list[Job]:
    """Pairs each input video with its output path, refusing anything that could destroy data.

    A file goes to ``output`` (or into it, as ``<stem>.mp4``, when ``output`` is an existing
    folder); a folder's videos go to the same relative paths under the output folder, as ``.mp4``.

    Raises:
        ValueError: no input, an output that is an input (or the output folder inside the input
            folder), or an existing output without ``overwrite``.
    """
    source, output = Path(source), Path(output)
    if source.is_file():
        target = output / f"{source.stem}.mp4" if output.is_dir() else output
        jobs = [Job(source, target)]
    elif source.is_dir():
        out_root = output.resolve()
        if out_root == source.resolve() or source.resolve() in out_root.parents:
            raise ValueError(f"output folder {output} must not be the input folder {source} or inside it")
        videos = list_videos(source)
        if not videos:
            raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {source}")
        jobs = [Job(v, output / v.relative_to(source).with_suffix(".mp4")) for v in videos]
    else:
        raise ValueError(f"input must be a video file or a folder of videos, got {source}")
    for job in jobs:
        if job.target.suffix.lower() not in (".mp4", ".mkv", ".mov"):
            raise ValueError(f"output {job.target} must end in .mp4 (or .mkv / .mov)")
        if job.target.exists() and job.target.resolve() == job.source.resolve():
            raise ValueError(f"refusing to overwrite the input video {job.source}")
        if job.target.exists() and not overwrite:
            raise ValueError(f"output {job.target} exists; pass overwrite=True (--overwrite) to replace it")
    return jobs


def anonymize_path(model: STPrivacy, source: str | Path, output: str | Path, *, keep_ratio: float | None = None,
                   stride: int = 1, codec: str = "libx264", overwrite: bool = False,
                   progress: bool = True) -> list[tuple[Path, int]]:
    """Anonymizes a video file or every video of a folder; returns (output path, frames) pairs."""
    jobs = plan_jobs(source, output, overwrite)
    done = []
    for job in jobs:
        job.target.parent.mkdir(parents=True, exist_ok=True)
        frames = anonymize_video(model, job.source, job.target, keep_ratio=keep_ratio, stride=stride, codec=codec,
                                 progress=progress)
        done.append((job.target, frames))
    return done

