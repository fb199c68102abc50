"""Discrete image gradient (forward differences, Neumann boundary) and its adjoint.

Notes
-----
For a batch of images ``u`` of shape ``(n, H, W)`` the gradient ``D u`` has shape
``(n, 2, H, W)``:

.. math::

    (D u)_{0, i, j} &= u_{i+1, j} - u_{i, j} \\quad (i < H - 1),
    \\qquad (D u)_{0, H-1, j} = 0, \\\\
    (D u)_{1, i, j} &= u_{i, j+1} - u_{i, j} \\quad (j < W - 1),
    \\qquad (D u)_{1, i, W-1} = 0.

Component 0 differentiates along rows (axis -2), component 1 along columns
(axis -1); the last difference in each direction is zero (Neumann boundary).
The isotropic total variation used by the solvers is
``TV(u) = sum_ij sqrt((D u)_{0,ij}^2 + (D u)_{1,ij}^2)``.

:func:`gradient_adjoint` is the exact adjoint ``D^T`` (minus a discrete
divergence): ``<D u, p> = <u, D^T p>`` for every ``u`` and ``p``, which the tests
check to rounding. ``||D||_2^2 < 8``.
"""

from __future__ import annotations

__all__ = ["gradient", "gradient_adjoint", "GRADIENT_NORM_SQUARED_BOUND"]

#: Upper bound of ``||D||_2^2`` for the 2-D forward-difference gradient.
GRADIENT_NORM_SQUARED_BOUND = 8.0


def gradient(u):
    """Forward-difference gradient with Neumann boundary.

    Parameters
    ----------
    u : torch.Tensor of shape (..., H, W)
        Images (any leading batch dimensions).

    Returns
    -------
    g : torch.Tensor of shape (..., 2, H, W)
        ``g[..., 0, :, :]`` differences along rows, ``g[..., 1, :, :]`` along
        columns; the last row (resp. column) of each component is zero.

    Examples
    --------
    >>> import torch
    >>> u = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    >>> gradient(u)[0]
    tensor([[[2., 3.],
             [0., 0.]],
    <BLANKLINE>
            [[1., 0.],
             [2., 0.]]])
    """
    g = u.new_zeros(u.shape[:-2] + (2,) + u.shape[-2:])
    g[..., 0, :-1, :] = u[..., 1:, :] - u[..., :-1, :]
    g[..., 1, :, :-1] = u[..., :, 1:] - u[..., :, :-1]
    return g


def gradient_adjoint(p):
    """Exact adjoint of :func:`gradient` (minus the discrete divergence).

    Parameters
    ----------
    p : torch.Tensor of shape (..., 2, H, W)
        Vector fields. The last row of ``p[..., 0]`` and the last column of
        ``p[..., 1]`` are ignored, as :func:`gradient` always sets them to zero.

    Returns
    -------
    u : torch.Tensor of shape (..., H, W)

    Examples
    --------
    >>> import torch
    >>> u = torch.randn(3, 5, 6, dtype=torch.float64)
    >>> p = torch.randn(3, 2, 5, 6, dtype=torch.float64)
    >>> lhs = (gradient(u) * p).sum()
    >>> rhs = (u * gradient_adjoint(p)).sum()
    >>> bool(torch.isclose(lhs, rhs))
    True
    """
    p0 = p[..., 0, :-1, :]
    p1 = p[..., 1, :, :-1]
    u = p.new_zeros(p.shape[:-3] + p.shape[-2:])
    u[..., :-1, :] -= p0
    u[..., 1:, :] += p0
    u[..., :, :-1] -= p1
    u[..., :, 1:] += p1
    return u
