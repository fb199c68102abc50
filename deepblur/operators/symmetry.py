"""The rotations and flips of a square image acting on product-convolution
operators.

The dihedral group of the square has 8 elements: ``t % 4`` quarter turns,
then a left-right flip when ``t >= 4``. An element ``T`` acts on images as a
permutation of their pixels, and on an operator by conjugation: the
observation of a transformed image, ``T y = (T H T^-1)(T u) + T eta``, is
blurred by ``T H T^-1``. For a product-convolution ``H = sum_k gamma_k e_k *
(f_k . u)`` with odd kernels, ``T H T^-1`` is the product-convolution with
the transformed kernels ``T e_k`` (turned about their centre) and maps
``T f_k``. Its coefficients in the basis are those of its orthogonal
projection on the basis's span (Frobenius inner product, exact through
:func:`~deepblur.operators.gram_matrix`): exact when the span is closed
under the group, as for a basis fitted to a family closed under it
(:func:`deepblur.pretrained.make_default_setting` with
``symmetry="dihedral"``).

These maps let a regressor average its estimates over the 8 transformed
copies of an image (:class:`~deepblur.ResNetBlurRegressor`'s
``test_time_augmentation``): each copy's estimate, brought back, estimates
the same operator.
"""

from __future__ import annotations

import numpy as np
import torch

from deepblur.operators.gram import gram_matrix

__all__ = ["CLOSURE_TOLERANCE", "N_DIHEDRAL", "dihedral_maps", "dihedral_transform"]

#: Number of elements of the dihedral group of the square.
N_DIHEDRAL = 8

#: The largest share of a transformed elementary operator outside a basis's
#: span for the basis to count as closed under the group (the default
#: setting's basis fitted to the symmetrised family: 0.05 % on average, 0.36 %
#: at most; the shipped basis, fitted to the family alone: 3-4 %, up to 21 %).
CLOSURE_TOLERANCE = 0.01


def _check_element(t):
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not (
            0 <= t < N_DIHEDRAL):
        raise ValueError(f"t must be an element of the dihedral group, an int "
                         f"from 0 to {N_DIHEDRAL - 1}; got {t!r}.")
    return int(t)


def dihedral_transform(x, t, *, inverse=False):
    """Apply the group element ``t`` (or its inverse) to the last two axes.

    ``t % 4`` quarter turns (counter-clockwise, as :func:`numpy.rot90`), then
    a left-right flip when ``t >= 4``.

    Parameters
    ----------
    x : array-like or torch.Tensor of shape (..., H, W)
        Square in its last two axes unless ``t`` is 0, 2, 4 or 6 (the
        elements that keep the shape of any rectangle).
    t : int, 0 to 7
    inverse : bool, default=False
        Apply ``T^-1`` instead.

    Returns
    -------
    Array or tensor like ``x`` (a contiguous copy).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(4.0).reshape(2, 2)
    >>> dihedral_transform(x, 1)
    array([[1., 3.],
           [0., 2.]])
    >>> bool(np.array_equal(dihedral_transform(dihedral_transform(x, 5), 5,
    ...                                        inverse=True), x))
    True
    """
    t = _check_element(t)
    turns, flip = t % 4, t >= 4
    if not torch.is_tensor(x):
        x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (..., H, W); got "
                         f"shape {tuple(x.shape)}.")
    if turns % 2 and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"a quarter turn (t={t}) needs square images; got "
                         f"shape {tuple(x.shape[-2:])}.")
    if torch.is_tensor(x):
        if not inverse:
            y = torch.rot90(x, turns, dims=(-2, -1))
            return (torch.flip(y, dims=(-1,)) if flip else y).contiguous()
        y = torch.flip(x, dims=(-1,)) if flip else x
        return torch.rot90(y, -turns, dims=(-2, -1)).contiguous()
    if not inverse:
        y = np.rot90(x, turns, axes=(-2, -1))
        return np.ascontiguousarray(y[..., ::-1] if flip else y)
    y = x[..., ::-1] if flip else x
    return np.ascontiguousarray(np.rot90(y, -turns, axes=(-2, -1)))


def dihedral_maps(kernels, maps, boundary="zero"):
    """How each element of the group acts on the coefficients of a basis.

    Parameters
    ----------
    kernels : array-like of shape (K, kh, kw)
        Odd ``kh`` and ``kw`` (a kernel's centre must stay its centre); a
        quarter turn swaps them, so kernels that are not square are padded
        with zeros to ``max(kh, kw)`` on both sides (the same operators).
    maps : array-like of shape (K, H, W)
        Square (``H == W``).
    boundary : {"zero", "periodic"}, default="zero"

    Returns
    -------
    forward : ndarray of shape (8, K, K)
        ``forward[t] @ gamma``: the coefficients of ``T H[gamma] T^-1``
        (projected on the span).
    back : ndarray of shape (8, K, K)
        ``back[t] @ gamma'``: the coefficients of ``T^-1 H[gamma'] T`` (the
        operator of a transformed copy brought back), projected.
    outside : ndarray of shape (8, K)
        Share of ``||T^-1 H_k T||_F^2`` outside the span, for each element
        and elementary operator ``H_k``: 0 for a basis closed under the
        group (then ``back[t] = inv(forward[t])``), and the error floor of
        bringing an estimate back otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> e = np.zeros((1, 3, 3)); e[0, 1] = 1 / 3      # a horizontal blur
    >>> f = np.ones((1, 4, 4))
    >>> forward, back, outside = dihedral_maps(e, f)
    >>> float(outside[1, 0]) > 0.5                    # turned, it is vertical
    True
    >>> both = dihedral_maps(np.concatenate([e, np.swapaxes(e, 1, 2)]),
    ...                      np.concatenate([f, f]))
    >>> bool(np.abs(both[2]).max() < 1e-12)          # the pair: closed
    True
    """
    e = np.asarray(kernels, dtype=np.float64)
    f = np.asarray(maps, dtype=np.float64)
    if e.ndim != 3 or f.ndim != 3 or len(e) != len(f):
        raise ValueError(f"kernels (K, kh, kw) and maps (K, H, W) must have the "
                         f"same K; got shapes {e.shape} and {f.shape}.")
    if e.shape[1] % 2 == 0 or e.shape[2] % 2 == 0:
        raise ValueError(f"the kernels must have odd sizes (a turned kernel's "
                         f"centre must stay its centre); got {e.shape[1:]}.")
    if f.shape[1] != f.shape[2]:
        raise ValueError(f"the rotations and flips need square maps; got "
                         f"{f.shape[1:]}.")
    # a quarter turn of a kh x kw kernel is kw x kh: pad to a square of
    # the larger odd size about the same centre, (k - 1) // 2
    m = max(e.shape[1:])
    rows, cols = (m - e.shape[1]) // 2, (m - e.shape[2]) // 2
    e = np.pad(e, ((0, 0), (rows, rows), (cols, cols)))
    K = len(e)
    G = gram_matrix(e, f, boundary)
    forward, back, outside = [], [], []
    for t in range(N_DIHEDRAL):
        moved = [gram_matrix(np.concatenate([e, dihedral_transform(e, t, inverse=i)]),
                             np.concatenate([f, dihedral_transform(f, t, inverse=i)]),
                             boundary)
                 for i in (False, True)]
        forward.append(np.linalg.solve(G, moved[0][:K, K:]))
        B = moved[1][:K, K:]
        back.append(np.linalg.solve(G, B))
        norms = np.diag(moved[1][K:, K:])
        inside = np.einsum("jk,jk->k", B, back[-1])
        outside.append(np.clip(1 - inside / norms, 0.0, 1.0))
    return np.stack(forward), np.stack(back), np.stack(outside)
