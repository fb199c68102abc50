"""Variational deblurring: ``min_u R(u) + lam/2 ||H u - y||^2`` for a batch of images.

The regulariser ``R`` is the isotropic total variation (``"tv"``) or the
``l1`` norm (``"l1"``), each optionally with a non-negativity constraint. The
problems of a batch are independent (one operator ``H_i`` and one ``lam_i``
per image) and are solved together on whatever device the data lives on.

Notes
-----
Discretisation. ``TV(u) = sum_ij sqrt((D u)_{0,ij}^2 + (D u)_{1,ij}^2)`` with
``D`` the forward-difference gradient with Neumann boundary of
:mod:`deepblur.operators.gradient` (the last difference in each direction is
zero). :func:`objective` evaluates exactly this, and the tests compare the
reached objective with a cvxpy model written with the same formula.

Method. Monotone FISTA (MFISTA, Beck and Teboulle 2009) with function-value
restart (O'Donoghue and Candes 2015). The step is ``1 / L`` with
``L = 1.05 * lam * ||H||_2^2`` and ``||H||_2`` from power iteration on
``H^T H`` (power iteration approaches the norm from below, hence the 5 %
margin); there is no hand-tuned step. The proximal operator of the ``l1`` norm
is the soft threshold (a one-sided threshold with ``positive=True``); the one of
TV (with or without the constraint) is computed by the fast gradient projection
(FGP) on its dual (Beck and Teboulle 2009), warm-started from the previous
outer iteration's dual variable, with ``inner_iter`` iterations per outer
iteration. The linear operator is applied once forward and once adjoint per
iteration: ``H`` of the extrapolated point is a linear combination of already
computed images, so the objective costs no extra operator application.

A monotone variant means the recorded objective never increases: a proximal
step that does not decrease it is rejected and the momentum is restarted.

A Condat-Vu primal-dual iteration was measured against this method (see
``benchmarks/README.md``): at its best ratio of primal and dual steps, which
has to be tuned by hand, it was 2.5 times slower to a 1e-4 gap, so it was not
kept.

References
----------
A. Beck and M. Teboulle, "Fast gradient-based algorithms for constrained total
variation image denoising and deblurring problems", IEEE TIP 18(11), 2009.

B. O'Donoghue and E. Candes, "Adaptive restart for accelerated gradient
schemes", Found. Comput. Math. 15, 2015.
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from deepblur._validation import (
    as_tensor,
    check_finite,
    check_ndim,
    check_positive_int,
    to_like,
    user_stacklevel,
)
from deepblur.operators.gradient import (
    GRADIENT_NORM_SQUARED_BOUND,
    gradient,
    gradient_adjoint,
)
from deepblur.operators.norms import power_iteration

__all__ = [
    "REGULARIZATIONS",
    "DeblurResult",
    "deblur",
    "default_lam",
    "estimate_noise_level",
    "objective",
    "prox_l1",
    "prox_tv",
    "total_variation",
]

REGULARIZATIONS = ("tv", "l1")

#: Margin on the power-iteration estimate of ``||H||^2`` (it is a lower bound).
LIPSCHITZ_SAFETY = 1.05

#: :func:`estimate_noise_level` leaves out the blocks constant at the
#: image's extremes when at least this share of the blocks remains.
_NOISE_KEPT = 0.2

#: ... and the blocks constant at one other value (a fill), when they are at
#: least this share of the blocks.
_NOISE_FILL = 0.1

#: ... but keeps the blocks at the minimum or the fill when this share of
#: the non-constant blocks beside them span one quantisation step exactly (a
#: background whose noise is under the step, not padding).
_NOISE_SUB_LEVEL = 2 / 3

#: ... and over the share of all the non-constant blocks by this much (the
#: blocks beside padding are a sample of the content).
_NOISE_EDGE = 0.05

#: ... and reads the median of quantised coefficients (whole-numbered
#: counts, or counts divided by 255: ties at a few values) as grouped data
#: when at least this share of them equals the median.
_NOISE_TIES = 0.01

#: ... unless this share of them is 0 (flat content, noise-free).
_NOISE_FLAT = 0.9

#: ... and whose grid step is over this many times the tolerance of a tie.
_NOISE_GRID = 2.0

#: Calibrated constants of :func:`default_lam` (``lam = C / sigma^2``).
C_TV = 0.25
C_L1 = 0.03

#: Number of iterations over which the relative objective decrease is measured.
_WINDOW = 5

#: Steps in a row without descent after which an image's objective has
#: stalled: the warm-started dual of the TV step has then run
#: ``_STALL * inner_iter`` more iterations, and the step still does not descend.
_STALL = 50


# --------------------------------------------------------------------------
# Private helpers
# --------------------------------------------------------------------------


def _col(x, ndim=3):
    """Reshape a per-image vector ``(n,)`` so that it broadcasts on images."""
    return x.reshape((-1,) + (1,) * (ndim - 1))


def _sum_images(x):
    return x.reshape(x.shape[0], -1).sum(dim=1)


def _project_unit_ball(p):
    """Project each pixel's 2-vector of ``p`` (n, 2, H, W) on the unit disc."""
    norm = torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2)
    return p / torch.clamp(norm, min=1.0).unsqueeze(1)


def _check_regularization(regularization):
    if regularization not in REGULARIZATIONS:
        raise ValueError(
            f"regularization must be one of {REGULARIZATIONS}; got "
            f"{regularization!r}."
        )


def _check_lam(lam, n, dtype, device, name="lam"):
    """Turn a positive scalar or a vector of ``n`` positive values into (n,).

    The values are checked in float64, then again in ``dtype``: a value that
    is positive in float64 but zero, subnormal or infinite in float32 would
    give NaN steps.
    """
    if isinstance(lam, numbers.Real) and not isinstance(lam, bool):
        values = np.full(n, float(lam))
    else:
        if isinstance(lam, torch.Tensor):
            lam = lam.detach().cpu().numpy()
        values = np.asarray(lam, dtype=np.float64)
        if values.ndim == 0:
            values = np.full(n, float(values))
        if values.shape != (n,):
            raise ValueError(
                f"{name} must be a positive scalar or a vector with one value "
                f"per image ({n}); got shape {values.shape}."
            )
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise ValueError(
            f"{name} must be finite and strictly positive; got {lam!r}."
        )
    out = torch.as_tensor(values, dtype=dtype, device=device)
    _check_representable(out, name, lam, dtype)
    return out


def _check_representable(values, name, given, dtype):
    """Refuse values that are zero, subnormal or infinite in ``dtype``."""
    info = torch.finfo(dtype)
    if not bool(torch.all(torch.isfinite(values) & (values >= info.tiny))):
        raise ValueError(
            f"{name} = {given!r} is out of the range of {dtype} (normal "
            f"numbers span {info.tiny:.3g} to {info.max:.3g}), where the "
            "solver's steps would be zero or NaN; rescale it, or solve in "
            "float64 (dtype='float64')."
        )


# True while a caller words one ConvergenceWarning for many solves
_CONVERGENCE_WARNINGS_SUSPENDED = contextvars.ContextVar(
    "deepblur_convergence_warnings_suspended", default=False)


@contextlib.contextmanager
def convergence_warnings_suspended():
    """Within it, :func:`deblur` issues no ``ConvergenceWarning`` (in this
    thread or task): for callers that solve one problem in many calls and
    word one warning for all (the blocks of
    :func:`deepblur.tiling.deblur_stitched`).

    Unlike ``warnings.catch_warnings``, it changes no process-wide state:
    solves running at the same time in other threads (dask's threaded
    scheduler) keep their warnings, and no filter is left behind (two
    threads inside ``catch_warnings`` at once restore each other's filters,
    which left ``ignore ConvergenceWarning`` in the process for good).
    """
    token = _CONVERGENCE_WARNINGS_SUSPENDED.set(True)
    try:
        yield
    finally:
        _CONVERGENCE_WARNINGS_SUSPENDED.reset(token)


def stall_message(which, tol, regularization="tv"):
    """The ConvergenceWarning's text for solves that stalled (``which``: how
    many of what, e.g. "2 of 5 image(s) [0, 3]")."""
    causes = ("an inexact TV proximal step (raise inner_iter), "
              if regularization == "tv" else "")
    return (f"deblur stopped on {which} whose objective no longer decreased "
            f"({_STALL} steps in a row) before its relative change fell below "
            f"tol={tol}: {causes}a lipschitz value below ||H||^2, or a tol "
            "under the precision of the dtype (more iterations alone would "
            "not help); their result is not the minimiser to tol.")


def _check_objective(f, k, dtype):
    """Refuse an objective that overflowed (or is NaN) in ``dtype``."""
    bad = ~torch.isfinite(f)
    if bool(bad.any()):
        which = torch.nonzero(bad).flatten().tolist()
        where = "at the start" if k == 0 else f"at iteration {k}"
        raise FloatingPointError(
            f"the objective of image(s) {which} is not finite {where} in "
            f"{dtype}: lam ||H u - y||^2 overflows (lam or the images too "
            "large for the dtype, or a lipschitz value far below ||H||^2); "
            "rescale the images to [0, 1] or lam, or solve in float64."
        )


# --------------------------------------------------------------------------
# Public building blocks
# --------------------------------------------------------------------------


def total_variation(u):
    """Isotropic total variation of each image of a batch.

    Parameters
    ----------
    u : torch.Tensor of shape (n, H, W)

    Returns
    -------
    tv : torch.Tensor of shape (n,)
        ``sum_ij sqrt((D u)_{0,ij}^2 + (D u)_{1,ij}^2)`` with the forward
        differences and Neumann boundary of
        :func:`deepblur.operators.gradient.gradient`.

    Examples
    --------
    >>> import torch
    >>> u = torch.zeros(1, 4, 4)
    >>> u[0, :, 2:] = 1.0  # a vertical edge of height 4 and jump 1
    >>> total_variation(u)
    tensor([4.])
    """
    g = gradient(u)
    return _sum_images(torch.sqrt(g[:, 0] ** 2 + g[:, 1] ** 2))


def objective(u, y, forward, lam, regularization="tv"):
    """Objective ``R(u) + lam/2 ||H u - y||^2`` of each image of a batch.

    Parameters
    ----------
    u, y : torch.Tensor of shape (n, H, W)
        Estimates and observations (``forward(u)`` must have ``y``'s shape).
    forward : callable
        Applies ``H`` to a batch.
    lam : float or torch.Tensor of shape (n,)
    regularization : {"tv", "l1"}, default="tv"

    Returns
    -------
    f : torch.Tensor of shape (n,)
        The constraint ``u >= 0`` is not part of the value; the solvers keep
        their iterates feasible.

    Examples
    --------
    >>> import torch
    >>> y = torch.ones(1, 3, 3)
    >>> objective(torch.zeros(1, 3, 3), y, lambda u: u, lam=2.0)
    tensor([9.])
    """
    _check_regularization(regularization)
    reg = total_variation(u) if regularization == "tv" else _sum_images(u.abs())
    data = _sum_images((forward(u) - y) ** 2)
    return reg + 0.5 * lam * data


def prox_l1(v, t, positive=False):
    """Proximal operator of ``t ||.||_1`` (plus the constraint ``u >= 0``).

    Parameters
    ----------
    v : torch.Tensor of shape (n, ...)
    t : float or torch.Tensor broadcastable to ``v``
        Threshold(s).
    positive : bool, default=False
        Also project on the non-negative orthant (one-sided threshold).

    Returns
    -------
    u : torch.Tensor like ``v``

    Examples
    --------
    >>> import torch
    >>> prox_l1(torch.tensor([-2.0, -0.5, 0.5, 2.0]), 1.0).tolist()
    [-1.0, -0.0, 0.0, 1.0]
    >>> prox_l1(torch.tensor([-2.0, -0.5, 0.5, 2.0]), 1.0, positive=True).tolist()
    [0.0, 0.0, 0.0, 1.0]
    """
    if positive:
        return torch.clamp(v - t, min=0.0)
    return torch.sign(v) * torch.clamp(v.abs() - t, min=0.0)


def prox_tv(v, t, *, positive=False, max_iter=100, p0=None, return_dual=False):
    """Proximal operator of ``t TV`` (plus ``u >= 0``) by the dual FGP.

    Solves ``min_u 1/2 ||u - v||^2 + t TV(u)`` (over ``u >= 0`` when
    ``positive``) for each image of a batch with ``max_iter`` iterations of the
    fast gradient projection on the dual (Beck and Teboulle 2009): the dual
    variable ``p`` lies in the product of unit discs and
    ``u = P(v - t D^T p)`` with ``P`` the identity or the projection on
    ``u >= 0``.

    Parameters
    ----------
    v : torch.Tensor of shape (n, H, W)
    t : float or torch.Tensor of shape (n,)
        Non-negative weights, one per image.
    positive : bool, default=False
    max_iter : int, default=100
        Number of dual iterations (no stopping test: the solvers call it with a
        few warm-started iterations).
    p0 : torch.Tensor of shape (n, 2, H, W), optional
        Warm start for the dual variable (zeros by default); not modified.
    return_dual : bool, default=False
        Also return the final dual variable.

    Returns
    -------
    u : torch.Tensor of shape (n, H, W)
    p : torch.Tensor of shape (n, 2, H, W)
        Only when ``return_dual``.

    Examples
    --------
    >>> import torch
    >>> v = torch.zeros(1, 8, 8)
    >>> v[0, :, 4:] = 1.0
    >>> u = prox_tv(v, 0.5, max_iter=200)
    >>> # an edge of a large piecewise-constant region shrinks by t * 2 / 4
    >>> round(float(u[0, 0, 7] - u[0, 0, 0]), 3)
    0.75
    """
    n = v.shape[0]
    if not isinstance(t, torch.Tensor):
        t = torch.full((n,), float(t), dtype=v.dtype, device=v.device)
    t3 = _col(t)
    t4 = _col(t, 4)
    # Images with t == 0 are returned as P(v); guard the 1/(8 t) step.
    step = torch.where(
        t4 > 0, 1.0 / (GRADIENT_NORM_SQUARED_BOUND * torch.clamp(t4, min=1e-30)),
        torch.zeros_like(t4),
    )
    p = v.new_zeros((n, 2) + v.shape[-2:]) if p0 is None else p0.clone()
    r = p
    s = 1.0
    for _ in range(max_iter):
        u = v - t3 * gradient_adjoint(r)
        if positive:
            u = torch.clamp(u, min=0.0)
        p_new = _project_unit_ball(r + step * gradient(u))
        s_new = (1.0 + (1.0 + 4.0 * s * s) ** 0.5) / 2.0
        r = p_new + ((s - 1.0) / s_new) * (p_new - p)
        p, s = p_new, s_new
    u = v - t3 * gradient_adjoint(p)
    if positive:
        u = torch.clamp(u, min=0.0)
    if return_dual:
        return u, p
    return u


def estimate_noise_level(y):
    """Standard deviation of additive white noise, estimated per image.

    The median absolute deviation of the finest diagonal Haar wavelet
    coefficients ``(a - b - c + d) / 2`` of each 2x2 block, divided by
    0.6745 (Donoho and Johnstone 1994). Blur removes the image's content at
    that scale, so what remains is mostly noise. Blocks that are constant at
    the image's minimum or maximum (a dark camera or registration border,
    padding, saturation: no noise there), or at one other value over at
    least a tenth of the blocks (a border filled with 0 in a signed image,
    or with the mean), are left out when at least a fifth of the blocks
    remain; with them, an image more than half of which was such a border
    got 0. (Below a fifth, the rest is more likely the edges of a
    noise-free picture whose flat areas are at its extremes, such as a
    binary mask: all the blocks are used, as before.) Constant blocks at the
    minimum or the fill are kept, though, when two thirds of the
    non-constant blocks beside them span exactly one quantisation step, or
    have their pixels nearest to that value one step off it, and more of
    them than of all the image's non-constant blocks (and none of them is
    further off it than the smallest span among them: a zero border beside
    a camera's offset is padding): a quantised
    background whose noise is under one grey level, turning to the next
    level around point sources, not padding (point sources blurred by the
    default model's operators, rounded to counts on a background of 10 with
    peaks of 500 to 900, read 0.9 to 1.2 grey levels without it, 0.27 to
    0.33 with it, for the 0.29 of their rounding: ``benchmarks/README.md``).
    Sources whose PSFs rise by more than a level per pixel from the
    background (a Gaussian of 1 pixel) do not show this, and their
    background is still left out.

    Quantised images (8-bit counts, or counts divided by 255) have
    coefficients on a grid of half a grey level, and a median on that grid
    says little of a noise under a few levels: when at least 1 % of the
    coefficients equal their median (within a millionth of the image's
    range, or the dtype's rounding) and the nearest other value is over
    twice that tolerance away (a grid, not the ties by chance of continuous
    data whose noise is far under the range), they are read as grouped data
    (each value standing for the interval of half a step around it) and
    sigma is matched, for Gaussian noise, to the share of coefficients
    below the boundary of the median's interval nearest to one half, plus
    the spread of the grouping itself (Sheppard's correction). The result is
    the level that the data term sees, noise and rounding together
    (``sqrt(s^2 + 1/12)`` grey levels for noise of ``s`` levels; 0 for flat
    content, nine tenths of whose coefficients are 0). Counts divided by 255
    in float16 are read as the counts when every pixel is within float16's
    spacing of one (up to 2, where that spacing is at most a quarter of a
    level); bfloat16, whose spacing near 1 is a whole level, is read as it
    is.

    Parameters
    ----------
    y : array-like or torch.Tensor of shape (n, H, W) or (H, W)
        Images of at least 2x2 pixels.

    Returns
    -------
    sigma : numpy.ndarray of shape (n,) or float

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = 0.5 + 0.1 * rng.standard_normal((256, 256))
    >>> round(float(estimate_noise_level(y)), 2)
    0.1
    """
    half = _half_dtype(y)
    t, _ = as_tensor(y, name="y")
    check_ndim(t, "y", (2, 3), "(n, H, W) or (H, W)")
    check_finite(t, "y")
    single = t.ndim == 2
    if single:
        t = t[None]
    h, w = (t.shape[-2] // 2) * 2, (t.shape[-1] // 2) * 2
    if h == 0 or w == 0:
        raise ValueError(
            f"y must have at least 2x2 pixels; got shape {tuple(t.shape)}."
        )
    t = _noise_pixels(t[:, :h, :w], half)
    a, b = t[:, 0::2, 0::2], t[:, 1::2, 0::2]
    c, e = t[:, 0::2, 1::2], t[:, 1::2, 1::2]
    d = ((a - b - c + e) / 2.0).abs()
    lo = t.amin(dim=(1, 2), keepdim=True)
    hi = t.amax(dim=(1, 2), keepdim=True)
    tol = _tie_tolerance(lo, hi, t.dtype).reshape(-1, 1)
    flat = (a == b) & (a == c) & (a == e)
    # saturation: no noise there
    clipped = flat & (a == hi)
    for i in range(len(t)):
        # a dark camera or registration border, padding, unless a quantised
        # background whose noise is under one level
        low = flat[i] & (a[i] == lo[i])
        if not _sub_level(a[i], b[i], c[i], e[i], flat[i], low, lo[i, 0, 0],
                          float(tol[i, 0])):
            clipped[i] |= low
        # a border filled with another value (0 in a signed, background-
        # subtracted image; the mean): the commonest value of the constant
        # blocks, when they cover a tenth of the image at that value
        values = a[i][flat[i]]
        if values.numel() >= _NOISE_FILL * flat[i].numel():
            mode = torch.mode(values).values
            fill = flat[i] & (a[i] == mode)
            if (mode != lo[i, 0, 0]
                    and fill.sum() >= _NOISE_FILL * flat[i].numel()
                    and not _sub_level(a[i], b[i], c[i], e[i], flat[i], fill,
                                       mode, float(tol[i, 0]))):
                clipped[i] |= fill
    clipped = clipped.reshape(d.shape[0], -1)
    # ... when the rest is a fair sample: a noise-free picture whose flat
    # areas are at its extremes (a binary mask, a point source on a black
    # ground) would otherwise be measured on its edges alone
    kept = (~clipped).float().mean(dim=1, keepdim=True) >= _NOISE_KEPT
    d = d.reshape(d.shape[0], -1).masked_fill(clipped & kept, float("nan"))
    median = d.nanmedian(dim=1, keepdim=True).values
    sigma = median[:, 0] / 0.6745
    # quantised images (8-bit counts, or those divided by 255): the
    # coefficients take a few values, and their median is one of them; read
    # as it is, sigma came out in steps of 0.74 grey level (0 for an image
    # whose noise is under one level, where half the coefficients are 0)
    ties = ((d - median).abs() <= tol).sum(dim=1)
    size = (~d.isnan()).sum(dim=1)
    sigma = sigma.cpu().numpy()
    for i in np.flatnonzero((ties >= torch.clamp(_NOISE_TIES * size, min=10))
                            .cpu().numpy()):
        x = d[i][~d[i].isnan()].double().cpu().numpy()
        sigma[i] = _grouped_sigma(x, float(median[i, 0]), float(tol[i, 0]))
    return float(sigma[0]) if single else sigma


def _quantisation_step(y):
    """The step of the grid that each image's pixel values lie on (1 for
    counts, ``1 / 255`` for 8-bit counts divided by 255), or 0 where they
    lie on none (continuous data), read from the differences between
    neighbouring pixels: the smallest one over the tie tolerance of
    :func:`estimate_noise_level` (a millionth of the range, or the dtype's
    rounding), when it is over twice that tolerance and at least 1 % (and
    10) of those differences equal it within the tolerance, as they do
    where rounding makes a staircase of one step. An image of two values
    (a mask) has no step: its rounding is unknown. Noise-free continuous
    images tie too when ten or more of their sources are alike (one PSF,
    one brightness): their step is their PSF's smallest difference (1.1e-6
    for 20 Gaussian sources of peak 0.07, whose noise reads 2.5e-7); and
    such sources under a box blur take a few values, a grid (a step of
    1/45 for sources of 1 and one of 0.2 under a 3x3 box). Rounding to a grid of
    step ``q`` alone is noise of ``q / sqrt(12)`` that
    :func:`estimate_noise_level` does not see on flat content (it returns
    0 where nine tenths of the Haar coefficients are 0): the floor of the
    noise level of ``lam="auto"`` and of the point-source detection
    (:func:`_floored_noise_level`).

    Parameters
    ----------
    y : torch.Tensor of shape (n, H, W)

    Returns
    -------
    step : numpy.ndarray of shape (n,)
    """
    half = _half_dtype(y)
    t, _ = as_tensor(y, name="y")
    t = _noise_pixels(t, half)
    step = np.zeros(len(t))
    for i, x in enumerate(t):
        lo, hi = float(x.amin()), float(x.amax())
        tol = float(_tie_tolerance(torch.tensor(lo, dtype=torch.float64),
                                   torch.tensor(hi, dtype=torch.float64), x.dtype))
        # (one direction at a time: no copy of both on a large image)
        diffs = [(x[1:] - x[:-1]).abs_(), (x[:, 1:] - x[:, :-1]).abs_()]
        diffs = [d.masked_fill_(d <= tol, torch.inf) for d in diffs]
        q = min((float(d.amin()) for d in diffs if d.numel()), default=np.inf)
        if not np.isfinite(q):
            continue                    # constant
        size = sum(int(d.isfinite().sum()) for d in diffs)
        ties = sum(int((d <= q + tol).sum()) for d in diffs)
        if (q > _NOISE_GRID * tol and hi - lo > q + tol
                and ties >= max(10, _NOISE_TIES * size)):
            step[i] = q
    return step


def _floored_noise_level(t, half=None):
    """:func:`estimate_noise_level` of each image of ``t`` (n, H, W), at
    least the rounding's level ``q / sqrt(12)`` for images whose values lie
    on a grid of step ``q`` (:func:`_quantisation_step`; continuous images
    keep the estimate): the estimate reads 0 on flat content, such as 8-bit
    cells or point sources on a background on a grey level, where
    ``lam="auto"`` fell to its floor and the point-source detection took
    every maximum of the rounding's staircase. ``half``: the half-precision
    dtype that ``t`` was cast up from (``t`` holds its values exactly; float16
    counts / 255 are read as the counts only in their own dtype, and a list of
    float16 images is no array)."""
    own = t if half is None else t.to(half)
    sigma = np.atleast_1d(np.asarray(estimate_noise_level(own), dtype=np.float64))
    return np.maximum(sigma, _quantisation_step(own) / np.sqrt(12.0))


def _noise_pixels(t, half):
    """The images ``t`` (n, H, W) in the dtype their noise is read in:
    float16 counts / 255 as the counts (``half``: the dtype ``t`` was cast up
    from; :func:`_counts_in_half`), float32 as it is (ample for a median, and
    half the memory traffic), anything else in float64."""
    if half is not None:
        t = _counts_in_half(t, half)
    return t if t.dtype == torch.float32 else t.to(torch.float64)


def _tie_tolerance(lo, hi, dtype):
    """Values within it of each other tie, for images of ``dtype`` between
    ``lo`` and ``hi`` (tensors): a millionth of the range, or the dtype's
    rounding at the largest magnitude (16-bit counts near saturation divided
    by 65535 in float32 are off their grid by more than a millionth of their
    range)."""
    return torch.maximum(
        1e-6 * (hi - lo),
        8 * torch.finfo(dtype).eps * torch.maximum(hi.abs(), lo.abs()))


def _half_dtype(y):
    """``y``'s dtype when it is float16 or bfloat16 (a tensor or an array,
    or a list or tuple of those all in that dtype), else None:
    :func:`~deepblur._validation.as_tensor` casts them up."""
    dtype = getattr(y, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype if dtype in (torch.float16, torch.bfloat16) else None
    if isinstance(dtype, np.dtype):
        return torch.float16 if dtype == np.float16 else None
    if isinstance(y, (list, tuple)) and len(y):
        # a list of float16 images (the first element first: a list of
        # Python numbers is not walked through)
        first = _half_dtype(y[0])
        if first is not None and all(_half_dtype(e) == first for e in y[1:]):
            return first
    return None


def _counts_in_half(t, dtype):
    """The images of ``t`` (n, H, W) that are 8-bit counts divided by 255
    and stored in ``dtype`` (float16), as those quotients in float64; the
    others as they are. An image is taken for counts when each pixel is
    within the dtype's rounding (half its eps, relative) of a count / 255,
    and the dtype's spacing at the image's largest magnitude is at most a
    quarter of a level (float16 up to 2; bfloat16, whose spacing near 1 is a
    level, never: its rounding is noise that the data term sees). float16's
    rounding of
    the counts (up to a sixteenth of a level per pixel, an eighth per Haar
    coefficient) kept their coefficients off the grid: sigma came out 0.01
    grey level for the counts' 0.33, 1.05 for 0.58, 0.74 for 1.04."""
    # in float32 (float16's values are exact there, and its rounding of a
    # count / 255 is within half its relative eps of it: 2^-11, and never
    # within that of another count below 2), then the counts in float64
    info = torch.finfo(dtype)
    x = t.to(torch.float32)
    mag = x.abs()
    peak = mag.flatten(1).amax(dim=1).clamp(min=info.tiny)
    fine = info.eps * torch.exp2(torch.floor(torch.log2(peak))) <= 0.25 / 255
    if not bool(fine.any()):
        return t
    k = (x * 255.0).round_()
    err = (k / 255.0).sub_(x).abs_()
    counts = fine & (err <= mag.mul_(info.eps / 2 + 2.0 ** -20)).flatten(1).all(dim=1)
    if not bool(counts.any()):
        return t
    k = k.to(torch.float64).div_(255.0)
    if bool(counts.all()):
        return k
    return torch.where(counts[:, None, None], k, t.to(torch.float64))


def _sub_level(a, b, c, e, flat, const, value, tol):
    """Whether the constant 2x2 blocks ``const`` of one image are a
    background whose noise is under the quantisation step, not padding.

    ``a, b, c, e`` are the image's four pixels per block, ``flat`` its
    constant blocks, ``value`` that of ``const``. At least
    ``_NOISE_SUB_LEVEL`` of the (at least 10) non-constant blocks beside
    ``const`` span one step exactly, or have their pixels nearest to
    ``value`` (other than it) one step from it (:func:`_one_step`). Beside
    such a background the blocks are where it turns to the next level (the
    tails of point sources, whose rounding is all the noise there: with the
    default model's operators 75 to 99 % of them span one level, against 22
    to 28 % of all; a steeper rise from a background on a level shows in the
    second test); beside padding they are a sample of the content.
    Continuous data never tie so. The whole image's statistics are computed
    only when those of the blocks beside ``const`` pass.
    """
    if not bool(const.any()):
        return False
    near = const.clone()
    near[1:] |= const[:-1]
    near[:-1] |= const[1:]
    near[:, 1:] |= const[:, :-1]
    near[:, :-1] |= const[:, 1:]
    near &= ~flat
    if int(near.sum()) < 10:
        return False

    def span(x):
        return x.amax(dim=0) - x.amin(dim=0)

    def off(x):
        return torch.where(x == value, torch.inf, (x - value).abs()).amin(dim=0)

    def stack(mask):
        rows, cols = mask.nonzero(as_tuple=True)
        return torch.stack([x[rows, cols] for x in (a, b, c, e)])

    beside, rest = stack(near), []
    # the pixels beside a background on a level are one step off it at
    # most; beside padding they may be anywhere (0 next to a 12-bit
    # camera's offset of 100, whose noise of half a level spans one level
    # in 70 % of the blocks: read 0.29 for 0.74)
    if float(off(beside).min()) > float(span(beside).min()) + tol:
        return False
    return any(_one_step(size, beside, rest, lambda: stack(~flat), tol)
               for size in (span, off))


def _one_step(size, beside, rest, stack, tol):
    """Whether ``_NOISE_SUB_LEVEL`` of the blocks ``beside`` a constant area
    (their four pixels, stacked) have the smallest ``size`` (a statistic of
    a block's pixels) among them, over twice ``tol`` (a grid step), and
    ``_NOISE_EDGE`` more of them than of all the image's non-constant blocks
    (``rest``: an empty list, or one holding those blocks' pixels, which
    ``stack()`` gives): those next to padding are a sample of the content
    (noise of half a level in flat content at the fill value spans one
    level in 72 % of either)."""
    values = size(beside)
    step = float(values.min())
    share = int((values <= step + tol).sum()) / values.numel()
    if step <= _NOISE_GRID * tol or share < _NOISE_SUB_LEVEL:
        return False
    if not rest:
        rest.append(stack())
    values = size(rest[0])
    return share >= int((values <= step + tol).sum()) / values.numel() + _NOISE_EDGE


def _grouped_sigma(x, m, tol):
    """The noise level from quantised Haar coefficients ``x`` (absolute
    values, median ``m``): the values within ``tol`` of a grid point stand
    for the interval of half a step around it, and sigma is matched to the
    share of ``x`` below the boundary of the median's interval nearest to
    one half, ``b / Phi^-1((1 + F(b)) / 2)`` (Gaussian noise; for
    continuous data this is the median rule ``m / 0.6745``). The
    quantisation error is counted as noise, as the data term sees it: the
    match gives the spread of a continuous variable whose rounding to the
    grid gives ``x``, and the coefficients themselves spread more, by
    ``step^2 / 12`` in variance (Sheppard's correction), which is added back
    (without it, sigma came out ``sqrt(s^2 + 1/16)`` grey levels for 8-bit
    data, 6 to 12 % low under 0.3 level of noise)."""
    from scipy.special import ndtri

    n = x.size
    if m <= tol and (x <= tol).sum() >= _NOISE_FLAT * n:
        # flat content (a mask, steps, a point on black ground), whose
        # noise, if any, is under the quantisation step: the median rule, 0
        # for its zeros, not a level made up from the step; continuous data
        # whose noise is under the tolerance (a millionth of the range, as
        # beside a bright spot) keep their median's level
        return m / 0.6745
    above, below = x[x > m + tol], x[x < m - tol]
    gaps = [above.min() - m] if above.size else []
    if below.size and m > tol:
        gaps.append(m - below.max())
    if not gaps:                # one value (noise-free, a ramp), or no grid
        return m / 0.6745
    step = min(gaps)
    if step <= _NOISE_GRID * tol:
        # no grid coarser than the tolerance: continuous data whose median
        # ties by chance (a noise far under the range, as with a bright
        # spot, or large counts): the median rule
        return m / 0.6745
    bounds = [((x <= m + tol).sum() / n, m + step / 2)]
    if m > tol:
        bounds.append(((x < m - tol).sum() / n, m - step / 2))
    share, bound = min(bounds, key=lambda fb: abs(fb[0] - 0.5))
    if share >= 1.0:
        return 0.0
    # the grouped match, plus the spread of the grouping itself (its
    # uniform error over the step), which the data term sees too
    return float(np.hypot(bound / ndtri((1.0 + share) / 2.0),
                          step / np.sqrt(12.0)))


#: Brightest pixel beyond which whole-numbered float images are taken for
#: counts (8- or 16-bit data stored as floats) by ``lam="auto"``'s warning.
#: Images in [0, 1] stay below it, and images scaled to a mean (the
#: simulator's, or ``deblur_image``'s), whose sparse point sources can peak
#: in the hundreds, are not whole numbers. Measured: a 128x128 camera crop
#: lost 5 dB at 255 times its [0, 1] units, 19 dB at 65 535, 0.3 dB at 10.
_COUNTS_MAX = 100.0


def warn_if_counts(X):
    """Warn that ``lam="auto"`` does not suit images in counts (integers, or
    whole-numbered floats above 100): :func:`default_lam` is calibrated for
    images in [0, 1], and an image ``s`` times brighter is over-smoothed as if
    ``lam`` were ``s`` times too small."""
    if not isinstance(X, torch.Tensor) and not hasattr(X, "dtype"):
        # lists (of arrays or numbers) by their numpy dtype: a list of 8-bit
        # images did not warn where the same array did
        try:
            X = np.asarray(X)
        except (ValueError, TypeError, RuntimeError):
            return                      # ragged: refused by the caller
    if isinstance(X, torch.Tensor):
        integer = not (X.is_floating_point() or X.is_complex()
                       or X.dtype == torch.bool)
        floating = X.is_floating_point()
    else:
        dtype = getattr(X, "dtype", None)
        integer = (isinstance(dtype, np.dtype)
                   and np.issubdtype(dtype, np.integer))
        floating = isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.floating)
    what = f"integers ({X.dtype})" if integer else None
    size = X.numel() if isinstance(X, torch.Tensor) else getattr(X, "size", 0)
    if floating and size:
        a = X.detach() if isinstance(X, torch.Tensor) else np.asarray(X)
        peak = float(a.abs().max() if isinstance(a, torch.Tensor)
                     else np.max(np.abs(a)))
        # (NaN compares False: refused later)
        if peak > _COUNTS_MAX and bool((a == a.round()).all()):
            what = f"whole-numbered floats reaching {peak:.4g}, like counts"
    if what is not None:
        warnings.warn(
            f"lam='auto' is calibrated for images scaled to [0, 1]; these "
            f"are {what}, and an image s times brighter than "
            "its [0, 1] version is over-smoothed as if lam were s times too "
            "small (s = 255 for 8-bit counts). Divide the images by their "
            "maximum (or the dtype's) first, or give lam.",
            UserWarning, stacklevel=user_stacklevel())


def default_lam(y, regularization="tv", *, sigma=None):
    """A data-term weight ``lam`` per image from its noise level (no grid search).

    ``lam = C / sigma^2`` with ``sigma`` the noise level
    (:func:`estimate_noise_level` unless given) and ``C`` a constant calibrated
    per regulariser by grid search on simulated blurry images scaled to
    [0, 1] (``C_TV = 0.25``
    from 12 scikit-image pictures x 4 noise levels blurred by random K=20
    operators, 0.14 dB below the per-image grid optimum on average;
    ``C_L1 = 0.03`` from simulated point sources). The rule is the MAP scaling
    of the data term, ``1 / sigma^2``; ``benchmarks/README.md`` compares it
    with grid-searched values on other images. The estimated noise level is
    at least the rounding's, ``q / sqrt(12)``, for an image whose values lie
    on a grid of step ``q`` (0.29 grey level for 8-bit counts or counts /
    255; continuous images keep the estimate bit for bit): the estimate
    reads 0 on flat content, such as cells or point sources on a background
    on a grey level with noise under one level, where ``lam`` fell to the
    floor below (TV's relative error was 6-9 % higher on simulated 8-bit
    point sources and cells, and PSNR up to 0.34 dB lower on 8-bit natural
    images without noise; ``benchmarks/README.md``).
    The noise level is floored at
    ``1e-3`` times each image's peak-to-peak range so that a noise-free image
    gets a large but finite weight. The rule holds for images in the units
    of the calibration, [0, 1]: the regulariser scales with the intensity
    and the data term with its square, so an image ``s`` times brighter
    needs ``lam / s``, not ``lam / s^2``; the same image in 8-bit units
    (``s = 255``) is over-smoothed. Scale images to [0, 1] first (as
    :func:`deepblur.pretrained.deblur_image`,
    :func:`deepblur.tiling.deblur_large` and the command line do: to mean
    0.5).

    Parameters
    ----------
    y : array-like or torch.Tensor of shape (n, H, W) or (H, W)
    regularization : {"tv", "l1"}, default="tv"
    sigma : float or array-like of shape (n,), optional
        Known noise standard deviation(s), used as given (no rounding floor).

    Returns
    -------
    lam : numpy.ndarray of shape (n,) or float

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.random((2, 64, 64))
    >>> default_lam(y, sigma=0.1) / default_lam(y, sigma=0.2)
    array([4., 4.])
    """
    _check_regularization(regularization)
    t, _ = as_tensor(y, name="y")
    check_ndim(t, "y", (2, 3), "(n, H, W) or (H, W)")
    single = t.ndim == 2
    if single:
        t = t[None]
    if sigma is None:
        sig = _floored_noise_level(t, _half_dtype(y))
    else:
        sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (t.shape[0],))
        if not np.all(np.isfinite(sig) & (sig > 0)):
            raise ValueError(f"sigma must be positive and finite; got {sigma!r}.")
    flat = t.detach().reshape(t.shape[0], -1).to(torch.float64)
    ptp = (flat.max(dim=1).values - flat.min(dim=1).values).cpu().numpy()
    floor = 1e-3 * np.where(ptp > 0, ptp, 1.0)
    sig = np.maximum(sig, floor)
    c = C_TV if regularization == "tv" else C_L1
    lam = c / sig**2
    return float(lam[0]) if single else lam


@dataclass
class DeblurResult:
    """What :func:`deblur` records besides the images.

    Attributes
    ----------
    n_iter : int
        Number of iterations run (for the whole batch).
    n_iter_per_image : numpy.ndarray of shape (n,)
        Iteration at which each image met the tolerance (``n_iter`` if never).
    objective : numpy.ndarray of shape (n_iter + 1, n)
        Objective of every image at the start and after each iteration; it
        never increases (monotone variant).
    converged : numpy.ndarray of shape (n,) of bool
        Whether each image met the tolerance before ``max_iter`` (False for
        an image that stalled, see ``tol`` of :func:`deblur`).
    lipschitz : numpy.ndarray of shape (n,)
        The Lipschitz constants ``L`` used (the step is ``1 / L``).
    stalled : numpy.ndarray of shape (n,) of bool
        Whether each image stopped because its objective no longer decreased
        before the tolerance (see ``tol`` of :func:`deblur`).
    """

    n_iter: int
    n_iter_per_image: np.ndarray
    objective: np.ndarray
    converged: np.ndarray
    lipschitz: np.ndarray = field(repr=False)
    stalled: np.ndarray | None = None


def check_iterations(max_iter=1, tol=0.0, inner_iter=1):
    """Refuse :func:`deblur`'s ``max_iter``, ``tol`` and ``inner_iter`` when
    they are not what it takes (also checked before long work that ends in
    a solve: the large-image paths' tile estimates)."""
    check_positive_int(max_iter, "max_iter")
    if not (isinstance(tol, numbers.Real) and not isinstance(tol, bool)
            and tol >= 0):
        raise ValueError(f"tol must be a non-negative float; got {tol!r}.")
    check_positive_int(inner_iter, "inner_iter")


def deblur(
    y,
    forward,
    adjoint,
    lam,
    *,
    regularization="tv",
    positive=False,
    max_iter=500,
    tol=1e-5,
    inner_iter=10,
    lipschitz=None,
    x0=None,
):
    """Solve ``min_u R(u) + lam/2 ||H u - y||^2`` for a batch of images.

    Parameters
    ----------
    y : torch.Tensor or numpy.ndarray of shape (n, H, W) or (H, W)
        Blurry, noisy observations. Not modified. Tensors stay on their device
        and dtype; numpy input gives numpy output.
    forward, adjoint : callable
        ``forward(u)`` applies ``H`` and ``adjoint(v)`` applies ``H^T`` to a
        torch batch of shape ``(n, H, W)`` (one operator per image).
    lam : float or array-like of shape (n,)
        Data-fidelity weight(s), strictly positive.
    regularization : {"tv", "l1"}, default="tv"
        Isotropic total variation (see the module Notes for the discretisation)
        or the ``l1`` norm.
    positive : bool, default=False
        Constrain ``u >= 0``.
    max_iter : int, default=500
        Cap on the number of iterations; a ``ConvergenceWarning`` is emitted
        when it is reached before ``tol``.
    tol : float, default=1e-5
        Stop once, for every image, the objective decreased by less than
        ``tol`` relative over the last 5 iterations,
        ``F_{k-5} - F_k <= tol |F_k|``, with at least one step among them
        that lowered it (a step that would raise the objective is not taken:
        the proximal step of TV is inexact, and steps that do not descend say
        nothing of the distance to the minimum). An image with 50 steps in a
        row that do not lower its objective has stalled: it stops, is not
        ``converged`` and a ``ConvergenceWarning`` says so. With ``tol=0``
        the solver runs until the objective stalls in floating point
        (counted as converged) or ``max_iter`` is reached, and does not warn.
    inner_iter : int, default=10
        Warm-started dual iterations per proximal step of TV (unused for
        ``"l1"``).
    lipschitz : float or array-like of shape (n,), optional
        ``||H_i||_2^2`` if known; estimated by power iteration otherwise. The
        step of image ``i`` is ``1 / (1.05 lam_i ||H_i||^2)``.
    x0 : array-like of shape (n, H, W), optional
        Starting point (``y``, projected on ``u >= 0`` if ``positive``, by
        default).

    Returns
    -------
    u : torch.Tensor or numpy.ndarray like ``y``
        The deblurred images.
    result : DeblurResult
        Iteration counts, objective history, convergence flags.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> clean = np.zeros((1, 16, 16)); clean[0, 4:12, 4:12] = 1.0
    >>> y = clean + 0.05 * rng.standard_normal(clean.shape)
    >>> identity = lambda u: u
    >>> u, res = deblur(y, identity, identity, lam=20.0, tol=1e-6, max_iter=2000)
    >>> bool(res.converged[0])
    True
    >>> bool(np.abs(u - clean).mean() < np.abs(y - clean).mean())
    True
    """
    _check_regularization(regularization)
    check_iterations(max_iter, tol, inner_iter)
    y_t, is_numpy = as_tensor(y, name="y")
    check_ndim(y_t, "y", (2, 3), "(n, H, W) or (H, W)")
    check_finite(y_t, "y")
    squeeze = y_t.ndim == 2
    if squeeze:
        y_t = y_t.unsqueeze(0)
    n = y_t.shape[0]
    dtype, device = y_t.dtype, y_t.device
    lam_t = _check_lam(lam, n, dtype, device)

    with torch.no_grad():
        if lipschitz is None:
            sigma = power_iteration(forward, adjoint, y_t)
            norm2 = sigma.to(dtype) ** 2
            zero = ~(norm2 > torch.finfo(dtype).tiny)     # NaN counts too
            if zero.any():
                which = torch.nonzero(zero).flatten().tolist()
                raise ValueError(
                    f"the operator of image(s) {which} is zero (||H|| = 0, e.g. "
                    "gamma all zeros): such an observation holds nothing of "
                    "the image, and the deblurring problem has no unique "
                    "solution; check the operator.")
        else:
            norm2 = _check_lam(lipschitz, n, dtype, device, "lipschitz")
        lip = LIPSCHITZ_SAFETY * lam_t * norm2
        _check_representable(lip, "1.05 lam ||H||^2 (the step's inverse)",
                             lip.tolist() if n > 1 else float(lip[0]), dtype)
        step = _col(1.0 / lip)

        if x0 is None:
            x = y_t.clone()
        else:
            x, _ = as_tensor(x0, device=device, dtype=dtype, name="x0")
            if n == 1 and x.shape == y_t.shape[1:]:
                x = x.unsqueeze(0)                  # (H, W) for one image
            if x.shape != y_t.shape:
                raise ValueError(
                    f"x0 must have the shape of y, {tuple(y_t.shape[squeeze:])}; "
                    f"got {tuple(x.shape)}.")
            check_finite(x, "x0")
            x = x.clone()
        if positive:
            x = torch.clamp(x, min=0.0)

        lam3 = _col(lam_t)

        def reg(u):
            if regularization == "tv":
                return total_variation(u)
            return _sum_images(u.abs())

        hx = forward(x)
        fx = reg(x) + 0.5 * lam_t * _sum_images((hx - y_t) ** 2)
        _check_objective(fx, 0, dtype)
        z_pt, hz_pt = x, hx  # extrapolated point and its image by H
        t = torch.ones(n, dtype=dtype, device=device)
        p = None
        history = [fx]
        converged = torch.zeros(n, dtype=torch.bool, device=device)
        stalled = torch.zeros(n, dtype=torch.bool, device=device)
        n_iter_img = torch.full((n,), max_iter, dtype=torch.long, device=device)
        tiny = torch.finfo(dtype).tiny
        descents = []                # steps that lowered the objective, last 5
        flat_run = torch.zeros(n, dtype=torch.long, device=device)

        for k in range(1, max_iter + 1):
            v = z_pt - step * (lam3 * adjoint(hz_pt - y_t))
            if regularization == "tv":
                z, p = prox_tv(v, step.reshape(-1), positive=positive,
                               max_iter=inner_iter, p0=p, return_dual=True)
            else:
                z = prox_l1(v, step, positive=positive)
            hz = forward(z)
            fz = reg(z) + 0.5 * lam_t * _sum_images((hz - y_t) ** 2)
            _check_objective(fz, k, dtype)

            accept = fz <= fx
            # a step that lowers the objective, or one that cannot: at the
            # minimum (an objective of 0, or a step that barely moves, to a
            # point no worse than the current one to tol: the objective is
            # flat there; an overshooting step, from a lipschitz below
            # ||H||^2, moves far)
            scale = tol * torch.clamp(fx.abs(), min=tiny)
            descent = (fz < fx) | (fx <= tiny)
            level = ~descent & (fz - fx <= scale)
            if bool(level.any()):       # only then: a reduction per image
                moved = 0.5 * lip * _sum_images((z - x) ** 2)
                descent = descent | (level & (moved <= scale))
            descents = descents[-(_WINDOW - 1):] + [descent]
            flat_run = torch.where(descent, torch.zeros_like(flat_run),
                                   flat_run + 1)
            a3 = _col(accept)
            x_new = torch.where(a3, z, x)
            hx_new = torch.where(a3, hz, hx)
            fx = torch.where(accept, fz, fx)
            t_new = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
            c1 = _col(t / t_new)
            c2 = _col((t - 1.0) / t_new)
            # MFISTA extrapolation; a rejected step restarts the momentum.
            z_pt = torch.where(
                a3, x_new + c1 * (z - x_new) + c2 * (x_new - x), x_new)
            hz_pt = torch.where(
                a3, hx_new + c1 * (hz - hx_new) + c2 * (hx_new - hx),
                hx_new)
            t = torch.where(accept, t_new, torch.ones_like(t))
            x, hx = x_new, hx_new
            history.append(fx)

            if k >= _WINDOW:
                # A window without descent only proves that the (inexact)
                # proximal steps did not descend, not that the objective is
                # near its minimum: it needs a step that lowered it.
                dec = history[-1 - _WINDOW] - fx
                ok = ((dec <= tol * torch.clamp(fx.abs(), min=tiny))
                      & torch.stack(descents).any(dim=0))
                if tol == 0:
                    # tol=0 runs until the objective stalls (documented).
                    ok = ok | (flat_run >= _STALL)
                newly = ok & ~converged & ~stalled
                n_iter_img = torch.where(newly, torch.full_like(n_iter_img, k),
                                         n_iter_img)
                converged = converged | (ok & ~stalled)
                stalled = stalled | ((flat_run >= _STALL) & ~converged)
                if bool((converged | stalled).all()):
                    break

        n_iter = k
        n_iter_img = torch.clamp(n_iter_img, max=n_iter)
        conv = converged.cpu().numpy()
        stuck = stalled.cpu().numpy()
        warn = tol > 0 and not _CONVERGENCE_WARNINGS_SUSPENDED.get()
        if warn and stuck.any():
            warnings.warn(
                stall_message(f"{int(stuck.sum())} of {n} image(s) "
                              f"{np.flatnonzero(stuck).tolist()}", tol,
                              regularization),
                ConvergenceWarning,
                stacklevel=user_stacklevel(),
            )
        if warn and not (conv | stuck).all():
            warnings.warn(
                f"deblur reached max_iter={max_iter} before the relative "
                f"objective change fell below tol={tol} for "
                f"{int((~(conv | stuck)).sum())} of {n} image(s); increase "
                "max_iter or tol.",
                ConvergenceWarning,
                stacklevel=user_stacklevel(),
            )
        result = DeblurResult(
            n_iter=n_iter,
            n_iter_per_image=n_iter_img.cpu().numpy(),
            objective=torch.stack(history).cpu().numpy(),
            converged=conv,
            lipschitz=lip.cpu().numpy(),
            stalled=stuck,
        )
    if squeeze:
        x = x[0]
    return to_like(x, is_numpy), result
