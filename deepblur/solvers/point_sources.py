r"""Blur identification from images of point sources (beads, single molecules).

An image of isolated point sources under a product-convolution operator is a
sum of local PSFs, one per source:

.. math:: y = H[\gamma] u + \eta, \qquad u = \sum_j a_j \delta_{p_j}
    \quad\Rightarrow\quad
    H[\gamma] u = \sum_j a_j \sum_k \gamma_k f_k(p_j)\, e_k(\cdot - p_j).

Once the positions ``p_j`` are known the model is *bilinear* in the
amplitudes ``a >= 0`` and the coefficients ``gamma``: for fixed ``gamma`` the
amplitudes are a non-negative least-squares problem, for fixed amplitudes
``gamma`` is an ordinary least-squares problem, each in a handful of unknowns.
:func:`fit_point_sources` alternates the two, starting from a given ``gamma``
(e.g. the mean of the cone), with the positions found by
:func:`detect_point_sources` and completed from the residual (sources hidden
by a brighter neighbour). This is how PSFs are calibrated from bead images in
microscopy, made to estimate the whole space-varying operator at once.

The scale ambiguity ``H[c gamma] u = H[gamma] (c u)`` is resolved as in the
simulator: the clean image is taken to have mean ``image_mean``. A constant
offset of the image (a camera's dark level) is fitted beside the amplitudes
and ``gamma``, in both steps, so that each step stays an exact minimiser.
Sources between pixels are fitted by moving the kernels by a sub-pixel offset
(separable cubic splines), refined by Gauss-Newton steps between the fits; a
source whose offset passes 0.6 pixel moves to that pixel when it is free.
Two sources closer than the PSF's width make one maximum: the detection puts
one source between them, the residual rounds add sources a pixel or more
from the hidden ones, and those walk there (the one between them then fits
to zero).

Only the atoms' ``kh x kw`` windows are ever formed: the normal equations are
assembled from the pairs of sources whose windows overlap, so the cost grows
with the number of sources, not with the number of pixels. The zero boundary
(:class:`~deepblur.operators.ProductConvolution` with ``boundary="zero"``) is
modelled exactly: the parts of the PSFs that fall outside the image are not
observed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from numbers import Integral, Real

import numpy as np
import scipy.linalg
import scipy.optimize
from scipy.ndimage import center_of_mass, gaussian_filter, label, maximum_filter

from deepblur._validation import check_finite, check_ndim, scalar_value
from deepblur.exceptions import NoPointSourceError

__all__ = [
    "PointSourceFit",
    "detect_point_sources",
    "fit_point_sources",
    "point_source_image",
]


def detect_point_sources(y, threshold, *, min_distance=2, smoothing=0.0):
    """Pixels that are local maxima of ``y`` above ``threshold``.

    Parameters
    ----------
    y : ndarray of shape (H, W)
    threshold : float
        Minimum value of a detected maximum (e.g. a multiple of the noise
        standard deviation above the background).
    min_distance : int >= 1, default=2
        A maximum must be the largest value in the ``(2 m + 1)^2`` window
        around it. Tied maxima count once: a flat top (a saturated source)
        gives one detection, its pixel nearest the plateau's centre, and no
        two detections are closer than ``m + 1`` pixels along both axes.
    smoothing : float, default=0.0
        Standard deviation (pixels) of a Gaussian filter applied to ``y``
        before the search (a matched filter against noise; ``threshold``
        then applies to the filtered image). 0: none.

    Returns
    -------
    ndarray of shape (J, 2), int
        Row and column of each detection, sorted by decreasing value.

    Raises
    ------
    ValueError
        When ``y`` is not one finite 2-D image, ``threshold`` not a number or
        ``smoothing`` negative.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.zeros((9, 9)); y[2, 3] = 1.0; y[6, 6] = 0.5; y[6, 7] = 0.4
    >>> detect_point_sources(y, 0.1).tolist()
    [[2, 3], [6, 6]]
    """
    if (not isinstance(min_distance, Integral) or isinstance(min_distance, bool)
            or min_distance < 1):
        raise ValueError("min_distance must be an int >= 1 (a maximum is the "
                         f"largest value within it); got {min_distance!r}.")
    value = scalar_value(threshold)
    if value is None or np.isnan(value):
        raise ValueError("threshold must be a number (the smallest value of a "
                         f"detected maximum); got {threshold!r}.")
    threshold = value
    value = scalar_value(smoothing)
    if value is None or not (0 <= value < np.inf):
        raise ValueError("smoothing must be a non-negative number (the "
                         f"filter's standard deviation, 0: none); got {smoothing!r}.")
    smoothing = value
    y = np.asarray(y, dtype=np.float64)
    check_ndim(y, "y", 2, "(H, W): one image")
    check_finite(y, "y")
    if smoothing > 0:
        y = gaussian_filter(y, float(smoothing), mode="constant")
    size = 2 * int(min_distance) + 1
    peaks = (y == maximum_filter(y, size=size, mode="constant", cval=-np.inf))
    peaks &= y > threshold
    # Adjacent maxima are a plateau (each is the largest value of a window
    # holding the other): one detection each, the pixel nearest its centre.
    labels, n = label(peaks, structure=np.ones((3, 3), dtype=bool))
    rows, cols = np.nonzero(peaks)
    if n:
        centres = np.asarray(center_of_mass(peaks, labels, np.arange(1, n + 1)))
        lab = labels[rows, cols] - 1
        dist = (rows - centres[lab, 0]) ** 2 + (cols - centres[lab, 1]) ** 2
        by_label = np.lexsort((dist, lab))
        first = np.r_[True, lab[by_label][1:] != lab[by_label][:-1]]
        rows, cols = rows[by_label][first], cols[by_label][first]
    order = np.argsort(-y[rows, cols], kind="stable")
    # Equal maxima within min_distance of each other that do not touch (a
    # lower pixel between them): the first in order suppresses the others.
    # Distinct maxima are never that close, so they are all kept.
    m = int(min_distance)
    taken = np.zeros(y.shape, dtype=bool)
    keep = []
    for i in order:
        r, c = rows[i], cols[i]
        if taken[r, c]:
            continue
        keep.append(i)
        taken[max(r - m, 0):r + m + 1, max(c - m, 0):c + m + 1] = True
    keep = np.asarray(keep, dtype=np.int64)
    return np.stack([rows[keep], cols[keep]], axis=1).reshape(-1, 2).astype(np.int64)


def _windows(positions, kernel_shape, image_shape):
    """Top-left corner of each source's window and its in-image mask."""
    kh, kw = kernel_shape
    H, W = image_shape
    top = positions[:, 0] - (kh - 1) // 2      # scipy "same" centring
    left = positions[:, 1] - (kw - 1) // 2
    r = top[:, None] + np.arange(kh)[None]
    c = left[:, None] + np.arange(kw)[None]
    inside = (((r >= 0) & (r < H))[:, :, None] & ((c >= 0) & (c < W))[:, None, :])
    return top, left, inside


def _bspline3(x, derivative=False):
    """The cubic B-spline ``beta3(x)`` (or its derivative)."""
    ax = np.abs(x)
    outer = np.maximum(2.0 - ax, 0.0)
    inner = np.maximum(1.0 - ax, 0.0)
    if derivative:
        return np.sign(x) * (2.0 * inner**2 - 0.5 * outer**2)
    return (outer**3 - 4.0 * inner**3) / 6.0


@lru_cache(maxsize=8)
def _spline_prefilter(n):
    """Inverse of the collocation matrix ``beta3(i - j)`` of ``n`` samples."""
    i = np.arange(n)
    return np.linalg.inv(_bspline3(i[:, None] - i[None]))


def _shift_matrix(n, d, derivative=False):
    """``S`` with ``S @ x`` = ``x`` (``n`` samples) moved by ``d`` pixels.

    ``x`` is interpolated by the cubic spline whose coefficients live on its
    ``n`` samples (zero beyond) and read at ``i - d``: ``S(0)`` is the
    identity, and ``derivative=True`` gives ``dS/dd`` exactly.
    """
    i = np.arange(n)
    x = i[:, None] - d - i[None]
    B = -_bspline3(x, derivative=True) if derivative else _bspline3(x)
    return B @ _spline_prefilter(n)


def _shifted_kernels(kernels, offset):
    """The kernels moved by a sub-pixel ``offset`` (row, column): a separable
    cubic-spline shift, two small matrix products."""
    if not np.any(offset):
        return kernels
    kh, kw = kernels.shape[-2:]
    return _shift_matrix(kh, offset[0]) @ kernels @ _shift_matrix(kw, offset[1]).T


def _atoms(kernels, maps, positions, offsets=None):
    """``P[j, k] = f_k(p_j) e_k(. - d_j)``: the window of source ``j`` at pixel
    ``p_j`` moved by the sub-pixel offset ``d_j``, per component."""
    weights = maps[:, positions[:, 0], positions[:, 1]].T          # (J, K)
    if offsets is None or not np.any(offsets):
        return weights[:, :, None, None] * kernels[None]           # (J, K, kh, kw)
    return weights[:, :, None, None] * np.stack(
        [_shifted_kernels(kernels, d) for d in offsets])


#: An offset past this (pixels) moves the source to the next pixel. Not 0.5:
#: a source between two others (the detection's, under their one maximum)
#: sits about half a pixel from its pixel, and walking it onto one of them
#: made the fit of the pair fail (tests/solvers/test_point_sources.py).
WALK = 0.6


def _psf_gains(gamma, kernels, maps, pixels):
    """The sum of the PSF of ``H[gamma]`` at each of ``pixels`` (J, 2):
    ``sum_k gamma_k f_k(p) sum(e_k)``, how much of a source there is seen."""
    pixels = np.asarray(pixels).reshape(-1, 2)
    return (gamma * kernels.sum(axis=(1, 2))) @ maps[:, pixels[:, 0], pixels[:, 1]]


def _check_start(gamma, kernels, maps, name="gamma0"):
    """Raise unless the PSF of ``H[gamma]`` sums to a positive value at some
    pixel: from a start whose PSFs are zero or negative everywhere, every
    non-negative amplitude fits the image worst at 0, and the fit would end
    on 'no point source could be fitted', blaming the image."""
    gains = (gamma * kernels.sum(axis=(1, 2))) @ maps.reshape(len(maps), -1)
    if not (gains > 0).any():
        raise ValueError(
            f"{name} gives PSFs of zero or negative sum at every pixel (their "
            f"largest sum is {gains.max():.3g}): no non-negative source can be "
            "fitted from it. Start from an operator that blurs, e.g. the mean "
            "of the cone's samples."
        )


def _refine_offsets(y, kernels, maps, positions, offsets, amplitudes, gamma):
    """One Gauss-Newton step on the sub-pixel offsets of all sources at once.

    For fixed ``gamma`` each source's PSF is linearised in its offset,
    ``a h(d + e) ~ a h(d) + (a e) . grad_d h(d)`` (the exact gradient of
    the spline shift), and the linear least squares of
    ``y ~ sum_j a_j h_j + (a_j e_j) . grad h_j`` is solved jointly over all
    sources (``y`` without its background), so that overlapping neighbours
    move together. Offsets are returned within one pixel of the source's
    pixel; the caller moves a source whose offset passes ``WALK`` to the
    next pixel when that pixel is free, and clips the others to half a
    pixel: a source never walks onto another source's pixel, so that a dim
    neighbour is not absorbed by a bright source's move but shows in the
    residual and is added by the next round. Sources of zero amplitude take
    no part, and
    a source with a lit neighbouring pixel goes back to its pixel: two
    sources on adjacent pixels already model one between them, and letting
    both move leaves a continuum of equivalent fits.
    """
    kh, kw = kernels.shape[1:]
    J = len(positions)
    lit = amplitudes > 0
    gap = np.abs(positions[:, None] - positions[None]).max(axis=2)
    free = lit & ~((gap == 1) & lit[None]).any(axis=1)
    base = np.einsum("jk,kab->jab",
                     maps[:, positions[:, 0], positions[:, 1]].T * gamma, kernels)
    offsets = np.where(free[:, None] | ~lit[:, None], offsets, 0.0)
    atoms = np.zeros((J, 3, kh, kw))
    for j in np.nonzero(lit)[0]:
        Sr, Sc = _shift_matrix(kh, offsets[j, 0]), _shift_matrix(kw, offsets[j, 1])
        atoms[j, 0] = Sr @ base[j] @ Sc.T
        if free[j]:
            atoms[j, 1] = _shift_matrix(kh, offsets[j, 0], True) @ base[j] @ Sc.T
            atoms[j, 2] = Sr @ base[j] @ _shift_matrix(kw, offsets[j, 1], True).T
    top, left, inside = _windows(positions, (kh, kw), y.shape)
    rows, cols, blocks, b = _normal_equations(atoms, top, left, inside, y)
    M = np.zeros((J, J, 3, 3))
    M[rows, cols] = blocks
    M[cols, rows] = blocks.transpose(0, 2, 1)
    M = M.transpose(0, 2, 1, 3).reshape(3 * J, 3 * J)
    active = np.stack([lit, free, free], axis=1).reshape(-1)
    coef = np.zeros(3 * J)
    A = M[np.ix_(active, active)]
    A[np.diag_indices_from(A)] += 1e-12 * np.trace(A) / max(len(A), 1)
    try:
        coef[active] = scipy.linalg.solve(A, b.reshape(-1)[active], assume_a="pos")
    except np.linalg.LinAlgError:
        coef[active] = np.linalg.lstsq(A, b.reshape(-1)[active], rcond=None)[0]
    coef = coef.reshape(J, 3)
    new = offsets.copy()
    ok = free & (coef[:, 0] > 0)
    new[ok] = np.clip(offsets[ok] + coef[ok, 1:] / coef[ok, :1], -1.0, 1.0)
    return new


def _normal_equations(atoms, top, left, inside, y):
    """Inner products of the atoms, pair by pair, and with ``y``.

    Returns ``(rows, cols, blocks, b)``: for every pair ``j <= j'`` of sources
    whose windows overlap, ``blocks[p, k, l] = <atom_jk, atom_j'l>`` on the
    image (``rows[p] = j``, ``cols[p] = j'``), and ``b[j, k] = <atom_jk, y>``.
    Only overlapping pairs are stored, so memory grows with the number of
    sources, not with its square (a dense ``(J, K, J, K)`` array of a
    2 000-bead image would take 13 GB).
    """
    J, K, kh, kw = atoms.shape
    H, W = y.shape
    pad_y = np.zeros((H + 2 * kh, W + 2 * kw))
    pad_y[kh:kh + H, kw:kw + W] = y
    masked = atoms * inside[:, None]
    rows_idx = (top + kh)[:, None, None] + np.arange(kh)[None, :, None]
    cols_idx = (left + kw)[:, None, None] + np.arange(kw)[None, None, :]
    windows = pad_y[rows_idx, cols_idx]                              # (J, kh, kw)
    b = np.einsum("jkab,jab->jk", masked, windows)
    dy = top[None, :] - top[:, None]
    dx = left[None, :] - left[:, None]
    rows, cols = np.nonzero((np.abs(dy) < kh) & (np.abs(dx) < kw))
    keep = rows <= cols
    rows, cols = rows[keep], cols[keep]
    blocks = np.empty((len(rows), K, K))
    for p, (j, jj) in enumerate(zip(rows, cols, strict=True)):
        oy, ox = dy[j, jj], dx[j, jj]
        a = masked[j][:, max(oy, 0):kh + min(oy, 0), max(ox, 0):kw + min(ox, 0)]
        c = atoms[jj][:, max(-oy, 0):kh + min(-oy, 0), max(-ox, 0):kw + min(-ox, 0)]
        blocks[p] = a.reshape(K, -1) @ c.reshape(K, -1).T
    return rows, cols, blocks, b


def _amplitude_matrix(rows, cols, blocks, gamma, n_sources):
    """``Q[j, j'] = gamma^T <atom_j, atom_j'> gamma`` (dense, symmetric)."""
    values = (blocks @ gamma) @ gamma
    Q = np.zeros((n_sources, n_sources))
    Q[rows, cols] = values
    Q[cols, rows] = values
    return Q


def _gamma_matrix(rows, cols, blocks, a):
    """``P[k, l] = sum_{j, j'} a_j a_j' <atom_jk, atom_j'l>``."""
    w = a[rows] * a[cols]
    P = np.tensordot(w, blocks, axes=1)
    off = rows != cols            # each off-diagonal pair stands for two
    P += np.tensordot(w[off], blocks[off], axes=1).T
    return P


def _check_positions(positions, image_shape, name="positions"):
    """``positions`` as an int64 array of shape (J, 2) of pixels inside the
    image. Only that layout is read: a (2, J) array (``np.nonzero``'s rows
    then columns) or (J, 3) rows reshaped to pairs would give other pixels."""
    if (isinstance(positions, tuple) and len(positions) == 2
            and all(getattr(p, "ndim", None) == 1 and len(p) > 0
                    for p in positions)):
        # np.nonzero's (or np.where's) rows and columns: refused by their
        # shape (2, J) below, except for J = 2, where they read as two pixels
        # (empty ones, no source, are left to the callers)
        raise ValueError(
            f"{name} must have shape (J, 2), one (row, column) pixel per "
            "source; got a tuple of two 1-D arrays, np.nonzero's (rows, "
            "columns) layout, which reads as other pixels for two sources: "
            "pass np.argwhere(mask), np.stack(positions, axis=1) or an "
            "array of pairs.")
    positions = np.asarray(positions)
    if positions.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if positions.ndim == 1 and positions.shape == (2,):
        positions = positions[None]
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError(
            f"{name} must have shape (J, 2), one (row, column) pixel per "
            f"source (np.argwhere's layout, not np.nonzero's); got shape "
            f"{positions.shape}."
        )
    whole = positions.dtype.kind in "iu" or (
        positions.dtype.kind == "f" and np.isfinite(positions).all()
        and (positions == np.round(positions)).all())
    if (not whole or (positions < 0).any()
            or (positions >= np.array(image_shape)).any()):
        raise ValueError(
            f"{name} must be integer (row, column) pixels inside the "
            f"{tuple(image_shape)} image; got {positions.tolist()[:4]}..."
        )
    return positions.astype(np.int64)


def point_source_image(kernels, maps, positions, amplitudes, gamma, offsets=None):
    """``H[gamma] u`` for ``u = sum_j a_j delta_{p_j}`` (zero boundary).

    Parameters
    ----------
    kernels : ndarray of shape (K, kh, kw)
    maps : ndarray of shape (K, H, W)
    positions : ndarray of shape (J, 2), int
        Pixels inside the image, one (row, column) pair per row (whole
        floats are taken; put fractions in ``offsets``).
    amplitudes : ndarray of shape (J,)
    gamma : ndarray of shape (K,)
    offsets : ndarray of shape (J, 2), optional
        Sub-pixel offsets of the sources from their pixels (the kernels are
        moved by cubic-spline interpolation; the maps are read at the pixel).

    Returns
    -------
    ndarray of shape (H, W)
    """
    kernels = np.asarray(kernels, dtype=np.float64)
    maps = np.asarray(maps, dtype=np.float64)
    check_ndim(kernels, "kernels", 3, "(K, kh, kw)")
    check_ndim(maps, "maps", 3, "(K, H, W)")
    K = len(kernels)
    if len(maps) != K:
        raise ValueError(f"maps must hold one map per kernel ({K}); got "
                         f"{len(maps)}.")
    positions = _check_positions(positions, maps.shape[1:])
    J = len(positions)
    amplitudes = np.asarray(amplitudes, dtype=np.float64)
    gamma = np.asarray(gamma, dtype=np.float64)
    for name, value, shape in (("amplitudes", amplitudes, (J,)),
                               ("gamma", gamma, (K,))):
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape}; got "
                             f"{value.shape} (for {J} positions and {K} "
                             "kernels).")
    if offsets is not None:
        offsets = np.asarray(offsets, dtype=np.float64)
        if offsets.shape != (J, 2):
            raise ValueError(f"offsets must have shape ({J}, 2), one per "
                             f"position; got {offsets.shape}.")
    atoms = _atoms(kernels, maps, positions, offsets)
    top, left, _ = _windows(positions, kernels.shape[1:], maps.shape[1:])
    return _image(atoms, top, left, amplitudes, gamma, maps.shape[1:])


def _image(atoms, top, left, amplitudes, gamma, image_shape):
    """``sum_j a_j sum_k gamma_k atom_jk`` placed in the image (zero boundary)."""
    kh, kw = atoms.shape[2:]
    H, W = image_shape
    out = np.zeros((H + 2 * kh, W + 2 * kw))
    psf = np.einsum("jkab,k->jab", atoms, np.asarray(gamma, dtype=np.float64))
    for j in range(len(atoms)):
        out[top[j] + kh:top[j] + 2 * kh, left[j] + kw:left[j] + 2 * kw] += (
            amplitudes[j] * psf[j])
    return out[kh:kh + H, kw:kw + W]


def _nnls_quadratic(Q, c):
    """``argmin_{a >= 0} a^T Q a - 2 c^T a`` through its Cholesky factor."""
    n = len(c)
    Q = Q + 1e-12 * max(np.trace(Q) / max(n, 1), 1e-300) * np.eye(n)
    L = np.linalg.cholesky(Q)
    a, _ = scipy.optimize.nnls(L.T, scipy.linalg.solve_triangular(L, c, lower=True),
                               maxiter=50 * n)
    return a


@dataclass
class PointSourceFit:
    """What :func:`fit_point_sources` found in one image.

    Attributes
    ----------
    gamma : ndarray of shape (K,)
        Coefficients of the operator.
    positions : ndarray of shape (J, 2)
        Pixels of the sources (detections and residual completions, moved to
        the pixel nearest their fitted position when it was free). Sources
        where the operator's PSF gain is under 5 % of the median source's
        are left out at the end (not seen, they would set gamma's scale
        through the image mean).
    amplitudes : ndarray of shape (J,)
        Their non-negative amplitudes (zero for spurious detections), with the
        clean image's mean equal to ``image_mean``.
    n_iter : int
        Alternating iterations, over all rounds.
    converged : bool
        Whether the last round stopped on ``tol``.
    residual : float
        ``||y - H[gamma] u - background|| / ||y||`` at the end.
    background : float
        The fitted constant offset of ``y`` (0 when it was not fitted).
    offsets : ndarray of shape (J, 2)
        Sub-pixel offsets of the sources from ``positions``, in
        ``[-0.5, 0.5]`` (zeros when they were not fitted): a source lies at
        ``positions + offsets``.
    """

    gamma: np.ndarray
    positions: np.ndarray
    amplitudes: np.ndarray
    n_iter: int
    converged: bool
    residual: float
    background: float = 0.0
    offsets: np.ndarray | None = None

    def __post_init__(self):
        if self.offsets is None:
            self.offsets = np.zeros((len(self.positions), 2))


def _alternate(pairs, b, gamma, n_pixels, image_mean, max_iter, tol, sums=None,
               total_y=None):
    """Alternate the amplitudes (NNLS) and ``gamma`` (LS) from ``gamma``.

    With ``sums`` (``m[j, k]``, the in-image sum of atom ``(j, k)``) and
    ``total_y`` (the sum of ``y``), a constant background ``c`` is fitted
    jointly in both steps; it is eliminated from the NNLS exactly (a Schur
    complement), so each step is the exact minimiser over its block.
    """
    a, c = np.zeros(b.shape[0]), 0.0
    for it in range(1, max_iter + 1):
        Q = _amplitude_matrix(*pairs, gamma, b.shape[0])
        r = b @ gamma
        if sums is not None:
            s = sums @ gamma                       # sum of each source's PSF
            a = _nnls_quadratic(Q - np.outer(s, s) / n_pixels,
                                r - s * total_y / n_pixels)
        else:
            a = _nnls_quadratic(Q, r)
        total = a.sum()
        if total <= 0:
            raise NoPointSourceError(
                "no point source could be fitted (every amplitude is 0): the "
                "image does not look like point sources under this basis."
            )
        P = _gamma_matrix(*pairs, a)
        if sums is not None:
            m = a @ sums
            K = len(m)
            A = np.empty((K + 1, K + 1))
            A[:K, :K], A[:K, K], A[K, :K], A[K, K] = P, m, m, n_pixels
            sol = np.linalg.lstsq(A, np.append(a @ b, total_y), rcond=None)[0]
            new, c = sol[:K], float(sol[K])
        else:
            new = np.linalg.lstsq(P, a @ b, rcond=None)[0]
        # scale convention: the clean image has mean image_mean (the background
        # is added after the blur, so it does not take part)
        scale = total / (image_mean * n_pixels)
        a, new = a / scale, new * scale
        change = np.linalg.norm(new - gamma) / max(np.linalg.norm(new), 1e-300)
        gamma = new
        if change <= tol:
            return gamma, a, c, it, True
    return gamma, a, c, max_iter, False


def fit_point_sources(y, kernels, maps, gamma0, *, threshold=None, min_distance=2,
                      smoothing=0.0, image_mean=0.5, max_iter=100, tol=1e-6,
                      n_rounds=10, max_new=2, positions=None, background=True,
                      subpixel=True, max_refine=10):
    """Estimate ``gamma`` and the sources of one image of point sources.

    Parameters
    ----------
    y : ndarray of shape (H, W)
        Blurry, noisy image of point sources on a dark field, or on a constant
        offset when ``background`` is True.
    kernels : ndarray of shape (K, kh, kw)
        Kernels ``e_k`` of the basis.
    maps : ndarray of shape (K, H, W)
        Coefficient maps ``f_k``, of the shape of ``y``.
    gamma0 : ndarray of shape (K,)
        Starting coefficients (e.g. the mean of the cone).
    threshold : float
        Detection threshold on ``y`` and, in the completion rounds, on the
        residual (required unless ``positions`` is given).
    min_distance : int, default=2
        Half-width of the local-maximum window of the detection.
    smoothing : float, default=0.0
        Gaussian filter of the detection (see :func:`detect_point_sources`).
    image_mean : float, default=0.5
        Mean of the clean image (positive): fixes the scale of ``gamma``.
        The sources fitted are taken to be all of it: sources missed (under
        ``threshold``) make ``gamma``'s gain low by the share of the light
        they carry.
    max_iter : int, default=100
        Alternating iterations per round.
    tol : float, default=1e-6
        Stop a round when ``gamma`` changes by less than ``tol`` (relative).
    n_rounds : int, default=10
        Detection rounds: after each fit, maxima of the residual above
        ``threshold`` become new sources (a source next to a brighter one is
        not a maximum of ``y``); stops early when there are none.
    max_new : int or None, default=2
        Sources added per round, the largest residual maxima first (``None``:
        all). While ``gamma`` is still wrong every source leaves a residual,
        and adding all its maxima at once lets spurious sources widen the
        PSF; a few at a time, refitted in between, took the error on
        simulated single-molecule images from 1.2 % to 0.36 %
        (``benchmarks/README.md``).
    positions : array-like of shape (J, 2), optional
        Known pixels of the sources (e.g. from a localisation software), one
        (row, column) pair per row, whole numbers (round sub-pixel
        localisations; a ``(2, J)`` array, or ``np.nonzero``'s tuple, is
        refused: use ``np.argwhere``): no detection, one
        round (with ``subpixel``, their offsets are still fitted, and a
        source whose offset passes 0.6 pixel moves).
    background : bool, default=True
        Fit a constant offset ``c`` of the image, ``y = H[gamma] u + c``
        (a camera's dark level, a uniform haze): jointly with the amplitudes
        and with ``gamma``. The first detection then runs on ``y`` minus its
        median, the later ones on the residual. False: the field is taken to
        be dark (zero). A background that varies across the field is not
        modelled (subtract it first).
    subpixel : bool, default=True
        Fit each source's position to a fraction of a pixel: between the
        fits of the amplitudes and ``gamma``, Gauss-Newton steps on the
        offsets move the sources' PSFs (cubic-spline shifts of the kernels).
        Real beads and molecules lie between pixels: on 256 simulated
        single-molecule images with sources within +-0.5 pixel, the fit on
        their nearest pixels had 4.0 % operator error, this one 1.07 %
        (``benchmarks/README.md``), at a 7-20 times higher cost. A source
        whose offset passes 0.6 pixel moves to that pixel when no other
        source is there (and its PSF is not less than half as bright), and
        on from there: two sources closer than the PSF's width make one
        maximum, and the residual rounds add sources a pixel or more from
        the one hidden. False: every source sits on the pixel where it was
        found.
    max_refine : int, default=10
        Offset steps per round (each followed by a new fit); a round stops
        refining once no offset moves by more than 1e-4 pixel.

    Returns
    -------
    PointSourceFit

    Raises
    ------
    ValueError
        When ``maps`` is not of shape ``(K, H, W)`` for the ``K`` kernels and
        the ``(H, W)`` image ``y``, ``gamma0`` not of shape ``(K,)`` or its
        PSFs of zero or negative sum at every pixel, an input not finite, or
        ``image_mean`` not positive (and for the other invalid parameters).
    NoPointSourceError
        When no source is detected above ``threshold``, ``positions`` is
        empty, or no source can be fitted (a ``ValueError``).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.signal import convolve2d
    >>> x = np.arange(-3, 4)
    >>> narrow = np.exp(-(x[:, None] ** 2 + x[None] ** 2) / 2.0)
    >>> wide = np.exp(-(x[:, None] ** 2 + x[None] ** 2) / 8.0)
    >>> kernels = np.stack([narrow / narrow.sum(), wide / wide.sum()])
    >>> maps = np.stack([np.linspace(1, 0, 32)[None].repeat(32, 0),
    ...                  np.linspace(0, 1, 32)[None].repeat(32, 0)])
    >>> u = np.zeros((32, 32)); u[8, 6] = u[20, 16] = u[10, 26] = 1.0
    >>> u *= 0.5 / u.mean()
    >>> gamma = np.array([1.0, 2.0])
    >>> y = sum(g * convolve2d(f * u, e, mode="same")
    ...         for g, e, f in zip(gamma, kernels, maps))
    >>> fit = fit_point_sources(y, kernels, maps, np.ones(2), threshold=0.1)
    >>> np.round(fit.gamma, 4).tolist(), fit.positions.tolist()
    ([1.0, 2.0], [[8, 6], [20, 16], [10, 26]])
    """
    y = np.asarray(y, dtype=np.float64)
    kernels = np.asarray(kernels, dtype=np.float64)
    maps = np.asarray(maps, dtype=np.float64)
    gamma = np.asarray(gamma0, dtype=np.float64).copy()
    check_ndim(y, "y", 2, "(H, W): one image")
    check_ndim(kernels, "kernels", 3, "(K, kh, kw)")
    check_ndim(maps, "maps", 3, "(K, H, W)")
    for name, value in (("y", y), ("kernels", kernels), ("maps", maps),
                        ("gamma0", gamma)):
        check_finite(value, name)
    K = kernels.shape[0]
    if maps.shape != (K,) + y.shape:
        raise ValueError(
            f"maps must have shape (K, H, W) = {(K,) + y.shape}: one map per "
            f"kernel, of the shape of y; got maps of shape {maps.shape} for "
            f"{K} kernels and y of shape {y.shape}."
        )
    if gamma.shape != (K,):
        raise ValueError(f"gamma0 must have shape (K,) = ({K},), one coefficient "
                         f"per kernel; got shape {gamma.shape}.")
    _check_start(gamma, kernels, maps)
    if not (isinstance(image_mean, Real) and np.isfinite(image_mean)
            and image_mean > 0):
        raise ValueError("image_mean must be positive (the mean of the clean "
                         f"image, the scale of gamma); got {image_mean!r}.")
    if not (isinstance(n_rounds, Integral) and n_rounds >= 1):
        raise ValueError(f"n_rounds must be a positive int; got {n_rounds!r}.")
    if max_new is not None and not (isinstance(max_new, Integral) and max_new >= 1):
        raise ValueError(f"max_new must be a positive int or None; got {max_new!r}.")
    if not (isinstance(max_iter, Integral) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive int; got {max_iter!r}.")
    if not (isinstance(tol, Real) and tol >= 0):
        raise ValueError(f"tol must be a non-negative float; got {tol!r}.")
    for name, flag in (("background", background), ("subpixel", subpixel)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False; got {flag!r}.")
    if not (isinstance(max_refine, Integral) and max_refine >= 0):
        raise ValueError(f"max_refine must be a non-negative int; got {max_refine!r}.")
    kernel_shape, image_shape = kernels.shape[1:], y.shape
    if positions is not None:
        positions = _check_positions(positions, image_shape)
        if len(positions) == 0:
            raise NoPointSourceError("positions is empty: there is no point "
                                     "source to fit.")
        positions, n_rounds = np.unique(positions, axis=0), 1
    elif threshold is None:
        raise ValueError("threshold must be given when positions are not.")
    else:
        positions = detect_point_sources(
            y - np.median(y) if background else y, threshold,
            min_distance=min_distance, smoothing=smoothing)
    if len(positions) == 0:
        raise NoPointSourceError(
            f"no point source above the threshold {threshold:.4g} (image maximum "
            f"{y.max():.4g}): lower the threshold, or use an estimator for "
            "extended images."
        )
    offsets = np.zeros((len(positions), 2))
    state = dict(n_iter=0, gamma=gamma)

    def fit(positions, offsets):
        top, left, inside = _windows(positions, kernel_shape, image_shape)
        atoms = _atoms(kernels, maps, positions, offsets)
        *pairs, b = _normal_equations(atoms, top, left, inside, y)
        sums = (atoms * inside[:, None]).sum(axis=(2, 3)) if background else None
        gamma, a, c, it, converged = _alternate(
            pairs, b, state["gamma"], y.size, image_mean, int(max_iter),
            float(tol), sums=sums, total_y=float(y.sum()))
        state.update(n_iter=state["n_iter"] + it, gamma=gamma)
        residual = y - c - _image(atoms, top, left, a, gamma, image_shape)
        return a, c, converged, residual

    def fit_and_refine(positions, offsets):
        a, c, converged, residual = fit(positions, offsets)
        left = np.full(positions.shape, -1)     # the pixel each source left
        for _ in range(int(max_refine) if subpixel else 0):
            new = _refine_offsets(y - c, kernels, maps, positions, offsets, a,
                                  state["gamma"])
            walked, new = _walk(positions, new, a, left)
            if (np.array_equal(walked, positions)
                    and np.abs(new - offsets).max(initial=0.0) <= 1e-4):
                break
            positions, offsets = walked, new
            a, c, converged, residual = fit(positions, offsets)
        return positions, offsets, a, c, converged, residual

    def _walk(positions, offsets, a, left):
        """Sources whose offset passes ``WALK`` move to that pixel when it is
        free (a source added from the residual a pixel or more away from a
        source hidden next to another one walks there); the others stay at
        +-0.5. A source never goes back to the pixel it has just left (no
        back and forth around a half-pixel position). ``left`` is updated."""
        positions, offsets = positions.copy(), offsets.copy()
        occupied = np.zeros(image_shape, dtype=bool)
        occupied[positions[:, 0], positions[:, 1]] = True
        for j in np.nonzero((np.abs(offsets) > WALK).any(axis=1) & (a > 0))[0]:
            step = np.where(np.abs(offsets[j]) > WALK, np.sign(offsets[j]), 0)
            to = positions[j] + step.astype(np.int64)
            if (not ((to >= 0) & (to < image_shape)).all() or occupied[tuple(to)]
                    or np.array_equal(to, left[j])):
                continue
            # never onto a pixel whose PSF is much dimmer (maps that vanish at
            # the border): a source there explains nothing and its amplitude
            # would only rescale gamma through the image-mean convention
            there, here = _psf_gains(state["gamma"], kernels, maps,
                                     [to, positions[j]])
            if there >= 0.5 * here:
                occupied[tuple(positions[j])], occupied[tuple(to)] = False, True
                left[j] = positions[j]
                positions[j], offsets[j] = to, offsets[j] - step
        return positions, np.clip(offsets, -0.5, 0.5)

    # Offsets are refined after every fit of the amplitudes and gamma, and
    # the residual of the refined fit is searched for sources: a source off its
    # pixel leaves a residual on both sides of it, which would otherwise be
    # taken for new sources.
    positions, offsets, a, c, converged, residual = fit_and_refine(positions,
                                                                   offsets)
    for _ in range(int(n_rounds) - 1):
        new = detect_point_sources(residual, threshold, min_distance=min_distance,
                                   smoothing=smoothing)
        known = np.zeros(image_shape, dtype=bool)
        known[positions[:, 0], positions[:, 1]] = True
        new = new[~known[new[:, 0], new[:, 1]]] if len(new) else new
        if len(new) == 0:
            break
        if max_new is not None:
            new = new[:int(max_new)]
        positions = np.concatenate([positions, new])
        offsets = np.concatenate([offsets, np.zeros((len(new), 2))])
        positions, offsets, a, c, converged, residual = fit_and_refine(positions,
                                                                   offsets)
    # Sources where the operator's PSF (nearly) vanishes are not seen, but
    # their amplitudes count in the image mean that sets gamma's scale: one
    # there can take any amplitude and rescale gamma (25-fold on maps that
    # reach 0 at the border). They are left out and the rest refitted.
    gain = _psf_gains(state["gamma"], kernels, maps, positions)
    lit = a > 0
    if lit.any():
        unseen = lit & (np.abs(gain) < 0.05 * np.median(np.abs(gain[lit])))
        if unseen.any() and (~unseen & lit).any():
            positions, offsets = positions[~unseen], offsets[~unseen]
            positions, offsets, a, c, converged, residual = fit_and_refine(
                positions, offsets)
    return PointSourceFit(
        gamma=state["gamma"], positions=positions, amplitudes=a,
        n_iter=state["n_iter"],
        converged=converged, background=c, offsets=offsets,
        residual=float(np.linalg.norm(residual) / max(np.linalg.norm(y), 1e-300)))
