"""deepblur: blind identification of space-varying blur and deblurring.

The public estimators follow scikit-learn's conventions and are re-exported
here; the numerics live in :mod:`deepblur.operators` and
:mod:`deepblur.solvers` as plain functions on torch tensors and arrays.
"""

from deepblur.estimators.basis import ProductConvolutionBasis
from deepblur.estimators.blind import BlindDeblurrer
from deepblur.estimators.cone import ConeSampler, ConeSimplifier
from deepblur.estimators.deblur import TVDeblurrer
from deepblur.estimators.points import PointSourceBlurEstimator
from deepblur.estimators.regressor import ResNetBlurRegressor
from deepblur.estimators.spectral import SpectralBlurRegressor

__version__ = "0.1.0.dev0"

__all__ = [
    "BlindDeblurrer",
    "ConeSampler",
    "ConeSimplifier",
    "PointSourceBlurEstimator",
    "ProductConvolutionBasis",
    "ResNetBlurRegressor",
    "SpectralBlurRegressor",
    "TVDeblurrer",
    "__version__",
]
