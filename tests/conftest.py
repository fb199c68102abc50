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


@pytest.fixture(params=DEVICES)
def device(request):
    """Every available torch device: CPU always, CUDA when present."""
    return torch.device(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
