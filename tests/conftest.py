import importlib.util
import os
import random
import zlib

import numpy as np
import pytest
import torch

# Without a GPU the Triton kernels are still tested, on the CPU through Triton's interpreter.
# The variable must be set before triton is first imported, hence here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

# One fixed profile: CI runs the same examples every time (derandomize: drawn from a seed fixed
# per test), with no flaky deadlines. "dev" explores new examples on each run.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; none is present")


def pytest_report_header(config):
    """One line saying where the Triton kernels run in this session, or why they do not."""
    if importlib.util.find_spec("triton") is None:
        return ("Triton kernels: NOT tested, triton is not installed (it comes with the 'test' extra on "
                "Linux x86-64: pip install --no-build-isolation -e '.[test]')")
    if HAS_CUDA:
        return "Triton kernels: tested on the CUDA device"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "Triton kernels: tested on the CPU under TRITON_INTERPRET=1 (no CUDA device)"
    return "Triton kernels: NOT tested, no CUDA device and TRITON_INTERPRET is set to something other than 1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device; none is present"))


def test_seed(nodeid: str) -> int:
    """The seed of one test: a stable hash of its node id (Python's hash() is salted per process),
    so a test draws the same numbers alone as in the whole suite, in any order."""
    return zlib.crc32(nodeid.encode())


test_seed.__test__ = False  # a helper, not a test


@pytest.fixture(autouse=True)
def _seeded_random_generators(request):
    """Seeds Python's, NumPy's and torch's global generators (CUDA's included) before each test."""
    seed = test_seed(request.node.nodeid)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed:
        report.sections.append(("random seed", f"seed={test_seed(item.nodeid)} (the global generators were seeded "
                                "with it; rerun this test alone to reproduce)"))
