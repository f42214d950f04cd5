"""``stprivacy anonymize INPUT -o OUTPUT (--checkpoint CKPT [--keep-ratio A] | --onnx FILE)``: anonymize videos.

INPUT is a video file or a folder of them; OUTPUT a file (``.mp4``) or a folder. Every output
has its input's frame count and frame rate. The command never writes over an input, and
refuses existing outputs unless ``--overwrite``. With ``--onnx`` the model is a file written by
``stprivacy export``, run with onnxruntime (``pip install stpriv[onnx]``).
"""
from __future__ import annotations

import argparse
import os

import torch

from ..anonymize import DEFAULT_PRESET, OnnxAnonymizer, anonymize_path, load_anonymizer, plan_jobs
from ..errors import UsageError

HELP = "anonymize a video file or a folder of videos with a trained STPrivacy model"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``anonymize`` with the ``stprivacy`` command line."""
    parser = subparsers.add_parser("anonymize", help=HELP, description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a video file, or a folder of video files (searched recursively)")
    parser.add_argument("-o", "--output", required=True,
                        help="output .mp4 file (or folder, for a folder input or to keep the input's name)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint",
                        help="a checkpoint written by `stprivacy train`, or a state dict with --config")
    source.add_argument("--onnx", default=None,
                        help="an anonymizer written by `stprivacy export`, run with onnxruntime instead of "
                        "PyTorch (its keep ratio is the one chosen at export)")
    parser.add_argument("--config", default=None, help="JSON file of STPrivacyConfig fields, for a bare state dict")
    parser.add_argument("--keep-ratio", type=float, default=None,
                        help="deployment keep ratio per block, in (0, 1] (default: the model's alpha)")
    parser.add_argument("--stride", type=int, default=1,
                        help="interleave this many clips per window; use the training sampling rate (default 1)")
    parser.add_argument("--codec", choices=("libx264", "mpeg4"), default="libx264", help="output video codec")
    parser.add_argument("--crf", type=int, default=18,
                        help="libx264 quality, 0 (lossless) to 51; 18 (default) is visually lossless")
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        choices=("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"),
                        help=f"libx264 speed preset (default {DEFAULT_PRESET}: measured as fast as real time "
                             "needs, at medium's quality; see benchmarks/RESULTS.md)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files (never an input)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of the model (torch's, or onnxruntime's with --onnx) and of OpenCV's "
                             "resizing (default: one fewer than the machine's cores, at least 1: decoding and "
                             "encoding run beside the model on the remaining core)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def default_threads() -> int:
    """The model's and OpenCV's threads when ``--threads`` is not given: one fewer than the cores.

    The pass overlaps decoding, the model and encoding (:func:`stprivacy.anonymize.anonymize_video`),
    and FFmpeg's decoder and encoder need a core of their own: on the 2-core VM the whole pass ran
    at 54.1 fps with 1 model thread against 46.8 fps with 2 (benchmarks/RESULTS.md, "anonymize")."""
    return max(1, (os.cpu_count() or 1) - 1)


def run(args: argparse.Namespace) -> int:
    """Runs the command; a refused or invalid request raises a :class:`~stprivacy.errors.UserError`."""
    if args.keep_ratio is not None and not 0.0 < args.keep_ratio <= 1.0:
        raise UsageError(f"--keep-ratio must be in (0, 1], got {args.keep_ratio}")
    if args.stride < 1:
        raise UsageError(f"--stride must be >= 1, got {args.stride}")
    if not 0 <= args.crf <= 51:
        raise UsageError(f"--crf must be in [0, 51], got {args.crf}")
    if args.onnx is not None and (args.keep_ratio is not None or args.config is not None):
        raise UsageError("--keep-ratio and --config do not apply to --onnx: the keep ratio and the model "
                         "are fixed in the exported file (stprivacy export --keep-ratio)")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    plan_jobs(args.input, args.output, args.overwrite)  # refuse before loading anything
    threads = args.threads if args.threads is not None else default_threads()
    import cv2  # the resizing runs in OpenCV (stprivacy.anonymize)

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    if args.onnx is not None:
        model = OnnxAnonymizer(args.onnx, device=args.device, threads=threads)
    else:
        model = load_anonymizer(args.checkpoint, args.config, device=args.device)
    done = anonymize_path(model, args.input, args.output, keep_ratio=args.keep_ratio, stride=args.stride,
                          codec=args.codec, crf=args.crf, preset=args.preset, overwrite=args.overwrite,
                          progress=not args.no_progress)
    for path, frames in done:
        print(f"wrote {path} ({frames} frames)")
    return 0
