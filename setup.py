"""Builds csrc/ into the ``stpriv_ops._C`` extension against the installed PyTorch.

Install with ``pip install --no-build-isolation -e .`` so the extension is compiled against the
torch already in the environment (an isolated build would fetch another one). The extension is
optional: a failed compile prints one warning and the install goes on, and every op then runs its
pure-PyTorch reference (``import stpriv_ops`` warns once too).

Build-time settings: ``STPRIV_NO_EXTENSION=1`` skips the extension, ``STPRIV_DEBUG=1`` builds it
with ``-O0 -g``.
"""
import glob
import os
import sys

from setuptools import setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError as exc:  # pragma: no cover - a clear message beats a traceback from setuptools
    raise SystemExit(
        "stpriv needs PyTorch installed before it is built: `pip install torch` first, then "
        "`pip install --no-build-isolation -e .`"
    ) from exc

HERE = os.path.dirname(os.path.abspath(__file__))


class OptionalBuildExtension(BuildExtension):
    """torch's ``BuildExtension``, where an extension that fails to compile or link is left out
    with one warning instead of failing the install: the ops have a pure-PyTorch fallback."""

    failed: tuple[str, ...] = ()  # names of the extensions left out

    def build_extensions(self):
        # torch checks the compiler before compiling anything, so both steps are covered here.
        try:
            super().build_extensions()
        except Exception as exc:  # a missing or failing compiler or linker surfaces as several types
            lines = str(exc).strip().splitlines()
            print(f"WARNING: building {', '.join(e.name for e in self.extensions)} failed ({type(exc).__name__}: "
                  f"{lines[-1] if lines else ''}); installing without it: every op runs its pure-PyTorch "
                  "reference", file=sys.stderr)
            self.failed = tuple(ext.name for ext in self.extensions)

    def copy_extensions_to_source(self):
        # An in-place (editable) build copies each built library into the source tree: skip the failed ones.
        built = self.extensions
        self.extensions = [ext for ext in built if ext.name not in self.failed]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = built

    def get_outputs(self):
        return [path for path, ext in zip(super().get_outputs(), self.extensions) if ext.name not in self.failed]


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


if __name__ == "__main__":  # pip's build backend and `python setup.py ...` run it as __main__; tests import it
    setup(
        ext_modules=extensions(),
        cmdclass={"build_ext": OptionalBuildExtension.with_options(use_ninja=True)},
    )
