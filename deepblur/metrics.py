"""Image-quality metrics for deblurring, and scikit-learn scorers built on them.

``psnr`` and ``snr`` take numpy arrays or torch tensors (any floating dtype,
bfloat16 included) of shape ``(H, W)`` or ``(n, H, W)``, at any magnitude,
and return one value per image. The scorers are callables
``scorer(estimator, X, y)`` (what ``GridSearchCV(scoring=...)`` and
``cross_val_score`` accept) that deblur ``X`` with ``estimator.transform`` and
compare with the clean images ``y``; higher is better.
"""

from __future__ import annotations

import numpy as np
import torch

from deepblur._validation import check_dense

__all__ = ["psnr", "snr", "psnr_scorer", "snr_scorer", "psf_field_scorer",
           "clean_ranges"]


def _as_batch(x, name):
    check_dense(x, name)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():       # numpy has no bfloat16
            x = x.to(torch.float64)
        x = x.numpy()
    if np.iscomplexobj(x):
        raise ValueError(f"{name} must hold real numbers; got complex values.")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim not in (2, 3):
        raise ValueError(
            f"{name} must have 2 or 3 dimensions (H, W) or (n, H, W); got an array "
            f"of shape {x.shape}."
        )
    if x.size == 0:
        raise ValueError(f"{name} must hold at least one pixel; got an array of "
                         f"shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must contain only finite values; got NaN or Inf.")
    return x


def _pair(reference, estimate):
    ref = _as_batch(reference, "reference")
    est = _as_batch(estimate, "estimate")
    if ref.shape != est.shape:
        raise ValueError(
            f"reference and estimate must have the same shape; got {ref.shape} and "
            f"{est.shape}."
        )
    single = ref.ndim == 2
    if single:
        ref, est = ref[None], est[None]
    ref, est = ref.reshape(len(ref), -1), est.reshape(len(est), -1)
    # Both images of a pair divided by the power of two at or below their
    # largest magnitude (exact): the sums of squares neither overflow (images
    # of magnitude 1e200 gave NaN) nor underflow (1e-200), and the ratios of
    # the metrics do not change.
    peak = np.maximum(np.abs(ref).max(axis=1, initial=0.0),
                      np.abs(est).max(axis=1, initial=0.0))
    scale = np.ldexp(1.0, np.frexp(np.where(peak > 0, peak, 1.0))[1] - 1)
    return ref / scale[:, None], est / scale[:, None], scale, single


def _db(num, den):
    with np.errstate(divide="ignore"):
        return 10.0 * (np.log10(num) - np.log10(den))


def psnr(reference, estimate, *, data_range=None):
    """Peak signal-to-noise ratio in dB, one value per image.

    ``PSNR = 10 log10(data_range^2 / mean((reference - estimate)^2))``.

    Parameters
    ----------
    reference : array-like or torch.Tensor of shape (n, H, W) or (H, W)
        Clean images.
    estimate : array-like or torch.Tensor of the same shape
        Restored images.
    data_range : float or array-like of shape (n,), optional
        Dynamic range of the images. By default the peak-to-peak range
        ``max - min`` of each *reference* image (not the dtype's range, and
        never the estimate's, so that the score cannot be gamed by the
        estimate).

    Returns
    -------
    psnr : float or numpy.ndarray of shape (n,)
        ``inf`` for a perfect estimate.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.zeros((4, 4)); ref[1:3, 1:3] = 1.0
    >>> est = ref + 0.1
    >>> round(float(psnr(ref, est)), 6)
    20.0
    >>> psnr(np.stack([ref, ref]), np.stack([est, ref]))
    array([20., inf])
    """
    ref, est, scale, single = _pair(reference, estimate)
    if data_range is None:
        rng = ref.max(axis=1) - ref.min(axis=1)
    else:
        rng = np.asarray(data_range)
        if rng.dtype.kind not in "iuf":
            # numbers only: numpy read True and "1" as 1.0
            raise ValueError(f"data_range must hold numbers (a float, or one "
                             f"per image); got {data_range!r}.")
        rng = rng.astype(np.float64)
        if rng.ndim > 1 or rng.size not in (1, len(ref)):
            raise ValueError(
                f"data_range must be a float or hold one value per image "
                f"({len(ref)}); got shape {rng.shape}."
            )
        rng = np.broadcast_to(rng, (len(ref),))
        if not np.all(rng > 0):
            raise ValueError(f"data_range must be positive; got {data_range!r}.")
        rng = rng / scale
    if np.any(rng <= 0):
        raise ValueError(
            f"data_range is zero for the constant reference image(s) "
            f"{np.flatnonzero(rng <= 0).tolist()}: pass data_range to psnr "
            "(the scorers and TVDeblurrer.score use the range of all the "
            "clean images for those)."
        )
    mse = np.mean((ref - est) ** 2, axis=1)
    out = _db(rng**2, mse)
    return float(out[0]) if single else out


def snr(reference, estimate):
    """Signal-to-noise ratio in dB, one value per image.

    ``SNR = 10 log10(||reference||^2 / ||reference - estimate||^2)`` (the
    definition used in the paper's Fig. 3).

    Parameters
    ----------
    reference, estimate : array-like or torch.Tensor of shape (n, H, W) or (H, W)

    Returns
    -------
    snr : float or numpy.ndarray of shape (n,)

    Raises
    ------
    ValueError
        When a reference image is all zero (its SNR is undefined).

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.ones((8, 8))
    >>> round(float(snr(ref, 0.9 * ref)), 6)
    20.0
    """
    ref, est, _, single = _pair(reference, estimate)
    energy = np.sum(ref**2, axis=1)
    if not np.all(energy > 0):
        black = np.flatnonzero(~(energy > 0))
        raise ValueError(
            f"reference: the SNR against an all-zero clean image is undefined (image "
            f"{int(black[0])}{f' and {len(black) - 1} more' if len(black) > 1 else ''}"
            "): every estimate of it scores -inf, a perfect one NaN. Score such "
            "images (background crops) with psnr / psnr_scorer, which use a "
            "data range.")
    out = _db(energy, np.sum((ref - est) ** 2, axis=1))
    return float(out[0]) if single else out


def clean_ranges(y):
    """Data ranges of clean images for the scorers: each image's
    peak-to-peak range, or, for a constant image (a background patch), the
    range of the whole set of clean images.

    Parameters
    ----------
    y : array-like or torch.Tensor of shape (n, H, W) or (H, W)

    Returns
    -------
    ranges : numpy.ndarray of shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> y = np.zeros((2, 4, 4)); y[0, 1:3, 1:3] = 2.0; y[1] = 0.5
    >>> clean_ranges(y)
    array([2., 2.])
    """
    ref = _as_batch(y, "y")
    ref = ref.reshape(len(ref), -1) if ref.ndim == 3 else ref.reshape(1, -1)
    ranges = ref.max(axis=1) - ref.min(axis=1)
    flat = ranges <= 0
    if flat.any():
        whole = float(ref.max() - ref.min())
        if not whole > 0:
            raise ValueError(
                "every clean image is the same constant: a PSNR needs a data "
                "range; score the deblurring on images with some structure, "
                "or call deepblur.metrics.psnr with data_range set.")
        ranges[flat] = whole
    return ranges


def psnr_scorer(estimator, X, y):
    """Mean :func:`psnr` of ``estimator.transform(X)`` against ``y``.

    A scorer for ``GridSearchCV(..., scoring=psnr_scorer)``; the data range is
    each clean image's peak-to-peak range, or for a constant clean image (a
    background patch) the range of all the clean images
    (:func:`clean_ranges`).

    Examples
    --------
    >>> import numpy as np
    >>> class Identity:
    ...     def transform(self, X):
    ...         return X
    >>> y = np.zeros((2, 4, 4)); y[:, 1:3, 1:3] = 1.0
    >>> round(psnr_scorer(Identity(), y + 0.1, y), 6)
    20.0
    """
    return float(np.mean(psnr(y, estimator.transform(X),
                              data_range=clean_ranges(y))))


def snr_scorer(estimator, X, y):
    """Mean :func:`snr` of ``estimator.transform(X)`` against ``y``.

    Raises ``ValueError`` when a clean image of ``y`` is all zero (its SNR
    is undefined; ``GridSearchCV`` then scores the fold NaN): score sets
    with background crops with :func:`psnr_scorer`.
    """
    return float(np.mean(snr(y, estimator.transform(X))))


def psf_field_scorer(estimator, X, y=None):
    """Minus the mean relative error of PSF fields through an operator model.

    ``-mean_p ||T_p - M(T_p)|| / ||T_p||`` with ``M = inverse_transform o
    transform`` of ``estimator``: for a ``Pipeline`` of a
    :class:`~deepblur.ProductConvolutionBasis` and a
    :class:`~deepblur.ConeSimplifier`, ``M`` projects each held-out operator on
    the ``K``-term expansion and then on the cone, so the score measures how
    well the whole operator model (``K`` and ``n_rays``) represents operators
    it has not seen. Higher is better, 0 is exact.

    Parameters
    ----------
    estimator : fitted estimator with ``transform`` and ``inverse_transform``
    X : ndarray of shape (P, gy, gx, kh, kw) or (P, n_positions, kh, kw)
        Held-out PSF fields.
    y : None
        Ignored.

    Returns
    -------
    score : float

    Examples
    --------
    >>> import numpy as np
    >>> class Shrink:
    ...     def transform(self, X):
    ...         return X
    ...     def inverse_transform(self, X):
    ...         return 0.9 * X
    >>> round(psf_field_scorer(Shrink(), np.ones((2, 3, 5, 5))), 6)
    -0.1
    """
    T = np.asarray(X, dtype=np.float64)
    T_hat = np.asarray(estimator.inverse_transform(estimator.transform(X)),
                       dtype=np.float64)
    if T_hat.shape != T.shape:
        raise ValueError(
            "estimator.inverse_transform(estimator.transform(X)) must have the "
            f"shape of X {T.shape}; got {T_hat.shape}."
        )
    num = np.linalg.norm((T - T_hat).reshape(len(T), -1), axis=1)
    den = np.linalg.norm(T.reshape(len(T), -1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(den > 0, num / den, np.where(num > 0, np.inf, 0.0))
    return -float(np.mean(rel))
