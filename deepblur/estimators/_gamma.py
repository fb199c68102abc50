"""What the gamma estimators share: checking, projecting and scoring estimates,
and watching the noise of the images they are given and how far their
estimates lie from the operators they were trained on."""

from __future__ import annotations

import contextlib
import contextvars
import numbers
import warnings

import numpy as np
import torch
from sklearn.base import _clone_parametrized
from sklearn.utils.validation import check_is_fitted

from deepblur._validation import (
    check_basis_geometry,
    check_sample_weight,
    user_stacklevel,
    weighted_mean,
)
from deepblur.exceptions import NoisyImageWarning, OutOfSupportWarning
from deepblur.nets.losses import relative_frobenius_error
from deepblur.solvers.cone import cone_distance_bounds
from deepblur.solvers.tv import estimate_noise_level

#: ``predict`` warns (:class:`~deepblur.exceptions.NoisyImageWarning`) about
#: images over this many times noisier than the regressor's ``noise_level_``.
NOISE_WARNING_FACTOR = 3.0
_NOISE_CHUNK = 256          # images per call of the noise estimate (memory)
#: images whose noise ``predict`` estimates per call, evenly spaced: a cost
#: that does not grow with the batch (0.13 ms per 128x128 image on one CPU
#: thread, a tenth of the network's inference there)
NOISE_CHECK_SAMPLE = 64
# a list while a caller checks the noise of many predict calls at once: the
# noise levels those calls would have checked against
_NOISE_CHECK_SUSPENDED = contextvars.ContextVar("deepblur_noise_check_suspended",
                                                default=None)
# a list while a caller gathers the support distances of many predict calls
_SUPPORT_DISTANCES = contextvars.ContextVar("deepblur_support_distances",
                                            default=None)


def check_gamma_targets(y, K, name="y"):
    """``y`` as float64 ``(n, K)``: real, finite, one gamma per row."""
    arr = np.asarray(y.detach().cpu() if torch.is_tensor(y) else y)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers; got dtype {arr.dtype}.")
    arr = arr.astype(np.float64)
    if arr.ndim != 2 or arr.shape[1] != K:
        raise ValueError(
            f"{name} must have shape (n_samples, K={K}) (one gamma per image); "
            f"got {arr.shape}."
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite; got NaN or Inf values.")
    return arr


def same_gram(ours, theirs):
    """Whether two bases have the same Gram matrix (up to the float32 maps of
    a saved model: a relative difference of 1e-5 at most)."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    return (ours.shape == theirs.shape and np.linalg.norm(ours - theirs)
            <= 1e-5 * np.linalg.norm(theirs))


def check_dataset_basis(dataset, basis, who="the regressor"):
    """Refuse a ``BlurDataset`` whose basis is not ``basis`` (its image shape,
    and its Gram matrix to float32 rounding): its targets are coefficients
    of another basis, meaningless for this one."""
    if basis is None or dataset.basis is basis:
        return
    theirs = dataset.basis
    if tuple(theirs.image_shape_) != tuple(basis.image_shape_):
        raise ValueError(
            f"X (a BlurDataset) must use {who}'s basis image shape "
            f"{tuple(basis.image_shape_)}; got {tuple(theirs.image_shape_)}.")
    ours, other = np.asarray(basis.gram_), np.asarray(theirs.gram_)
    if not same_gram(other, ours):
        raise ValueError(
            f"X (a BlurDataset) draws gamma in another basis than {who}'s "
            f"(K={other.shape[0]} against K={ours.shape[0]}"
            + (", their Gram matrices differ" if ours.shape == other.shape
               else "") + "): its targets would be coefficients of other "
            "operators. Build the dataset with the same basis.")


def check_sampler(sampler, K):
    """``sampler`` (None, or a fitted ``ConeSampler`` of ``K`` features)."""
    if sampler is None:
        return None
    if not hasattr(sampler, "project") or not hasattr(sampler, "sample"):
        raise TypeError(
            "sampler must be a fitted ConeSampler (or None); got "
            f"{type(sampler).__name__}."
        )
    check_is_fitted(sampler, "generators_",
                    msg="sampler must be a fitted ConeSampler; call "
                        "sampler.fit(rays) first (got an unfitted one).")
    if K is not None and sampler.generators_.shape[1] != K:
        raise ValueError(
            f"sampler must draw gamma of K={K} coefficients like the basis; got "
            f"generators of {sampler.generators_.shape[1]}."
        )
    return sampler


#: What a regressor pickled before ``project`` and ``support_tolerance`` existed
#: gets on load (what it did then: project with a sampler, no check).
SUPPORT_PARAM_DEFAULTS = {"project": True, "support_tolerance": None}


class SupportCheckMixin:
    """For regressors with ``sampler``, ``project`` and ``support_tolerance``:
    old pickles get the parameters' defaults, and :meth:`support_distance`
    needs the sampler."""

    def __setstate__(self, state):
        """Unpickle, giving a regressor saved before the support check its
        defaults (it then projected whenever it had a sampler)."""
        for name, value in SUPPORT_PARAM_DEFAULTS.items():
            state.setdefault(name, value)
        super().__setstate__(state)

    def _distance_sampler(self):
        """The sampler that ``support_distance`` measures against."""
        if self.sampler is None:
            raise ValueError("support_distance needs the regressor's sampler "
                             "(the support of its training gamma); got None.")
        return self.sampler


def support_check_needed(sampler, project, support_tolerance):
    """Whether ``predict`` projects or checks its estimates (needs the Gram)."""
    return sampler is not None and (project or support_tolerance is not None)


def check_support_tolerance(tolerance, where="support_tolerance",
                            missing="None"):
    """``tolerance`` as a float, or None; a clear error for anything else.

    Any real number above 0 is taken (numpy's and fractions included);
    booleans, NaN, Inf, 0, negative values and numbers beyond the float
    range are not. ``where`` names the value in the message (the parameter,
    or the file it was read from), ``missing`` what stands for no check.
    """
    if tolerance is None:
        return None
    value = None
    if (not isinstance(tolerance, (bool, np.bool_))
            and isinstance(tolerance, numbers.Real)):
        try:
            value = float(tolerance)
        except (OverflowError, ValueError):
            value = None
    if value is None or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{where} must be a positive number or {missing}; "
                         f"got {tolerance!r}.")
    return value


def check_support_params(project, support_tolerance, sampler):
    """Validate ``project`` and ``support_tolerance`` (a regressor's params)."""
    if not isinstance(project, (bool, np.bool_)):
        raise TypeError(f"project must be True or False; got {project!r}.")
    if check_support_tolerance(support_tolerance) is None:
        return
    if sampler is None:
        raise ValueError(
            "support_tolerance needs a sampler: the distance of an estimate is "
            "measured to the support of the sampler's gamma (set sampler=, "
            "with project=False to keep the estimates as they are).")


def support_distances(sampler, gamma, gram):
    """Projections of estimates on the sampler's support, and their distances.

    Parameters
    ----------
    sampler : fitted ConeSampler
    gamma : array-like of shape (n, K)
        Estimated coefficients.
    gram : ndarray of shape (K, K)
        The basis's Gram matrix (the operator metric).

    Returns
    -------
    projections : ndarray of shape (n, K), float64
        :meth:`~deepblur.ConeSampler.project` of ``gamma``.
    distances : ndarray of shape (n,), float64
        ``||H[gamma] - H[p]||_F / ||H[p]||_F`` for each estimate and its
        projection ``p``: 0 on the support, the relative operator error of the
        estimate were the nearest trained operator the truth.
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    gram = np.asarray(gram, dtype=np.float64)
    proj = check_sampler(sampler, gamma.shape[1]).project(gamma, gram=gram)
    diff = gamma - proj
    num = np.einsum("ij,jk,ik->i", diff, gram, diff)
    den = np.einsum("ij,jk,ik->i", proj, gram, proj)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.sqrt(np.maximum(num, 0.0) / den)
    dist[den <= 0] = np.inf
    return proj, dist


def support_distances_settled(sampler, gamma, gram, tolerance, device=None):
    """The distances of :func:`support_distances` where they exceed
    ``tolerance``; elsewhere upper bounds of them at most ``tolerance``.

    Enough to check estimates against a tolerance: a batched gradient method
    (:func:`~deepblur.solvers.cone.cone_distance_bounds`, on ``device``)
    settles most estimates near the support, and only the others are
    projected exactly, one CPU solve each. On the CPU, for batches of 2 048
    estimates of natural and microscopy images, it took 0.23-0.55 times the
    exact projections' time on an idle core (two runs) and 0.30-1.11 times beside
    another job; it is slower for small batches (a fixed 2-11 ms per call)
    and for estimates far from the support (benchmarks/README.md).
    ``predict`` uses it on a GPU, for large batches only
    (:func:`settled_check_pays`).
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    sampler = check_sampler(sampler, gamma.shape[1])
    _, upper = cone_distance_bounds(
        gamma, np.asarray(sampler.generators_, dtype=np.float64),
        alpha_range=sampler._alpha_range, gram=gram, tol=tolerance,
        device=device)
    rest = upper > tolerance
    if rest.any():
        upper[rest] = support_distances(sampler, gamma[rest], gram)[1]
    return upper


#: Fewest estimates for which ``predict`` checks with bounds on a GPU rather
#: than with one exact CPU projection each (0.06-0.13 ms apiece). Measured on
#: an H200 with 2 048 estimates per call: 0.58-1.37 times the exact
#: projections on natural and microscopy images, 1.14 times over all the
#: benchmark's sets, the bounds costing about 0.17-0.2 s per call whatever the
#: set (kernel launches of the 200 steps): they pay only on larger batches,
#: hence 4 096 (derived from those costs, where the exact projections take
#: 0.5 s; not measured; benchmarks/README.md, "Support check in predict").
SETTLED_MIN_ROWS = 4096


def settled_check_pays(device, n_rows):
    """Whether ``predict`` checks ``n_rows`` estimates of a network on
    ``device`` with :func:`support_distances_settled` (a CUDA device and a
    large batch) rather than with exact projections."""
    if device is None or n_rows < SETTLED_MIN_ROWS:
        return False
    try:
        return torch.device(device).type == "cuda"
    except (RuntimeError, TypeError):
        return False


def _support_message(n_far, n, what, tolerance, median):
    return (
        f"{n_far} of {n} {what} have estimates farther than "
        f"support_tolerance={tolerance} from every operator the regressor was "
        f"trained on (relative operator distance to its sampler's support: "
        f"median {median:.3g} over those). Their images or blur are unlike the "
        "training data, and such estimates are often far off (the shipped "
        "networks: benchmarks/README.md, 'Support check in predict'). For beads "
        "or single molecules on a dark field the point-source estimator "
        "(estimator='points') fits the blur instead; a network trained with a "
        "zero boundary is unreliable on windows of larger scenes. The "
        "regressor's support_distance gives the distance of each image."
    )


def out_of_support_message(distances, tolerance, what="images"):
    """The warning about estimates farther than ``tolerance``, or None."""
    return gathered_support_message([(distances, tolerance)], what)


def gathered_support_message(gathered, what="tiles"):
    """The warning for distances gathered by :func:`support_distances_gathered`
    (each call's against its own tolerance), or None."""
    if not gathered:
        return None
    dist = np.concatenate([np.asarray(d, dtype=np.float64) for d, _ in gathered])
    tol = np.concatenate([np.full(len(d), t) for d, t in gathered])
    far = dist > tol
    if not far.any():
        return None
    tolerances = np.unique(tol[far])
    shown = (f"{tolerances[0]:.3g}" if len(tolerances) == 1 else
             f"{tolerances.min():.3g}-{tolerances.max():.3g}")
    return _support_message(int(far.sum()), len(dist), what, shown,
                            float(np.median(dist[far])))


@contextlib.contextmanager
def support_check_silenced():
    """Within it, ``predict`` issues no :class:`OutOfSupportWarning`: for
    ``score``, which measures the estimates against their known truth.

    The distances are gathered and dropped (a context variable), not the
    warning filtered: ``warnings.catch_warnings`` changes process-wide
    filters, which ``score`` calls in threads at once (a threaded search)
    restored over each other's, leaving ``ignore OutOfSupportWarning`` in
    the process for good.
    """
    with support_distances_gathered():
        yield


@contextlib.contextmanager
def support_distances_gathered():
    """Within it, ``predict`` does not warn about estimates far from the
    support but appends ``(distances, support_tolerance)`` to the list it
    yields (for callers that split one input over many ``predict`` calls: the
    tiles of an image); :func:`gathered_support_message` words the warning.
    """
    gathered = []       # (distances, tolerance) of each predict call
    token = _SUPPORT_DISTANCES.set(gathered)
    try:
        yield gathered
    finally:
        _SUPPORT_DISTANCES.reset(token)


def checked_estimates(gamma, sampler, gram, *, project, support_tolerance,
                      device=None):
    """What ``predict`` returns: ``gamma`` projected or not, checked or not.

    With a ``sampler``, ``project`` returns the projections on its support
    (in ``gamma``'s dtype). With a ``support_tolerance``, estimates farther
    than it from the support give an :class:`OutOfSupportWarning` (or, within
    :func:`support_distances_gathered`, their distances are gathered: exact
    above the tolerance, bounds at most it below). Unprojected estimates are
    checked with :func:`support_distances_settled` on ``device`` when
    :func:`settled_check_pays`.
    """
    if not support_check_needed(sampler, project, support_tolerance):
        return gamma
    if not project and settled_check_pays(device, len(gamma)):
        dist = support_distances_settled(sampler, gamma, gram,
                                         float(support_tolerance), device)
    else:
        proj, dist = support_distances(sampler, gamma, gram)
    if support_tolerance is not None:
        gathered = _SUPPORT_DISTANCES.get()
        if gathered is not None:
            gathered.append((dist, float(support_tolerance)))
        else:
            message = out_of_support_message(dist, support_tolerance)
            if message is not None:
                warnings.warn(message, OutOfSupportWarning,
                              stacklevel=user_stacklevel())
    return proj.astype(gamma.dtype, copy=False) if project else gamma


#: Parameters that ``clone_sharing_fitted`` shares: used as they are (a
#: fitted basis, a fitted sampler), never refitted by the estimator's ``fit``.
SHARED_PARAMS = ("basis", "sampler")


def _shared_nested(keys, names):
    return sorted(k for k in keys if "__" in k and k.split("__", 1)[0] in names)


def without_shared_nested(params, names=SHARED_PARAMS):
    """``get_params(deep=True)`` without the shared components' own
    parameters (``basis__tol``...), which cannot be set (as scikit-learn's
    ``FrozenEstimator`` lists none of its estimator's)."""
    hidden = set(_shared_nested(params, names))
    return {k: v for k, v in params.items() if k not in hidden}


def check_no_shared_nested(estimator, params, names=SHARED_PARAMS):
    """Refuse ``set_params`` of a shared component's own parameters.

    Setting them would change a component that other clones share (a basis
    or sampler would no longer have the parameters it was fitted with): the
    estimator's ``fit`` does not refit them.
    """
    nested = _shared_nested(params, names)
    if nested:
        shown = " and ".join(names)
        raise ValueError(
            f"set_params cannot set {nested}: {type(estimator).__name__} uses "
            f"its {shown} as they are (fitted, shared by clone, not refitted "
            "by fit), as scikit-learn's FrozenEstimator does. Set the "
            "parameter on a clone of that component, fit it and pass it "
            f"as {'= or '.join(names)}=."
        )


class FrozenComponentsMixin:
    """``get_params`` / ``set_params`` for estimators that use fitted
    components (``_frozen_components``: the basis and sampler by default)
    as they are, shared by ``clone``: their own parameters are neither
    listed by ``get_params(deep=True)`` nor settable (as scikit-learn's
    ``FrozenEstimator``)."""

    _frozen_components = SHARED_PARAMS

    def get_params(self, deep=True):
        """Parameters; with ``deep``, none of the frozen components' own."""
        return without_shared_nested(super().get_params(deep=deep),
                                     self._frozen_components)

    def set_params(self, **params):
        """Set parameters; those of a frozen component (``basis__tol``) are
        refused with a clear message (see :meth:`get_params`)."""
        check_no_shared_nested(self, params, self._frozen_components)
        return super().set_params(**params)


def clone_sharing_fitted(estimator):
    """``clone`` of the hyper-parameters sharing the fitted basis and sampler.

    They are data of the model (what ``gamma`` means, where it may lie), not
    hyper-parameters to refit; scikit-learn's clone would unfit them and
    break ``GridSearchCV``. They are never modified, so sharing is safe.
    """
    new = _clone_parametrized(estimator)
    for name in SHARED_PARAMS:
        if hasattr(estimator, name):
            setattr(new, name, getattr(estimator, name))
    return new


def check_score_targets(X, y, K, sample_weight=None):
    """The ``y`` and ``sample_weight`` of a ``score(X, y, sample_weight)``.

    Parameters
    ----------
    X : array-like or tensor of shape (n, ...)
        The images scored (only their number is used).
    y : array-like or tensor of shape (n, K)
        Their true gamma: real and finite (:func:`check_gamma_targets`), one
        row per image (a single row is not broadcast to all of them).
    K : int
        The number of basis elements.
    sample_weight : array-like of shape (n,) or None
        Finite, non-negative and not all zero
        (:func:`~deepblur._validation.check_sample_weight`).

    Returns
    -------
    y : ndarray of shape (n, K), float64
    sample_weight : ndarray of shape (n,) or None
    """
    y = check_gamma_targets(y, K)
    if len(y) != len(X):
        raise ValueError(f"X and y must hold as many samples; got {len(X)} "
                         f"images and {len(y)} gamma.")
    return y, check_sample_weight(sample_weight, len(y))


def _check_nonzero_operators(gram, y_true):
    """``y_true`` as float64, refused when a row is a zero operator (its
    relative error is undefined)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    energy = np.einsum("nk,kl,nl->n", y_true, np.asarray(gram, dtype=np.float64),
                       y_true)
    if not np.all(energy > 0):
        zero = np.flatnonzero(~(energy > 0))
        raise ValueError(
            f"y: the relative operator error against a zero operator is "
            f"undefined (||H[y_i]||_F = 0 for row {int(zero[0])}"
            f"{f' and {len(zero) - 1} more' if len(zero) > 1 else ''}): every "
            "estimate of it scores -inf, a perfect one NaN. Leave such rows "
            "out of y.")
    return y_true


def operator_error_score(gram, y_true, y_pred, sample_weight=None):
    """Minus the mean relative operator error (higher is better, 0 exact).

    ``y_true`` and ``sample_weight`` as checked by :func:`check_score_targets`.
    A true operator of zero norm (``y_true`` a row of zeros) has no relative
    error and is refused (as :func:`deepblur.metrics.snr` refuses an
    all-zero clean image): its -inf (NaN for a perfect estimate, or with a
    zero weight) ranked every candidate of a search alike.
    """
    gram = np.asarray(gram, dtype=np.float64)
    return _operator_error_score(gram, _check_nonzero_operators(gram, y_true),
                                 y_pred, sample_weight)


def _operator_error_score(gram, y_true, y_pred, sample_weight):
    """:func:`operator_error_score` of ``y_true`` already checked (float64,
    no zero operator) in the float64 ``gram``."""
    err = relative_frobenius_error(
        torch.as_tensor(y_true), torch.as_tensor(np.asarray(y_pred, dtype=np.float64)),
        torch.as_tensor(gram), eps=0.0).numpy()
    return -weighted_mean(err, sample_weight)


def estimates_score(estimator, gram, X, y, sample_weight=None):
    """The body of the ``score`` of an estimator of ``gamma``: ``y`` and
    ``sample_weight`` checked (:func:`check_score_targets`), then
    :func:`operator_error_score` of its ``predict(X)``, made without the
    support check (the estimates are measured against the truth)."""
    y, sample_weight = check_score_targets(X, y, np.shape(gram)[0], sample_weight)
    # before the estimates, which can take minutes (a point-source fit per image)
    gram = np.asarray(gram, dtype=np.float64)
    y = _check_nonzero_operators(gram, y)
    with support_check_silenced():
        gamma_hat = estimator.predict(X)
    return _operator_error_score(gram, y, gamma_hat, sample_weight)


class SharedBasisMixin(FrozenComponentsMixin):
    """For estimators of ``gamma`` whose ``basis`` parameter is a fitted basis.

    The basis defines what ``gamma`` means, so ``clone`` shares it rather than
    unfitting it, and every use checks that it is given and fitted.
    """

    #: what the estimator needs the basis for (completes the error message)
    _basis_role = "it defines the operators"

    def __sklearn_clone__(self):
        """Clone the hyper-parameters but share the *fitted* basis (and sampler)."""
        return clone_sharing_fitted(self)

    def _fitted_basis(self):
        if self.basis is None:
            raise ValueError(
                f"basis must be given (a fitted ProductConvolutionBasis): "
                f"{self._basis_role}; got basis=None."
            )
        check_is_fitted(self.basis, "gram_",
                        msg="basis must be a fitted ProductConvolutionBasis; "
                            "call basis.fit(psf_fields) first (got an unfitted one).")
        return self.basis

    def _fitted_K(self):
        """The number of coefficients the fitted estimator gives."""
        raise NotImplementedError

    def _predicting_basis(self):
        """The basis, for a fitted estimator: one set (``set_params``) since
        ``fit`` with another image shape or K is refused, asking for a new
        ``fit`` (the estimates were those of the fitted basis, and the score
        measured them in the new one's metric)."""
        basis = self._fitted_basis()
        check_basis_geometry(tuple(int(s) for s in basis.image_shape_),
                             int(np.asarray(basis.gram_).shape[0]),
                             self.image_shape_, self._fitted_K(),
                             type(self).__name__)
        return basis

    def score(self, X, y, sample_weight=None):
        """Minus the mean relative operator error (higher is better, 0 exact).

        ``-mean_i ||H[y_i] - H[yhat_i]||_F / ||H[y_i]||_F`` with the Gram
        matrix of the basis (as :meth:`ResNetBlurRegressor.score`).

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)
            Images.
        y : array-like of shape (n, K)
            Their true gamma (finite, one row per image; a row of a zero
            operator, whose relative error is undefined, is refused).
        sample_weight : array-like of shape (n,), default=None
            Weights of the images' errors in the mean (finite, non-negative).

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        return estimates_score(self, self._predicting_basis().gram_, X, y,
                               sample_weight)


def image_noise_levels(X):
    """Estimated noise standard deviation of each image, float64 ``(n,)``.

    ``X`` of shape ``(n, H, W)`` or ``(n, 1, H, W)`` (array or tensor), by
    :func:`~deepblur.solvers.tv.estimate_noise_level` in chunks of images.
    """
    arr = X.detach() if torch.is_tensor(X) else np.asarray(X)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"X must have shape (n, H, W) or (n, 1, H, W); got "
                         f"{tuple(arr.shape)}.")
    return np.concatenate(
        [np.atleast_1d(estimate_noise_level(arr[i:i + _NOISE_CHUNK]))
         for i in range(0, len(arr), _NOISE_CHUNK)] or [np.empty(0)])


def training_noise_level(X):
    """The noise level of a regressor's training images, or None if unknown.

    A :class:`~deepblur.datasets.simulate.BlurDataset`: the top of its
    ``noise_std`` (0.0 without noise; None when it sets the noise by ``snr``,
    which makes it depend on the image). Arrays: the 99th percentile of the
    levels estimated on the images (:func:`image_noise_levels`). Any other
    dataset, or arrays that the fit's own validation will refuse: None.
    """
    from deepblur.datasets.simulate import BlurDataset

    if isinstance(X, BlurDataset):
        if X.snr is not None:
            return None
        return 0.0 if X.noise_std is None else float(np.max(X.noise_std))
    if isinstance(X, torch.utils.data.Dataset):
        return None
    try:
        levels = image_noise_levels(X)
    except (ValueError, TypeError):
        return None
    return float(np.quantile(levels, 0.99)) if len(levels) else None


def training_noise_std(X):
    """The noise standard deviation (or its ``(low, high)`` range) of a
    regressor's training images when they are drawn with a known one (a
    :class:`~deepblur.datasets.simulate.BlurDataset` with ``noise_std``; 0.0
    for one without noise); None otherwise (arrays, ``snr``, other
    datasets)."""
    from deepblur.datasets.simulate import BlurDataset, _noise_param

    if isinstance(X, BlurDataset) and X.snr is None:
        return 0.0 if X.noise_std is None else _noise_param(X.noise_std)
    return None


def training_boundary(X):
    """How a regressor's training images were blurred at their border: a
    :class:`~deepblur.datasets.simulate.BlurDataset`'s ``boundary``
    (``"zero"``: a dark surrounding, as the paper simulates; ``"crop"``:
    windows of larger scenes); None when unknown (arrays, other datasets)."""
    from deepblur.datasets.simulate import BlurDataset

    return X.boundary if isinstance(X, BlurDataset) else None


def merge_noise_stds(previous, new):
    """The training noise after one more fit on data drawn at ``new``: the
    range covering both, None if either is unknown."""
    if previous is None or new is None:
        return None
    lows, highs = zip(*(np.broadcast_to(v, 2) for v in (previous, new)),
                      strict=True)
    low, high = float(min(lows)), float(max(highs))
    return low if low == high else (low, high)


def merge_noise_levels(previous, new):
    """The training noise level after one more fit on data at ``new``."""
    if previous is None or new is None:
        return None
    return max(float(previous), float(new))


def noise_check_sample(n, size=NOISE_CHECK_SAMPLE):
    """Indices of the (at most ``size``) evenly spaced images checked of ``n``."""
    return np.unique(np.linspace(0, n - 1, min(n, size)).round().astype(int))


#: Image means (median of the noisy images checked) outside this range point
#: at unscaled images (raw counts, or a [0, 1] image of a dim sample) rather
#: than at noise: the noise warning then says so first.
SCALE_HINT_RANGE = (0.05, 5.0)


def noisy_images_message(levels, noise_level, what="images", n_total=None,
                         means=None):
    """The warning about images far noisier than ``noise_level``, or None.

    ``levels``: the estimated noise (:func:`image_noise_levels`) of the
    images checked, a sample of ``n_total`` (default: all were checked).
    None when no level exceeds ``NOISE_WARNING_FACTOR * noise_level``, or
    when ``noise_level`` is None or 0 (unknown, or trained without noise).
    ``means``: those images' mean intensities, when known; if the noisy
    ones' median lies outside :data:`SCALE_HINT_RANGE`, the message names
    the scale as the likely cause (raw camera counts read as noise).
    """
    levels = np.asarray(levels, dtype=np.float64)
    if noise_level is None or not noise_level > 0 or not len(levels):
        return None
    noisy = levels > NOISE_WARNING_FACTOR * noise_level
    if not noisy.any():
        return None
    median = float(np.median(levels[noisy]))
    checked = (f"{len(levels)} {what}" if n_total in (None, len(levels)) else
               f"{len(levels)} {what} checked (evenly spaced among {n_total})")
    scale = ""
    if means is not None:
        mean = float(np.median(np.asarray(means, dtype=np.float64)[noisy]))
        low, high = SCALE_HINT_RANGE
        if not low <= mean <= high:
            scale = (
                f"Their mean intensity is {mean:.3g} (median): regressors take "
                "images scaled as their training images were, and for the "
                "shipped models and the simulator's default (mean 0.5) these "
                "look unscaled (raw counts?) rather than noisy: scale them "
                "to that mean first (deepblur.pretrained.deblur_image and "
                "the command line do), which scales their noise with them. ")
    return scale + (
        f"{int(noisy.sum())} of {checked} are over "
        f"{NOISE_WARNING_FACTOR:g} times noisier than the noisiest images the "
        f"regressor was trained on (noise std {noise_level:.3g}, its "
        f"noise_level_): their noise std is estimated at {median:.3g} (median), "
        f"{median / noise_level:.0f} times that. A blind estimate degrades fast "
        "with noise (the shipped zero-boundary network, trained on noise up to "
        "0.02: 4.5 % operator error at 0.01, 6.7 % at 0.03, 15 % at 0.1, where "
        "the mean operator is at 24 %): denoise or bin the images, or use a "
        "regressor trained at their noise level."
    )


@contextlib.contextmanager
def noise_check_suspended():
    """Within it, :func:`warn_if_noisy` checks nothing (in this thread/task)
    but appends the ``noise_level`` it would have checked against to the
    list it yields.

    For callers that split one input over many ``predict`` calls (the tiles
    of an image) and check the noise of the whole once: against the level
    heard here when the estimator they call is a wrapper (a pipeline, a
    search) that has no ``noise_level_`` of its own.
    """
    heard = []
    token = _NOISE_CHECK_SUSPENDED.set(heard)
    try:
        yield heard
    finally:
        _NOISE_CHECK_SUSPENDED.reset(token)


def warn_if_noisy(X, noise_level):
    """Issue a :class:`~deepblur.exceptions.NoisyImageWarning` if it applies.

    The noise of at most ``NOISE_CHECK_SAMPLE`` evenly spaced images of ``X``
    is estimated (see :func:`noisy_images_message`). Nothing is checked when
    ``X`` is a dataset rather than images, or images the noise estimate
    cannot take, or within :func:`noise_check_suspended`, or when
    ``noise_level`` is None or 0 (unknown, or trained without noise: the
    message would be None whatever the images).
    """
    if (noise_level is None or not noise_level > 0
            or isinstance(X, torch.utils.data.Dataset)):
        return
    heard = _NOISE_CHECK_SUSPENDED.get()
    if heard is not None:
        heard.append(float(noise_level))
        return
    try:
        arr = X if torch.is_tensor(X) else np.asarray(X)
        sample = arr[noise_check_sample(len(arr))]
        levels = image_noise_levels(sample)
    except (ValueError, TypeError, IndexError):
        return
    # (integer tensors have no torch mean: in float64, as their levels are)
    means = [float(x.detach().double().mean() if torch.is_tensor(x)
                   else np.mean(x, dtype=np.float64)) for x in sample]
    message = noisy_images_message(levels, noise_level, n_total=len(arr),
                                   means=means)
    if message is not None:
        warnings.warn(message, NoisyImageWarning, stacklevel=user_stacklevel())


def image_to_gamma_tags(tags, *, target_required=True):
    """scikit-learn tags of an estimator that takes images ``(n, H, W)`` or
    ``(n, 1, H, W)`` (not tabular data) and gives one ``gamma`` of ``K``
    coefficients per image."""
    tags.input_tags.two_d_array = False
    tags.input_tags.three_d_array = True
    tags.target_tags.required = target_required
    tags.target_tags.multi_output = True
    return tags
