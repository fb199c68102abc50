"""``PointSourceBlurEstimator``: gamma fitted on images of point sources."""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.base import (
    BaseEstimator,
    RegressorMixin,
    _fit_context,
)
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted

from deepblur._validation import user_stacklevel
from deepblur.estimators._gamma import (
    SharedBasisMixin,
    check_gamma_targets,
    image_to_gamma_tags,
)
from deepblur.estimators.regressor import _check_images
from deepblur.exceptions import NoPointSourceError, PoorPointSourceFitWarning
from deepblur.solvers.point_sources import _check_start, fit_point_sources
from deepblur.solvers.tv import _floored_noise_level, _half_dtype

__all__ = ["PointSourceBlurEstimator"]


def _filter_norm(smoothing):
    """``||g||_2`` of the detection's Gaussian filter (noise gain)."""
    if smoothing <= 0:
        return 1.0
    from scipy.ndimage import gaussian_filter

    r = int(np.ceil(5 * smoothing))
    delta = np.zeros((2 * r + 1, 2 * r + 1))
    delta[r, r] = 1.0
    return float(np.linalg.norm(gaussian_filter(delta, smoothing, mode="constant")))


#: A fit whose residual's root mean square exceeds this many times the
#: image's noise is not the point-source model (PoorPointSourceFitWarning).
_POOR_FIT = 5.0


def _warn_poor_fits(fits, images, sigma):
    """One PoorPointSourceFitWarning for the fits that leave far more than
    the noise (saturated sources, hot pixels, extended objects)."""
    poor = []
    for i, fit in enumerate(fits):
        if isinstance(fit, Exception):
            continue
        y = images[i]
        rms = fit.residual * np.linalg.norm(y) / np.sqrt(y.size)
        # a noise-free image: measured against a thousandth of its range
        noise = max(float(sigma[i]), 1e-3 * float(np.ptp(y)))
        if rms > _POOR_FIT * noise:
            poor.append((i, rms / noise))
    if poor:
        which = ", ".join(f"{i} ({r:.0f}x)" for i, r in poor[:6])
        more = f" and {len(poor) - 6} more" if len(poor) > 6 else ""
        warnings.warn(
            f"the point-source fit leaves a residual over {_POOR_FIT:g} times "
            f"the noise on {len(poor)} of {len(fits)} image(s): {which}{more}. "
            "Something there is not isolated point sources on a constant "
            "background (saturated sources, hot pixels, extended objects, a "
            "varying background, PSFs outside the basis), and gamma can be "
            "off (see PoorPointSourceFitWarning): leave such sources out, or "
            "subtract the background first.",
            PoorPointSourceFitWarning, stacklevel=user_stacklevel())


def _fit_one(i, image, kernels, maps, gamma_init, threshold, params):
    """The fit of image ``i``; a NoPointSourceError is returned, not raised
    (the other images are fitted all the same)."""
    try:
        return fit_point_sources(image, kernels, maps, gamma_init,
                                 threshold=threshold, **params)
    except NoPointSourceError as exc:
        return exc
    except ValueError as exc:
        raise ValueError(f"image {i}: {exc}") from None


class PointSourceBlurEstimator(SharedBasisMixin, RegressorMixin, BaseEstimator):
    r"""Estimate ``gamma`` from images of point sources (beads, molecules).

    In an image of isolated point sources every source shows the local PSF
    directly. The sources are detected (local maxima above ``threshold``
    noise standard deviations), and the model ``y = sum_j a_j h_{p_j}``, with
    ``h_p = sum_k gamma_k f_k(p) e_k(. - p)`` the PSF of ``H[gamma]`` at
    ``p``, is fitted by alternating non-negative least squares on the
    amplitudes ``a`` and least squares on ``gamma``
    (:func:`deepblur.solvers.point_sources.fit_point_sources`). Residual
    maxima become new sources, ``max_new`` at a time, for ``n_rounds - 1``
    more rounds. Nothing is learnt from images: :meth:`fit` only takes the
    starting ``gamma`` (the mean of the training ``gamma``, e.g. of the
    cone's samples).

    This is PSF calibration from bead images made space-varying; for images
    that are not point sources use
    :class:`~deepblur.ResNetBlurRegressor` or
    :class:`~deepblur.SpectralBlurRegressor`.

    Parameters
    ----------
    basis : ProductConvolutionBasis, default=None
        Fitted basis with ``boundary="zero"`` (required in ``fit``). One
        set since ``fit`` with another image shape or K needs a new ``fit``.
    threshold : float, default=10.0
        Detection threshold in noise standard deviations (of the filtered
        image when ``smoothing > 0``). With ``noise_std=None``, a quantised
        image's threshold is never under ``threshold`` times its rounding's
        level (see ``noise_std``).
    noise_std : float, default=None
        Noise standard deviation of the images; ``None`` estimates it per
        image (:func:`deepblur.solvers.tv.estimate_noise_level`, which
        overestimates it on sharp sources: a conservative threshold), and
        takes at least the level of the rounding, ``q / sqrt(12)``, for an
        image whose values lie on a grid of step ``q`` (0.29 grey level for
        8-bit counts; continuous images with noise keep the estimate). The estimate
        reads 0 for such an image whose noise is under one level on a
        background on a level (nine tenths of its Haar coefficients are 0),
        and every maximum of the rounding's staircase on the sources' flanks
        was detected: 43 sources fitted for 14, direction of ``gamma`` off
        by 57 % for 32.5 % with the floor, on an 8-bit image made with the
        shipped point-source model.
    smoothing : float, default=0.0
        Gaussian filter (pixels) before the detection: 1-2 for very noisy
        images (SNR near 0 dB), where single pixels are not reliable maxima.
    min_distance : int, default=2
        Half-width of the local-maximum window.
    image_mean : float, default=0.5
        Mean of the clean image (the simulator's convention): fixes the scale
        of ``gamma``.
    max_iter : int, default=100
        Alternating iterations per round.
    tol : float, default=1e-6
        Relative change of ``gamma`` that ends a round.
    n_rounds : int, default=10
        Detection rounds (1: no completion from the residual).
    max_new : int or None, default=2
        Sources added per round from the residual, largest first (``None``:
        all; see :func:`~deepblur.solvers.point_sources.fit_point_sources`).
    background : bool, default=True
        Fit a constant offset of each image (a camera's dark level, a uniform
        haze) beside the sources; False takes the field to be dark (zero).
    subpixel : bool, default=True
        Fit each source's position to a fraction of a pixel (real beads and
        molecules lie between pixels); False: sources on pixels, 7-20 times
        faster (``benchmarks/README.md``).
    gamma_init : array-like of shape (K,), default=None
        Starting ``gamma``; ``None`` takes the mean of ``y`` in :meth:`fit`.
    n_jobs : int, default=None
        Images fitted in parallel (joblib).
    verbose : int, default=0
        1: a progress bar over the images of :meth:`predict`.

    Attributes
    ----------
    gamma_init_ : ndarray of shape (K,)
        The starting ``gamma``.
    image_shape_ : tuple of int
    n_features_in_ : int
        ``H * W``.

    See Also
    --------
    deepblur.solvers.point_sources.fit_point_sources : the solver, one image.

    Notes
    -----
    The basis must use the zero boundary: the sources lie on a dark field
    and the PSFs of sources near the border are cut by it. Sources between
    pixels are modelled by moving the kernels (cubic splines, ``subpixel``);
    the maps are read at the source's pixel. A constant offset is fitted
    (``background``); a background that varies across the field is not:
    subtract it first. Images with no source above the threshold raise a
    ``ValueError`` naming the image. The scale of ``gamma`` comes from the
    clean image's mean (``image_mean``), sources included wherever they
    are: an operator whose PSF vanishes somewhere (maps that reach 0 at the
    border) hides the sources there, and ``gamma``'s scale is then not
    determined by the image. Likewise the mean is that of the sources
    found: the light of sources under the threshold is not counted (with
    ``background``, the fitted offset takes it), and ``gamma``'s gain comes
    out low by the share of the light they carry, its direction nearly
    unchanged (an 8-bit image of simulated sources with noise under one
    grey level, whose noise estimate then left out its flat background and
    read 0.56 grey level for the 0.29 of the rounding: 10 of its 14 sources
    found, 79 % of the light, gain 0.78, direction off by 4.7 %). Lower
    ``threshold``, or give ``noise_std``, where dim sources matter (the
    estimate now keeps such a background: 0.25 grey level on such images of
    14 sources blurred by the shipped model, all of which were found;
    ``benchmarks/README.md``).

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur import ConeSampler, ProductConvolutionBasis
    >>> from deepblur.datasets import blur_images, make_point_sources
    >>> x = np.arange(-3, 4)
    >>> k = [np.exp(-(x[:, None] ** 2 + x[None] ** 2) / (2 * s ** 2)) for s in (1, 2)]
    >>> basis = ProductConvolutionBasis.from_components(
    ...     np.stack([g / g.sum() for g in k]),
    ...     np.stack([np.linspace(1, 0.25, 32)[None].repeat(32, 0),
    ...               np.linspace(0.25, 1, 32)[None].repeat(32, 0)]))
    >>> gamma = ConeSampler(random_state=0).fit(np.eye(2)).sample(4)
    >>> u = make_point_sources(4, (32, 32), density=0.01, random_state=0)
    >>> X = blur_images(u, gamma, basis, noise_std=1e-3, random_state=0)
    >>> est = PointSourceBlurEstimator(basis).fit(X, gamma)
    >>> bool(est.score(X, gamma) > -0.01)       # under 1 % operator error
    True
    """

    _basis_role = "its kernels and maps make the PSFs that are fitted"

    _parameter_constraints: dict = {
        "basis": [None, HasMethods(["fit", "transform"])],
        "threshold": [Interval(Real, 0, None, closed="neither")],
        "noise_std": [None, Interval(Real, 0, None, closed="neither")],
        "smoothing": [Interval(Real, 0, None, closed="left")],
        "min_distance": [Interval(Integral, 1, None, closed="left")],
        "image_mean": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_rounds": [Interval(Integral, 1, None, closed="left")],
        "max_new": [None, Interval(Integral, 1, None, closed="left")],
        "background": ["boolean"],
        "subpixel": ["boolean"],
        "gamma_init": [None, "array-like"],
        "n_jobs": [None, Integral],
        "verbose": ["verbose"],
    }

    def __init__(self, basis=None, *, threshold=10.0, noise_std=None, smoothing=0.0,
                 min_distance=2, image_mean=0.5, max_iter=100, tol=1e-6,
                 n_rounds=10, max_new=2, background=True, subpixel=True,
                 gamma_init=None, n_jobs=None, verbose=0):
        self.basis = basis
        self.threshold = threshold
        self.noise_std = noise_std
        self.smoothing = smoothing
        self.min_distance = min_distance
        self.image_mean = image_mean
        self.max_iter = max_iter
        self.tol = tol
        self.n_rounds = n_rounds
        self.max_new = max_new
        self.background = background
        self.subpixel = subpixel
        self.gamma_init = gamma_init
        self.n_jobs = n_jobs
        self.verbose = verbose

    def _fitted_K(self):
        return int(len(self.gamma_init_))

    def _fitted_basis(self):
        super()._fitted_basis()
        if getattr(self.basis, "boundary", "zero") != "zero":
            raise ValueError(
                "PointSourceBlurEstimator models point sources on a dark field "
                "and needs a basis with boundary='zero'; got "
                f"boundary={self.basis.boundary!r}."
            )
        return self.basis

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Take the starting ``gamma``: ``gamma_init``, or the mean of ``y``.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W), default=None
            Images (only their shape is checked; nothing is learnt from them).
        y : array-like of shape (n, K), default=None
            Coefficients whose mean is the starting point (e.g. samples of the
            cone); required when ``gamma_init`` is ``None``.

        Returns
        -------
        self : PointSourceBlurEstimator
        """
        basis = self._fitted_basis()
        image_shape = tuple(int(s) for s in basis.image_shape_)
        K = int(np.asarray(basis.gram_).shape[0])
        if X is not None:
            n = _check_images(X, image_shape).shape[0]
            if y is not None and len(y) != n:
                raise ValueError(
                    f"X and y must have as many samples; got {n} images and "
                    f"{len(y)} rows of y."
                )
        if self.gamma_init is not None:
            init = np.asarray(self.gamma_init, dtype=np.float64)
            if init.shape != (K,):
                raise ValueError(
                    f"gamma_init must have shape (K,) = ({K},), one coefficient "
                    f"per kernel of the basis; got shape {init.shape}.")
            init = check_gamma_targets(init[None], K, "gamma_init")[0]
        elif y is not None:
            init = check_gamma_targets(y, K).mean(axis=0)
        else:
            raise ValueError(
                "fit needs a starting gamma: pass y (e.g. samples of the cone) "
                "or set gamma_init."
            )
        _check_start(init, np.asarray(basis.kernels_, dtype=np.float64),
                     np.asarray(basis.maps_, dtype=np.float64),
                     "gamma_init" if self.gamma_init is not None else
                     "the mean of y (the starting gamma)")
        self.gamma_init_ = init
        self.image_shape_ = image_shape
        self.n_features_in_ = int(np.prod(image_shape))
        return self

    def _fits(self, X):
        check_is_fitted(self)
        # parameters set after fit (set_params skips fit's validation):
        # background='no' was fitted as True, a negative threshold detected
        # every maximum of the noise, n_rounds=2.7 ran 2 rounds
        self._validate_params()
        basis = self._predicting_basis()
        t = _check_images(X, self.image_shape_)[:, 0].to(torch.float64)
        if self.noise_std is None:
            sigma = _floored_noise_level(t, _half_dtype(X))
        else:
            sigma = np.full(len(t), float(self.noise_std))
        threshold = float(self.threshold) * sigma * _filter_norm(float(self.smoothing))
        images = t.numpy()
        kernels = np.asarray(basis.kernels_, dtype=np.float64)
        maps = np.asarray(basis.maps_, dtype=np.float64)

        params = dict(
            min_distance=int(self.min_distance), smoothing=float(self.smoothing),
            image_mean=float(self.image_mean), max_iter=int(self.max_iter),
            tol=float(self.tol), n_rounds=int(self.n_rounds),
            max_new=None if self.max_new is None else int(self.max_new),
            background=bool(self.background), subpixel=bool(self.subpixel))
        indices = range(len(images))
        if self.verbose:
            from tqdm.auto import tqdm

            indices = tqdm(indices, unit="image", desc="PointSourceBlurEstimator")
        # each task gets its own image (a closure over all of them was
        # pickled whole for every task: quadratic in the number of images)
        fits = Parallel(n_jobs=self.n_jobs)(
            delayed(_fit_one)(i, images[i], kernels, maps, self.gamma_init_,
                              threshold[i], params) for i in indices)
        _warn_poor_fits(fits, images, sigma)
        return fits

    def _raise_without_sources(self, fits, estimates=None):
        """One NoPointSourceError for the images whose fit found no source."""
        failed = [i for i, f in enumerate(fits) if isinstance(f, NoPointSourceError)]
        if not failed:
            return
        others = (f" (and {len(failed) - 1} more of the {len(fits)} images: "
                  f"{failed[1:6]}{' ...' if len(failed) > 6 else ''})"
                  if len(failed) > 1 else "")
        raise NoPointSourceError(f"image {failed[0]}: {fits[failed[0]]}{others}",
                                 images=failed, estimates=estimates)

    def predict(self, X):
        """Estimated ``gamma`` of each image.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)

        Returns
        -------
        ndarray of shape (n, K), float32

        Raises
        ------
        NoPointSourceError
            When some images hold no source above the threshold; the others
            are fitted all the same and their estimates are the error's
            ``estimates`` (NaN in the rows of its ``images``).
        """
        fits = self._fits(X)
        K = len(self.gamma_init_)
        gamma = np.stack([np.full(K, np.nan) if isinstance(f, Exception)
                          else f.gamma for f in fits]).astype(np.float32)
        self._raise_without_sources(fits, gamma)
        return gamma

    def predict_sources(self, X):
        """The whole fit of each image: ``gamma``, source positions and
        amplitudes, iterations and residual.

        Returns
        -------
        list of :class:`~deepblur.solvers.point_sources.PointSourceFit`

        Raises
        ------
        NoPointSourceError
            When some images hold no source above the threshold.
        """
        fits = self._fits(X)
        self._raise_without_sources(fits)
        return fits

    def __sklearn_tags__(self):
        # nothing learnt: fit takes no targets
        return image_to_gamma_tags(super().__sklearn_tags__(),
                                   target_required=False)
