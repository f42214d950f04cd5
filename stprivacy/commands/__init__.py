"""Subcommands of the ``stprivacy`` CLI; each module has ``add_parser(subparsers)`` and ``run(args)``."""
