"""Loads the compiled ops (``stpriv_ops._C``) once; without them every op runs its reference.

Like torchvision's ``_has_ops()``: a missing build is not an error, the library still works
through the pure-PyTorch references in ``stpriv_ops.reference``, and says so once.
"""
from __future__ import annotations

import importlib
import warnings

_LOAD_ERROR: str | None = None

try:
    importlib.import_module("stpriv_ops._C")
except ImportError as exc:  # not built, or built against another torch
    _LOAD_ERROR = str(exc)
    warnings.warn(
        "stpriv_ops: the compiled extension stpriv_ops._C could not be loaded "
        f"({exc}); every op falls back to its pure-PyTorch reference (correct, but slower and "
        "O(N^2) memory for attention). Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_ops() -> bool:
    """True when the compiled ``torch.ops.stpriv`` ops are registered."""
    return _LOAD_ERROR is None


def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
