"""Random space-varying blur operators (paper section 1.2.1).

Each operator is a product-convolution expansion with ``n_pairs`` pairs:

* kernels ``e_i``: anisotropic Gaussians, standard deviations drawn uniformly in
  ``sigma_range`` and a uniform random orientation, normalised to unit sum;
* maps ``f_i``: smooth Gaussian random fields partition the image into
  ``n_pairs`` random domains (the pixels where field ``i`` is the largest; for
  two pairs this is a threshold of their difference), whose indicators are
  smoothed by a wide Gaussian. The maps sum to one at every pixel, so the blur
  preserves mean intensity.

The PSF field of an operator at pixel ``x`` (its impulse response there) is
``sum_i f_i(x) e_i``; the generator returns it on a regular grid, the data that
:class:`deepblur.ProductConvolutionBasis` fits.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.utils import Bunch, check_random_state

from deepblur._validation import (
    check_positive_int,
    check_positive_int_pair,
    scalar_value,
)
from deepblur.solvers.psf_decomposition import grid_positions

__all__ = ["gaussian_kernel", "make_random_operators", "random_maps"]


def _positive_pair(value, name):
    """Two positive, finite floats."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of positive numbers; got "
                         f"{value!r}.") from None
    if not (np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0):
        raise ValueError(f"{name} must be a pair of positive, finite numbers; "
                         f"got {value!r}.")
    return a, b


def _optional_scale(value, name):
    """None or a non-negative, finite number (booleans are no numbers)."""
    if value is not None and (isinstance(value, bool) or not (
            isinstance(value, Real) and np.isfinite(value) and value >= 0)):
        raise ValueError(f"{name} must be a non-negative number or None; "
                         f"got {value!r}.")
    return value


def gaussian_kernel(kernel_shape, sigmas, angle):
    """Anisotropic Gaussian kernel with unit sum, centred like scipy's 'same'.

    Parameters
    ----------
    kernel_shape : (kh, kw)
    sigmas : (sigma_1, sigma_2)
        Standard deviations along the rotated axes, in pixels.
    angle : float
        Orientation of the first axis, in radians.
    """
    kh, kw = check_positive_int_pair(kernel_shape, "kernel_shape")
    sigmas = _positive_pair(sigmas, "sigmas")
    value = scalar_value(angle)        # a number, or a 0-d array or tensor
    if value is None or not np.isfinite(value):
        raise ValueError(f"angle must be a finite number; got {angle!r}.")
    angle = value
    y = np.arange(kh) - (kh - 1) // 2
    x = np.arange(kw) - (kw - 1) // 2
    yy, xx = np.meshgrid(y, x, indexing="ij")
    c, s = np.cos(angle), np.sin(angle)
    a = c * xx + s * yy
    b = -s * xx + c * yy
    g = np.exp(-0.5 * ((a / sigmas[0]) ** 2 + (b / sigmas[1]) ** 2))
    return g / g.sum()


def random_maps(image_shape, n_pairs, rng, *, field_scale=None, smoothing=None):
    """Smooth partition of unity from thresholded Gaussian random fields.

    Parameters
    ----------
    image_shape : int or (H, W)
        Positive.
    n_pairs : int
        Number of maps, at least 1.
    rng : numpy Generator or RandomState, int or None
        The random generator, or a seed for :func:`numpy.random.default_rng`.
    field_scale : float, optional
        Correlation length (pixels) of the random fields, finite and
        non-negative; default ``min(H, W)/6``.
    smoothing : float, optional
        Standard deviation (pixels) of the wide Gaussian applied to the
        indicators, finite and non-negative; default ``min(H, W)/16``.

    Returns
    -------
    ndarray of shape (n_pairs, H, W), non-negative, summing to 1 per pixel.

    Raises
    ------
    ValueError
        If ``image_shape``, ``n_pairs``, ``rng``, ``field_scale`` or
        ``smoothing`` is not as described.
    """
    H, W = check_positive_int_pair(image_shape, "image_shape")
    n_pairs = check_positive_int(n_pairs, "n_pairs")
    _optional_scale(field_scale, "field_scale")
    _optional_scale(smoothing, "smoothing")
    if not isinstance(rng, (np.random.Generator, np.random.RandomState)):
        if rng is not None and (not isinstance(rng, Integral) or isinstance(rng, bool)):
            raise ValueError(
                "rng must be a numpy Generator or RandomState, an int seed or "
                f"None; got {type(rng).__name__}."
            )
        rng = np.random.default_rng(rng)
    field_scale = min(H, W) / 6 if field_scale is None else field_scale
    smoothing = min(H, W) / 16 if smoothing is None else smoothing
    fields = np.stack([
        gaussian_filter(rng.standard_normal((H, W)), field_scale, mode="reflect")
        for _ in range(n_pairs)
    ])
    labels = np.argmax(fields, axis=0)
    indicators = (labels[None] == np.arange(n_pairs)[:, None, None]).astype(float)
    maps = np.stack([gaussian_filter(v, smoothing, mode="reflect")
                     for v in indicators])
    return maps / maps.sum(axis=0, keepdims=True)


def make_random_operators(n_operators=100, *, image_shape=(128, 128),
                          kernel_shape=(31, 31), n_pairs=2, sigma_range=(1.0, 4.0),
                          grid_shape=(16, 16), field_scale=None, smoothing=None,
                          random_state=None):
    """Draw random product-convolution operators and their PSF fields.

    Parameters
    ----------
    n_operators : int, default=100
        Positive.
    image_shape : (H, W), default=(128, 128)
    kernel_shape : (kh, kw), default=(31, 31)
    n_pairs : int, default=2
        Kernel/map pairs per operator (paper Fig. 2 uses 2), positive.
    sigma_range : (low, high), default=(1, 4)
        Range of the Gaussian kernels' standard deviations, in pixels.
    grid_shape : (gy, gx), default=(16, 16)
        Grid on which the PSF fields are sampled.
    field_scale, smoothing : float, optional
        See :func:`random_maps`.
    random_state : int, RandomState instance or None

    Returns
    -------
    data : :class:`sklearn.utils.Bunch` with

        - ``kernels`` (P, n_pairs, kh, kw) and ``maps`` (P, n_pairs, H, W): each
          operator's own families;
        - ``psf_fields`` (P, gy, gx, kh, kw): impulse responses on the grid,
          ready for ``ProductConvolutionBasis(...).fit``;
        - ``positions`` (gy * gx, 2): the grid's pixel coordinates;
        - ``image_shape``, ``kernel_shape``, ``grid_shape``.

    Raises
    ------
    ValueError
        If a parameter is not as described (the message names it): counts
        and shapes must be positive ints (booleans are not), ``sigma_range``
        positive and ordered, ``field_scale`` and ``smoothing`` finite and
        non-negative, the grid no larger than the image.

    Examples
    --------
    >>> from deepblur.datasets import make_random_operators
    >>> ops = make_random_operators(3, image_shape=(32, 32), kernel_shape=(9, 9),
    ...                             grid_shape=(4, 4), random_state=0)
    >>> ops.psf_fields.shape
    (3, 4, 4, 9, 9)
    >>> bool(abs(ops.psf_fields.sum(axis=(-2, -1)) - 1).max() < 1e-12)
    True
    """
    n_operators = check_positive_int(n_operators, "n_operators")
    n_pairs = check_positive_int(n_pairs, "n_pairs")
    image_shape = check_positive_int_pair(image_shape, "image_shape")
    kernel_shape = check_positive_int_pair(kernel_shape, "kernel_shape")
    grid_shape = check_positive_int_pair(grid_shape, "grid_shape")
    low, high = _positive_pair(sigma_range, "sigma_range")
    if not low <= high:
        raise ValueError(
            f"sigma_range must satisfy 0 < low <= high; got {sigma_range!r}."
        )
    _optional_scale(field_scale, "field_scale")
    _optional_scale(smoothing, "smoothing")
    if grid_shape[0] > image_shape[0] or grid_shape[1] > image_shape[1]:
        raise ValueError(
            f"grid_shape {grid_shape} must not exceed image_shape {image_shape}."
        )
    rng = check_random_state(random_state)
    gen = np.random.default_rng(rng.randint(np.iinfo(np.int32).max))
    P = int(n_operators)
    kernels = np.empty((P, n_pairs) + kernel_shape)
    maps = np.empty((P, n_pairs) + image_shape)
    for p in range(P):
        for i in range(n_pairs):
            sig = gen.uniform(low, high, size=2)
            kernels[p, i] = gaussian_kernel(kernel_shape, sig, gen.uniform(0, np.pi))
        maps[p] = random_maps(image_shape, n_pairs, gen, field_scale=field_scale,
                              smoothing=smoothing)
    positions = grid_positions(image_shape, grid_shape)
    at = maps[:, :, positions[:, 0], positions[:, 1]]          # (P, n_pairs, X)
    fields = np.einsum("pix,pihw->pxhw", at, kernels)
    fields = fields.reshape((P,) + grid_shape + kernel_shape)
    return Bunch(kernels=kernels, maps=maps, psf_fields=fields,
                 positions=positions, image_shape=image_shape,
                 kernel_shape=kernel_shape, grid_shape=grid_shape)
