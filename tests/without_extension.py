"""Runs a snippet in a fresh interpreter in which ``stpriv_ops._C`` cannot be imported, as on a
machine where the extension was never built: every op must then fall back to its reference."""
from __future__ import annotations

import os
import subprocess
import sys

_HIDE_EXTENSION = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "stpriv_ops._C":
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
"""


def run_without_extension(body: str) -> None:
    """Runs ``body`` (Python source that prints "fallback ok" at its end) without the extension."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", _HIDE_EXTENSION + body], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0 and "fallback ok" in res.stdout, res.stderr
