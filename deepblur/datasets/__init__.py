"""Data generators and loaders: random operators, images, simulators."""

from deepblur.datasets.random_operators import (
    gaussian_kernel,
    make_random_operators,
    random_maps,
)

__all__ = ["gaussian_kernel", "make_random_operators", "random_maps"]
