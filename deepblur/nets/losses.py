"""Losses on coefficient vectors ``gamma`` of a product-convolution family."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["RelativeFrobeniusLoss", "relative_frobenius_error"]


def _as_gram(gram):
    G = torch.as_tensor(np.asarray(gram.detach().cpu() if torch.is_tensor(gram)
                                   else gram, dtype=np.float64))
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(
            f"gram must be a square (K, K) matrix; got shape {tuple(G.shape)}."
        )
    if not torch.isfinite(G).all():
        raise ValueError("gram must be finite; got NaN or Inf entries.")
    if not torch.allclose(G, G.T, rtol=1e-6, atol=1e-12 * float(G.abs().max())):
        raise ValueError("gram must be symmetric (a Gram matrix); got an "
                         "asymmetric matrix.")
    return G


def relative_frobenius_error(gamma_true, gamma_pred, gram, eps=1e-12):
    r"""Relative Frobenius distance ``||H[g] - H[g_hat]||_F / ||H[g]||_F``.

    ``sqrt((g - g_hat)^T G (g - g_hat) / g^T G g)`` per row, differentiable in
    torch; ``G`` is the exact Gram matrix of the elementary operators
    (:attr:`deepblur.ProductConvolutionBasis.gram_`).

    Parameters
    ----------
    gamma_true, gamma_pred : torch.Tensor of shape (..., K)
    gram : torch.Tensor of shape (K, K)
    eps : float, default=1e-12
        Added under the square roots, relative to the trace of ``gram``
        (keeps the gradient finite at a perfect prediction).

    Returns
    -------
    torch.Tensor of shape (...,)
    """
    G = gram.to(dtype=gamma_pred.dtype, device=gamma_pred.device)
    diff = gamma_true - gamma_pred
    scale = eps * torch.diagonal(G).mean()
    num = torch.einsum("...k,kl,...l->...", diff, G, diff).clamp_min(0) + scale
    den = torch.einsum("...k,kl,...l->...", gamma_true, G, gamma_true).clamp_min(0)
    return torch.sqrt(num / (den + scale))


class RelativeFrobeniusLoss(nn.Module):
    r"""Mean relative Frobenius distance between true and estimated operators.

    For a batch of true coefficients ``g`` and estimates ``g_hat`` (rows), the
    loss is ``mean_i sqrt((g_i - g_hat_i)^T G (g_i - g_hat_i) / g_i^T G g_i)``,
    i.e. ``||H[g_i] - H[g_hat_i]||_F / ||H[g_i]||_F`` averaged over the batch
    (paper section 2.2).

    Parameters
    ----------
    gram : array-like or torch.Tensor of shape (K, K)
        Exact Frobenius Gram matrix ``<H_k, H_l>_F`` of the family, e.g.
        ``ProductConvolutionBasis(...).fit(...).gram_``.
    reduction : {"mean", "sum", "none"}, default="mean"
    eps : float, default=1e-12
        Relative regulariser under the square roots.
    squared : bool, default=False
        Average the squared relative errors instead (smooth at zero, like
        MSE, whose gradients are less noisy than those of the plain ratio).

    Examples
    --------
    >>> import torch
    >>> from deepblur.nets import RelativeFrobeniusLoss
    >>> loss = RelativeFrobeniusLoss(torch.eye(2))
    >>> g = torch.tensor([[3.0, 4.0]])
    >>> round(float(loss(torch.tensor([[3.0, 3.0]]), g)), 6)   # |(0, 1)| / 5
    0.2
    """

    def __init__(self, gram, reduction="mean", eps=1e-12, squared=False):
        super().__init__()
        self.squared = bool(squared)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(
                "reduction must be one of 'mean', 'sum', 'none'; got "
                f"{reduction!r}."
            )
        self.reduction = reduction
        self.eps = float(eps)
        self.register_buffer("gram", _as_gram(gram).to(torch.float32))

    def forward(self, y_pred, y_true):
        """Loss of predictions ``y_pred`` against targets ``y_true`` (n, K)."""
        K = self.gram.shape[0]
        if y_pred.shape != y_true.shape or y_pred.shape[-1] != K:
            raise ValueError(
                f"y_pred and y_true must both have shape (n, K={K}); got "
                f"{tuple(y_pred.shape)} and {tuple(y_true.shape)}."
            )
        err = relative_frobenius_error(y_true, y_pred, self.gram, self.eps)
        if self.squared:
            err = err.square()
        if self.reduction == "mean":
            return err.mean()
        if self.reduction == "sum":
            return err.sum()
        return err
