"""Losses on coefficient vectors ``gamma`` of a product-convolution family."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from deepblur._validation import check_families, check_real, scalar_value

__all__ = ["PSFMomentLoss", "RelativeFrobeniusLoss", "psf_moment_fields",
           "relative_frobenius_error"]


def _as_gram(gram):
    check_real(gram, "gram")
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


def _check_eps(eps):
    """``eps`` as a float: a finite, non-negative number (a 0-d array or
    tensor too, but no boolean or string); a negative or NaN one made the
    error of a perfect prediction NaN."""
    value = scalar_value(eps)
    if value is None or not (np.isfinite(value) and value >= 0):
        raise ValueError(f"eps must be a finite, non-negative float; got "
                         f"{eps!r}.")
    return value


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
        In the wider dtype of ``gamma_true`` and ``gamma_pred``, float32 at
        least: the quadratic forms of half-precision coefficients are
        computed in float32 (float16 overflows past 65 504; with the shipped
        basis's Gram matrix they reach 12 935 on 256 draws of its sampler,
        and they grow with the images' pixel count).

    Raises
    ------
    ValueError
        If an input is complex (casting it would drop its imaginary part) or
        ``eps`` is not a finite, non-negative number.
    """
    check_real(gamma_true, "gamma_true")
    check_real(gamma_pred, "gamma_pred")
    check_real(gram, "gram")
    eps = _check_eps(eps)
    dtype = torch.promote_types(
        torch.promote_types(gamma_true.dtype, gamma_pred.dtype), torch.float32)
    gamma_true = gamma_true.to(dtype)
    gamma_pred = gamma_pred.to(dtype)
    G = gram.to(dtype=dtype, device=gamma_pred.device)
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
        self.eps = _check_eps(eps)
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


def psf_moment_fields(kernels, maps):
    r"""Raw moments of the local PSF of each elementary operator, per pixel.

    The PSF of ``H[g] = sum_k g_k e_k * (f_k . )`` at pixel ``x`` (its response
    to a point source there) is ``sum_k g_k f_k(x) e_k``, so its raw moments
    are linear in ``g``: ``moments[c](x) = sum_k g_k A[k, c](x)`` with
    ``A[k, c] = m_c(e_k) f_k`` and ``m_c`` the kernel's sum, its second
    moments along rows and along columns and its cross moment, about the
    kernel's centre ``((h - 1) // 2, (w - 1) // 2)``, the index that the
    operators put on the point source (scipy's ``mode="same"`` centre, see
    :mod:`deepblur.operators.product_convolution`).

    Parameters
    ----------
    kernels : array-like of shape (K, h, w)
    maps : array-like of shape (K, H, W)

    Returns
    -------
    ndarray of shape (K, 4, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> e = np.zeros((1, 3, 3)); e[0, 1, 0] = e[0, 1, 2] = 0.5   # +-1 column
    >>> A = psf_moment_fields(e, np.full((1, 2, 2), 2.0))
    >>> A[0, :, 0, 0]          # sum, rows, columns, cross, times f = 2
    array([2., 0., 2., 0.])
    """
    e = np.asarray(check_real(kernels, "kernels"), dtype=np.float64)
    f = np.asarray(check_real(maps, "maps"), dtype=np.float64)
    if e.ndim != 3 or f.ndim != 3 or e.shape[0] != f.shape[0]:
        raise ValueError(
            "kernels and maps must have shapes (K, h, w) and (K, H, W) with the "
            f"same K; got {e.shape} and {f.shape}."
        )
    # kernels or maps of no pixel gave moments of 0 or NaN standardised
    # targets; NaN or Inf ones NaN targets (as the operators refuse them)
    check_families(e, f)
    i = (np.arange(e.shape[1]) - (e.shape[1] - 1) // 2)[:, None]
    j = (np.arange(e.shape[2]) - (e.shape[2] - 1) // 2)[None, :]
    m = np.stack([e.sum((1, 2)), (e * i**2).sum((1, 2)), (e * j**2).sum((1, 2)),
                  (e * i * j).sum((1, 2))], 1)
    return m[:, :, None, None] * f[:, None]


class PSFMomentLoss(nn.Module):
    r"""MSE on ``gamma`` plus the error of a predicted map of local PSF moments.

    For a module that returns ``(gamma, moments)`` in training (a
    :class:`~deepblur.nets.ResNet` with ``moment_stage``), the loss is
    ``mse(gamma_hat, g) + weight * mse(moments, M(g))`` where ``M(g)`` is the
    field of :func:`psf_moment_fields` of the true operator, averaged over
    the cells of the predicted map and standardised per moment (mean and
    standard deviation over ``gamma_samples`` and the pixels). Given
    ``gamma_hat`` alone (evaluation), it is the MSE on ``gamma``.

    The moments are linear in ``g``, so they add no information about the
    operator; they tell the trunk *where* the blur is and what it is
    locally, which it otherwise learns only through the global coefficients
    (benchmarks/README.md, "Supervising the local PSF moments"). A skorch
    history's ``train_loss`` therefore includes the moment term and its
    ``valid_loss`` (evaluation mode) does not: compare validation losses
    only.

    Parameters
    ----------
    kernels : array-like of shape (K, h, w)
        The basis's kernels (``ProductConvolutionBasis.kernels_``).
    maps : array-like of shape (K, H, W)
        The basis's coefficient maps (``ProductConvolutionBasis.maps_``).
    gamma_samples : array-like of shape (n, K)
        Coefficients of the training distribution (e.g. draws of its
        :class:`~deepblur.ConeSampler`), for the standardisation.
    weight : float, default=0.01
        Weight of the moment term (the standardised moments start near 1,
        the MSE on ``gamma`` of the shipped setting near 0.01).

    Examples
    --------
    >>> import torch
    >>> from deepblur.nets import PSFMomentLoss
    >>> loss = PSFMomentLoss(torch.rand(2, 5, 5), torch.rand(2, 16, 16),
    ...                      torch.rand(100, 2))
    >>> g = torch.rand(3, 2)
    >>> float(loss(g, g))
    0.0
    >>> loss((g, torch.zeros(3, 4, 4, 4)), g).item() > 0
    True
    """

    def __init__(self, kernels, maps, gamma_samples, weight=0.01):
        super().__init__()
        A = psf_moment_fields(np.asarray(kernels), np.asarray(maps))
        g = np.asarray(check_real(gamma_samples, "gamma_samples"),
                       dtype=np.float64)
        if g.ndim != 2 or g.shape[1] != A.shape[0] or len(g) < 2:
            raise ValueError(
                f"gamma_samples must have shape (n >= 2, K={A.shape[0]}); got "
                f"{g.shape}."
            )
        if not np.isfinite(g).all():
            raise ValueError("gamma_samples must be finite; got NaN or Inf.")
        if not (isinstance(weight, (int, float)) and not isinstance(weight, bool)
                and np.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be a non-negative number; got {weight!r}.")
        self.weight = float(weight)
        # mean and variance over the samples and pixels, in closed form:
        # field(x) = g . A[:, c, x], so E = mu . A and Var = A^T C A + var_x(E)
        mu = g.mean(0)
        C = np.atleast_2d(np.cov(g, rowvar=False))
        flat = A.reshape(A.shape[0], 4, -1)
        mean_x = np.einsum("k,kcx->cx", mu, flat)
        var = (np.einsum("kcx,kl,lcx->c", flat, C, flat) / flat.shape[-1]
               + mean_x.var(1))
        scale = np.sqrt(np.maximum(var, 1e-30))
        self.register_buffer("fields", torch.tensor(A / scale[None, :, None, None],
                                                    dtype=torch.float32))
        self.register_buffer("offset", torch.tensor(mean_x.mean(1) / scale,
                                                    dtype=torch.float32))

    def target(self, gamma, size):
        """Standardised moment maps of ``gamma`` (n, K) at ``size`` (h, w)."""
        fields = self.fields.to(gamma.dtype)
        K, c, H, W = fields.shape
        pooled = F.adaptive_avg_pool2d(fields.reshape(K * c, H, W), tuple(size))
        pooled = pooled.reshape(K, c, *size)
        return (torch.einsum("nk,kcyx->ncyx", gamma, pooled)
                - self.offset.to(gamma.dtype)[None, :, None, None])

    def forward(self, y_pred, y_true):
        """Loss of ``(gamma_hat, moments)`` or ``gamma_hat`` against ``g``."""
        moments = None
        if isinstance(y_pred, (tuple, list)):
            y_pred, moments = y_pred
        K = self.fields.shape[0]
        if y_pred.shape != y_true.shape or y_pred.shape[-1] != K:
            raise ValueError(
                f"y_pred and y_true must both have shape (n, K={K}); got "
                f"{tuple(y_pred.shape)} and {tuple(y_true.shape)}."
            )
        loss = F.mse_loss(y_pred, y_true)
        if moments is None or self.weight == 0:
            return loss
        if moments.ndim != 4 or moments.shape[:2] != (len(y_true), 4):
            raise ValueError("moments must have shape (n, 4, h, w); got "
                             f"{tuple(moments.shape)}.")
        target = self.target(y_true.to(moments.dtype), moments.shape[-2:])
        return loss + self.weight * F.mse_loss(moments, target)
