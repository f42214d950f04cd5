import os

import pytest
import torch

# Without a GPU the Triton kernels are still tested, on the CPU through Triton's interpreter.
# The variable must be set before triton is first imported, hence here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

# One fixed profile: CI runs the same number of examples every time, with no flaky deadlines.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=False, print_blob=True)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; none is present")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device; none is present"))
