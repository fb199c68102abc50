"""What the gamma estimators share: checking targets and scoring estimates."""

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
        """Clone the hyper-parameters but share the *fitted* basis."""
        new = _clone_parametrized(self)
        new.basis = self.basis
        return new

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
