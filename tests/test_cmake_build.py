"""CMakeLists.txt builds csrc/ into a library that torch.ops.load_library registers (libtorch users)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")

# Runs in a fresh interpreter that never imports the stpriv_ops package (whose _C would register
# the same schemas first); the oracle is loaded straight from its file.
CHECK = """
import importlib.util, sys, torch
torch.ops.load_library(sys.argv[1])
spec = importlib.util.spec_from_file_location("reference", sys.argv[2])
reference = importlib.util.module_from_spec(spec); spec.loader.exec_module(reference)
q, k, v = (torch.randn(2, 3, 41, 16, dtype=torch.float64) for _ in range(3))
keep = (torch.rand(2, 41) < 0.6).double()
out, row_max, row_sum = torch.ops.stpriv.masked_attention(q, k, v, keep, None, 1e-6)
torch.testing.assert_close(out, reference.masked_attention(q, k, v, keep))
print("loaded ops:", len([n for n in dir(torch.ops.stpriv) if not n.startswith("__")]))
"""


TORCH_ROOT = Path(torch.__file__).parent  # include/ and lib/, as in an unpacked libtorch


def test_cmake_library_loads_and_runs(tmp_path):
    # Built against whatever torch this environment has: PyPI's default Linux wheel is a CUDA build,
    # whose own TorchConfig.cmake would not configure on a machine without the CUDA toolkit.
    build = tmp_path / "build"
    res = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), f"-DTORCH_ROOT={TORCH_ROOT}", "-DCMAKE_BUILD_TYPE=Release"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, f"torch {torch.__version__} (CUDA {torch.version.cuda}):\n" + res.stdout[-3000:] + res.stderr[-3000:]
    res = subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (lib,) = build.glob("libstpriv_ops.so")
    res = subprocess.run([sys.executable, "-c", CHECK, str(lib), str(ROOT / "stpriv_ops" / "reference.py")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "loaded ops:" in res.stdout


def test_cmake_names_a_wrong_torch_root(tmp_path):
    res = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DTORCH_ROOT={tmp_path}"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert f"TORCH_ROOT={tmp_path} holds no include/torch/library.h" in " ".join(res.stderr.split())


def test_cmake_asks_python_for_torch_when_no_root_is_given(tmp_path):
    res = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DPython3_EXECUTABLE={sys.executable}"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"building against torch in {TORCH_ROOT}" in res.stdout
