"""Spectral norms of linear operators by power iteration.

The solvers need the Lipschitz constant ``L = ||H||_2^2`` of ``u -> H^T H u``;
the blur operators are batched (one operator per image), so the iteration runs
on the whole batch at once and returns one norm per batch element.
"""

from __future__ import annotations

import math
import numbers

import torch

from deepblur._validation import check_positive_int

__all__ = ["power_iteration"]


def _batch_norm(x):
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)


def power_iteration(forward, adjoint, x0, *, max_iter=100, tol=1e-5,
                    generator=None):
    """Largest singular value of a batch of linear operators.

    Parameters
    ----------
    forward, adjoint : callable
        ``forward(x)`` applies ``H`` and ``adjoint(y)`` applies ``H^T`` to a
        batch whose first dimension indexes independent operators.
    x0 : torch.Tensor
        A tensor with the shape, dtype and device of the operator's input. Only
        its shape, dtype and device are used: the start is a seeded random
        vector (a random start has a non-zero component on the top singular
        vector with probability one, unlike a constant image).
    max_iter : int, default=100
        Cap on the number of iterations, at least 1.
    tol : float, default=1e-5
        Stop when every element's estimate changed by less than ``tol``
        relative between two iterations; finite and non-negative (0 runs
        ``max_iter`` iterations unless the estimate stops changing).
    generator : torch.Generator, optional
        Source of the random start. By default a CPU generator seeded with 0,
        and the start is then moved to ``x0``'s device: the same start, hence
        the same estimate up to rounding, on every device (CUDA's generator
        draws other numbers than the CPU's for the same seed).

    Returns
    -------
    sigma : torch.Tensor of shape (n,)
        Estimates of ``||H_i||_2``. Power iteration approaches the norm from
        below; callers that need an upper bound (step sizes) multiply by a
        small safety factor.

    Raises
    ------
    ValueError
        If ``max_iter`` is not an int >= 1 (no iteration would return a norm
        of 0, on which a step size divides) or ``tol`` is not a finite,
        non-negative number.

    Examples
    --------
    >>> import torch
    >>> A = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))
    >>> fwd = lambda x: x @ A.T
    >>> adj = lambda y: y @ A
    >>> sigma = power_iteration(fwd, adj, torch.zeros(1, 3, dtype=torch.float64))
    >>> round(float(sigma[0]), 4)
    3.0
    """
    check_positive_int(max_iter, "max_iter")
    if not (isinstance(tol, numbers.Real) and not isinstance(tol, bool)
            and math.isfinite(tol) and tol >= 0):
        raise ValueError(
            f"tol must be a finite, non-negative float; got {tol!r}."
        )
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                        device=generator.device).to(x0.device)
        shape = (-1,) + (1,) * (x.ndim - 1)
        x = x / _batch_norm(x).reshape(shape)
        sigma2 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(max_iter):
            y = adjoint(forward(x))
            new = _batch_norm(y)
            done = bool(((new - sigma2).abs() <= tol * new).all())
            sigma2 = new
            x = y / torch.clamp(new, min=torch.finfo(x.dtype).tiny).reshape(shape)
            if done:
                break
        return torch.sqrt(sigma2)
