"""The errors a user can fix from their message: bad paths, files and options.

The command line prints a :class:`UserError` as one line, ``stprivacy <command>: error: <message>``,
and exits with status 2; any other exception is a bug and keeps its traceback. So code raises a
``UserError`` subclass exactly where it checks something the user supplied, and the message names
that input and what was expected. Each class also derives from the builtin error that describes it
(``ValueError``, ``FileNotFoundError``, ...), so library callers can catch either.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message names the input and the problem."""


class UsageError(UserError, ValueError):
    """A command-line option or function argument out of its range (``--keep-ratio 1.5``)."""


class ConfigError(UserError, ValueError):
    """A run config that cannot be used: not JSON, unknown sections or keys, invalid values."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A path the user named does not exist."""


class DatasetError(UserError, ValueError):
    """A dataset's files (split lists, label tables, annotations, video folders) are missing or malformed."""
