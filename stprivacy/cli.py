"""The ``stprivacy`` command line: one subcommand per module of ``stprivacy.commands``.

Each command module exposes ``add_parser(subparsers)`` (which registers its arguments) and
``run(args) -> int``; adding a command is adding its module to ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .commands import anonymize, demo, evaluate, train

COMMANDS = [demo, train, evaluate, anonymize]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stprivacy",
        description="STPrivacy (ICCV 2023): privacy-preserving action recognition by dropping and "
        "anonymizing the tubelets that carry private information.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        sub = module.add_parser(subparsers)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    # user errors, and a loss gone NaN/inf (FloatingPointError): one clear line, no traceback
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as e:
        if os.environ.get("STPRIVACY_DEBUG"):
            raise
        print(f"stprivacy {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
