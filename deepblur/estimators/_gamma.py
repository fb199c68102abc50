"""What the gamma estimators share: checking, projecting and scoring estimates."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import _clone_parametrized
from sklearn.utils.validation import check_is_fitted

from deepblur.nets.losses import relative_frobenius_error


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


def project_estimates(sampler, gamma, gram):
    """Estimates on the sampler's support, nearest in the metric ``gram``.

    ``gamma`` unchanged when ``sampler`` is None; otherwise in its dtype.
    """
    if check_sampler(sampler, gamma.shape[1]) is None:
        return gamma
    return sampler.project(gamma, gram=gram).astype(gamma.dtype, copy=False)


def clone_sharing_fitted(estimator):
    """``clone`` of the hyper-parameters sharing the fitted basis and sampler.

    They are data of the model (what ``gamma`` means, where it may lie), not
    hyper-parameters to refit; scikit-learn's clone would unfit them and
    break ``GridSearchCV``. They are never modified, so sharing is safe.
    """
    new = _clone_parametrized(estimator)
    for name in ("basis", "sampler"):
        if hasattr(estimator, name):
            setattr(new, name, getattr(estimator, name))
    return new


def operator_error_score(gram, y_true, y_pred, sample_weight=None):
    """Minus the mean relative operator error (higher is better, 0 exact)."""
    err = relative_frobenius_error(
        torch.as_tensor(np.asarray(y_true, dtype=np.float64)),
        torch.as_tensor(np.asarray(y_pred, dtype=np.float64)),
        torch.as_tensor(np.asarray(gram, dtype=np.float64)), eps=0.0).numpy()
    return -float(np.average(err, weights=sample_weight))


class SharedBasisMixin:
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

    def score(self, X, y, sample_weight=None):
        """Minus the mean relative operator error (higher is better, 0 exact).

        ``-mean_i ||H[y_i] - H[yhat_i]||_F / ||H[y_i]||_F`` with the Gram
        matrix of the basis (as :meth:`ResNetBlurRegressor.score`).
        """
        return operator_error_score(self._fitted_basis().gram_, y, self.predict(X),
                                    sample_weight)
