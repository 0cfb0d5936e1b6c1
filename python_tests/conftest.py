"""Test configuration: hypothesis profiles, the CUDA skip rule and the fixtures shared by files.

Profiles: ``ci`` (default; fast and derandomized, what CI and the README's test command run: the
same examples on every run, so a CI result is reproducible), ``dev`` and ``thorough`` (random
examples, for a long local search: ``HYPOTHESIS_PROFILE=thorough python -m pytest``).
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=30, derandomize=True, **_common)
settings.register_profile("dev", max_examples=100, **_common)
settings.register_profile("thorough", max_examples=1000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CUDA_VISIBLE = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a visible CUDA device")
    for item in items:
        if "cuda" in item.keywords and not CUDA_VISIBLE:
            item.add_marker(skip_cuda)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> str:
    """Every backend: CPU always, CUDA when a GPU is visible (skipped otherwise)."""
    return request.param


@pytest.fixture(scope="session")
def collection(tmp_path_factory):
    """The search page's tests' collection: drawn images, a tiny run and its index
    (:func:`serve_testdata.trained_collection`), built once per session."""
    from serve_testdata import trained_collection  # the serve tests' data, only when asked for

    return trained_collection(tmp_path_factory.getbasetemp() / "serve_collection")
