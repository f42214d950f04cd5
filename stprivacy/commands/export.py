"""``stprivacy export --checkpoint CKPT [--keep-ratio A] -o anonymizer.onnx``: the anonymizer as ONNX.

The file holds the deployment pass at one keep ratio (see :mod:`stprivacy.export`): a clip
``[B, 3, T, H, W]`` float32 in [0, 1] of the checkpoint's geometry in, the anonymized clip out,
runnable with onnxruntime (``pip install stpriv[onnx]``) without PyTorch.
"""
from __future__ import annotations

import argparse

from ..errors import UsageError
from ..export import export_anonymizer

HELP = "export a trained STPrivacy anonymizer at one keep ratio as an ONNX file"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``export`` with the ``stprivacy`` command line."""
    parser = subparsers.add_parser("export", help=HELP, description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint written by `stprivacy train`, or a state dict with --config")
    parser.add_argument("--config", default=None, help="JSON file of STPrivacyConfig fields, for a bare state dict")
    parser.add_argument("--keep-ratio", type=float, default=None,
                        help="deployment keep ratio per block, in (0, 1] (default: the model's alpha)")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write (its folder must exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    # Every command takes it, so scripts can pass it to all; an export (seconds) shows no progress anyway.
    parser.add_argument("--no-progress", action="store_true", help="accepted for every command; the export has no bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Runs the command; a refused or invalid request raises a :class:`~stprivacy.errors.UserError`."""
    if args.keep_ratio is not None and not 0.0 < args.keep_ratio <= 1.0:
        raise UsageError(f"--keep-ratio must be in (0, 1], got {args.keep_ratio}")
    path = export_anonymizer(args.checkpoint, args.output, args.keep_ratio, config=args.config,
                             overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0
