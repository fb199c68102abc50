r"""Low-rank models of collections of PSF fields.

A PSF field is the impulse response of a blur operator measured at
``n_positions`` places of the field of view (e.g. micro-beads). For a
product-convolution operator ``H[gamma] u = sum_k gamma_k e_k * (f_k u)`` the
impulse response at pixel ``x`` is ``sum_k gamma_k f_k(x) e_k``. A collection
of ``P`` fields, stacked as a tensor ``T`` of shape ``(P, n_positions, kh*kw)``,
therefore follows a rank-``K`` three-way (CP / PARAFAC) model

.. math:: T_{pxd} \approx \sum_{k=1}^K \Gamma_{pk} F_{xk} E_{dk},

with ``Gamma`` the coefficients of each operator, ``F`` the maps sampled at the
positions and ``E`` the kernels. This module fits that model (SVD
initialisation, then alternating least squares), projects new fields on a fixed
family, and extends the sampled maps to every pixel with thin-plate splines.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy.interpolate import RBFInterpolator
from threadpoolctl import threadpool_limits

from deepblur._validation import check_positive_int

__all__ = [
    "cp_als",
    "grid_positions",
    "interpolate_maps",
    "project_fields",
    "reconstruct_fields",
]


def grid_positions(image_shape, grid_shape):
    """Integer pixel positions (row, col) of a regular ``grid_shape`` grid.

    Cell ``(i, j)`` is represented by the pixel at the cell's centre,
    ``floor((i + 1/2) H / gy)``, so every measurement lies on a pixel.

    Returns
    -------
    ndarray of shape (gy * gx, 2), row-major over the grid.
    """
    (H, W), (gy, gx) = image_shape, grid_shape
    rows = np.floor((np.arange(gy) + 0.5) * H / gy).astype(int)
    cols = np.floor((np.arange(gx) + 0.5) * W / gx).astype(int)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=1)


def _mttkrp(T, A, B, mode):
    """Matricised tensor times Khatri-Rao product, without forming the latter."""
    if mode == 0:   # A: F (x, K), B: E (d, K)
        return np.einsum("pxk,xk->pk", T @ B, A)
    if mode == 1:   # A: Gamma (p, K), B: E
        return np.einsum("pxk,pk->xk", T @ B, A)
    # mode 2: A: Gamma (p, K), B: F (x, K)
    P, X, D = T.shape
    TtA = (T.reshape(P, X * D).T @ A).reshape(X, D, -1)
    return np.einsum("xdk,xk->dk", TtA, B)


def _solve_normal(M, V):
    """Least-squares factor update ``M V^{-1}`` with V symmetric PSD."""
    try:
        return np.linalg.solve(V.T, M.T).T
    except np.linalg.LinAlgError:
        return M @ np.linalg.pinv(V)


def _leading_vectors(gram, k, rng):
    """Top-``k`` eigenvectors of a PSD Gram matrix, completed at random."""
    w, v = np.linalg.eigh(gram)
    order = np.argsort(w)[::-1]
    v = v[:, order]
    n = gram.shape[0]
    if k <= n:
        return v[:, :k]
    extra = rng.standard_normal((n, k - n))
    return np.concatenate([v, extra], axis=1)


def _leading_right_vectors(M, k, rng):
    """Top-``k`` right singular vectors of ``M`` (m, n): the eigenvectors of
    ``M^T M``, from that (n, n) Gram matrix or, when ``M`` has fewer rows,
    from the thin SVD of ``M`` (large PSF crops: ``n = kh * kw`` is then
    in the thousands and the Gram's eigendecomposition costs ``O(n^3)``).
    Past the ``m`` directions of ``M``'s rows (``k > m``, with ``k <= n``)
    the basis is completed by orthonormal directions of their orthogonal
    complement (the Gram route's null-space eigenvectors, up to rotation)."""
    m, n = M.shape
    if n <= m:
        return _leading_vectors(M.T @ M, k, rng)
    _, _, vt = np.linalg.svd(M, full_matrices=False)      # (m, n)
    v = vt.T
    if k <= m:
        return v[:, :k]
    extra = rng.standard_normal((n, min(k, n) - m))
    extra -= v @ (v.T @ extra)                             # out of the row space
    q, _ = np.linalg.qr(np.concatenate([v, extra], axis=1))
    q[:, :m] = v                                           # signs as the SVD's
    return q


def reconstruct_fields(gamma, F, E):
    """``sum_k gamma_pk F_xk E_dk`` as an array of shape (P, x, d)."""
    return np.einsum("pk,xk,dk->pxd", gamma, F, E, optimize=True)


def project_fields(T, F, E):
    """Least-squares coefficients of fields ``T`` (P, x, d) in a fixed family.

    Solves ``min_gamma ||T_p - sum_k gamma_k F_k E_k||`` for every ``p`` with the
    normal equations ``((F^T F) * (E^T E)) gamma = mttkrp``.
    """
    V = (F.T @ F) * (E.T @ E)
    return _solve_normal(_mttkrp(T, F, E, 0), V)


def _als_sweeps(T, gamma, F, E, norm_T, max_iter, tol):
    history = []
    prev = np.inf
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007
        F = _solve_normal(_mttkrp(T, gamma, E, 1), (gamma.T @ gamma) * (E.T @ E))
        E = _solve_normal(_mttkrp(T, gamma, F, 2), (gamma.T @ gamma) * (F.T @ F))
        # Keep the scale in gamma: unit-norm F and E columns.
        F /= np.maximum(np.linalg.norm(F, axis=0), np.finfo(float).tiny)
        E /= np.maximum(np.linalg.norm(E, axis=0), np.finfo(float).tiny)
        gamma = _solve_normal(_mttkrp(T, F, E, 0), (F.T @ F) * (E.T @ E))
        res = _relative_residual(T, gamma, F, E, norm_T)
        history.append(res)
        if abs(prev - res) <= tol * max(res, 1e-300) or res < 1e-13:
            break
        prev = res
    return gamma, F, E, n_iter, history


def cp_als(T, n_components, *, init="svd", max_iter=2000, tol=1e-10, n_refine=20,
           random_state=None):
    """Rank-``K`` CP decomposition of a three-way tensor by ALS.

    Parameters
    ----------
    T : ndarray of shape (P, X, D)
    n_components : int
    init : {"svd", "random"}, default="svd"
        Start from the compressed tensor's truncated higher-order SVD, or from
        random factors drawn from ``random_state``.
    max_iter : int, default=2000
        Cap on ALS sweeps on the compressed tensor.
    tol : float, default=1e-10
        Stop when the relative residual ``||T - T_hat|| / ||T||`` changes by less
        than ``tol`` (relative) between two sweeps.
    n_refine : int, default=20
        Cap on ALS sweeps on the full tensor after the compressed solve.
    random_state : None, int, numpy Generator or RandomState, default=None
        Random initial factors (``init="random"``); also completes the SVD
        initialisation when ``K`` exceeds a mode's size.

    Returns
    -------
    gamma : ndarray (P, K)
    F : ndarray (X, K)
    E : ndarray (D, K)
    info : dict with ``n_iter`` (sweeps, compressed + full), ``residual``
        (relative, on the full tensor) and ``history``.

    Notes
    -----
    1. Compression (CANDELINC): the position and kernel modes are projected on
       the leading ``r = min(dim, 2K + 5)`` left singular vectors of their
       unfoldings. This is lossless whenever those unfoldings have rank at most
       ``r`` (always the case for an exact rank-``K`` model) and makes an ALS
       sweep cost ``O(P r^2 K)`` instead of ``O(P X D K)``.
    2. ALS on the compressed tensor from its truncated higher-order SVD: the
       three linear least-squares problems are solved in turn; the fit cannot
       get worse from one sweep to the next.
    3. The factors are lifted back and refined by a few ALS sweeps on the full
       tensor (which removes the compression's bias for approximate models).
    """
    T = np.asarray(T, dtype=np.float64)
    if T.ndim != 3:
        raise ValueError(f"T must have 3 dimensions (P, X, D): operators, "
                         f"positions, kernel pixels; got shape {T.shape}.")
    K = check_positive_int(n_components, "n_components")
    if init not in ("svd", "random"):
        raise ValueError(f"init must be 'svd' or 'random'; got {init!r}.")
    for name, value in (("max_iter", max_iter), ("n_refine", n_refine)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int; got {value!r}.")
    if not (isinstance(tol, Real) and tol >= 0):
        raise ValueError(f"tol must be a non-negative float; got {tol!r}.")
    if isinstance(random_state, np.random.RandomState):
        random_state = random_state.randint(np.iinfo(np.int32).max)
    rng = np.random.default_rng(random_state)   # a Generator is kept as is
    P, X, D = T.shape
    norm_T = np.linalg.norm(T)
    if norm_T == 0:
        raise ValueError("X must not be all zeros: there is no PSF to decompose.")
    T3 = T.reshape(P * X, D)
    r3 = min(D, 2 * K + 5)
    U3 = _leading_right_vectors(T3, r3, rng)
    T2 = np.ascontiguousarray(T.transpose(1, 0, 2)).reshape(X, P * D)
    r2 = min(X, 2 * K + 5)
    U2 = _leading_vectors(T2 @ T2.T, r2, rng)
    core = np.einsum("pxd,xa,db->pab", T, U2, U3, optimize=True)
    norm_core = np.linalg.norm(core)
    if init == "random":
        Fc = rng.standard_normal((r2, K))
        Ec = rng.standard_normal((r3, K))
    else:
        # In the compressed coordinates the HOSVD directions are the axes.
        Fc = _leading_vectors(np.eye(r2), K, rng) if K > r2 else np.eye(r2)[:, :K]
        Ec = _leading_vectors(np.eye(r3), K, rng) if K > r3 else np.eye(r3)[:, :K]
    gamma = project_fields(core, Fc, Ec)
    # The compressed sweeps are many small matrix products: threading them
    # costs more than it gains (4x slower on 2 busy cores), so BLAS runs on
    # one thread here and on all of them for the full-size steps.
    with threadpool_limits(limits=1, user_api="blas"):
        gamma, Fc, Ec, n1, hist1 = _als_sweeps(core, gamma, Fc, Ec, norm_core,
                                               max_iter, tol)
    F, E = U2 @ Fc, U3 @ Ec
    gamma = project_fields(T, F, E)
    hist1 = [_relative_residual(T, gamma, F, E, norm_T)]
    n2 = 0
    if n_refine > 0 and hist1[-1] > 1e-12:
        gamma, F, E, n2, hist2 = _als_sweeps(T, gamma, F, E, norm_T, n_refine, tol)
        hist1 = hist1 + hist2
    # The history uses an expanded formula (cheap, accurate to ~sqrt(eps));
    # the final residual is computed directly.
    residual = np.linalg.norm(T - reconstruct_fields(gamma, F, E)) / norm_T
    return gamma, F, E, {"n_iter": n1 + n2, "residual": residual,
                         "history": np.asarray(hist1)}


def _relative_residual(T, gamma, F, E, norm_T):
    # ||T - That||^2 = ||T||^2 - 2 <T, That> + ||That||^2, all in O(PXK + K^2 ...)
    inner = np.sum(_mttkrp(T, F, E, 0) * gamma)
    model = np.sum((gamma.T @ gamma) * (F.T @ F) * (E.T @ E))
    sq = max(norm_T**2 - 2 * inner + model, 0.0)
    if sq < 1e-10 * norm_T**2:
        # the expansion cancels to ~sqrt(eps) relative: near an exact fit the
        # residual (and the stopping test on it) needs the direct formula
        return float(np.linalg.norm(T - reconstruct_fields(gamma, F, E)) / norm_T)
    return np.sqrt(sq) / norm_T


def interpolate_maps(positions, values, image_shape, *, smoothing=0.0):
    """Extend map samples at ``positions`` to every pixel (thin-plate spline).

    Positions on one line (a single row or column of beads, or two
    positions), or nearly (their root-mean-square distance to the line
    under 5 % of the image's extent across it), determine the maps along
    that line only: they are interpolated along it (through the samples'
    projections on it) and constant across it. Samples at the same position
    (e.g. two beads rounded to one pixel) count as one, their mean.

    Parameters
    ----------
    positions : ndarray of shape (X, 2)
        (row, col) pixel coordinates of the samples.
    values : ndarray of shape (X, K)
    image_shape : tuple (H, W)
    smoothing : float, default=0
        0 interpolates exactly (the maps pass through the samples).

    Returns
    -------
    ndarray of shape (K, H, W)
    """
    H, W = image_shape
    positions = np.asarray(positions, dtype=np.float64)
    values = np.asarray(values)
    if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) == 0:
        raise ValueError(f"positions must have shape (X, 2), one (row, col) per "
                         f"sample; got shape {positions.shape}.")
    if values.ndim < 1 or len(values) != len(positions):
        raise ValueError(f"values must have one row per position ({len(positions)});"
                         f" got shape {values.shape}.")
    if not (np.isfinite(positions).all() and np.isfinite(values).all()):
        raise ValueError("positions and values must be finite; got NaN or Inf.")
    unique, inverse, counts = np.unique(positions, axis=0, return_inverse=True,
                                        return_counts=True)
    if len(unique) < len(positions):    # a spline through one point twice is singular
        merged = np.zeros((len(unique),) + values.shape[1:], dtype=np.float64)
        np.add.at(merged, inverse.ravel(), values)
        positions, values = unique, merged / counts.reshape(
            (-1,) + (1,) * (values.ndim - 1))
    rr, cc = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    query = np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.float64)
    if positions.shape[0] == 1:
        out = np.repeat(values[None, 0], H * W, axis=0)
    else:
        centre = positions.mean(axis=0)
        _, s, vt = np.linalg.svd(positions - centre, full_matrices=False)
        # the positions' spread across their main line, against the image's
        # extent in that direction: a plane fitted to a spread of a pixel or
        # two is extrapolated over the whole image (a 1-pixel wobble of a
        # row of beads swung the maps to several times their range)
        across = np.abs(vt[1]) @ np.array([H, W], dtype=np.float64)
        line = (positions - centre) @ vt[0][:, None]
        if (s[1] / np.sqrt(len(positions)) <= 0.05 * across
                and np.diff(np.sort(line[:, 0])).min() >= 0.5):
            # on one line or nearly (a row or column of beads, two
            # positions; none within half a pixel of another along it): the
            # spline runs along the line and the maps are constant across it
            positions, query = line, (query - centre) @ vt[0][:, None]
        rbf = RBFInterpolator(positions, values, kernel="thin_plate_spline",
                              smoothing=smoothing, degree=1)
        out = rbf(query)
    return np.ascontiguousarray(out.T.reshape(-1, H, W))
