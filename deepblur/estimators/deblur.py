"""Non-blind and blind deblurring with a product-convolution operator.

:class:`TVDeblurrer` is a scikit-learn transformer over
:func:`deepblur.solvers.tv.deblur`: it turns blurry images into deblurred ones
by solving ``min_u R(u) + lam/2 ||H[gamma] u - y||^2`` per image, with
``H[gamma]`` from a fitted :class:`~deepblur.estimators.basis.ProductConvolutionBasis`
and ``gamma`` either given (non-blind) or predicted by a fitted blur estimator
(blind).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch.exceptions import NotInitializedError

from deepblur._validation import (
    as_tensor,
    check_basis_geometry,
    check_finite,
    check_images,
    check_ndim,
    check_not_empty,
    check_sample_weight,
    resolve_device,
    to_like,
    user_stacklevel,
    weighted_mean,
)
from deepblur.estimators._gamma import FrozenComponentsMixin
from deepblur.metrics import clean_ranges, psnr
from deepblur.solvers.tv import (
    REGULARIZATIONS,
    _half_dtype,
    deblur,
    default_lam,
    warn_if_counts,
)

__all__ = ["TVDeblurrer"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# what describes the last transform call (reset by fit and by every call)
_LAST_TRANSFORM = ("n_iter_", "objective_history_", "converged_", "lam_")


_GRID_HINT = (
    " (A grid over this parameter gets clones of its values, and a clone is "
    "unfitted: wrap each fitted value in sklearn.frozen.FrozenEstimator.)")


def _is_prefitted(obj):
    """Whether ``obj`` is a component to share as is rather than to clone.

    Fitted scikit-learn estimators (``check_is_fitted`` passes, which includes
    :class:`sklearn.frozen.FrozenEstimator`) and plain objects that are not
    estimators at all (anything with the needed methods but no ``fit``).
    """
    if obj is None:
        return False
    try:
        check_is_fitted(obj)
    except NotFittedError:
        return False
    except (TypeError, AttributeError):
        # no ``fit`` (not an estimator, nothing to refit), or a ``fit`` but
        # none of scikit-learn's machinery to tell: used as it is
        return True
    return True


def _device_available(dev):
    """Whether ``dev`` (a fitted deblurrer's device) exists here."""
    try:
        resolve_device(dev)
    except ValueError:
        return False
    return True


#: Largest factor ``target_mean / mean`` that float32 images can take
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class TVDeblurrer(FrozenComponentsMixin, TransformerMixin, BaseEstimator):
    """Deblur images by total-variation or ``l1`` regularised least squares.

    For each image ``y`` of ``X``, solve

    ``min_u R(u) + lam/2 ||H[gamma] u - y||^2`` (over ``u >= 0`` if
    ``positive``)

    with ``H[gamma] = sum_k gamma_k e_k * (f_k . u)`` the product-convolution
    operator of ``basis`` and ``R`` the isotropic total variation (forward
    differences, Neumann boundary, ``TV(u) = sum_ij sqrt(dx^2 + dy^2)``) or the
    ``l1`` norm. The solver is :func:`deepblur.solvers.tv.deblur` (monotone
    FISTA, batched over images, on CUDA when available).

    Parameters
    ----------
    basis : ProductConvolutionBasis
        A *fitted* basis (for instance from ``ProductConvolutionBasis.fit`` or
        ``ProductConvolutionBasis.from_components``); it defines ``H[gamma]``
        and the image shape. It is never refitted. Another basis set after
        ``fit`` (``set_params``) with another image shape or K needs a new
        ``fit``.
    lam : float or "auto", default="auto"
        Weight of the data term, > 0. ``"auto"`` picks one per image from an
        estimate of its noise level (:func:`deepblur.solvers.tv.default_lam`),
        at least the rounding's for quantised images (``1 / 255 / sqrt(12)``
        for 8-bit counts / 255, where the estimate can read 0 on a flat
        background); see ``benchmarks/README.md`` for how it compares with a
        grid search.
        It is calibrated for images scaled to [0, 1]: images in counts (8- or
        16-bit integers, or whole-numbered floats above 100) get a
        ``UserWarning``, as they would be over-smoothed.
    regularization : {"tv", "l1"}, default="tv"
        Total variation (natural and cell images) or ``l1`` (sparse images:
        fluorescent point sources).
    positive : bool, default=False
        Constrain the result to be non-negative (intensities).
    boundary : {"model", "unknown"}, default="model"
        ``"model"``: the border is fitted with the basis's boundary model
        (zero: a dark surrounding, as in simulated data). ``"unknown"``: the
        images are windows on larger scenes (real images): ``u`` is the image
        extended by half a kernel on each side, the unknown scene there is
        estimated with it and dropped, and every pixel is fitted
        (:func:`deepblur.tiling.extended_problem`); with the zero model the
        border of a cropped scene rings.
    max_iter : int, default=500
        Cap on solver iterations; a ``ConvergenceWarning`` says when it is hit.
    tol : float, default=1e-5
        Relative objective decrease over 5 iterations at which the solver
        stops (measured against cvxpy at the default, 144 solves of 12x12
        images: an objective 1e-6 to 4e-4 above the minimum, relative, and
        an image up to 1 % (TV) or 3.3 % (l1) from the minimiser, relative;
        see :func:`deepblur.solvers.tv.deblur`).
    inner_iter : int, default=10
        Warm-started dual iterations per TV proximal step.
    device : str, torch.device or None, default="auto"
        ``"auto"``/``None``: CUDA when available, else CPU. Asking for CUDA
        where there is none is an error.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the computation and of the returned images.
    blur_estimator : object with ``predict(X) -> gamma``, default=None
        Used when ``transform`` is called without ``gamma`` (blind
        deblurring), typically a fitted ``ResNetBlurRegressor``. It is never
        fitted by this estimator. A fitted estimator (or a
        :class:`sklearn.frozen.FrozenEstimator`, or any non-estimator object
        with ``predict``) is shared, not cloned, by :func:`sklearn.base.clone`
        and hence by ``GridSearchCV``: a fresh unfitted copy could not predict.
        The same holds for ``basis``. A grid *over* either parameter is
        another matter: ``GridSearchCV`` clones the grid's values, so give
        them as ``FrozenEstimator(fitted)``.
    tile_stride : int, default=None
        Images larger than the basis's ``image_shape`` are cut into
        overlapping tiles of that shape, this many pixels apart (default half
        a tile); see :meth:`transform`.
    max_pixels : int, default=None
        Largest number of pixels of one solve for large images (memory bound);
        default :data:`deepblur.tiling.DEFAULT_MAX_PIXELS`.
    target_mean : float, default=None
        Blind mode: each image (each tile of a large one) is multiplied by
        ``target_mean / mean(image)`` before ``blur_estimator.predict``:
        the mean of the blurry images the estimator was trained on (their
        clean images' mean times the mean gain of the training operators),
        its intensity convention; the solve still runs on the image as
        given. For a pretrained model it is
        ``model_image_mean(model) * training_gain(model)``
        (:mod:`deepblur.pretrained`, what :func:`~deepblur.pretrained.deblur_image`
        and :func:`~deepblur.tiling.deblur_large` use). ``None``: the images
        are predicted as they are, which suits simulated images made in the
        estimator's own convention. Real images need it: a network reads the
        blur's gain from the image's brightness, so images in other units
        (``[0, 1]``, counts) get operators of a wrong gain, and the restored
        image a wrong brightness.
    unit_gain : bool, default=False
        Divide the coefficients (estimated or given) by the gain of their
        operator (:func:`deepblur.tiling.tile_gains` with ``interior=True``:
        the mean of ``H[gamma]`` on a flat image half a kernel and more from
        its border, the mass of the PSFs), with either ``boundary``, on
        images of the basis's shape and on larger ones, so that the restored
        image keeps the input's brightness (a flat scene's, away from the
        border; with ``boundary="model"`` the light that the zero boundary
        loses at the image's border is restored, not taken for a darker
        scene). The gain of a real image's blur is not
        identifiable: use it (with ``target_mean``) on real images; leave it
        off on simulated ones, whose operators' gain is part of the truth.

    Attributes
    ----------
    image_shape_ : tuple of int
        ``(H, W)`` of the images, from ``basis``.
    n_components_ : int
        Number ``K`` of coefficients per operator.
    n_features_in_ : int
        ``H * W``.
    n_iter_ : int
        Solver iterations of the last ``transform`` call.
    objective_history_ : numpy.ndarray of shape (`n_iter_` + 1, n)
        Objective per image along the iterations of the last ``transform``;
        not set after a ``transform`` of images larger than the basis, whose
        blocks are solved separately, each with its own objective.
    converged_ : numpy.ndarray of shape (n,) of bool
        Whether each image of the last ``transform`` met ``tol`` (every
        block of it, for images larger than the basis).
    lam_ : numpy.ndarray of shape (n,)
        The ``lam`` used for each image of the last ``transform``.

    See Also
    --------
    deepblur.solvers.tv.deblur : The function this estimator calls.
    deepblur.metrics.psnr : The score.

    Notes
    -----
    ``fit`` learns nothing from the images: it validates the parameters and
    records the geometry, so that the estimator can sit in a ``Pipeline`` and
    be tuned by ``GridSearchCV`` on (blurry, clean) pairs with :meth:`score`.
    In non-blind mode, pass ``gamma`` through ``transform``/``score``; inside
    ``GridSearchCV`` this uses scikit-learn's metadata routing
    (``set_score_request(gamma=True)``).

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur.estimators.basis import ProductConvolutionBasis
    >>> kernels = np.full((1, 3, 3), 1 / 9)
    >>> basis = ProductConvolutionBasis.from_components(kernels, np.ones((1, 32, 32)))
    >>> clean = np.zeros((2, 32, 32)); clean[:, 8:24, 8:24] = 1.0
    >>> rng = np.random.default_rng(0)
    >>> X = basis.apply(clean, np.ones(1)) + 0.02 * rng.standard_normal(clean.shape)
    >>> deblurrer = TVDeblurrer(basis, lam=200.0, device="cpu").fit(X)
    >>> U = deblurrer.transform(X, gamma=np.ones(1))
    >>> U.shape
    (2, 32, 32)
    >>> bool(deblurrer.score(X, clean, gamma=np.ones(1)) > 25)
    True
    """

    # fitted inputs that clone shares: their own parameters cannot be set
    _frozen_components = ("basis", "blur_estimator")

    _parameter_constraints: dict = {
        "basis": [HasMethods(["apply", "adjoint"])],
        "lam": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "regularization": [StrOptions(set(REGULARIZATIONS))],
        "positive": ["boolean"],
        "boundary": [StrOptions({"model", "unknown"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "inner_iter": [Interval(Integral, 1, None, closed="left")],
        "device": [None, str, torch.device],
        "dtype": [StrOptions(set(_DTYPES))],
        "blur_estimator": [None, HasMethods(["predict"])],
        "tile_stride": [None, Interval(Integral, 1, None, closed="left")],
        "max_pixels": [None, Interval(Integral, 1, None, closed="left")],
        "target_mean": [None, Interval(Real, 0, None, closed="neither")],
        "unit_gain": ["boolean"],
    }

    def __init__(
        self,
        basis=None,
        *,
        lam="auto",
        regularization="tv",
        positive=False,
        boundary="model",
        max_iter=500,
        tol=1e-5,
        inner_iter=10,
        device="auto",
        dtype="float32",
        blur_estimator=None,
        tile_stride=None,
        max_pixels=None,
        target_mean=None,
        unit_gain=False,
    ):
        self.basis = basis
        self.lam = lam
        self.regularization = regularization
        self.positive = positive
        self.boundary = boundary
        self.max_iter = max_iter
        self.tol = tol
        self.inner_iter = inner_iter
        self.device = device
        self.dtype = dtype
        self.blur_estimator = blur_estimator
        self.tile_stride = tile_stride
        self.max_pixels = max_pixels
        self.target_mean = target_mean
        self.unit_gain = unit_gain

    # ------------------------------------------------------------------ clone
    def __sklearn_clone__(self):
        """Clone the parameters but share fitted ``basis`` / ``blur_estimator``.

        ``clone`` normally returns unfitted copies of estimator parameters;
        these two components are inputs that this estimator never fits, so a
        fitted one is passed by reference (as ``FrozenEstimator`` does).
        """
        new = super().__sklearn_clone__()
        keep = {
            name: getattr(self, name)
            for name in ("basis", "blur_estimator")
            if _is_prefitted(getattr(self, name))
        }
        if keep:
            new.set_params(**keep)
        return new

    def __setstate__(self, state):
        """Load a deblurrer fitted on CUDA on a machine without it (on CPU).

        ``device="auto"`` resolves to the CPU silently (it means "CUDA when
        present"); an explicit CUDA device falls back to the CPU with a
        warning, as skorch does for its networks.
        """
        super().__setstate__(state)
        # pickled before the parameter existed: the basis's boundary model
        self.__dict__.setdefault("boundary", "model")
        self.__dict__.setdefault("target_mean", None)
        self.__dict__.setdefault("unit_gain", False)
        dev = self.__dict__.get("_device")
        if dev is not None and dev.type != "cpu" and not _device_available(dev):
            if self.device not in (None, "auto"):
                name = "CUDA" if dev.type == "cuda" else repr(dev.type)
                warnings.warn(
                    f"this TVDeblurrer was fitted with device={self.device!r} but "
                    f"{name} is not available here; it runs on the CPU.",
                    UserWarning, stacklevel=user_stacklevel())
            self._device = torch.device("cpu")

    # -------------------------------------------------------------- helpers
    def _validate_images(self, X, name="X"):
        """Tensor (n, H, W) on the solver's device/dtype, plus numpy flag."""
        t, is_numpy = as_tensor(X, name=name)
        check_images(t, name, self.image_shape_, " (the basis' image shape)")
        check_not_empty(t, name)
        single = t.ndim == 2
        if single:
            t = t[None]
        t = t.to(device=self._device, dtype=_DTYPES[self.dtype])
        return t, is_numpy, single

    def _predictor(self):
        """The blur estimator of blind mode (an error when there is none)."""
        if self.blur_estimator is None:
            raise ValueError(
                "gamma was not given and blur_estimator is None: pass gamma "
                "(non-blind deblurring) or set blur_estimator to a fitted "
                "estimator with predict(X) -> gamma (blind deblurring)."
            )
        return self.blur_estimator

    @contextmanager
    def _fitted_blur_estimator(self):
        """Say what to do when the blur estimator's ``predict`` finds it
        unfitted (what a grid over ``blur_estimator`` gives it); anything
        with a working ``predict`` is used as it is."""
        try:
            yield
        except (NotFittedError, NotInitializedError) as exc:
            raise NotFittedError(
                "blur_estimator must be fitted: this TVDeblurrer never fits it; "
                f"its {type(self.blur_estimator).__name__}.predict says: {exc}"
                + _GRID_HINT) from exc

    def _check_gamma(self, gamma, name, n):
        """``gamma`` of shape (K,) or (1 or n, K), finite -> tensor (n, K)."""
        K = self.n_components_
        g, _ = as_tensor(gamma, name=name)
        check_ndim(g, name, (1, 2), "(K,) or (n, K)")
        if g.shape[-1] != K:
            raise ValueError(
                f"{name} must have K={K} coefficients per image (the basis' "
                f"n_components); got shape {tuple(g.shape)}."
            )
        if g.ndim == 2 and g.shape[0] not in (1, n):
            raise ValueError(
                f"{name} must have one row per image (n={n}) or a single row; "
                f"got shape {tuple(g.shape)}."
            )
        check_finite(g, name)
        if g.ndim == 1:
            g = g[None]
        return g.expand(n, K)

    def _gamma(self, X_t, X, gamma, single):
        if gamma is None:
            estimator = self._predictor()
            if self.target_mean is not None:
                X = self._scaled_to_target(X_t)
            elif single:
                # one image: a batch of one (lists as arrays: X[None] of a
                # list is an index error)
                X = (X[None] if isinstance(X, (np.ndarray, torch.Tensor))
                     else np.asarray(X)[None])
            with self._fitted_blur_estimator():
                gamma = estimator.predict(X)
            name = "blur_estimator.predict(X)"
        else:
            name = "gamma"
        g = self._check_gamma(gamma, name, X_t.shape[0])
        if self.unit_gain:
            g = torch.as_tensor(self._unit_gain(g.detach().cpu().numpy()))
        return g.to(device=X_t.device, dtype=X_t.dtype)

    def _checked_target_mean(self):
        """``target_mean`` as a float (None stays None), checked positive and
        finite also after a ``set_params`` that skipped :meth:`fit`."""
        from deepblur.tiling import _check_target_mean

        return _check_target_mean(self.target_mean)

    def _target_factors(self, images):
        """The factors ``target_mean / mean`` that bring each image (a
        sequence of (H, W)) to ``target_mean`` (None without one), refusing,
        before any estimate, images that it cannot scale (a non-positive
        mean, or one so small that the factor overflows float32)."""
        target = self._checked_target_mean()
        if target is None:
            return None
        factors = []
        for i, img in enumerate(images):
            mean = float(np.mean(img, dtype=np.float64))
            if not (mean > 0 and target / mean < _FLOAT32_MAX):
                raise ValueError(
                    f"image {i} has a mean intensity {mean:.4g}"
                    + (" <= 0" if not mean > 0 else ", too close to 0")
                    + f": it cannot be scaled to target_mean={target:.4g} "
                    "before the blur estimate (the estimator reads "
                    "intensities, not a signed or background-subtracted "
                    "image); pass target_mean=None to predict on the images "
                    "as they are."
                )
            factors.append(target / mean)
        return np.asarray(factors, dtype=np.float32)

    def _scaled_to_target(self, X_t):
        """The images (n, H, W) as float32 numpy, each at ``target_mean``."""
        images = X_t.detach().cpu().numpy().astype(np.float32)
        return images * self._target_factors(images)[:, None, None]

    def _unit_gain(self, gamma, grid=None):
        """``gamma`` (n, K) divided row-wise by its operator's gain, the mass
        of its PSFs (:func:`deepblur.tiling._unit_gain_tiles`)."""
        from deepblur.tiling import _unit_gain_tiles

        return _unit_gain_tiles(self.basis, gamma, grid,
                                hint="pass unit_gain=False")

    # ------------------------------------------------------------------ API
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Validate the parameters and record the geometry of ``basis``.

        Parameters
        ----------
        X : array-like of shape (n, H, W), optional
            Blurry images; only their shape is checked.
        y : ignored
            Clean images are not needed to fit (they are used by ``score``).

        Returns
        -------
        self : TVDeblurrer
        """
        try:
            check_is_fitted(self.basis)
        except NotFittedError:
            raise ValueError(
                "basis must be a fitted ProductConvolutionBasis (fit it, or build "
                "it with ProductConvolutionBasis.from_components); got an unfitted "
                f"{type(self.basis).__name__}." + _GRID_HINT
            ) from None
        except TypeError:
            pass
        self._device = resolve_device(self.device)
        self._checked_target_mean()
        operator = self.basis.operator_
        self.image_shape_ = tuple(int(s) for s in operator.image_shape)
        self.n_components_ = int(operator.n_components)
        self.n_features_in_ = int(np.prod(self.image_shape_))
        self._forget_last_transform()
        if X is not None:
            if self._is_large(X):
                self._large_images(X)
            else:
                self._validate_images(X)
        return self

    def _check_basis_unchanged(self):
        """Refuse a ``basis`` set (``set_params``) since ``fit`` with another
        image shape or K: ``transform`` used its operator with the fitted
        geometry, and refused gamma of either K ('gamma must have K=3
        coefficients', then 'gamma must have 4 coefficients')."""
        operator = getattr(self.basis, "operator_", None)
        if operator is None:
            raise NotFittedError(
                "basis must be a fitted ProductConvolutionBasis; the one set "
                "since fit is not (fit it, and call fit on this TVDeblurrer "
                "again).")
        check_basis_geometry(tuple(int(v) for v in operator.image_shape),
                             int(operator.n_components), self.image_shape_,
                             self.n_components_, "TVDeblurrer")

    def _forget_last_transform(self):
        """Drop what describes the last ``transform``: a refit, or a call on
        large images (which sets no ``objective_history_``), leaves nothing
        of an earlier call behind."""
        for name in _LAST_TRANSFORM:
            if hasattr(self, name):
                delattr(self, name)

    # ---------------------------------------------------------- large images
    def _is_large(self, X):
        shape = tuple(np.shape(X))[-2:]
        H, W = self.image_shape_
        return (len(shape) == 2 and shape != (H, W) and shape[0] >= H
                and shape[1] >= W)

    def _large_images(self, X):
        """(n, H', W') float64 numpy of images larger than the basis."""
        t, is_numpy = as_tensor(X, name="X")
        check_ndim(t, "X", (2, 3), "(H, W) or (n, H, W)")
        check_not_empty(t, "X")
        check_finite(t, "X")
        arr = t.detach().cpu().numpy().astype(np.float64)
        return (arr[None] if arr.ndim == 2 else arr), is_numpy, t.ndim == 2

    def _transform_large(self, X, gamma):
        """Tiled deblurring of images larger than the basis (issue 7).

        Blind: one ``gamma`` per tile of the basis's shape from
        ``blur_estimator`` (:func:`deepblur.tiling.estimate_tiles`); given
        ``gamma`` (one per image or one for all): the same on every tile. The
        tiles' operators are blended into one product-convolution operator of
        the whole image (:func:`deepblur.tiling.stitched_maps`) and the image is
        deblurred with it, in blocks of at most ``max_pixels``
        (:func:`deepblur.tiling.deblur_stitched`).
        """
        from deepblur.tiling import (
            DEFAULT_MAX_PIXELS,
            _basis_parts,
            _check_solve,
            _deblur_stitched,
            _warn_if_windows,
            estimate_tiles,
            tile_grid,
        )

        images, is_numpy, single = self._large_images(X)
        max_pixels = (DEFAULT_MAX_PIXELS if self.max_pixels is None
                      else int(self.max_pixels))
        kernels, _, model_boundary = _basis_parts(self.basis)
        for img in images:      # the solves' blocks, before the estimates
            _check_solve(img.shape, kernels.shape[1:], self.image_shape_,
                         lam=self.lam, boundary=self.boundary,
                         regularization=self.regularization, dtype=self.dtype,
                         max_pixels=max_pixels, margin=None,
                         model_boundary=model_boundary, max_iter=self.max_iter,
                         tol=self.tol, inner_iter=self.inner_iter)
        if gamma is None:
            estimator = self._predictor()
            self._target_factors(images)        # refused before any estimate
            # once for the call, not once per image
            _warn_if_windows(estimator, max(
                tile_grid(img.shape, self.image_shape_, self.tile_stride).n_tiles
                for img in images))
        else:
            g = self._check_gamma(gamma, "gamma", len(images))
            g = g.detach().cpu().numpy().astype(np.float64)
        half = _half_dtype(X) if isinstance(self.lam, str) else None
        out, lams, n_iter, converged = [], [], [], []
        for i, img in enumerate(images):
            lam = self.lam
            if half is not None:
                # lam="auto" of a half-precision image in its own dtype (img
                # holds its values exactly), as the images of the basis's shape
                lam = float(default_lam(torch.from_numpy(img).to(half),
                                        self.regularization))
            if gamma is None:
                with self._fitted_blur_estimator():
                    tiles, grid = estimate_tiles(img, estimator, self.image_shape_,
                                                 stride=self.tile_stride,
                                                 target_mean=self.target_mean,
                                                 check_boundary=False)
            else:
                grid = tile_grid(img.shape, self.image_shape_, self.tile_stride)
                tiles = np.tile(g[i], (grid.n_tiles, 1))
            if self.unit_gain:
                tiles = self._unit_gain(tiles, grid)
            # (transform warned about counts once for the call)
            restored, info = _deblur_stitched(
                img, self.basis, tiles, grid, lam=lam,
                boundary=self.boundary,
                regularization=self.regularization, positive=self.positive,
                max_iter=self.max_iter, tol=self.tol, inner_iter=self.inner_iter,
                max_pixels=max_pixels, device=self._device, dtype=self.dtype)
            out.append(restored)
            lams.append(info["lam"])
            n_iter.append(int(np.max(info["n_iter"])))
            converged.append(bool(np.all(info["converged"])))
        self._forget_last_transform()
        self.lam_ = np.asarray(lams, dtype=np.float64)
        self.n_iter_ = int(max(n_iter))
        self.converged_ = np.asarray(converged)
        U = np.stack(out).astype(np.float32 if self.dtype == "float32"
                                 else np.float64)
        U = U[0] if single else U
        return U if is_numpy else torch.as_tensor(U, device=self._device)

    def fit_transform(self, X, y=None, gamma=None):
        """Fit on ``X`` and deblur it (``fit(X).transform(X, gamma=gamma)``).

        scikit-learn's default would pass ``gamma`` to :meth:`fit`, which
        takes none: non-blind deblurring in one call, and in a ``Pipeline``
        that routes ``gamma`` to this step's ``transform``
        (``set_transform_request(gamma=True)``), goes through here.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n, H, W) or (H, W)
        y : ignored
        gamma : array-like of shape (n, K) or (K,), optional
            As in :meth:`transform`.

        Returns
        -------
        U : numpy.ndarray or torch.Tensor of shape like ``X``
        """
        return self.fit(X, y).transform(X, gamma=gamma)

    def transform(self, X, gamma=None):
        """Deblur images.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n, H, W) or (H, W)
            Blurry images. Not modified. numpy in, numpy out; a tensor comes
            back as a tensor on the solver's device.
        gamma : array-like of shape (n, K) or (K,), optional
            Operator coefficients (one row per image, or one for all). When
            omitted, ``blur_estimator.predict(X)`` supplies them (blind mode;
            on ``X`` scaled to ``target_mean`` when it is given), and
            ``unit_gain`` rescales either.

        Returns
        -------
        U : numpy.ndarray or torch.Tensor of shape like ``X``
            Deblurred images, in ``dtype``.

        Warns
        -----
        BoundaryWarning
            Once per call, in blind mode on images larger than the basis,
            when ``blur_estimator`` was trained on zero-boundary images
            (its ``training_boundary_``): its estimates on the tiles,
            windows of a larger scene, are unreliable
            (:func:`deepblur.tiling.estimate_tiles`).

        Notes
        -----
        Images larger than the basis's ``image_shape`` (along both axes) are
        deblurred by tiles: ``gamma`` per tile of ``image_shape`` (from
        ``blur_estimator``, or the given ``gamma`` on every tile), blended by a
        smooth partition of unity into one operator of the whole image,
        solved in blocks of at most ``max_pixels`` pixels (see
        :mod:`deepblur.tiling`).
        """
        check_is_fitted(self, "image_shape_")
        # parameters set after fit (set_params skips fit's validation): a
        # misspelt lam or boundary was taken as the default silently
        self._validate_params()
        self._check_basis_unchanged()
        if isinstance(self.lam, str) and not getattr(self, "_scaled_input", False):
            warn_if_counts(X)
        if self._is_large(X):
            return self._transform_large(X, gamma)
        X_t, is_numpy, single = self._validate_images(X)
        g = self._gamma(X_t, X, gamma, single)
        operator = self.basis.operator_
        if isinstance(self.lam, str):
            # a half-precision X as it is (X_t is cast to the solver's dtype:
            # float16 counts / 255 are read as the counts in their own dtype)
            lam = default_lam(X_t if _half_dtype(X) is None else X,
                              self.regularization)
        else:
            lam = float(self.lam)
        if self.boundary == "unknown":
            from deepblur.tiling import extended_problem

            kernels = torch.as_tensor(operator.kernels, dtype=X_t.dtype,
                                      device=X_t.device)
            maps = torch.as_tensor(operator.maps, dtype=X_t.dtype,
                                   device=X_t.device)
            r, c = (int(k) // 2 for k in kernels.shape[1:])
            data, forward, adjoint, x0 = extended_problem(
                kernels, maps, X_t, g, ((r, r), (c, c)),
                positive=self.positive)
        else:
            def forward(u):
                return operator.forward(u, g)

            def adjoint(v):
                return operator.adjoint(v, g)

            data, x0 = X_t, None
        U, result = deblur(
            data, forward, adjoint, lam,
            regularization=self.regularization, positive=self.positive,
            max_iter=self.max_iter, tol=self.tol, inner_iter=self.inner_iter,
            x0=x0,
        )
        if x0 is not None:
            H, W = self.image_shape_
            U = U[:, r:r + H, c:c + W]
        self.n_iter_ = result.n_iter
        self.objective_history_ = result.objective
        self.converged_ = result.converged
        self.lam_ = np.broadcast_to(np.asarray(lam, dtype=np.float64),
                                    (X_t.shape[0],)).copy()
        if single:
            U = U[0]
        return to_like(U, is_numpy)

    def score(self, X, y, gamma=None, sample_weight=None):
        """Mean PSNR (dB) of the deblurred ``X`` against the clean ``y``.

        The data range of each image is its clean version's peak-to-peak range
        (``y.max() - y.min()``), see :func:`deepblur.metrics.psnr`, or for a
        constant clean image (a background patch) the range of all the clean
        images (:func:`deepblur.metrics.clean_ranges`). Higher is better, so
        ``GridSearchCV`` can select ``lam``.

        Parameters
        ----------
        X : array-like of shape (n, H, W)
            Blurry images.
        y : array-like of shape (n, H, W)
            Clean images.
        gamma : array-like of shape (n, K) or (K,), optional
            As in :meth:`transform`.
        sample_weight : array-like of shape (n,), default=None
            Weights of the images' PSNRs in the mean (finite, non-negative,
            not all zero); an image of weight 0 is left out. In a
            ``Pipeline`` or ``GridSearchCV`` with metadata routing enabled,
            request it with ``set_score_request(sample_weight=True)``.

        Returns
        -------
        score : float
        """
        # y and sample_weight are checked before the solve, which can take
        # minutes
        y_t, _ = as_tensor(y, name="y")
        if tuple(y_t.shape) != tuple(np.shape(X)):
            raise ValueError(
                f"y must have the shape of X ({tuple(np.shape(X))}); got "
                f"{tuple(y_t.shape)}."
            )
        check_finite(y_t, "y")
        sample_weight = check_sample_weight(
            sample_weight, y_t.shape[0] if y_t.ndim > 2 else 1)
        U = self.transform(X, gamma=gamma)
        if isinstance(U, torch.Tensor):
            U = U.detach().cpu().numpy()
        y_np = y_t.detach().cpu().numpy()
        return weighted_mean(psnr(y_np, U, data_range=clean_ranges(y_np)),
                             sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.requires_fit = True
        # the output is in ``dtype`` whatever the input's (scikit-learn's
        # default said float64 is kept; float32, the default, is)
        tags.transformer_tags.preserves_dtype = (
            [self.dtype] if self.dtype in _DTYPES else [])
        return tags
