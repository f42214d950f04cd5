"""The ``stprivacy`` command line: one subcommand per module of ``stprivacy.commands``.

Each command module exposes ``add_parser(subparsers)`` (which registers its arguments) and
``run(args) -> int``; adding a command is adding its module to ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .commands import anonymize, demo, evaluate, export, sweep, train
from .errors import UserError

COMMANDS = [demo, train, evaluate, sweep, anonymize, export]


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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command as typed, for reports that name the command they came from
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Runs a parsed command. A :class:`~stprivacy.errors.UserError` becomes one line on stderr
    and exit status 2 (argparse's status for bad usage); anything else is a bug and propagates
    with its traceback."""
    try:
        return int(args.run(args) or 0)
    except UserError as e:
        print(f"stprivacy {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
