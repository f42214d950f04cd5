"""Reading and writing video files with PyAV.

Why PyAV (the maintained FFmpeg bindings) rather than OpenCV's ``VideoCapture``, torchvision's
video readers or decord: its wheels bundle FFmpeg with its codecs, so no system ``ffmpeg`` is
needed; it decodes every frame in order, so frame ``i`` is exactly the i-th frame of the stream
(OpenCV's seeking is approximate for many codecs); it writes H.264 / MPEG-4 into ``.mp4`` with the
stream's exact frame rate; and FFmpeg's errors arrive as Python exceptions, which is what lets a
data loader skip a broken file instead of crashing. Every call opens its own container, so the
functions are safe in DataLoader worker processes.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import DatasetError, UserError

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")

# A header frame count can be off by a few frames (common in HMDB51's AVI files); a stream that
# ends more than this fraction early is treated as truncated rather than as a sloppy header.
TRUNCATION_TOLERANCE = 0.1


class VideoDecodeError(UserError, RuntimeError):
    """A video that cannot be opened, has no video stream, or ends much earlier than it claims."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream."""

    num_frames: int
    fps: Fraction
    height: int
    width: int


def _open(path: str | Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoDecodeError(f"cannot open video {path}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{path} has no video stream")
    return container


def _count_packets(container: av.container.InputContainer) -> int:
    stream = container.streams.video[0]
    count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    container.seek(0)
    return count


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and size of the first video stream, without decoding.

    The frame count comes from the container header, or from counting packets when the header
    has none (Matroska/WebM).

    Raises:
        VideoDecodeError: the file cannot be opened or has no video stream.
    """
    container = _open(path)
    try:
        return _info(container, path)
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"cannot read video {path}: {exc}") from exc
    finally:
        container.close()


def _info(container: av.container.InputContainer, path: str | Path) -> VideoInfo:
    stream = container.streams.video[0]
    num_frames = stream.frames or _count_packets(container)
    if num_frames <= 0:
        raise VideoDecodeError(f"{path} has no frames")
    fps = stream.average_rate or stream.guessed_rate or Fraction(25)
    return VideoInfo(num_frames, Fraction(fps), stream.codec_context.height, stream.codec_context.width)


def _decode(path: str | Path) -> Iterator[av.VideoFrame]:
    """Yields the decoded frames of the first video stream, in order, still in the codec's format."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield from container.decode(stream)
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"decoding {path} failed: {exc}") from exc
    finally:
        container.close()


def verify_video(path: str | Path) -> VideoInfo:
    """Decodes every frame once (without converting it to RGB) and checks the stream against its
    header, by the rule :func:`read_frames` applies: a file that passes can be read at any frame
    indices its header allows. Costs one decode of the file.

    Raises:
        VideoDecodeError: the file cannot be opened, fails part way, or is truncated.
    """
    info = probe_video(path)
    decoded = sum(1 for _ in _decode(path))
    if decoded < math.ceil(info.num_frames * (1 - TRUNCATION_TOLERANCE)):
        raise VideoDecodeError(f"{path} is truncated: header says {info.num_frames} frames, decoded {decoded}")
    return info


def iter_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Yields every frame of the first video stream, in order, as ``uint8[H, W, 3]`` RGB.

    Raises:
        VideoDecodeError: the file cannot be opened or decoding fails part way.
    """
    for frame in _decode(path):
        yield frame.to_ndarray(format="rgb24")


def read_frames(path: str | Path, indices: Sequence[int] | np.ndarray, num_frames: int | None = None) -> np.ndarray:
    """Decodes the frames at ``indices`` (any order, repeats allowed).

    Decoding runs from the start and stops after the largest index, keeping only the frames
    asked for, so memory stays at one clip whatever the video's length.

    Args:
        path: a video file.
        indices: frame indices in ``[0, num_frames)``.
        num_frames: the frame count the indices were drawn from (``probe_video``); when the
            stream ends earlier, indices past its end repeat its last frame if it fell short by
            at most ``TRUNCATION_TOLERANCE``, and the file is reported as truncated otherwise.

    Returns:
        ``uint8[len(indices), H, W, 3]`` RGB frames.

    Raises:
        VideoDecodeError: unreadable, corrupt or truncated file.
    """
    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if wanted.size == 0:
        raise ValueError("indices must not be empty")
    if wanted.min() < 0:
        raise ValueError(f"indices must be >= 0, got min {wanted.min()}")
    needed = set(wanted.tolist())
    last_needed = int(wanted.max())
    kept: dict[int, np.ndarray] = {}
    frame, decoded = None, 0
    # Only the frames asked for are converted to RGB; the rest are just decoded and dropped.
    try:
        for i, frame in enumerate(_decode(path)):
            decoded = i + 1
            if i in needed or i >= last_needed:
                kept[i] = frame.to_ndarray(format="rgb24")
            if i >= last_needed:
                break
    except av.FFmpegError as exc:  # a frame that decodes but does not convert
        raise VideoDecodeError(f"converting a frame of {path} failed: {exc}") from exc
    if not decoded:
        raise VideoDecodeError(f"{path}: no frame could be decoded")
    if decoded <= last_needed:
        expected = num_frames if num_frames is not None else last_needed + 1
        if decoded < math.ceil(expected * (1 - TRUNCATION_TOLERANCE)):
            raise VideoDecodeError(f"{path} is truncated: header says {expected} frames, decoded {decoded}")
    # The last decoded frame stands in for indices past a slightly short stream.
    last = kept.get(decoded - 1)
    if last is None:
        last = frame.to_ndarray(format="rgb24")
    return np.stack([kept.get(i, last) for i in wanted.tolist()])


def write_video(
    path: str | Path,
    frames: Iterator[np.ndarray] | Sequence[np.ndarray],
    fps: Fraction | float | int,
    codec: str = "libx264",
    crf: int = 18,
    preset: str | None = None,
) -> int:
    """Writes ``uint8[H, W, 3]`` RGB frames to a playable file and returns how many were written.

    The default H.264 in ``.mp4`` (yuv420p, so even width and height are needed: frames with an
    odd side are padded by one black pixel row/column) plays in browsers and media players;
    ``codec="mpeg4"`` works wherever libx264 is missing. ``crf`` is H.264's quality (lower is
    better, 18 is visually lossless); MPEG-4 gets a matching high bitrate instead. ``preset`` is
    libx264's speed/size trade-off ("ultrafast" ... "veryslow"; None keeps its default, "medium"):
    at one CRF a faster preset gives about the same quality in a larger file.
    """
    fps = Fraction(fps).limit_denominator(1001 * 1000) if not isinstance(fps, Fraction) else fps
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    written = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            frame = np.ascontiguousarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"frames must be uint8[H, W, 3], got {frame.dtype}{list(frame.shape)}")
            if stream is None:
                height, width = frame.shape[0] + frame.shape[0] % 2, frame.shape[1] + frame.shape[1] % 2
                stream = container.add_stream(codec, rate=fps)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": str(crf), **({"preset": preset} if preset else {})}
                else:
                    stream.bit_rate = 8 * width * height * max(1, round(float(fps)))
            if frame.shape[:2] != (stream.height, stream.width):
                frame = np.pad(frame, ((0, stream.height - frame.shape[0]), (0, stream.width - frame.shape[1]), (0, 0)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            written += 1
        if stream is None:
            raise ValueError("frames must not be empty")
        for packet in stream.encode():
            container.mux(packet)
    return written


def list_videos(root: str | Path) -> list[Path]:
    """Every video file under ``root`` (recursively, by extension), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"video root must be an existing directory, got {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
