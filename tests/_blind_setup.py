"""The tiny BlindDeblurrer setting shared by test_blind.py and test_distributed.py.

Importable from any test module because setup.cfg puts ``tests`` on pytest's
``pythonpath``.
"""

import numpy as np

from deepblur import (
    BlindDeblurrer,
    ConeSimplifier,
    ProductConvolutionBasis,
    ResNetBlurRegressor,
    TVDeblurrer,
)
from deepblur.datasets import make_deblurring_pairs, make_random_operators

SHAPE = (32, 32)


def make_blind_data():
    """Calibration PSF fields and 8 (blurry, clean) pairs of held-out operators."""
    ops = make_random_operators(14, image_shape=SHAPE, kernel_shape=(9, 9),
                                grid_shape=(4, 4), random_state=0)
    held_out = make_random_operators(4, image_shape=SHAPE, kernel_shape=(9, 9),
                                     grid_shape=(4, 4), random_state=1)
    rng = np.random.default_rng(0)
    images = rng.random((10, 48, 48)).cumsum(axis=1) / 48 + 0.05
    blurry, clean = make_deblurring_pairs(list(images), held_out, 8,
                                          random_state=0)
    return ops.psf_fields, blurry, clean


def tiny(K=3, lam=50.0, **kwargs):
    """A BlindDeblurrer that fits in about a second."""
    return BlindDeblurrer(
        basis=ProductConvolutionBasis(K, image_shape=SHAPE),
        cone=ConeSimplifier(n_rays=6),
        regressor=ResNetBlurRegressor(module__width=4, max_epochs=1, batch_size=16,
                                      device="cpu", verbose=0),
        deblurrer=TVDeblurrer(lam=lam, tol=1e-3, device="cpu"),
        n_train_images=32, random_state=0, **kwargs)
