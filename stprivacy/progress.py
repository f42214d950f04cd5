"""Progress reporting that suits where stderr goes: a live bar on a terminal, one line otherwise.

A tqdm bar redraws itself with carriage returns, which turns a log file into megabytes of partial
lines. :func:`progress_bar` takes tqdm's arguments and gives a tqdm bar only when stderr is a
terminal; anywhere else it prints one plain line when the loop is done, with the same figures
(count, time, the last ``set_postfix`` values)::

    init 3/16: 48/48 batches in 12.3 s, action=0.412, spars=0.0051
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None, initial: int = 0,
                 unit: str = "it", disable: bool = False, leave: bool = True, stream: TextIO | None = None):
    """A tqdm bar when ``stream`` (default: stderr) is a terminal, else a :class:`LineProgress`.

    Use it as tqdm: iterate it, or call ``update(n)`` and ``close()``; ``set_postfix(**figures)``.
    ``disable=True`` shows nothing at all (``--no-progress``).
    """
    stream = sys.stderr if stream is None else stream
    if not disable and _is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, leave=leave, file=stream)
    return LineProgress(iterable, desc=desc, total=total, initial=initial, unit=unit, disable=disable, stream=stream)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """tqdm's interface, reporting one line when the loop finishes (iteration ends, or ``close()``
    after ``update`` reached ``total``). A loop left early by an exception prints nothing, so an
    error stays the last and only line."""

    def __init__(self, iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                 initial: int = 0, unit: str = "it", disable: bool = False, stream: TextIO | None = None):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n = total, initial
        self.stream = sys.stderr if stream is None else stream
        self.postfix: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._reported = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **figures: Any) -> None:
        self.postfix = figures

    def close(self) -> None:
        finished = self.total is None or self.n >= self.total
        if self.disable or self._reported or not finished:
            return
        self._reported = True
        print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        units = self.unit + ("es" if self.unit.endswith(("s", "x", "ch", "sh")) else "s")
        text = f"{self.desc}: {count} {units} in {time.perf_counter() - self._start:.1f} s"
        return ", ".join([text] + [f"{key}={value}" for key, value in self.postfix.items()])
