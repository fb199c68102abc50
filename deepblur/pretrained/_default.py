"""The default setting of the shipped model: basis, cone, sampler, noise."""

from __future__ import annotations

import numpy as np

from deepblur.datasets.random_operators import make_random_operators
from deepblur.estimators.basis import ProductConvolutionBasis
from deepblur.estimators.cone import ConeSampler, ConeSimplifier

__all__ = ["DEFAULT_SETTING", "compare_estimators", "make_default_setting",
           "relative_errors"]

#: Paper section 3: 128x128 images, K = 20, random operators of section 1.2.1,
#: cone simplified (Algorithm 1) and sampled (Algorithm 2, alpha in [0.8, 1.2]).
#: The training images are blurred with the zero boundary (``boundary="zero"``
#: of :func:`deepblur.datasets.blur_images`), as the shipped model was. A
#: network trained so reads much of the blur from the dark border that this
#: boundary leaves: on windows of larger scenes (``boundary="crop"``: real
#: images, tiles of large ones) the shipped model's operator error is 40 %,
#: worse than the mean operator's 24 %. The network shipped beside it for
#: such images (``load_default(estimator="crop_network")``) was trained on
#: crops: 16.6 % there (benchmarks/README.md).
DEFAULT_SETTING = dict(
    n_operators=200, image_shape=(128, 128), kernel_shape=(25, 25),
    grid_shape=(16, 16), n_components=20, n_rays=40, alpha_range=(0.8, 1.2),
    noise_std=0.01, image_mean=0.5, boundary="zero", random_state=0,
)


def make_default_setting(**overrides):
    """Fit the seeded basis, cone and sampler of the default setting.

    Parameters
    ----------
    **overrides
        Entries of :data:`DEFAULT_SETTING` to change (e.g. a smaller
        ``image_shape`` for a quick run).

    Returns
    -------
    setting : dict
        ``basis`` (fitted :class:`ProductConvolutionBasis`), ``cone`` (fitted
        :class:`ConeSimplifier`), ``sampler`` (fitted :class:`ConeSampler` on
        the cone's rays), ``gamma`` (coefficients of the training operators)
        and ``params`` (the setting used).
    """
    params = dict(DEFAULT_SETTING, **overrides)
    unknown = set(params) - set(DEFAULT_SETTING)
    if unknown:
        raise ValueError(
            f"overrides must be among {sorted(DEFAULT_SETTING)}; got {sorted(unknown)}."
        )
    seed = params["random_state"]
    ops = make_random_operators(
        params["n_operators"], image_shape=params["image_shape"],
        kernel_shape=params["kernel_shape"], grid_shape=params["grid_shape"],
        random_state=seed)
    basis = ProductConvolutionBasis(params["n_components"],
                                    image_shape=params["image_shape"],
                                    random_state=seed).fit(ops.psf_fields)
    gamma = basis.transform(ops.psf_fields)
    cone = ConeSimplifier(n_rays=min(params["n_rays"], len(gamma))).fit(gamma)
    sampler = ConeSampler(alpha_range=params["alpha_range"],
                          random_state=seed).fit(cone.rays_)
    return dict(basis=basis, cone=cone, sampler=sampler, gamma=gamma, params=params)


def relative_errors(gamma_true, gamma_pred, gram):
    """Operator, direction and scale errors of estimates, per row.

    Returns a dict of arrays: ``operator`` = ``||H[g] - H[g_hat]||_F /
    ||H[g]||_F``; ``direction`` = the same after the optimal rescaling
    ``c = <g, g_hat>_G / <g_hat, g_hat>_G`` of ``g_hat``; ``scale`` =
    ``| ||H[g_hat]||_F / ||H[g]||_F - 1 |``.
    """
    a = np.asarray(gamma_true, dtype=np.float64)
    b = np.asarray(gamma_pred, dtype=np.float64)
    G = np.asarray(gram, dtype=np.float64)

    def sq(x, y):
        return np.einsum("nk,kl,nl->n", x, G, y)

    aa, bb, ab = sq(a, a), sq(b, b), sq(a, b)
    operator = np.sqrt(np.maximum(aa - 2 * ab + bb, 0) / aa)
    c = np.where(bb > 0, ab / np.where(bb > 0, bb, 1), 0.0)
    direction = np.sqrt(np.maximum(aa - c * ab, 0) / aa)
    scale = np.abs(np.sqrt(bb / aa) - 1)
    return dict(operator=operator, direction=direction, scale=scale)


def compare_estimators(estimators, basis, sampler, images, n_images, *,
                       noise_std=0.01, boundary="crop", mean_gamma=None,
                       random_state=None):
    """Mean errors of several estimators on the same simulated test images.

    ``n_images`` images are drawn from ``images`` (patches, flips and
    rotations), blurred by operators of ``sampler`` with the ``boundary``
    model and corrupted by noise ``noise_std``
    (:func:`~deepblur.datasets.make_blurred_images`); every estimator
    predicts ``gamma`` of the same images.

    Parameters
    ----------
    estimators : dict of str to estimator
        Anything with ``predict(X) -> (n, K)``, by name.
    basis : fitted ProductConvolutionBasis
    sampler : fitted ConeSampler
    images : dict, list of arrays or ndarray
        Clean test source images.
    n_images : int
    noise_std : float or (low, high), default=0.01
    boundary : {"crop", "zero"}, default="crop"
    mean_gamma : array-like of shape (K,), optional
        When given, the errors of always predicting it are reported as
        ``"baseline"``.
    random_state : int, RandomState or None

    Returns
    -------
    errors : dict
        ``{name: {"operator": float, "direction": float, "scale": float}}``,
        the means of :func:`relative_errors`.
    rates : dict
        Images per second of each estimator's ``predict``.
    """
    import time

    from deepblur.datasets.simulate import make_blurred_images

    X, y = make_blurred_images(images, basis, sampler, n_images,
                               noise_std=noise_std, boundary=boundary,
                               random_state=random_state)
    predictions, rates = {}, {}
    for name, estimator in estimators.items():
        start = time.perf_counter()
        predictions[name] = estimator.predict(X)
        rates[name] = len(X) / max(time.perf_counter() - start, 1e-9)
    if mean_gamma is not None:
        predictions["baseline"] = np.tile(np.asarray(mean_gamma), (len(y), 1))
    errors = {name: {k: float(v.mean()) for k, v in
                     relative_errors(y, pred, basis.gram_).items()}
              for name, pred in predictions.items()}
    return errors, rates
