"""Builds csrc/ into the ``stpriv_ops._C`` extension against the installed PyTorch.

Install with ``pip install --no-build-isolation -e .`` so the extension is compiled against the
torch already in the environment (an isolated build would fetch another one).
"""
import glob
import os

from setuptools import setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError as exc:  # pragma: no cover - a clear message beats a traceback from setuptools
    raise SystemExit(
        "stpriv needs PyTorch installed before it is built: `pip install torch` first, then "
        "`pip install --no-build-isolation -e .`"
    ) from exc

HERE = os.path.dirname(os.path.abspath(__file__))


def extensions():
    if os.environ.get("STPRIV_NO_EXTENSION") == "1":
        return []  # pure-Python install: the ops run through the reference
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # ATen's parallel_for is header code built on OpenMP pragmas: without -fopenmp it runs serially.
    cxx_flags = ["-O3", "-fopenmp", "-DSTPRIV_PYTHON_MODULE"]
    if os.environ.get("STPRIV_DEBUG") == "1":
        cxx_flags = ["-O0", "-g", "-fopenmp", "-DSTPRIV_PYTHON_MODULE"]
    return [
        CppExtension(
            name="stpriv_ops._C",
            sources=sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
