"""``BlindDeblurrer``: calibrate, train and deblur as one estimator.

The four stages of the paper's method depend on each other's fitted state:
the basis is fitted on calibration PSF fields, the cone on the basis's
coefficients of those fields, the sampler on the cone's rays, the regressor
on images blurred by sampled operators of that basis, and the deblurrer uses
the basis and the regressor. :class:`BlindDeblurrer` holds the five unfitted
components as parameters and fits them in that order in :meth:`fit`, so that
``clone`` and ``GridSearchCV`` can change any of their hyper-parameters (``K``
through ``basis__n_components``, ``lam`` through ``deblurrer__lam``) and
every candidate is rebuilt from scratch. See ``docs/user_guide/workflows.rst``.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context, clone
from sklearn.utils import check_random_state, get_tags
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, check_memory

from deepblur._validation import (
    as_tensor,
    check_images,
    check_ndim,
    check_positive_int_pair,
)
from deepblur.datasets.simulate import BlurDataset, _noise_param
from deepblur.estimators.basis import ProductConvolutionBasis
from deepblur.estimators.cone import ConeSampler, ConeSimplifier
from deepblur.estimators.deblur import TVDeblurrer
from deepblur.estimators.regressor import ResNetBlurRegressor
from deepblur.nets.resnet import ResNet

__all__ = ["BlindDeblurrer"]


def _fit_blur_model(basis, cone, sampler, regressor, clean, psf_fields, noise_std,
                    image_mean, n_train_images, seed, project=False,
                    boundary="zero"):
    """Fit basis -> cone -> sampler -> regressor; a pure function (cacheable).

    Every argument is an unfitted estimator or an array, so that
    ``joblib.Memory`` can key the result on them.
    """
    basis = clone(basis).fit(psf_fields)
    gamma = basis.transform(psf_fields)
    cone = clone(cone).fit(gamma)
    if sampler is None:
        # unit rays: the scale of the samples is the calibration's ||gamma||
        norms = np.linalg.norm(gamma, axis=1)
        low, high = np.percentile(norms, [5, 95])
        sampler = ConeSampler(alpha_range=(float(low), float(max(high, low * 1.001))))
    sampler = clone(sampler).set_params(random_state=seed).fit(cone.rays_)
    regressor = clone(regressor).set_params(basis=basis)
    params = regressor.get_params(deep=False)
    if project or params.get("support_tolerance") is not None:
        # the sampler projects, or serves the regressor's support check only
        regressor.set_params(sampler=sampler)
        if "project" in params:
            regressor.set_params(project=bool(project))
    if (getattr(regressor, "module", None) is ResNet
            and "output_bias" not in regressor.get_params_for("module")):
        # start from the mean operator of the cone, not from gamma = 0
        mean_gamma = clone(sampler).fit(cone.rays_).sample(20_000).mean(axis=0)
        regressor.set_params(module__output_bias=mean_gamma)
    # a regressor of its own without batch_size: batches of 64
    batch_size = int(getattr(regressor, "batch_size", 64))
    epochs = int(getattr(regressor, "max_epochs", 1))   # 1: a one-pass fit
    n_batches = max(1, -(-int(n_train_images) // (batch_size * epochs)))
    data = BlurDataset(clean, basis, sampler, batch_size=batch_size,
                       n_batches=n_batches, noise_std=noise_std,
                       image_mean=image_mean, boundary=boundary,
                       random_state=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)        # the network's initialisation
        regressor.fit(data, None)
    return basis, cone, sampler, regressor


class BlindDeblurrer(TransformerMixin, BaseEstimator):
    """Blind deblurring trained end to end: basis, cone, regressor, TV solver.

    ``fit(X, y, psf_fields=...)`` fits, in this order (paper sections 1-3):

    1. ``basis`` on the calibration ``psf_fields`` (e.g. bead measurements or
       :func:`~deepblur.datasets.make_random_operators`), giving ``K`` kernels
       and maps;
    2. ``cone`` (Algorithm 1) on the coefficients ``gamma`` of those fields;
    3. ``sampler`` (Algorithm 2) on the cone's rays;
    4. ``regressor`` on the clean images ``y`` blurred on the fly by operators
       drawn from the sampler (``n_train_images`` images, noise ``noise_std``);
    5. ``deblurrer`` with the fitted basis and the trained regressor as its
       blur estimator.

    With ``project=True`` the regressor's estimates are projected on the set
    that the sampler draws the training ``gamma`` from (nearest point in the
    operator metric, :meth:`~deepblur.ConeSampler.project`): that set is
    convex and holds every training operator, so the projection never moves
    an estimate away from an operator of that set. Operators like the
    calibration ones mostly lie outside it, and there it can do harm (see
    ``project``).

    :meth:`transform` deblurs blurry images blindly and :meth:`score` is the
    mean PSNR of the result against clean images, so that ``GridSearchCV``
    over ``basis__n_components`` (K) and ``deblurrer__lam`` (lambda) scores
    the whole method on held-out (blurry, clean) pairs.

    Parameters
    ----------
    basis : ProductConvolutionBasis, default=None
        Unfitted basis (its ``image_shape`` must be the images' shape);
        default ``ProductConvolutionBasis(image_shape=X.shape[-2:])``. A
        ``random_state`` of None is replaced by one drawn from
        ``random_state`` (one of its own is kept).
    cone : ConeSimplifier, default=None
        Default ``ConeSimplifier(n_rays=10)``.
    sampler : ConeSampler, default=None
        Its ``random_state`` is replaced by one drawn from ``random_state``.
        Default: a ``ConeSampler`` whose ``alpha_range`` is the 5th to 95th
        percentile of ``||gamma||`` over the calibration fields (the cone's
        rays have unit norm, so this gives sampled operators the gain of the
        calibration operators).
    regressor : ResNetBlurRegressor or SpectralBlurRegressor, default=None
        Unfitted; its ``basis`` is set to the fitted basis and, for the
        default ResNet module without ``module__output_bias``, the output
        bias is set to the mean ``gamma`` of the sampler (an untrained
        network then predicts the mean operator of the cone). Default
        ``ResNetBlurRegressor(verbose=0)``. A regressor of your own needs a
        ``basis`` parameter and a ``fit(dataset, None)`` that reads the
        simulated training images from a
        :class:`~deepblur.datasets.BlurDataset` (its ``sampler`` attribute is
        the fitted sampler); the batches are of its ``batch_size``
        attribute, 64 when it has none.
    deblurrer : TVDeblurrer, default=None
        Its ``basis`` and ``blur_estimator`` are set to the fitted basis and
        regressor. Default ``TVDeblurrer()`` (``lam="auto"``).
    noise_std : float or (low, high), default=0.01
        Noise of the simulated training images (for images of mean
        ``image_mean``).
    image_mean : float, default=0.5
        Scale convention of the simulator: clean images are scaled to this
        mean before blurring. Images given to ``transform`` and ``score``
        must follow it (see :func:`~deepblur.datasets.make_deblurring_pairs`).
    train_boundary : {"zero", "crop"}, default="zero"
        How the simulated training images are blurred at their border
        (:class:`~deepblur.datasets.BlurDataset`'s ``boundary``): ``"zero"``,
        a dark surrounding (the paper's protocol), or ``"crop"``, windows of
        larger scenes (each clean image extended by reflection, blurred and
        cropped: what real images and the tiles of large ones are). A regressor
        trained on ``"zero"`` reads the dark fringe, which windows lack:
        ``transform`` of images larger than the basis then warns
        (:class:`~deepblur.exceptions.BoundaryWarning`). ``score`` measures
        on the pairs it is given: pairs of
        :func:`~deepblur.datasets.make_deblurring_pairs` are blurred with a
        zero boundary and favour ``"zero"`` in a search; for windows, score
        on windows (and deblur them with the deblurrer's
        ``boundary="unknown"``).
    n_train_images : int, default=10000
        Simulated images the regressor sees in training, over all epochs.
    project : bool, default=False
        Give the regressor the fitted sampler (its ``sampler`` parameter), so
        that its estimates are projected on the sampled set. The regressor
        must have that parameter (:class:`~deepblur.ResNetBlurRegressor`,
        :class:`~deepblur.SpectralBlurRegressor`). Worth it only when the
        blur to estimate is drawn from the sampler (simulations): held-out
        operators of the calibration's random family mostly lie outside the
        sampled set, and projecting the estimates of a spectral regressor on
        it raised their mean error from 17.9 % to 20.5 % (300 operators,
        ``K=6``, 64x64 images; 13.6 -> 12.4 % on draws of the sampler;
        ``benchmarks/bench_held_out_operators.py --blind``). A regressor
        with a ``support_tolerance`` gets the fitted sampler either way, for
        its :class:`~deepblur.exceptions.OutOfSupportWarning` check, and
        projects only with ``project=True``.
    memory : str, joblib.Memory or None, default=None
        Caches the fitted basis, cone, sampler and regressor (as
        :class:`~sklearn.pipeline.Pipeline` does): a grid search over
        ``deblurrer__lam`` then trains one regressor per value of the other
        parameters instead of one per ``lam``.
    random_state : int, RandomState instance or None, default=None
        Seeds the basis (when its own ``random_state`` is None), the
        sampler, the simulated training data and the network's
        initialisation (in a forked torch RNG: the global seed is untouched).
        An int makes ``fit`` reproducible on CPU.

    Attributes
    ----------
    basis_, cone_, sampler_, regressor_, deblurrer_ : fitted components
    image_shape_ : tuple of int
    n_features_in_ : int
        ``H * W``.

    See Also
    --------
    TVDeblurrer : deblurring with a given basis and blur estimator.
    deepblur.datasets.make_deblurring_pairs : (blurry, clean) pairs for score.

    Notes
    -----
    ``psf_fields`` is a fit parameter, so ``GridSearchCV.fit(X, y,
    psf_fields=fields)`` passes it to every candidate. scikit-learn splits a
    fit parameter like ``X`` when it has as many rows as ``X``: then each fold
    would calibrate on a subset of the fields. Pass a number of fields that
    differs from the number of images (or the same calibration would be cut
    per fold).

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur import (BlindDeblurrer, ProductConvolutionBasis,
    ...                       ResNetBlurRegressor, TVDeblurrer)
    >>> from deepblur.datasets import make_deblurring_pairs, make_random_operators
    >>> ops = make_random_operators(12, image_shape=(32, 32), kernel_shape=(9, 9),
    ...                             grid_shape=(4, 4), random_state=0)
    >>> rng = np.random.default_rng(0)
    >>> blurry, clean = make_deblurring_pairs(rng.random((8, 32, 32)) + 0.1, ops,
    ...                                       6, random_state=0)
    >>> model = BlindDeblurrer(
    ...     basis=ProductConvolutionBasis(3, image_shape=(32, 32)),
    ...     regressor=ResNetBlurRegressor(module__width=4, max_epochs=1,
    ...                                   device="cpu", verbose=0),
    ...     deblurrer=TVDeblurrer(lam=50.0, tol=1e-3, device="cpu"),
    ...     n_train_images=64, random_state=0)
    >>> model.fit(blurry, clean, psf_fields=ops.psf_fields).transform(blurry).shape
    (6, 32, 32)
    >>> bool(np.isfinite(model.score(blurry, clean)))
    True
    """

    _parameter_constraints: dict = {
        "basis": [None, HasMethods(["fit", "transform"])],
        "cone": [None, HasMethods(["fit"])],
        "sampler": [None, HasMethods(["fit", "sample"])],
        "regressor": [None, HasMethods(["fit", "predict"])],
        "deblurrer": [None, HasMethods(["fit", "transform", "score"])],
        "noise_std": [Interval(Real, 0, None, closed="left"), tuple, list],
        "image_mean": [Interval(Real, 0, None, closed="neither")],
        "train_boundary": [StrOptions({"zero", "crop"})],
        "n_train_images": [Interval(Integral, 1, None, closed="left")],
        "project": ["boolean"],
        "memory": [None, str, HasMethods(["cache"])],
        "random_state": ["random_state"],
    }

    def __init__(self, basis=None, cone=None, sampler=None, regressor=None,
                 deblurrer=None, *, noise_std=0.01, image_mean=0.5,
                 train_boundary="zero", n_train_images=10_000, project=False,
                 memory=None, random_state=None):
        self.basis = basis
        self.cone = cone
        self.sampler = sampler
        self.regressor = regressor
        self.deblurrer = deblurrer
        self.noise_std = noise_std
        self.image_mean = image_mean
        self.train_boundary = train_boundary
        self.n_train_images = n_train_images
        self.project = project
        self.memory = memory
        self.random_state = random_state

    #: what ``fit`` uses for a component left at None, as the user writes it,
    #: and what one passed instead must be given to behave alike
    _DEFAULT_COMPONENTS = {
        "basis": ("ProductConvolutionBasis", "(image_shape=X.shape[-2:])", ""),
        "cone": ("ConeSimplifier", "(n_rays=10)", ""),
        "sampler": ("ConeSampler", "(alpha_range=(low, high)) (low, high: the "
                    "5th and 95th percentiles of ||gamma|| over the calibration "
                    "fields)", " with an alpha_range of its own: a ConeSampler "
                    "passed keeps its alpha_range (default (0.5, 1.5), the "
                    "scale of unit rays, not the gain of the calibration "
                    "operators)"),
        "regressor": ("ResNetBlurRegressor", "(verbose=0)", ""),
        "deblurrer": ("TVDeblurrer", "()", ""),
    }

    def set_params(self, **params):
        """Set the parameters, refusing nested ones of a component left at
        None (``deblurrer__lam`` with ``deblurrer=None``) with a message
        that says what to pass instead, not scikit-learn's
        ``'NoneType' object has no attribute 'set_params'``."""
        for key in params:
            name, nested, _ = key.partition("__")
            if (nested and name in self._DEFAULT_COMPONENTS
                    and params.get(name, getattr(self, name, None)) is None):
                cls, args, note = self._DEFAULT_COMPONENTS[name]
                raise ValueError(
                    f"cannot set {key!r}: {name} is None, which fit replaces "
                    f"by a default {cls}{args}; to set or tune its parameters "
                    f"(e.g. in a grid search), pass the component, e.g. "
                    f"BlindDeblurrer({name}={cls}(...)){note}.")
        return super().set_params(**params)

    def __setstate__(self, state):
        """Unpickle, with the defaults of parameters added since."""
        super().__setstate__(state)
        self.__dict__.setdefault("train_boundary", "zero")

    def _images(self, X, name, image_shape=None):
        t, _ = as_tensor(X, name=name)
        check_ndim(t, name, (3,), "(n, H, W)")
        check_images(t, name, t.shape[-2:] if image_shape is None else image_shape,
                     " (the images' shape)")
        return t.detach().cpu().numpy()

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, psf_fields=None):
        """Fit the basis, cone and sampler, train the regressor, set up TV.

        Parameters
        ----------
        X : array-like of shape (n, H, W)
            Blurry images, one per clean image of ``y`` (their shape and
            number are checked; they are not used to fit).
        y : array-like of shape (n, H, W)
            Clean images: the regressor's training data, blurred on the fly.
        psf_fields : array-like of shape (P, gy, gx, kh, kw) or (P, n_pos, kh, kw)
            Calibration PSF fields for the basis and the cone.

        Returns
        -------
        self : BlindDeblurrer
        """
        if psf_fields is None:
            raise ValueError(
                "psf_fields must be given: the calibration PSF fields that the "
                "basis and the cone are fitted on (e.g. "
                "make_random_operators(...).psf_fields); got None."
            )
        Xa = self._images(X, "X")
        if y is None:
            raise ValueError("y must be given: the clean images the regressor is "
                             "trained on (blurred on the fly); got None.")
        clean = self._images(y, "y", Xa.shape[1:])
        if len(clean) != len(Xa):
            raise ValueError(
                f"X and y must hold the same number of images (pairs of blurry "
                f"and clean images); got {len(Xa)} and {len(clean)}."
            )
        image_shape = tuple(int(s) for s in Xa.shape[1:])
        basis = (ProductConvolutionBasis(image_shape=image_shape)
                 if self.basis is None else self.basis)
        basis_shape = basis.get_params().get("image_shape")
        basis_shape = (image_shape if basis_shape is None else
                       check_positive_int_pair(basis_shape, "basis.image_shape"))
        if basis_shape != image_shape:
            raise ValueError(
                f"basis.image_shape must be the images' shape {image_shape}; got "
                f"{basis_shape}."
            )
        cone = ConeSimplifier(n_rays=10) if self.cone is None else self.cone
        regressor = (ResNetBlurRegressor(verbose=0) if self.regressor is None
                     else self.regressor)
        if self.project and "sampler" not in regressor.get_params(deep=False):
            raise ValueError(
                "project=True gives the regressor the fitted sampler through "
                f"its 'sampler' parameter, which {type(regressor).__name__} "
                "does not have; pass project=False (raw estimates, the "
                "default) or a ResNetBlurRegressor / SpectralBlurRegressor."
            )
        noise_std = _noise_param(self.noise_std)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        if basis.get_params(deep=False).get("random_state", 0) is None:
            # as the sampler's: the basis's random start (init="random")
            # follows random_state, and the cache's key holds it
            basis = clone(basis).set_params(random_state=seed)
        fit_model = check_memory(self.memory).cache(_fit_blur_model)
        self.basis_, self.cone_, self.sampler_, self.regressor_ = fit_model(
            basis, cone, self.sampler, regressor, clean, np.asarray(psf_fields),
            noise_std, float(self.image_mean), int(self.n_train_images), seed,
            bool(self.project), self.train_boundary)
        deblurrer = TVDeblurrer() if self.deblurrer is None else self.deblurrer
        self.deblurrer_ = clone(deblurrer).set_params(
            basis=self.basis_, blur_estimator=self.regressor_).fit(Xa)
        self.image_shape_ = image_shape
        self.n_features_in_ = int(np.prod(image_shape))
        return self

    def estimate(self, X):
        """The coefficients ``gamma`` that the regressor estimates for ``X``.

        Projected on the sampled set when ``project`` (see the class notes).

        Parameters
        ----------
        X : array-like of shape (n, H, W)

        Returns
        -------
        gamma : ndarray of shape (n, K)
        """
        check_is_fitted(self)
        return self.regressor_.predict(self._images(X, "X", self.image_shape_))

    def transform(self, X):
        """Deblur blurry images blindly (``gamma`` estimated per image).

        Parameters
        ----------
        X : array-like of shape (n, H, W)

        Returns
        -------
        U : ndarray of shape (n, H, W)
        """
        check_is_fitted(self)
        return self.deblurrer_.transform(X)

    def score(self, X, y, sample_weight=None):
        """Mean PSNR (dB) of the blindly deblurred ``X`` against clean ``y``.

        Parameters
        ----------
        X : array-like of shape (n, H, W)
            Blurry images.
        y : array-like of shape (n, H, W)
            Clean images (scaled by the same convention, ``image_mean``).
        sample_weight : array-like of shape (n,), default=None
            Weights of the images' PSNRs in the mean, as in
            :meth:`TVDeblurrer.score`. In a ``Pipeline`` or ``GridSearchCV``
            with metadata routing enabled, request it with
            ``set_score_request(sample_weight=True)``.

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        if sample_weight is None:
            # a deblurrer of the user's whose score takes no weights
            return self.deblurrer_.score(X, y)
        return self.deblurrer_.score(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.required = True
        tags.non_deterministic = True
        # the deblurrer's output dtype (float32 for the default TVDeblurrer)
        deblurrer = TVDeblurrer() if self.deblurrer is None else self.deblurrer
        if isinstance(deblurrer, TVDeblurrer):
            tags.transformer_tags.preserves_dtype = list(
                get_tags(deblurrer).transformer_tags.preserves_dtype)
        return tags
