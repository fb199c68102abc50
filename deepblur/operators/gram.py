r"""Exact Frobenius geometry of product-convolution families.

The elementary operators ``H_k u = e_k * (f_k \odot u)`` span the model. Their
Gram matrix ``G_kl = <H_k, H_l>_F`` gives the Frobenius distance between any two
operators of the family in ``O(K^2)``:

.. math:: \|H[\gamma] - H[\gamma']\|_F^2 = (\gamma - \gamma')^T G (\gamma - \gamma').

Closed forms
------------
Write ``(H_k)_{ij} = e_k(i - j + s) f_k(j)`` with ``s`` the kernel centre.

``"periodic"``: with ``\bar e_k`` the kernel wrapped onto the image torus,
``G = (\bar E^T \bar E) \odot (F^T F)`` where the columns of ``\bar E`` and
``F`` are the flattened wrapped kernels and maps.

``"zero"``: the kernel offset ``d`` only reaches rows inside the image, so

.. math:: G_{kl} = \sum_d e_k(d) e_l(d) \sum_j f_k(j) f_l(j)\,
          \mathbb{1}[0 \le j + d - s < N],

the correlation of ``e_k \odot e_l`` with the image's indicator, weighted by
``f_k f_l``. The indicator is separable, so the inner sums are two small
matrix products per pair.
"""

from __future__ import annotations

import numpy as np
import torch

from deepblur._validation import check_boundary, check_families, check_real
from deepblur.operators.product_convolution import place_kernels

__all__ = ["gram_matrix", "operator_distance"]


def _window_matrix(n, k):
    """``A[d, j] = 1[0 <= j + d - (k - 1) // 2 < n]`` of shape (k, n)."""
    d = np.arange(k)[:, None]
    j = np.arange(n)[None, :]
    t = j + d - (k - 1) // 2
    return ((t >= 0) & (t < n)).astype(np.float64)


def gram_matrix(kernels, maps, boundary="zero"):
    """Frobenius Gram matrix of the elementary operators, in float64.

    Parameters
    ----------
    kernels : array-like of shape (K, kh, kw)
    maps : array-like of shape (K, H, W)
    boundary : {"zero", "periodic"}

    Returns
    -------
    G : ndarray of shape (K, K), symmetric positive semi-definite.

    Raises
    ------
    ValueError
        If ``boundary`` is unknown, or ``kernels`` and ``maps`` are not a
        product-convolution family (the checks of
        :class:`~deepblur.operators.ProductConvolution`): not 3-D, different
        numbers ``K`` of kernels and maps, empty kernels, NaN or Inf
        entries, or complex ones.

    Examples
    --------
    >>> import numpy as np
    >>> e = np.zeros((1, 3, 3)); e[0, 1, 1] = 1.0      # identity kernel
    >>> f = np.ones((1, 4, 4))
    >>> gram_matrix(e, f, "zero")                      # ||Id||_F^2 = 16
    array([[16.]])
    """
    check_boundary(boundary)
    check_real(kernels, "kernels")
    check_real(maps, "maps")
    e = np.asarray(kernels.detach().cpu() if torch.is_tensor(kernels) else kernels,
                   dtype=np.float64)
    f = np.asarray(maps.detach().cpu() if torch.is_tensor(maps) else maps,
                   dtype=np.float64)
    check_families(e, f)
    K, kh, kw = e.shape
    _, H, W = f.shape
    if boundary == "periodic":
        wrapped = place_kernels(torch.from_numpy(e), (H, W)).numpy().reshape(K, -1)
        flat = f.reshape(K, -1)
        return (wrapped @ wrapped.T) * (flat @ flat.T)
    A = _window_matrix(H, kh)  # (kh, H)
    B = _window_matrix(W, kw)  # (kw, W)
    G = np.empty((K, K))
    for k in range(K):
        prod_maps = f[k][None] * f[k:]                   # (K-k, H, W)
        window_sums = A @ prod_maps @ B.T                # (K-k, kh, kw)
        prod_kernels = e[k][None] * e[k:]                # (K-k, kh, kw)
        row = np.einsum("lde,lde->l", prod_kernels, window_sums)
        G[k, k:] = row
        G[k:, k] = row
    return G


def operator_distance(gamma_a, gamma_b, gram, relative=True, eps=0.0):
    r"""Frobenius distance between ``H[gamma_a]`` and ``H[gamma_b]``.

    ``sqrt((a - b)^T G (a - b))``, divided by ``||H[a]||_F = sqrt(a^T G a)``
    when ``relative`` (``gamma_a`` is the reference, e.g. the true operator).
    Works on numpy arrays and on torch tensors (differentiable), batched over
    leading dimensions.

    Parameters
    ----------
    gamma_a, gamma_b : array-like or torch.Tensor of shape (..., K)
    gram : array-like or torch.Tensor of shape (K, K)
    relative : bool, default=True
    eps : float, default=0.0
        Added under the square roots (keeps gradients finite at zero).

    Returns
    -------
    Array or tensor of shape (...,).
        A tensor when ``gamma_a`` or ``gamma_b`` is one, on its device, in the
        widest floating dtype of the tensor inputs (at least float32; integer
        and boolean tensors count as torch's default dtype, so nothing is
        truncated, and a float64 tensor is not rounded to float32), arrays
        and the Gram matrix taken in it; else a float64 array.

    Raises
    ------
    ValueError
        If an input is complex (casting it would drop its imaginary part).
    """
    for x, name in ((gamma_a, "gamma_a"), (gamma_b, "gamma_b"), (gram, "gram")):
        check_real(x, name)
    if torch.is_tensor(gamma_a) or torch.is_tensor(gamma_b):
        inputs = [x if torch.is_tensor(x) else np.asarray(x)
                  for x in (gamma_a, gamma_b, gram)]
        device = next(x.device for x in inputs if torch.is_tensor(x))
        dtype = torch.float32
        for x in inputs:
            if torch.is_tensor(x):
                dtype = torch.promote_types(dtype, x.dtype if x.is_floating_point()
                                            else torch.get_default_dtype())
        a, b, G = (torch.as_tensor(x, device=device).to(dtype) for x in inputs)
        diff = a - b
        num = torch.einsum("...k,kl,...l->...", diff, G, diff).clamp_min(0)
        dist = torch.sqrt(num + eps)
        if relative:
            den = torch.einsum("...k,kl,...l->...", a, G, a).clamp_min(0)
            dist = dist / torch.sqrt(den + eps)
        return dist
    a = np.asarray(gamma_a, dtype=np.float64)
    b = np.asarray(gamma_b, dtype=np.float64)
    G = np.asarray(gram, dtype=np.float64)
    diff = a - b
    dist = np.sqrt(np.maximum(np.einsum("...k,kl,...l->...", diff, G, diff), 0) + eps)
    if relative:
        den = np.sqrt(np.maximum(np.einsum("...k,kl,...l->...", a, G, a), 0) + eps)
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = dist / den
    return dist
