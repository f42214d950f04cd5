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
  anonymizes independently; the result is resized back to the input's size. Resizing runs on
  uint8 frames and only model-sized clips are converted to float and back. Tiles never
  overlap, so a tubelet that the model dropped stays black (no blending with a neighbor).
* **Output.** An H.264 ``.mp4`` (CRF 18, libx264 preset "veryfast"; or MPEG-4 with
  ``codec="mpeg4"``) with the input's frame count and frame rate. Audio is not copied: voices are personal data too.

Decoding, the model and encoding run in three threads, so they overlap (each waits in native
code that releases the GIL); an error in any of them stops the others and reaches the caller.

A file written by ``stprivacy export`` can replace the model (:class:`OnnxAnonymizer`): the same
windows and tiles go through onnxruntime, at the keep ratio fixed at export.

The checkpoint is read with ``torch.load(weights_only=True)`` (or safetensors), so a checkpoint
file from elsewhere cannot run code.
"""
from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from .data.transforms import frames_to_tensor, tensor_to_frames
from .data.video import VIDEO_EXTENSIONS, iter_frames, list_videos, probe_video, write_video
from .errors import ConfigError, InputNotFoundError, UsageError
from .model import STPrivacy, STPrivacyConfig
from .progress import progress_bar
from .train.checkpoint import CheckpointError, read_weights_only

# libx264's preset for anonymized output: at CRF 18 "veryfast" encodes 768x576 about twice as
# fast as libx264's default "medium", at the same PSNR and file size on the bench clip
# (benchmarks/RESULTS.md); "ultrafast" is faster again but its files are about twice as large.
DEFAULT_PRESET = "veryfast"


def load_anonymizer(checkpoint: str | Path, config: str | Path | STPrivacyConfig | None = None,
                    device: str | torch.device = "cpu") -> STPrivacy:
    """An evaluation-mode :class:`STPrivacy` from a checkpoint file.

    Accepted files: a training checkpoint (``{"model": state_dict, "config": {"model": {...}}}``,
    as ``stprivacy train`` writes), a ``{"model": ..., "config": {...}}`` dict, or a bare state dict
    (``.pt``/``.pth`` or ``.safetensors``) together with ``config`` (an :class:`STPrivacyConfig` or
    a JSON file of its fields).

    Raises:
        InputNotFoundError: no such file.
        CheckpointError: the file is damaged, unsafe (a pickle payload), holds something else, or its
            weights do not fit the config.
        ConfigError: ``config`` is a file that is missing or not a valid STPrivacyConfig.
    """
    path = Path(checkpoint)
    if path.suffix == ".safetensors":
        payload = _read_safetensors(path)
    else:
        payload = read_weights_only(path)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} must hold a dict (a checkpoint or a state dict), got {type(payload).__name__}")
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
        raise CheckpointError(f"{path}: the weights do not fit the model config: {exc}") from exc
    return model.to(device).eval()


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputNotFoundError(f"checkpoint not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({exc})") from exc


def _resolve_config(config, stored, path: Path) -> STPrivacyConfig:
    if isinstance(config, STPrivacyConfig):
        return config
    if config is not None:
        return _read_model_config(Path(config))
    if isinstance(stored, dict):
        try:
            return STPrivacyConfig.from_dict(stored)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path} holds an invalid model config: {exc}") from exc
    raise CheckpointError(f"{path} holds no model config: pass config (an STPrivacyConfig or a JSON file of its fields)")


def _read_model_config(path: Path) -> STPrivacyConfig:
    if not path.is_file():
        raise InputNotFoundError(f"config file not found: {path}")
    try:
        fields = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    try:
        return STPrivacyConfig.from_dict(fields)
    except (ValueError, TypeError, AttributeError) as exc:  # the config's validation of this file's fields
        raise ConfigError(f"{path}: {exc}") from exc


class OnnxAnonymizer:
    """An anonymizer exported by ``stprivacy export``, run by onnxruntime instead of PyTorch.

    It stands in for :class:`STPrivacy` in :func:`anonymize_window` and the functions above it.
    The keep ratio is fixed in the file (chosen at export), and the clip geometry is read from
    its input, ``video: [batch, 3, T, S, S]``.

    Args:
        path: the ``.onnx`` file.
        device: "cpu", or "cuda" to run on onnxruntime's CUDA provider where it is installed.
        threads: onnxruntime's intra-op threads on the CPU (None: onnxruntime's default, one per core).

    Raises:
        UsageError: onnxruntime is not installed, or the file is not an exported anonymizer.
        InputNotFoundError: no such file.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None):
        try:
            import onnxruntime
        except ImportError as exc:
            raise UsageError("running an ONNX anonymizer needs onnxruntime: pip install stpriv[onnx]") from exc
        path = Path(path)
        if not path.is_file():
            raise InputNotFoundError(f"ONNX file not found: {path}")
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise UsageError(f"threads must be an int >= 1, got {threads!r}")
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
            raise UsageError(f"{path} is not a readable ONNX file ({exc})") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 and len(outputs) == 1 else []
        if len(shape) != 5 or not all(isinstance(d, int) for d in shape[1:]) or shape[1] != 3 or shape[3] != shape[4]:
            raise UsageError(f"{path} is not an anonymizer written by `stprivacy export`: expected one input "
                             f"[batch, 3, T, S, S] and one output, got inputs {[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        self.frames, self.image_size = shape[2], shape[3]

    def anonymize(self, video: Tensor, keep_ratio: float | None = None) -> Tensor:
        """``Tensor[B, 3, T, S, S]`` in [0, 1] -> the anonymized clips, same shape (on the CPU).

        ``keep_ratio`` must be None: the ratio was fixed when the file was exported."""
        if keep_ratio is not None:
            raise UsageError("the keep ratio of an ONNX anonymizer is fixed at export: "
                             "export it again with the ratio you want (stprivacy export --keep-ratio)")
        (out,) = self.session.run(None, {self.input_name: video.detach().cpu().float().numpy()})
        return torch.from_numpy(out)


def clip_geometry(model: STPrivacy | OnnxAnonymizer) -> tuple[int, int]:
    """(frames, image size) of the clips ``model`` takes."""
    if isinstance(model, OnnxAnonymizer):
        return model.frames, model.image_size
    return model.cfg.frames, model.cfg.image_size


def tile_layout(height: int, width: int) -> tuple[int, bool]:
    """(number of square tiles, whether they are stacked vertically) for an ``height x width`` frame."""
    if width >= height:
        return max(1, round(width / height)), False
    return max(1, round(height / width)), True


@torch.no_grad()
def anonymize_window(model: STPrivacy | OnnxAnonymizer, frames: np.ndarray, stride: int = 1, keep_ratio: float | None = None) -> np.ndarray:
    """Anonymizes ``frames * stride`` consecutive frames (see the module docstring).

    Args:
        model: an :class:`STPrivacy` (put in evaluation mode here), or an :class:`OnnxAnonymizer`.
        frames: ``uint8[cfg.frames * stride, H, W, 3]``.
        stride: interleaved clips per window.
        keep_ratio: deployment keep ratio (``cfg.alpha`` when None).

    Returns:
        ``uint8[cfg.frames * stride, H, W, 3]``.
    """
    clip_len, size = clip_geometry(model)
    if frames.shape[0] != clip_len * stride:
        raise ValueError(f"frames must hold frames * stride = {clip_len * stride} frames, got {frames.shape[0]}")
    height, width = frames.shape[1:3]
    tiles, vertical = tile_layout(height, width)
    device = next(model.parameters()).device if isinstance(model, STPrivacy) else "cpu"
    grid = (size * tiles, size) if vertical else (size, size * tiles)
    # Resampling runs on uint8 frames (OpenCV), and only the model-sized clip is ever float: a
    # float copy of full-size frames costs more than the model itself on a CPU.
    small = resize_frames_uint8(frames, grid)  # uint8[T*stride, *grid, 3]
    video = frames_to_tensor(small).to(device)  # [3, T*stride, *grid]
    # [3, T*stride, ...] -> [stride, 3, T, ...]: clip s holds frames s, s + stride, ...
    clips = video.reshape(3, clip_len, stride, *grid).permute(2, 0, 1, 3, 4)
    axis = -2 if vertical else -1
    batch = torch.cat(clips.split(size, dim=axis))  # [tiles * stride, 3, T, S, S], tile-major
    out = model.anonymize(batch, keep_ratio)
    out = torch.cat(out.split(stride), dim=axis)  # back to [stride, 3, T, *grid]
    out = out.permute(1, 2, 0, 3, 4).reshape(3, clip_len * stride, *grid)
    return resize_frames_uint8(tensor_to_frames(out), (height, width))


def resize_frames_uint8(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes every frame of ``uint8[N, H, W, 3]`` to ``uint8[N, h, w, 3]``; returns ``frames``
    itself when the size already matches (so model-sized input is never resampled).

    Shrinking uses pixel-area averaging (OpenCV's ``INTER_AREA``, which antialiases as the float
    path's antialiased bilinear did); enlarging uses bilinear interpolation, which keeps the
    inside of a dropped (black) tubelet exactly black.
    """
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    height, width = size
    src_height, src_width = frames.shape[1:3]
    shrink = height * width < src_height * src_width
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    factor = _box_factor(src_height, src_width, height, width) if shrink else 1
    out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        if factor > 1:
            # INTER_AREA has a fast path for whole-number factors (a plain box average), about
            # twice as fast at 768x576 -> 112x112 as one fractional step; the rest is under 2x.
            frame = cv2.resize(frame, (src_width // factor, src_height // factor), interpolation=cv2.INTER_AREA)
        cv2.resize(frame, (width, height), dst=out[i], interpolation=interpolation)
    return out


def _box_factor(src_height: int, src_width: int, height: int, width: int) -> int:
    """The largest whole number that divides both source sides and shrinks no side below its
    target (1 if there is none)."""
    for factor in range(min(src_height // height, src_width // width), 1, -1):
        if src_height % factor == 0 and src_width % factor == 0:
            return factor
    return 1


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


def anonymize_video(model: STPrivacy | OnnxAnonymizer, source: str | Path, target: str | Path, *, keep_ratio: float | None = None,
                    stride: int = 1, codec: str = "libx264", crf: int = 18, preset: str | None = DEFAULT_PRESET,
                    progress: bool = True) -> int:
    """Anonymizes one video file into ``target``; returns the number of frames written.

    The output has the input's frame count, frame rate and size (rounded up to even sides, which
    H.264's 4:2:0 video needs). It is written to a temporary file beside ``target`` and renamed
    when complete, so a failure (a video that turns out truncated) leaves no partial output and
    an existing ``target`` untouched. ``codec``, ``crf`` and ``preset`` go to :func:`write_video`
    (``crf`` and ``preset`` apply to libx264 only).

    Raises:
        VideoDecodeError: the input cannot be opened or decoded.
    """
    if stride < 1:
        raise UsageError(f"stride must be >= 1, got {stride}")
    target = Path(target)
    info = probe_video(source)
    length = clip_geometry(model)[0] * stride
    bar = progress_bar(total=info.num_frames, desc=Path(source).name, unit="frame", disable=not progress)

    # Three stages overlap: decoding (a thread), the model (a thread) and encoding (here); each
    # spends its time in native code that releases the GIL (FFmpeg, PyTorch, OpenCV).
    windows = _in_background(_windows(iter_frames(source), length))

    def anonymized() -> Iterator[np.ndarray]:
        try:
            for window, real in windows:
                yield anonymize_window(model, window, stride, keep_ratio)[:real]
                bar.update(real)
        finally:
            windows.close()

    outputs = _in_background(anonymized())
    partial = target.with_name(f".{target.stem}.partial{target.suffix}")  # same suffix: same container
    try:
        frames = write_video(partial, (frame for out in outputs for frame in out), fps=info.fps, codec=codec,
                             crf=crf, preset=preset)
        os.replace(partial, target)
    finally:
        outputs.close()  # stops both threads when encoding failed
        partial.unlink(missing_ok=True)
        bar.close()
    return frames


_END = object()


def _in_background(items: Iterator, depth: int = 2) -> Iterator:
    """Yields what ``items`` yields, computed by a background thread up to ``depth`` items ahead.

    An exception raised in the thread is raised here, in order; closing this generator (or
    dropping it) stops the thread after the item it is working on and closes ``items``.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():  # a bounded wait, so a consumer that stopped is noticed
            try:
                buffer.put(entry, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, _END))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="stprivacy-anonymize", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def plan_jobs(source: str | Path, output: str | Path, overwrite: bool = False) -> list[Job]:
    """Pairs each input video with its output path, refusing anything that could destroy data.

    A file goes to ``output`` (or into it, as ``<stem>.mp4``, when ``output`` is an existing
    folder); a folder's videos go to the same relative paths under the output folder, as ``.mp4``.

    Raises:
        InputNotFoundError: ``source`` does not exist.
        UsageError: a folder without videos, an output that is an input (or the output folder
            inside the input folder), a wrong output suffix, or an existing output without ``overwrite``.
    """
    source, output = Path(source), Path(output)
    if source.is_file():
        target = output / f"{source.stem}.mp4" if output.is_dir() else output
        jobs = [Job(source, target)]
    elif source.is_dir():
        out_root = output.resolve()
        if out_root == source.resolve() or source.resolve() in out_root.parents:
            raise UsageError(f"output folder {output} must not be the input folder {source} or inside it")
        videos = list_videos(source)
        if not videos:
            raise UsageError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {source}")
        jobs = [Job(v, output / v.relative_to(source).with_suffix(".mp4")) for v in videos]
    else:
        raise InputNotFoundError(f"input {source} does not exist: expected a video file or a folder of videos")
    for job in jobs:
        if job.target.suffix.lower() not in (".mp4", ".mkv", ".mov"):
            raise UsageError(f"output {job.target} must end in .mp4 (or .mkv / .mov)")
        if job.target.exists() and job.target.resolve() == job.source.resolve():
            raise UsageError(f"refusing to overwrite the input video {job.source}")
        if job.target.exists() and not overwrite:
            raise UsageError(f"output {job.target} exists; pass overwrite=True (--overwrite) to replace it")
    return jobs


def anonymize_path(model: STPrivacy | OnnxAnonymizer, source: str | Path, output: str | Path, *, keep_ratio: float | None = None,
                   stride: int = 1, codec: str = "libx264", crf: int = 18, preset: str | None = DEFAULT_PRESET,
                   overwrite: bool = False, progress: bool = True) -> list[tuple[Path, int]]:
    """Anonymizes a video file or every video of a folder; returns (output path, frames) pairs.

    Every input is probed before anything is written, so an unreadable one stops the run with no
    output at all; if a video fails later (truncated past its header), the videos already written
    stay and the folders this call created for outputs it did not write are removed again.
    """
    jobs = plan_jobs(source, output, overwrite)
    for job in jobs:
        probe_video(job.source)
    created = sorted({d for job in jobs for d in (job.target.parent, *job.target.parent.parents) if not d.exists()},
                     key=lambda d: len(d.parts), reverse=True)  # deepest first, for the clean-up
    done = []
    try:
        for job in jobs:
            job.target.parent.mkdir(parents=True, exist_ok=True)
            frames = anonymize_video(model, job.source, job.target, keep_ratio=keep_ratio, stride=stride,
                                     codec=codec, crf=crf, preset=preset, progress=progress)
            done.append((job.target, frames))
    except BaseException:
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return done

