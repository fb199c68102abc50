"""Data generators and loaders: random operators, offline images."""

from deepblur.datasets.images import (
    extract_patches,
    load_image,
    load_images,
    load_microscopy_images,
    load_natural_images,
    make_dead_leaves,
    make_point_sources,
    natural_image_split,
    read_pixels,
)
from deepblur.datasets.random_operators import (
    gaussian_kernel,
    make_random_operators,
    random_maps,
)
from deepblur.datasets.simulate import (
    BlurDataset,
    blur_images,
    make_blurred_images,
    make_deblurring_pairs,
)

__all__ = [
    "BlurDataset",
    "blur_images",
    "make_blurred_images",
    "make_deblurring_pairs",
    "extract_patches",
    "gaussian_kernel",
    "load_image",
    "load_images",
    "load_microscopy_images",
    "load_natural_images",
    "make_dead_leaves",
    "make_point_sources",
    "make_random_operators",
    "natural_image_split",
    "random_maps",
    "read_pixels",
]
