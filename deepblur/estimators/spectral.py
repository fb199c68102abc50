"""``SpectralBlurRegressor``: gamma from local spectra by a Gram-metric ridge."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import (
    BaseEstimator,
    RegressorMixin,
    _fit_context,
)
from sklearn.linear_model import RidgeCV
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted

from deepblur.datasets.simulate import BlurDataset
from deepblur.estimators._gamma import (
    SharedBasisMixin,
    SupportCheckMixin,
    check_dataset_basis,
    check_gamma_targets,
    check_sampler,
    check_support_params,
    checked_estimates,
    image_to_gamma_tags,
    support_distances,
    training_boundary,
    training_noise_level,
    warn_if_noisy,
)
from deepblur.estimators.regressor import _check_images
from deepblur.features import blur_features, n_blur_features

__all__ = ["SpectralBlurRegressor"]

_DEFAULT_ALPHAS = tuple(np.logspace(-2, 4, 13))


class SpectralBlurRegressor(SupportCheckMixin, SharedBasisMixin, RegressorMixin,
                            BaseEstimator):
    r"""Estimate ``gamma`` linearly from contrast-free blur statistics.

    Each image is described by :func:`~deepblur.features.blur_features` (the
    shape of its local power spectra per block, its edge profiles and its
    mean), and a ridge regression maps the standardised features to
    ``gamma``. The ridge is fitted in the metric of the basis's Gram matrix
    ``G = L L^T`` (targets ``L^T gamma``), so that it minimises the squared
    relative-Frobenius numerator ``(g - g_hat)^T G (g - g_hat)``, the error
    of the operators rather than of the coefficients; ``alpha`` is chosen by
    leave-one-out (:class:`~sklearn.linear_model.RidgeCV`).

    It needs no network: it fits in seconds on tens of thousands of images
    and transfers across image content better than the networks trained so
    far. Trained on windows of larger scenes (``boundary="crop"`` in the
    simulator), it is the estimator for real images, whose borders carry no
    zero-boundary shortcut (see ``benchmarks/README.md``).

    Parameters
    ----------
    basis : ProductConvolutionBasis, default=None
        Fitted basis whose coefficients are regressed (required in ``fit``):
        its Gram matrix is the metric, its ``image_shape_`` the input shape.
        One set since ``fit`` with another image shape or K needs a new
        ``fit``.
    sampler : ConeSampler, default=None
        Fitted sampler of the training ``gamma``. When given, :meth:`predict`
        projects the ridge's estimates on the set its samples fill, in the
        operator metric (as :class:`~deepblur.ResNetBlurRegressor`'s
        ``sampler``): never farther from any ``gamma`` of that set, but
        possibly farther from operators outside it (see there).
    project : bool, default=True
        With a ``sampler``, whether :meth:`predict` projects; False keeps it
        for the ``support_tolerance`` check and :meth:`support_distance`.
    support_tolerance : float, default=None
        Warn (:class:`~deepblur.exceptions.OutOfSupportWarning`) about
        estimates farther than this from the sampler's support, in relative
        operator distance; ``None`` checks nothing (as
        :class:`~deepblur.ResNetBlurRegressor`'s).
    window : int, default=32
        Block side of the local spectra.
    n_radial, n_angular : int, default=6, 4
        Spectral bins per block.
    border : int, default=12
        Rows/columns of the edge profiles (0: none).
    n_segments : int, default=4
        Segments per edge of the edge profiles.
    stride : int, default=None
        Step between the blocks of the local spectra (``None``: ``window``,
        no overlap).
    alphas : array-like of float, default=None
        Candidate ridge penalties (on standardised features); default 13
        values from 1e-2 to 1e4, log-spaced.
    batch_size : int, default=512
        Images per vectorised pass of the features; with a
        :class:`~deepblur.datasets.simulate.BlurDataset` in ``fit``, its own
        batches are used.
    verbose : int, default=0
        1: a progress bar over the batches of a ``BlurDataset`` in ``fit``
        (drawing the images is the long part).

    Attributes
    ----------
    coef_ : ndarray of shape (n_blur_features, K)
        ``gamma_hat = blur_features(X) @ coef_ + intercept_``.
    intercept_ : ndarray of shape (K,)
    feature_spec_ : dict
        The statistics' parameters (``window``, ``n_radial``, ``n_angular``,
        ``border``, ``n_segments``, ``stride``) at ``fit``: ``predict`` uses
        them, whatever ``set_params`` changed since (refit to use others).
    alpha_ : float
        The penalty chosen by leave-one-out.
    image_shape_ : tuple of int
    n_features_in_ : int
        ``H * W`` (pixels per image).
    n_train_images_ : int
        Images the ridge was fitted on.
    noise_level_ : float or None
        Noise standard deviation of the noisiest training images: the top of
        a ``BlurDataset``'s ``noise_std``, or for arrays the 99th percentile
        of the levels estimated on them; 0.0 for a dataset without noise;
        None when unknown (``snr``). :meth:`predict` warns about images over
        three times noisier (:class:`~deepblur.exceptions.NoisyImageWarning`;
        no check for 0.0 or None).
    training_boundary_ : {"zero", "crop"} or None
        A ``BlurDataset``'s ``boundary`` (None for arrays); see
        :class:`~deepblur.ResNetBlurRegressor`.

    See Also
    --------
    ResNetBlurRegressor : the network estimator (more accurate on the
        zero-boundary simulations it was trained on).
    deepblur.features.blur_features : the statistics.

    Notes
    -----
    Inputs are images ``(n, H, W)`` or ``(n, 1, H, W)`` of the basis's
    ``image_shape`` with a positive mean, following the simulator's scale
    convention (clean images of mean ``image_mean``): the mean is the one
    feature that carries the gain of the operator. NaN/Inf, a wrong shape,
    a non-positive mean or a wrong width of ``y`` are errors.

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur import ConeSampler, ProductConvolutionBasis
    >>> from deepblur.datasets import make_blurred_images
    >>> rng = np.random.default_rng(0)
    >>> basis = ProductConvolutionBasis.from_components(
    ...     rng.random((3, 5, 5)), rng.random((3, 32, 32)))
    >>> sampler = ConeSampler(random_state=0).fit(np.eye(3))
    >>> X, y = make_blurred_images(rng.random((20, 32, 32)), basis, sampler, 64,
    ...                            random_state=0)
    >>> est = SpectralBlurRegressor(basis, window=16).fit(X, y)
    >>> est.predict(X[:2]).shape
    (2, 3)
    >>> bool(est.score(X, y) <= 0)
    True
    """

    _basis_role = "its Gram matrix is the metric of the regression"

    _parameter_constraints: dict = {
        "basis": [None, HasMethods(["fit", "transform"])],
        "sampler": [None, HasMethods(["sample", "project"])],
        "project": ["boolean"],
        "support_tolerance": [None, Interval(Real, 0, None, closed="neither")],
        "window": [Interval(Integral, 4, None, closed="left")],
        "n_radial": [Interval(Integral, 1, None, closed="left")],
        "n_angular": [Interval(Integral, 1, None, closed="left")],
        "border": [Interval(Integral, 0, None, closed="left")],
        "n_segments": [Interval(Integral, 1, None, closed="left")],
        "stride": [None, Interval(Integral, 1, None, closed="left")],
        "alphas": [None, "array-like"],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "verbose": ["verbose"],
    }

    def __init__(self, basis=None, *, sampler=None, project=True,
                 support_tolerance=None, window=32, n_radial=6, n_angular=4,
                 border=12, n_segments=4, stride=None, alphas=None, batch_size=512,
                 verbose=0):
        self.basis = basis
        self.sampler = sampler
        self.project = project
        self.support_tolerance = support_tolerance
        self.window = window
        self.n_radial = n_radial
        self.n_angular = n_angular
        self.border = border
        self.n_segments = n_segments
        self.stride = stride
        self.alphas = alphas
        self.batch_size = batch_size
        self.verbose = verbose

    def _fitted_K(self):
        return int(self.coef_.shape[1])

    def _spec(self):
        return dict(window=int(self.window), n_radial=int(self.n_radial),
                    n_angular=int(self.n_angular), border=int(self.border),
                    n_segments=int(self.n_segments),
                    stride=None if self.stride is None else int(self.stride))

    def _features(self, X, image_shape, spec=None):
        t = _check_images(X, image_shape)[:, 0]
        return blur_features(t, batch_size=int(self.batch_size),
                             **(self._spec() if spec is None else spec))

    def _fitted_spec(self):
        """The statistics' parameters ``coef_`` was fitted on (the current
        ones for an estimator fitted before they were recorded)."""
        return getattr(self, "feature_spec_", None) or self._spec()

    def _training_data(self, X, y, image_shape, K):
        """Features and targets from arrays or from a ``BlurDataset``."""
        if isinstance(X, BlurDataset):
            check_dataset_basis(X, self._fitted_basis(), "the regressor")
            feats, targets = [], []
            batches = X
            if self.verbose:
                from tqdm.auto import tqdm

                batches = tqdm(X, total=len(X), unit="batch",
                               desc="SpectralBlurRegressor: features")
            for Xb, yb in batches:
                feats.append(self._features(Xb.cpu(), image_shape))
                targets.append(yb.detach().cpu().numpy().astype(np.float64))
            return np.concatenate(feats), np.concatenate(targets)
        if y is None:
            raise ValueError("y must be given (the gamma of each image); got None.")
        y_arr = check_gamma_targets(y, K)
        F = self._features(X, image_shape)
        if len(F) != len(y_arr):
            raise ValueError(
                f"X and y must have as many samples; got {len(F)} images and "
                f"{len(y_arr)} rows of y."
            )
        return F, y_arr

    # ----------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the ridge on blurry images and their ``gamma``.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W), or BlurDataset
            Blurry images at the basis's ``image_shape``; a
            :class:`~deepblur.datasets.simulate.BlurDataset` is read once
            (``n_batches * batch_size`` fresh images).
        y : array-like of shape (n, K), default=None
            Their coefficients (``None`` with a ``BlurDataset``).

        Returns
        -------
        self : SpectralBlurRegressor
        """
        basis = self._fitted_basis()
        image_shape = tuple(int(s) for s in basis.image_shape_)
        gram = np.asarray(basis.gram_, dtype=np.float64)
        K = gram.shape[0]
        # clear errors before the features of a whole dataset are computed
        check_sampler(self.sampler, K)
        check_support_params(self.project, self.support_tolerance, self.sampler)
        n_blur_features(image_shape, **self._spec())
        alphas = _DEFAULT_ALPHAS if self.alphas is None else self.alphas
        alphas = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
        if alphas.size == 0 or not (np.isfinite(alphas) & (alphas > 0)).all():
            raise ValueError(f"alphas must be positive and finite; got {alphas}.")
        try:
            chol = np.linalg.cholesky(gram)         # G = L L^T
        except np.linalg.LinAlgError:
            raise ValueError(
                "the basis's Gram matrix must be positive definite (linearly "
                "independent elementary operators); got a singular one."
            ) from None
        F, gamma = self._training_data(X, y, image_shape, K)
        if len(F) < 2:
            raise ValueError(f"fit needs at least 2 images; got {len(F)}.")
        mean, std = F.mean(0), F.std(0)
        std = np.where(std > 1e-12 * max(1.0, float(np.abs(F).max())), std, 1.0)
        ridge = RidgeCV(alphas=alphas).fit((F - mean) / std, gamma @ chol)
        # gamma_hat = ridge(Z) L^{-1} with Z = (F - mean) / std, folded into
        # one affine map of the raw features.
        chol_inv = np.linalg.inv(chol)
        weights = ridge.coef_.T @ chol_inv / std[:, None]
        self.coef_ = weights
        self.feature_spec_ = self._spec()
        self.intercept_ = np.asarray(ridge.intercept_) @ chol_inv - mean @ weights
        self.alpha_ = float(ridge.alpha_)
        self.image_shape_ = image_shape
        self.n_features_in_ = int(np.prod(image_shape))
        self.n_train_images_ = int(len(F))
        self.noise_level_ = training_noise_level(X)
        self.training_boundary_ = training_boundary(X)
        return self

    def predict(self, X):
        """Estimated coefficients ``gamma_hat`` of the blur of each image.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)

        Returns
        -------
        ndarray of shape (n, K), float32
            (float32 like :class:`~deepblur.ResNetBlurRegressor`'s),
            projected on the sampler's support when ``sampler`` is given and
            ``project`` is True.

        Warns
        -----
        NoisyImageWarning
            When some images are over three times noisier than
            ``noise_level_``.
        OutOfSupportWarning
            When some estimates lie farther than ``support_tolerance`` from
            the sampler's support.
        """
        check_is_fitted(self)
        basis = self._predicting_basis()
        check_support_params(self.project, self.support_tolerance, self.sampler)
        F = self._features(X, self.image_shape_, self._fitted_spec())
        warn_if_noisy(X, getattr(self, "noise_level_", None))
        gamma = (F @ self.coef_ + self.intercept_).astype(np.float32)
        return checked_estimates(gamma, self.sampler, basis.gram_,
                                 project=self.project,
                                 support_tolerance=self.support_tolerance)

    def support_distance(self, X):
        """Relative operator distance of each estimate to the sampler's support.

        As :meth:`ResNetBlurRegressor.support_distance
        <deepblur.ResNetBlurRegressor.support_distance>`, for the ridge's
        estimates before any projection.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)

        Returns
        -------
        ndarray of shape (n,), float64
        """
        check_is_fitted(self)
        basis = self._predicting_basis()
        sampler = self._distance_sampler()
        F = self._features(X, self.image_shape_, self._fitted_spec())
        return support_distances(sampler, F @ self.coef_ + self.intercept_,
                                 basis.gram_)[1]

    def __sklearn_tags__(self):
        return image_to_gamma_tags(super().__sklearn_tags__())
