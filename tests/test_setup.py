"""setup.py's extension is optional: a compile that fails leaves a working install without it."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from setuptools import Distribution, Extension

ROOT = Path(__file__).resolve().parents[1]


def _setup_module():
    # setup.py calls setup() only when run as __main__ (pip's backend, `python setup.py`), so it imports cleanly.
    spec = importlib.util.spec_from_file_location("stpriv_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failed_compile_is_one_warning_and_leaves_the_extension_out(tmp_path, capfd, monkeypatch):
    (tmp_path / "broken.cpp").write_text("this is not C++;\n")
    monkeypatch.chdir(tmp_path)
    extension = Extension("pkg._broken", sources=["broken.cpp"], language="c++")
    dist = Distribution({"name": "pkg", "ext_modules": [extension]})
    command = _setup_module().OptionalBuildExtension(dist)
    command.build_lib, command.build_temp = str(tmp_path / "lib"), str(tmp_path / "tmp")
    command.ensure_finalized()
    command.run()  # the real compiler fails on the source; no exception escapes
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("WARNING: building pkg._broken failed")]
    assert len(warnings) == 1, err
    assert "pure-PyTorch reference" in warnings[0]
    assert command.failed == ("pkg._broken",)
    assert command.get_outputs() == []
    command.inplace = True
    command.copy_extensions_to_source()  # an editable install copies nothing for it, and does not fail
    assert not any(name.startswith("_broken") for name in os.listdir(tmp_path))


def test_setup_py_declares_the_optional_build():
    text = (ROOT / "setup.py").read_text()
    assert '"build_ext": OptionalBuildExtension' in text
