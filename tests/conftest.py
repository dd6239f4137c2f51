import os

import torch

# Without a GPU the Triton kernels run in the interpreter on CPU tensors. Triton decides that when a kernel is
# defined (at import), and the kernel modules set nothing themselves, so it is set here, before any test module
# imports Triton or csakd.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The checks behind backend "auto" cache their verdicts in the user's cache folder: tests keep theirs apart.
if "CSAKD_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["CSAKD_CACHE_DIR"] = tempfile.mkdtemp(prefix="csakd-test-cache-")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property tests: no per-example deadline (the Triton interpreter and first-call compilation are slow and
# uneven); CI keeps the example counts modest and draws the same examples every run (a change, not the luck of
# the draw, decides whether it lands; failing draws found by exploring are kept as explicit @example cases),
# a GPU run ("gpu" profile) draws more and larger cases, fresh each time.
settings.register_profile("ci", deadline=None, max_examples=25, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("gpu", deadline=None, max_examples=100,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
