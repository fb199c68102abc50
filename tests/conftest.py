"""Shared fixtures: devices (CUDA only where present) and seeded generators."""

import numpy as np
import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA is not available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for the whole suite.

    The tests use tiny tensors: on a shared 2-core CPU, two threads thrash
    (measured: the regressor tests took 150 s with 2 threads, 3 s with 1).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=DEVICES)
def device(request):
    """Every available torch device: CPU always, CUDA when present."""
    return torch.device(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
