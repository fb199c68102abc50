"""Geometry of the cone of admissible operators (paper, section 2.1).

The operator coefficients ``gamma_p`` (rows of a ``(P, K)`` array) generate the
convex cone ``C = cone(gamma_p)``. This module holds the numerics, as plain
functions on numpy arrays (plus one torch variant of the sampler):

* :func:`circumcenter` -- the axis of the narrowest revolution cone that
  contains ``C`` (Henrion & Seeger), a second-order cone program solved with
  cvxpy;
* :func:`greedy_rays` and :func:`simplify_cone` -- the greedy cone
  simplification of Algorithm 1;
* :func:`cone_nnls` -- conic weights of points on a set of rays (non-negative
  least squares, one problem per row);
* :func:`project_cone` -- the nearest point of a cone, or of the slab of it
  that Algorithm 2 samples, in any quadratic metric (e.g. the operators'
  Frobenius metric);
* :func:`cone_distance_bounds` -- certified lower and upper bounds on the
  relative distances to that set, batched in torch (on the GPU too), for checks that
  only need to know which points are near it;
* :func:`draw_cone_weights`, :func:`sample_cone` and
  :func:`sample_cone_torch` -- the random sampling of Algorithm 2.

The estimators :class:`deepblur.estimators.cone.ConeSimplifier` and
:class:`deepblur.estimators.cone.ConeSampler` call the same code paths.

Notes
-----
The circumcenter solves

.. math::

    \\max_{x, t} \\; t \\quad \\text{s.t.} \\quad \\Gamma x \\ge t
    \\mathbf{1}, \\; \\|x\\|_2 \\le 1,

where the rows of :math:`\\Gamma` are the normalised ``gamma_p``. When the
optimal ``t`` is positive the optimum has ``||x|| = 1``, ``x`` is the axis and
``arccos(t)`` the circumradius. An optimal ``t <= 0`` (``x = 0`` is always
feasible, so ``t >= 0``) means that no axis makes an acute angle with every
row: the cone is not pointed and its circumradius is at least ``pi / 2``.

Only the rows that touch the optimal revolution cone matter, so for large
``P`` the program is solved by constraint generation: solve on a small subset
of the rows, add the rows the solution violates, repeat. Each subset program is
a relaxation of the full one, so stopping when no row is violated gives the
optimum of the full program.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import scipy.optimize
import scipy.sparse
import torch
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from deepblur._validation import (
    check_finite,
    check_real,
    number_pair,
    resolve_device,
    user_stacklevel,
)

__all__ = [
    "circumcenter",
    "greedy_rays",
    "simplify_cone",
    "cone_nnls",
    "project_cone",
    "cone_distance_bounds",
    "draw_cone_weights",
    "sample_cone",
    "sample_cone_torch",
]

# cvxpy solvers able to handle second-order cones, in order of preference:
# interior-point solvers first (accurate), the first-order SCS last.
SOCP_SOLVERS = ("CLARABEL", "ECOS", "SCS")
_SOLVER_OPTIONS = {"SCS": {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 200_000}}

# Smallest cosine (between the axis and the farthest row) below which the cone
# counts as not pointed: a circumradius within ~1e-7 rad of pi / 2 is beyond
# what the solvers resolve.
_POINTED_TOL = 1e-7
# A row violates a subset solution when its cosine to the axis is below the
# subset optimum by more than this.
_VIOLATION_TOL = 1e-10
# Two unit rays closer than this in cosine are the same direction.
_SAME_DIRECTION_TOL = 1e-12

# Rows drawn per block in sample_cone: keeps the working set in cache.
_SAMPLE_CHUNK = 16384
# cone_distance_bounds: steps between two updates of the bounds (and, with a
# tol, between two removals of the rows already certified).
_BOUND_CHECK_EVERY = 25


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _as_2d_float(X, name, dtypes=(np.float64,)):
    """``X`` as a 2-D finite floating array (a copy only when needed)."""
    if torch.is_tensor(X):          # recording a graph, or on a GPU
        X = X.detach().cpu()
    arr = np.asarray(X)
    check_real(arr, name)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_rows, n_features); got an "
            f"array of shape {arr.shape}."
        )
    if arr.dtype not in dtypes:
        arr = arr.astype(dtypes[0])
    check_finite(arr, name)
    return arr


def _points_and_rays(X, rays):
    """``X`` and ``rays`` as 2-D float arrays with as many columns."""
    X = _as_2d_float(X, "X")
    rays = _as_2d_float(rays, "rays")
    if rays.shape[0] == 0 or X.shape[1] == 0:
        # (scipy's nnls aborts the interpreter on a matrix without columns)
        raise ValueError(
            "rays must hold at least one ray of at least one coefficient; got "
            f"rays of shape {rays.shape} for X of shape {X.shape}."
        )
    if rays.shape[1] != X.shape[1]:
        raise ValueError(
            f"rays must have {X.shape[1]} columns like X; got rays of shape "
            f"{rays.shape}."
        )
    return X, rays


def _scale_rows(X):
    """``X`` with each row divided by its largest absolute value (zero rows
    kept), and those values: the sums of squares of the scaled rows neither
    underflow (rows of magnitude 1e-165 had a norm of 0) nor overflow (1e160:
    inf), and their directions are those of ``X``'s rows."""
    scale = np.abs(X).max(axis=1, initial=0.0)
    return X / np.where(scale > 0, scale, 1.0)[:, None], scale


def _normalize_rows(X, name="X"):
    """Unit-norm copy of the rows of ``X``; a zero row is an error.

    Valid at any magnitude of the rows (:func:`_scale_rows`).
    """
    X, scale = _scale_rows(X)
    norms = np.linalg.norm(X, axis=1)
    zero = np.flatnonzero(scale == 0)
    if zero.size:
        shown = ", ".join(str(i) for i in zero[:5]) + (", ..." if zero.size > 5 else "")
        raise ValueError(
            f"{name} must have no zero rows (a zero vector has no direction and "
            f"generates no ray); got {zero.size} zero row(s), at index {shown}."
        )
    return X / norms[:, None]


def _check_n_rays(n_rays, n_rows, name="n_rays"):
    if (
        not isinstance(n_rays, numbers.Integral)
        or isinstance(n_rays, bool)
        or n_rays < 1
    ):
        raise ValueError(f"{name} must be a positive int; got {n_rays!r}.")
    if n_rays > n_rows:
        raise ValueError(
            f"{name}={n_rays} must not exceed the number of rows of X (the "
            f"candidate rays); got X with n_samples={n_rows}."
        )
    return int(n_rays)


def _check_alpha_range(alpha_range, name="alpha_range"):
    """``(alpha_min, alpha_max)`` as floats with ``0 < alpha_min < alpha_max``.

    Each must be a number (a string or a boolean is none, though numpy
    would read ``("0.5", "1.5")`` and ``(True, 2)`` as floats)."""
    pair = number_pair(alpha_range)
    if pair is None:
        raise ValueError(
            f"{name} must be a pair (alpha_min, alpha_max) of floats; got "
            f"{alpha_range!r}."
        )
    lo, hi = pair
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
        raise ValueError(
            f"{name} must satisfy 0 < alpha_min < alpha_max (finite); got "
            f"alpha_min={lo!r}, alpha_max={hi!r}."
        )
    return lo, hi


def _resolve_max_rays(max_rays, n_generators, n_features, name="max_rays"):
    """``None`` -> ``min(K, R)``; otherwise an int in ``[1, R]``."""
    if max_rays is None:
        return min(n_features, n_generators)
    if (
        not isinstance(max_rays, numbers.Integral)
        or isinstance(max_rays, bool)
        or max_rays < 1
    ):
        raise ValueError(f"{name} must be a positive int or None; got {max_rays!r}.")
    if max_rays > n_generators:
        raise ValueError(
            f"{name}={max_rays} must not exceed the number of generators (rows of "
            f"X); got X with n_samples={n_generators}."
        )
    return int(max_rays)


def _check_n_samples(n_samples, name="n_samples"):
    if (
        not isinstance(n_samples, numbers.Integral)
        or isinstance(n_samples, bool)
        or n_samples < 0
    ):
        raise ValueError(f"{name} must be a non-negative int; got {n_samples!r}.")
    return int(n_samples)


def _as_generator(random_state):
    """A ``numpy.random.Generator`` from a seed, RandomState or Generator."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    from sklearn.utils.validation import check_random_state

    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
    return np.random.default_rng(seed)


def _socp_solvers(solver):
    """The cvxpy solvers to try, in order; ``(names, installed)``."""
    import cvxpy as cp

    installed = list(cp.installed_solvers())
    if solver is None:
        names = [s for s in SOCP_SOLVERS if s in installed]
        if not names:
            raise RuntimeError(
                "solver=None: no installed cvxpy solver handles second-order "
                f"cones; looked for {list(SOCP_SOLVERS)}, installed cvxpy "
                f"solvers are {installed}. Install clarabel, ecos or scs."
            )
        return names, installed
    if solver not in SOCP_SOLVERS:
        raise ValueError(
            f"solver must be None or one of {list(SOCP_SOLVERS)} (cvxpy solvers "
            f"for second-order cone programs); got {solver!r}."
        )
    if solver not in installed:
        raise ValueError(
            f"solver={solver!r} is not installed; installed cvxpy solvers are "
            f"{installed}."
        )
    return [solver], installed


def _solve_circumcenter_program(U, names, installed):
    """Maximise ``t`` s.t. ``U x >= t``, ``||x|| <= 1``; returns ``(x, t)``."""
    import cvxpy as cp

    x = cp.Variable(U.shape[1])
    t = cp.Variable()
    problem = cp.Problem(cp.Maximize(t), [U @ x >= t, cp.norm(x, 2) <= 1])
    failures = []
    for name in names:
        try:
            problem.solve(solver=name, **_SOLVER_OPTIONS.get(name, {}))
        except (cp.error.SolverError, ArithmeticError, ValueError) as exc:
            failures.append(f"{name} raised {type(exc).__name__}: {exc}")
            continue
        if problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and (
            x.value is not None and t.value is not None
        ):
            return np.asarray(x.value, dtype=np.float64), float(t.value)
        failures.append(f"{name} returned status {problem.status!r}")
    raise RuntimeError(
        "The circumcenter program (a second-order cone program) could not be "
        f"solved: tried solver(s) {names} among the installed cvxpy solvers "
        f"{installed}; " + "; ".join(failures) + ". Try another solver with "
        "the `solver` parameter."
    )


def _not_pointed_error(U, t_opt, name):
    mean = U.mean(axis=0)
    norm = np.linalg.norm(mean)
    if norm > 0:
        worst = np.degrees(np.arccos(np.clip((U @ (mean / norm)).min(), -1, 1)))
        hint = (
            f" Around the mean direction of the rows, the farthest row is at "
            f"{worst:.1f} degrees."
        )
    else:
        hint = " The normalised rows sum to zero (e.g. opposite rows)."
    return ValueError(
        f"The cone generated by the rows of {name} is not pointed: its "
        "circumradius is at least pi/2 (90 degrees), i.e. no axis makes an "
        "acute angle with every row (the largest achievable smallest cosine is "
        f"{t_opt:.3g} <= 0, up to solver tolerance).{hint} The rows must lie "
        "in an open half-space, e.g. have non-negative entries."
    )


def _circumcenter_unit(U, solver=None, name="X"):
    """Circumcenter and circumradius of the cone of the unit rows ``U``."""
    names, installed = _socp_solvers(solver)
    n_rows, n_features = U.shape
    # Constraint generation. Start with the rows farthest from the mean
    # direction: they are the likeliest to touch the optimal cone.
    first = max(64, 4 * n_features)
    step = max(32, 2 * n_features)
    if n_rows <= 2 * first:
        active = np.arange(n_rows)
    else:
        mean = U.mean(axis=0)
        norm = np.linalg.norm(mean)
        score = U @ (mean / norm) if norm > 0 else np.zeros(n_rows)
        active = np.argpartition(score, first)[:first]
    in_active = np.zeros(n_rows, dtype=bool)
    in_active[active] = True
    while True:
        x, t_opt = _solve_circumcenter_program(U[active], names, installed)
        if t_opt <= _POINTED_TOL:
            # A relaxation already fails: the full cone is not pointed either.
            raise _not_pointed_error(U, t_opt, name)
        axis = x / np.linalg.norm(x)
        cosines = U @ axis
        violated = np.flatnonzero((cosines < t_opt - _VIOLATION_TOL) & ~in_active)
        if violated.size == 0:
            break
        if violated.size > step:
            violated = violated[np.argpartition(cosines[violated], step)[:step]]
        in_active[violated] = True
        active = np.flatnonzero(in_active)
    smallest = float(cosines.min())
    if smallest <= _POINTED_TOL:
        raise _not_pointed_error(U, smallest, name)
    return axis, float(np.arccos(min(smallest, 1.0)))


def _greedy_select(U, center, n_rays):
    """Algorithm 1's loop on unit rows ``U``; ``(indices, cosines)``.

    Maximising the smallest angle to the kept rays is minimising the largest
    cosine: keep, for every row, its largest cosine to the kept rays and update
    it with one matrix-vector product per step (O(P K) per step).
    ``cosines[n]`` is the largest cosine of the n-th chosen row to the rows
    kept before it (the center excluded; -inf for the first row, kept before
    any other).
    """
    U = np.ascontiguousarray(U, dtype=np.float64)
    indices = np.empty(n_rays, dtype=np.intp)
    cosines = np.empty(n_rays)
    # The matrix-vector products are memory-bound: BLAS threads do not speed
    # them up and, on a loaded machine, slowed the loop down 10-25 times.
    with threadpool_limits(limits=1, user_api="blas"):
        max_cos = U @ center                  # to the kept set, center included
        kept_cos = np.full(U.shape[0], -np.inf)   # to the kept rows only
        for n in range(n_rays):
            p = int(np.argmin(max_cos))
            indices[n] = p
            cosines[n] = kept_cos[p]
            to_p = U @ U[p]
            np.maximum(max_cos, to_p, out=max_cos)
            np.maximum(kept_cos, to_p, out=kept_cos)
            max_cos[p] = np.inf  # removed from the rays to explore
    return indices, cosines


def _simplify_cone(X, n_rays, solver=None, name="X"):
    """Shared path of :func:`simplify_cone` and ``ConeSimplifier.fit``."""
    U = _normalize_rows(X, name)
    n_rays = _check_n_rays(n_rays, U.shape[0])
    center, radius = _circumcenter_unit(U, solver=solver, name=name)
    indices, cosines = _greedy_select(U, center, n_rays)
    repeated = int(np.count_nonzero(cosines >= 1 - _SAME_DIRECTION_TOL))
    if repeated:
        warnings.warn(
            f"n_rays={n_rays}: {repeated} of the kept rays repeat the direction "
            f"of a ray kept before them; the rows of {name} span fewer distinct "
            "directions than n_rays, so a smaller n_rays gives the same cone.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return U[indices], indices, center, radius


def _nnls_row(A, b, i):
    """``(w, ||A w - b||)`` of scipy's active-set NNLS; a clear error if stuck."""
    maxiter = max(50, 5 * A.shape[1])
    try:
        return scipy.optimize.nnls(A, b, maxiter=maxiter)
    except RuntimeError as exc:
        raise RuntimeError(
            f"Non-negative least squares of row {i} of X on the {A.shape[1]} "
            f"rays did not converge in {maxiter} iterations "
            f"(scipy.optimize.nnls: {exc})."
        ) from exc


def _nnls_fixed_sum(A, b, total, i, tol=1e-12, max_iter=100, warn=True):
    """``min ||A w - b|| s.t. w >= 0, sum(w) = total`` (method of multipliers).

    The equality enters as an extra row ``rho * 1^T w = rho * (total + u)``
    of a non-negative least-squares problem; the shift ``u`` is the scaled
    multiplier, updated until the sum is met to ``tol`` (relative), then the
    weights are rescaled onto the constraint exactly.
    """
    rho = 10.0 * max(np.linalg.norm(A, 2), 1e-300)
    Aa = np.vstack([A, np.full((1, A.shape[1]), rho)])
    ba = np.append(b, 0.0)
    u = 0.0
    for _ in range(max_iter):
        ba[-1] = rho * (total + u)
        w = _nnls_row(Aa, ba, i)[0]
        gap = total - w.sum()
        if abs(gap) <= tol * total:
            break
        u += gap
    else:
        if warn:
            warnings.warn(
                f"The projection of row {i} on the set with sum(w) = "
                f"{total:.6g} did not meet the sum to a relative {tol:g} in "
                f"{max_iter} iterations (off by {abs(gap) / total:.2g}); its "
                "weights were rescaled onto the bound, a point of the set "
                "near the optimum.",
                ConvergenceWarning, stacklevel=user_stacklevel())
    s = w.sum()
    if s > 0:
        return w * (total / s)
    # every weight zero: b is best served by the least-norm ray at total
    w = np.zeros(A.shape[1])
    w[np.argmin(np.linalg.norm(total * A - b[:, None], axis=0))] = total
    return w


def _cone_nnls(X, rays):
    """Non-negative least squares of every row of ``X`` on ``rays``."""
    A = np.ascontiguousarray(rays.T, dtype=np.float64)
    W = np.zeros((X.shape[0], rays.shape[0]))
    residuals = np.empty(X.shape[0])
    for i, row in enumerate(X):
        W[i], residuals[i] = _nnls_row(A, row, i)
    return W, residuals


def _metric_root(gram, K):
    """``M`` with ``M^T M = gram`` (so that ``||v||_gram = ||M v||``)."""
    if gram is None:
        return None
    if torch.is_tensor(gram):
        gram = gram.detach().cpu()
    G = np.asarray(check_real(np.asarray(gram), "gram"), dtype=np.float64)
    if G.shape != (K, K):
        raise ValueError(
            f"gram must be a ({K}, {K}) matrix (the metric of the {K} "
            f"coefficients); got shape {G.shape}."
        )
    check_finite(G, "gram")
    if not np.allclose(G, G.T, rtol=1e-10, atol=1e-12 * np.abs(G).max()):
        raise ValueError("gram must be symmetric; got a non-symmetric matrix.")
    vals, vecs = np.linalg.eigh(G)
    if vals.min() < -1e-10 * max(vals.max(), 0.0):
        raise ValueError(
            "gram must be positive semi-definite; got an eigenvalue of "
            f"{vals.min():.3g}."
        )
    return np.sqrt(np.clip(vals, 0.0, None))[:, None] * vecs.T


def _project_cone(X, rays, alpha_range=None, gram=None, *, warn=True):
    """Nearest points of ``{w @ rays : w >= 0[, lo <= sum(w) <= hi]}``.

    One non-negative least-squares problem per row in the metric's
    coordinates. With ``alpha_range``, a row whose cone projection has weights
    summing outside ``[lo, hi]`` is solved again with the sum fixed at the
    violated bound: the problem is convex, so when the bound is not met by
    any minimiser on the cone, the constrained minimiser lies on it.
    ``warn=False`` drops the ``ConvergenceWarning`` of a fixed-sum solve
    that misses its sum (rather than ``warnings.catch_warnings``, whose
    process-wide filters race between threads).
    """
    M = _metric_root(gram, X.shape[1])
    A = np.ascontiguousarray(rays.T if M is None else M @ rays.T, dtype=np.float64)
    B = X if M is None else X @ M.T
    W = np.zeros((X.shape[0], rays.shape[0]))
    for i, b in enumerate(B):
        w = _nnls_row(A, b, i)[0]
        if alpha_range is not None:
            lo, hi = alpha_range
            s = w.sum()
            if s > hi or s < lo:
                w = _nnls_fixed_sum(A, b, hi if s > hi else lo, i, warn=warn)
        W[i] = w
    return W @ rays, W


def _draw_weights(rng, n_samples, n_generators, max_rays, alpha_range):
    """Algorithm 2 for ``n_samples`` draws, as a CSR array of conic weights.

    J is drawn per sample; J distinct generators are chosen by Floyd's
    algorithm, run on all samples at once: the samples are processed in
    decreasing order of J so that the ones still drawing at step ``i`` (those
    with ``J > i``) are a prefix. The weights are ``alpha * beta`` with
    ``beta = E / sum(E)``, ``E`` i.i.d. standard exponentials, i.e. ``beta``
    uniform on the (J-1)-simplex.
    """
    R = n_generators
    J = rng.integers(1, max_rays + 1, size=n_samples)
    order = np.argsort(-J, kind="stable")  # decreasing J
    counts = np.bincount(J, minlength=max_rays + 1)[1:]
    n_drawing = n_samples - np.cumsum(counts) + counts  # samples with J > i
    R_minus_J = R - J[order]
    indptr = np.zeros(n_samples + 1, dtype=np.intp)
    np.cumsum(J, out=indptr[1:])
    data = np.empty(indptr[-1])
    indices = np.empty(indptr[-1], dtype=np.intp)
    row_start = indptr[:-1][order]
    chosen = np.zeros(n_samples * R, dtype=bool)  # flat (n_samples, R) table
    table_start = order * R
    totals = np.zeros(n_samples)
    for i in range(max_rays):
        k = n_drawing[i]
        if k == 0:
            break
        # Floyd: draw t in {0, ..., R - J + i}; if already chosen, take
        # R - J + i itself (never chosen before). This yields a uniformly
        # random J-subset.
        bound = R_minus_J[:k] + i
        t = (rng.random(k) * (bound + 1)).astype(np.intp)
        np.minimum(t, bound, out=t)  # guards a float rounding up to bound + 1
        start = table_start[:k]
        taken = np.take(chosen, start + t)
        if taken.any():
            t[taken] = bound[taken]
        np.put(chosen, start + t, True)
        e = rng.standard_exponential(k)
        # An exponential draw of exactly 0 (probability ~1e-16) would make a
        # J = 1 sample all zero: move it to the smallest positive float.
        np.maximum(e, np.finfo(np.float64).tiny, out=e)
        position = row_start[:k] + i
        np.put(indices, position, t)
        np.put(data, position, e)
        totals[:k] += e
    scale = np.empty(n_samples)
    scale[order] = rng.uniform(alpha_range[0], alpha_range[1], n_samples) / totals
    data *= np.repeat(scale, J)
    return scipy.sparse.csr_array(
        (data, indices, indptr), shape=(n_samples, n_generators)
    )


def _sample_cone(generators, n_samples, max_rays, alpha_range, rng):
    """Shared path of :func:`sample_cone` and ``ConeSampler.sample``."""
    out = np.empty((n_samples, generators.shape[1]), dtype=generators.dtype)
    G = np.asarray(generators, dtype=np.float64)
    for start in range(0, n_samples, _SAMPLE_CHUNK):
        stop = min(start + _SAMPLE_CHUNK, n_samples)
        W = _draw_weights(rng, stop - start, G.shape[0], max_rays, alpha_range)
        out[start:stop] = W @ G
    return out


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


def circumcenter(X, *, solver=None):
    """Circumcenter and circumradius of the cone generated by the rows of X.

    The circumcenter is the unit axis ``x`` that maximises the smallest cosine
    ``min_p <x, gamma_p / ||gamma_p||>``; the circumradius is the arccos of
    that smallest cosine, the half-angle of the narrowest revolution cone
    around ``x`` that contains every row.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
        Generators of the cone, one per row. No row may be zero.
    solver : {"CLARABEL", "ECOS", "SCS"}, default=None
        cvxpy solver of the second-order cone program. ``None`` tries the
        installed ones in this order until one succeeds.

    Returns
    -------
    center : ndarray of shape (n_features,)
        Unit axis of the cone.
    radius : float
        Circumradius in radians, in ``[0, pi / 2)``.

    Raises
    ------
    ValueError
        If a row is zero or not finite, or the cone is not pointed
        (circumradius at least ``pi / 2``).
    RuntimeError
        If no solver could solve the program.

    See Also
    --------
    simplify_cone : Algorithm 1, which starts from the circumcenter.

    Notes
    -----
    Solved by constraint generation over the rows (see the module notes), so
    the cost grows slowly with the number of rows. The radius returned is
    computed from the data for the returned axis, not read from the solver.

    References
    ----------
    .. [1] R. Henrion and A. Seeger, "Inradius and circumradius of various
       convex cones arising in applications," Set-Valued and Variational
       Analysis, 18(3-4), 483-511, 2010.

    Examples
    --------
    >>> import numpy as np
    >>> center, radius = circumcenter(np.eye(3))
    >>> np.round(center, 4)
    array([0.5774, 0.5774, 0.5774])
    >>> bool(np.isclose(radius, np.arccos(1 / np.sqrt(3))))
    True
    """
    U = _normalize_rows(_as_2d_float(X, "X"), "X")
    return _circumcenter_unit(U, solver=solver, name="X")


def greedy_rays(U, n_rays, *, center):
    """Greedy farthest-ray selection of Algorithm 1 on unit rows.

    Starting from the kept set ``{center}``, add ``n_rays`` times the row of
    ``U`` whose smallest angle to the kept rays is largest (ties go to the
    lowest row index).

    Parameters
    ----------
    U : array-like of shape (n_rows, n_features)
        Candidate rays, of unit norm (see :func:`simplify_cone` for raw rows).
    n_rays : int
        Number of rays to keep, at most ``n_rows``.
    center : array-like of shape (n_features,)
        Unit vector that starts the kept set, typically the circumcenter.

    Returns
    -------
    indices : ndarray of shape (n_rays,)
        Rows of ``U`` in the order they were chosen.

    See Also
    --------
    simplify_cone : Normalises the rows, computes the center, then calls this.

    Notes
    -----
    A running vector holds every row's largest cosine to the kept rays, so each
    step costs one matrix-vector product: O(P K) per step, O(P K N) in all.

    Examples
    --------
    >>> import numpy as np
    >>> U = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    >>> greedy_rays(U, 2, center=np.array([1.0, 1.0]) / np.sqrt(2))
    array([0, 3])
    """
    U = _as_2d_float(U, "U")
    center = np.asarray(center, dtype=np.float64)
    if center.shape != (U.shape[1],):
        raise ValueError(
            f"center must have shape ({U.shape[1]},) to match U; got shape "
            f"{center.shape}."
        )
    check_finite(center, "center")
    n_rays = _check_n_rays(n_rays, U.shape[0])
    return _greedy_select(U, center, n_rays)[0]


def simplify_cone(X, n_rays, *, solver=None):
    """Keep ``n_rays`` extreme rays of the cone of the rows of X (Algorithm 1).

    Normalise the rows, compute the circumcenter of their cone, then greedily
    keep, ``n_rays`` times, the row farthest (in angle) from the rays kept so
    far, starting from the circumcenter, which is dropped at the end.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
        The ``gamma_p``, one per row. No row may be zero; the cone they
        generate must be pointed.
    n_rays : int
        Number of rays to keep, ``1 <= n_rays <= n_rows``.
    solver : {"CLARABEL", "ECOS", "SCS"}, default=None
        cvxpy solver of the circumcenter program (see :func:`circumcenter`).

    Returns
    -------
    rays : ndarray of shape (n_rays, n_features)
        The kept rays, unit rows, in the order they were chosen.
    indices : ndarray of shape (n_rays,)
        Their rows in ``X``.
    center : ndarray of shape (n_features,)
        Circumcenter of the cone of ``X``.
    radius : float
        Circumradius in radians.

    Warns
    -----
    UserWarning
        When some kept rays repeat an earlier direction (X has fewer distinct
        directions than ``n_rays``).

    See Also
    --------
    deepblur.estimators.cone.ConeSimplifier : The same as an estimator.
    circumcenter, greedy_rays : The two steps.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(size=(200, 3))
    >>> rays, indices, center, radius = simplify_cone(X, 5)
    >>> rays.shape, indices.shape
    ((5, 3), (5,))
    >>> bool(np.allclose(rays, X[indices] / np.linalg.norm(X[indices], axis=1,
    ...                                                    keepdims=True)))
    True
    """
    return _simplify_cone(_as_2d_float(X, "X"), n_rays, solver=solver)


def cone_nnls(X, rays):
    """Conic weights of every row of X on the rays (non-negative least squares).

    For every row ``x`` solve ``min_{w >= 0} ||x - w @ rays||_2``.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
        Points to project on ``cone(rays)``.
    rays : array-like of shape (n_rays, n_features)
        Generators of the cone.

    Returns
    -------
    W : ndarray of shape (n_rows, n_rays)
        Non-negative weights; ``W @ rays`` is the projection of ``X`` on the
        cone. When ``n_rays > n_features`` the weights need not be unique (the
        projection is); the solver returns a solution with at most
        ``n_features`` non-zero weights in general.
    residuals : ndarray of shape (n_rows,)
        ``||x - w @ rays||_2`` for every row, zero when ``x`` is in the cone.

    See Also
    --------
    scipy.optimize.nnls : The Lawson-Hanson active-set solver used per row.

    Notes
    -----
    One exact active-set solve per row: 50 to 120 microseconds per row for 100
    rays in 20 dimensions on the 2-core benchmark machine. A batched
    accelerated projected gradient (FISTA) on all rows at once was measured
    more than 20 times slower for a residual accurate to 1e-6 on these ill-conditioned
    (``n_rays > n_features``) problems.

    Examples
    --------
    >>> import numpy as np
    >>> rays = np.eye(2)
    >>> W, res = cone_nnls(np.array([[2.0, 1.0], [-1.0, 1.0]]), rays)
    >>> W
    array([[2., 1.],
           [0., 1.]])
    >>> res
    array([0., 1.])
    """
    X, rays = _points_and_rays(X, rays)
    return _cone_nnls(X, rays)


def project_cone(X, rays, *, alpha_range=None, gram=None):
    """Nearest points of a cone, or of the slab of it that Algorithm 2 samples.

    For every row ``x`` return ``p = w @ rays`` minimising ``||x - p||_G``
    (``||v||_G^2 = v^T G v``) over ``w >= 0`` and, with ``alpha_range``,
    ``alpha_min <= sum(w) <= alpha_max``. With unit rays the latter set is
    the convex hull of every sample of :func:`sample_cone` with the same
    ``alpha_range``. The projection on a closed convex set never increases
    the ``G``-distance to any point of that set: an estimate of a ``gamma``
    drawn by Algorithm 2 gets no farther from it, in the operator metric when
    ``G`` is the basis's Gram matrix.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
        Points to project.
    rays : array-like of shape (n_rays, n_features)
        Generators of the cone (e.g. ``ConeSampler.generators_``).
    alpha_range : tuple of float, default=None
        ``(alpha_min, alpha_max)``, ``0 < alpha_min < alpha_max``: the range
        of the sum of the weights. ``None`` projects on the whole cone.
    gram : array-like of shape (n_features, n_features), default=None
        Symmetric positive semi-definite metric; ``None`` is the Euclidean
        one. The basis's Gram matrix gives the Frobenius distance between
        operators (:func:`deepblur.operators.gram.operator_distance`).

    Returns
    -------
    P : ndarray of shape (n_rows, n_features)
        The projections, ``W @ rays``.
    W : ndarray of shape (n_rows, n_rays)
        Their non-negative weights (not unique when ``n_rays > n_features``;
        the projection is unique when ``gram`` is positive definite).

    See Also
    --------
    cone_nnls : The projection on the whole cone in the Euclidean metric.
    deepblur.estimators.cone.ConeSampler.project : The same as a method.

    Notes
    -----
    One exact active-set non-negative least-squares solve per row (scipy's
    Lawson-Hanson) in the coordinates ``M x`` with ``M^T M = G``. When
    ``alpha_range`` is given and those weights sum outside it, the row is
    solved again with the sum fixed at the violated bound, the equality
    being enforced by the method of multipliers on one more least-squares
    row (to a relative 1e-12, then exactly by rescaling). The problem is
    convex, so the minimiser lies on that bound whenever no minimiser on the
    cone meets it.

    Examples
    --------
    >>> import numpy as np
    >>> rays = np.eye(2)
    >>> P, W = project_cone([[2.0, 1.0], [-1.0, 0.5], [0.2, 0.1]], rays,
    ...                     alpha_range=(0.5, 1.5))
    >>> P
    array([[1.25, 0.25],
           [0.  , 0.5 ],
           [0.3 , 0.2 ]])
    """
    X, rays = _points_and_rays(X, rays)
    if alpha_range is not None:
        alpha_range = _check_alpha_range(alpha_range)
    return _project_cone(X, rays, alpha_range, gram)


def _project_weights(V, lo, hi):
    """Euclidean projection of each row of ``V`` on ``{w >= 0, lo <= sum(w) <=
    hi}`` (``{w >= 0}`` when ``lo`` is None), in torch, without branches.

    The projection is ``max(v - theta, 0)`` with ``theta = 0`` when the clipped
    row's sum lies in the range, else the threshold that puts the sum on the
    violated bound (the simplex projection's, found by sorting): that is the
    median of ``theta_hi <= 0 <= theta_lo`` ordered as ``max(theta_hi,
    min(0, theta_lo))``.
    """
    W = V.clamp_min(0)
    if lo is None:
        return W
    if V.device.type == "cpu":
        # torch's CPU sort of short rows is slow (1.7 ms for 2 048 rows of
        # 40, numpy's 0.2): sort only the rows whose clipped sum is out of
        # range. On a GPU, sorting them all costs less than the sync.
        s = W.sum(dim=1)
        rows = ((s > hi) | (s < lo)).nonzero().squeeze(1)
        if len(rows):
            W[rows] = _project_weights_sorted(V[rows], lo, hi)
        return W
    return _project_weights_sorted(V, lo, hi)


def _project_weights_sorted(V, lo, hi):
    """:func:`_project_weights` of every row with a range, by sorting."""
    u = V.sort(dim=1, descending=True).values
    cs = u.cumsum(dim=1)
    j = torch.arange(1, V.shape[1] + 1, device=V.device, dtype=V.dtype)

    def threshold(total):
        # sum(max(v - theta, 0)) = total: theta = (cs_rho - total) / rho with
        # rho the last j where u_j > (cs_j - total) / j (a prefix; j = 1 holds
        # exactly, but not in floating point when total < ulp(u_1) / 2)
        rho = (u * j > cs - total).sum(dim=1, keepdim=True).clamp_min(1)
        return (cs.gather(1, rho - 1) - total) / rho

    zero = torch.zeros((), device=V.device, dtype=V.dtype)
    theta = torch.maximum(threshold(hi), torch.minimum(zero, threshold(lo)))
    return (V - theta).clamp_min(0)


def _gap_lower_bound(w, res, A, lo, hi):
    """``l <= min ||A v - b||`` over the feasible ``v``, per row, from weights
    ``w`` with residuals ``res = A w - b`` (the Frank-Wolfe bound: ``f* >=
    f(w) - max_v <grad f(w), w - v>`` for the convex ``f = ||A v - b||^2 /
    2``, the maximum in closed form on ``{v >= 0, lo <= sum(v) <= hi}``: all
    the weight on the most negative gradient component, at ``hi``, else at
    ``lo``; on the cone, ``lo`` None, unbounded unless the gradient is >= 0).
    """
    r2 = np.einsum("ij,ij->i", res, res)
    c = res @ A                                         # gradient in w
    cmin = c.min(axis=1)
    if lo is None:
        best = np.where(cmin >= 0, 0.0, -np.inf)
    else:
        best = np.where(cmin < 0, hi, lo) * cmin
    gap = np.einsum("ij,ij->i", c, w) - best
    return np.sqrt(2 * np.maximum(0.5 * r2 - gap, 0.0))


def cone_distance_bounds(X, rays, *, alpha_range=None, gram=None, tol=None,
                         n_iter=200, device=None):
    """Bounds on the relative distances of points to a cone or its slab.

    For every row ``x``, numbers ``lower <= ||x - p||_G / ||p||_G <= upper``
    where ``p`` is the point that :func:`project_cone` returns (same
    ``rays``, ``alpha_range`` and ``gram``). They come from a feasible point
    of the projection problem found by an accelerated projected gradient
    (FISTA) on the weights, batched over the rows in torch on ``device``: no
    per-row solve, so a GPU takes a large batch in a few milliseconds. A check
    "is the distance at most ``tol``?" is settled for the rows with ``upper <=
    tol`` or ``lower > tol``; only the others need :func:`project_cone`.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
        Points, e.g. estimated coefficients ``gamma``.
    rays : array-like of shape (n_rays, n_features)
        Generators of the cone (e.g. ``ConeSampler.generators_``).
    alpha_range : tuple of float, default=None
        ``(alpha_min, alpha_max)`` as in :func:`project_cone`; ``None`` is the
        whole cone.
    gram : array-like of shape (n_features, n_features), default=None
        Symmetric positive semi-definite metric (the basis's Gram matrix for
        the operator metric); ``None`` is the Euclidean one.
    tol : float, default=None
        A row stops iterating once its bounds settle the check against
        ``tol`` (looked at every 25 steps). ``None`` iterates every row
        ``n_iter`` times.
    n_iter : int, default=200
        Most gradient steps per row; more tighten the bounds. On the shipped
        network's estimates of natural and microscopy images, 200 steps
        settle 99.7-100 % of them against its tolerance of 0.05 (the
        width-16 network before it: 99.8-99.9 % against 0.06;
        benchmarks/README.md).
    device : str or torch.device, default=None
        Where to iterate (default CPU). The results are on the CPU either way.

    Returns
    -------
    lower, upper : ndarrays of shape (n_rows,), float64
        ``upper`` is ``inf`` where no bound follows: the feasible point is no
        nearer to ``x`` than ``||x||_G``, and the set holds points of norm 0
        (the whole cone; a slab with a ray in the null space of ``gram``).

    See Also
    --------
    project_cone : The exact projections and their weights.

    Notes
    -----
    With ``q`` the feasible point and ``r = ||x - q||_G >= r* = ||x -
    p||_G``, the triangle inequality gives ``||x||_G - r <= ||p||_G <=
    ||x||_G + r*``; with a range, the set's points also have norms between
    ``p_min`` (a lower bound on the smallest, the bound ``l`` below for
    ``x = 0`` at the origin's projection) and ``p_max`` (the largest of
    ``alpha_max`` times a ray's). Hence ``upper = r / max(||x||_G
    - r, p_min)`` and ``lower = l / min(||x||_G + l, p_max)`` for any ``l <=
    r*`` (``x / (a + x)`` grows with ``x``). The
    objective ``f = ||x - w @ rays||_G^2 / 2`` is convex in the weights
    ``w``, so ``f* >= f(q) - gap`` with the Frank-Wolfe gap ``gap = max_v
    <grad f(q), q - v>`` over the feasible ``v``, a closed form on this set
    (all the weight on the most negative component of the gradient, at the
    largest or smallest sum); ``l = sqrt(2 max(f(q) - gap, 0))``. Every
    iterate is projected on the weights' set exactly (a sort per row), and
    the bounds are computed in float64 on the CPU from the weights projected
    once more there: they hold to rounding however few steps are taken.

    Examples
    --------
    >>> import numpy as np
    >>> rays = np.eye(2)
    >>> X = [[0.6, 0.4], [2.0, 1.0]]
    >>> lower, upper = cone_distance_bounds(X, rays, alpha_range=(0.5, 1.5))
    >>> P = project_cone(X, rays, alpha_range=(0.5, 1.5))[0]
    >>> exact = np.linalg.norm(X - P, axis=1) / np.linalg.norm(P, axis=1)
    >>> np.round(lower, 3), np.round(exact, 3), np.round(upper, 3)
    (array([0.   , 0.707]), array([0.   , 0.832]), array([0.   , 0.902]))
    """
    X, rays = _points_and_rays(X, rays)
    lo = hi = None
    if alpha_range is not None:
        lo, hi = _check_alpha_range(alpha_range)
    if not isinstance(n_iter, numbers.Integral) or isinstance(n_iter, bool) \
            or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer; got {n_iter!r}.")
    if tol is not None and (not isinstance(tol, numbers.Real)
                            or isinstance(tol, bool) or not tol >= 0):
        raise ValueError(f"tol must be a non-negative number or None; got {tol!r}.")
    try:    # before any work: an unknown name, or CUDA where there is none
        device = torch.device("cpu") if device is None else resolve_device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device or its name (e.g. "
                         f"'cpu', 'cuda'); got {device!r}.") from None
    M = _metric_root(gram, X.shape[1])
    A = rays.T if M is None else M @ rays.T            # (K, m)
    B = X if M is None else X @ M.T                     # (n, K): ||.||_G = ||M .||
    nb = np.linalg.norm(B, axis=1)
    m = rays.shape[0]
    start = 0.0 if lo is None else (lo + hi) / (2 * m)
    # the norms of the set's points lie in [p_min, p_max]: p_min a certified
    # lower bound on the smallest (the Frank-Wolfe bound at the origin's
    # projection, which need not be exact), p_max the largest vertex's
    # (norms are convex); the whole cone holds 0 and is unbounded
    if lo is None:
        p_min, p_max = 0.0, np.inf
    else:
        # its weights need not be optimal (a certified bound follows); not
        # warnings.catch_warnings: predict calls this in threads at once (a
        # threaded search, dask's threads), which restored each other's
        # process-wide filters and left 'ignore ConvergenceWarning' behind
        w = _project_cone(np.zeros((1, X.shape[1])), rays, (lo, hi), gram,
                          warn=False)[1]
        p_min = float(_gap_lower_bound(w, w @ A.T, A, lo, hi)[0])
        p_max = hi * float(np.linalg.norm(A, axis=0).max())
    lower, upper = np.zeros(len(X)), np.full(len(X), np.inf)

    def update(w, rows):
        """Tighten the bounds of ``rows`` with their weights ``w``."""
        w = _project_weights(torch.as_tensor(w, dtype=torch.float64).cpu(),
                             lo, hi).numpy()
        res = w @ A.T - B[rows]
        r = np.linalg.norm(res, axis=1)
        low = _gap_lower_bound(w, res, A, lo, hi)
        below = np.maximum(nb[rows] - r, p_min)     # <= ||p||
        above = np.minimum(nb[rows] + low, p_max)   # >= ||p|| when low <= r*
        with np.errstate(divide="ignore", invalid="ignore"):
            up = np.where(below > 0, r / below, np.inf)
            lw = np.where(low > 0, low / above, 0.0)
        upper[rows] = np.minimum(upper[rows], up)
        lower[rows] = np.maximum(lower[rows], lw)

    rows = np.arange(len(X))
    update(np.full((len(rows), m), start), rows)
    AtA = A.T @ A
    L = float(np.linalg.eigvalsh(AtA)[-1]) * (1 + 1e-9)
    if L <= 0 or not n_iter or not len(rows):
        return lower, upper
    kw = dict(device=device, dtype=torch.float64)
    AtA_t = torch.as_tensor(AtA, **kw)
    AtB = torch.as_tensor(B @ A, **kw)
    w = torch.full((len(rows), m), start, **kw)
    z, t = w, 1.0
    for step in range(1, int(n_iter) + 1):
        w_next = _project_weights(z - (z @ AtA_t - AtB) / L, lo, hi)
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        z = w_next + ((t - 1) / t_next) * (w_next - w)
        w, t = w_next, t_next
        if step % _BOUND_CHECK_EVERY == 0 or step == n_iter:
            update(w, rows)
            if tol is None:
                continue
            open_ = (upper[rows] > tol) & (lower[rows] <= tol)
            rows = rows[open_]
            if not len(rows):
                break
            keep = torch.as_tensor(open_, device=w.device)
            w, z, AtB = w[keep], z[keep], AtB[keep]
    return lower, upper


def draw_cone_weights(
    rng, n_samples, n_generators, *, max_rays, alpha_range=(0.5, 1.5)
):
    """Random conic weights of Algorithm 2 (the draw, without the generators).

    For each sample: ``J`` uniform in ``{1, ..., max_rays}``; ``J`` distinct
    generators uniformly at random; ``beta`` uniform on the (J-1)-simplex;
    ``alpha`` uniform in ``alpha_range``. The sample's weights are
    ``alpha * beta`` on the chosen generators and 0 elsewhere, so the sample
    itself is ``W @ generators``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (use ``numpy.random.default_rng(seed)``).
    n_samples : int
        Number of draws.
    n_generators : int
        Number ``R`` of generators of the cone.
    max_rays : int
        Largest number of generators per sample, ``1 <= max_rays <= R``
        (the paper uses the dimension ``K``); ``None`` means ``n_generators``.
    alpha_range : tuple of float, default=(0.5, 1.5)
        ``(alpha_min, alpha_max)`` with ``0 < alpha_min < alpha_max``.

    Returns
    -------
    W : scipy.sparse.csr_array of shape (n_samples, n_generators)
        Exactly ``J`` stored (positive) weights per row, summing to ``alpha``.

    See Also
    --------
    sample_cone : Applies these weights to the generators, in blocks.
    sample_cone_torch : The same draw in torch, for a data pipeline.

    Examples
    --------
    >>> import numpy as np
    >>> W = draw_cone_weights(np.random.default_rng(0), 4, 10, max_rays=3)
    >>> W.shape
    (4, 10)
    >>> bool(np.all(np.diff(W.indptr) <= 3))
    True
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy.random.Generator; got {type(rng).__name__}."
        )
    n_samples = _check_n_samples(n_samples)
    if (
        not isinstance(n_generators, numbers.Integral)
        or isinstance(n_generators, bool)
        or n_generators < 1
    ):
        raise ValueError(
            f"n_generators must be a positive int; got {n_generators!r}."
        )
    max_rays = _resolve_max_rays(max_rays, n_generators, n_generators)
    alpha_range = _check_alpha_range(alpha_range)
    return _draw_weights(rng, n_samples, int(n_generators), max_rays, alpha_range)


def sample_cone(
    generators,
    n_samples=1,
    *,
    max_rays=None,
    alpha_range=(0.5, 1.5),
    random_state=None,
):
    """Random points of the cone of the generators (Algorithm 2).

    Each sample is ``alpha * sum_j beta_j * generators[z_j]`` with ``J``
    uniform in ``{1, ..., max_rays}``, ``z_1, ..., z_J`` distinct and uniform,
    ``beta`` uniform on the (J-1)-simplex and ``alpha`` uniform in
    ``alpha_range``. Few active generators are as likely as many, which
    favours the extreme rays of the cone.

    Parameters
    ----------
    generators : array-like of shape (n_generators, n_features)
        Generators of the cone, e.g. the rays kept by :func:`simplify_cone`.
    n_samples : int, default=1
        Number of samples.
    max_rays : int, default=None
        Largest number of generators per sample; ``None`` means
        ``min(n_features, n_generators)`` (Caratheodory: every point of the
        cone is a conic combination of at most ``n_features`` generators).
    alpha_range : tuple of float, default=(0.5, 1.5)
        ``(alpha_min, alpha_max)``, ``0 < alpha_min < alpha_max``: the scale of
        the samples relative to that of the generators.
    random_state : int, numpy.random.Generator, RandomState or None, \
default=None
        Source of randomness.

    Returns
    -------
    samples : ndarray of shape (n_samples, n_features)
        In the dtype of ``generators`` (float32 or float64).

    See Also
    --------
    draw_cone_weights : The conic weights of the samples.
    sample_cone_torch : The same in torch, on any device.
    deepblur.estimators.cone.ConeSampler : The same as an estimator.

    Examples
    --------
    >>> import numpy as np
    >>> samples = sample_cone(np.eye(3), 1000, random_state=0)
    >>> samples.shape
    (1000, 3)
    >>> bool(samples.min() >= 0 and samples.sum(axis=1).max() <= 1.5)
    True
    """
    generators = _as_2d_float(
        generators, "generators", dtypes=(np.float64, np.float32)
    )
    n_samples = _check_n_samples(n_samples)
    max_rays = _resolve_max_rays(max_rays, *generators.shape)
    alpha_range = _check_alpha_range(alpha_range)
    rng = _as_generator(random_state)
    return _sample_cone(generators, n_samples, max_rays, alpha_range, rng)


def sample_cone_torch(
    generators,
    n_samples=1,
    *,
    max_rays=None,
    alpha_range=(0.5, 1.5),
    generator=None,
    return_weights=False,
):
    """Algorithm 2 in torch: a batch of random points of the cone.

    The same distribution as :func:`sample_cone`, computed with torch on the
    device of ``generators`` and returned in their dtype (the random draws
    are made in float32 at least, so that half-precision generators are
    chosen uniformly too), so that a data pipeline can draw one batch of
    operator coefficients per step without leaving the GPU.

    Parameters
    ----------
    generators : torch.Tensor of shape (n_generators, n_features)
        Generators of the cone (floating point).
    n_samples : int, default=1
        Batch size.
    max_rays : int, default=None
        As in :func:`sample_cone`; ``None`` means
        ``min(n_features, n_generators)``.
    alpha_range : tuple of float, default=(0.5, 1.5)
        ``(alpha_min, alpha_max)``, ``0 < alpha_min < alpha_max``.
    generator : torch.Generator, default=None
        Source of randomness, on the device of ``generators``; ``None`` uses
        torch's default generator.
    return_weights : bool, default=False
        Also return the dense conic weights.

    Returns
    -------
    samples : torch.Tensor of shape (n_samples, n_features)
    weights : torch.Tensor of shape (n_samples, n_generators)
        Only when ``return_weights``: ``samples = weights @ generators``.

    See Also
    --------
    sample_cone : The numpy version (faster on CPU for large batches).

    Notes
    -----
    The ``J`` distinct generators are the first ``J`` of a uniformly random
    ordered ``max_rays``-subset (``topk`` of i.i.d. uniform keys), hence a
    uniformly random ``J``-subset. Memory is
    O(n_samples * (n_generators + max_rays * n_features)): call it per batch.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> batch = sample_cone_torch(torch.eye(3, dtype=torch.float64), 8,
    ...                           generator=g)
    >>> batch.shape, batch.dtype
    (torch.Size([8, 3]), torch.float64)
    """
    if not isinstance(generators, torch.Tensor) or not generators.is_floating_point():
        raise ValueError(
            "generators must be a floating-point torch.Tensor; got "
            f"{type(generators).__name__}"
            + (f" of dtype {generators.dtype}" if torch.is_tensor(generators) else "")
            + "."
        )
    if generators.ndim != 2:
        raise ValueError(
            "generators must have 2 dimensions (n_generators, n_features); got "
            f"shape {tuple(generators.shape)}."
        )
    check_finite(generators, "generators")
    if generator is not None and not isinstance(generator, torch.Generator):
        # (torch's TypeError lists randint's signatures)
        raise ValueError(
            "generator must be a torch.Generator or None (a seed: "
            "torch.Generator().manual_seed(seed)); got "
            f"{type(generator).__name__}.")
    n_samples = _check_n_samples(n_samples)
    R, K = generators.shape
    max_rays = _resolve_max_rays(max_rays, R, K)
    lo, hi = _check_alpha_range(alpha_range)
    # The draws are made in float32 at least: keys of half precision tie
    # (float16 has 2 048 values in [0, 1), bfloat16 256) and ``topk`` breaks
    # ties by position, so the generators were not chosen uniformly (with
    # 200 bfloat16 generators, one at a time: the first ones 1.4 times as
    # often as their share, the last ones 0.6 to 0.7 times), and a rounded
    # ``alpha`` left ``alpha_range``. The samples are cast at the end.
    dtype = torch.promote_types(generators.dtype, torch.float32)
    kw = {"device": generators.device, "dtype": dtype}
    J = torch.randint(
        1, max_rays + 1, (n_samples, 1), generator=generator,
        device=generators.device,
    )
    keys = torch.rand((n_samples, R), generator=generator, **kw)
    chosen = keys.topk(max_rays, dim=1).indices
    active = torch.arange(max_rays, device=generators.device) < J
    E = torch.empty((n_samples, max_rays), **kw).exponential_(generator=generator)
    E = E.clamp_min(torch.finfo(dtype).tiny) * active
    alpha = lo + (hi - lo) * torch.rand((n_samples, 1), generator=generator, **kw)
    w = E * (alpha / E.sum(dim=1, keepdim=True))
    # A gather and a sum rather than a matrix product: n * max_rays * K work
    # instead of n * R * K, and neither a BLAS call nor advanced indexing,
    # whose thread pools stalled small batches on a loaded 2-core machine
    # (12 to 16 ms for a batch of 64, against 0.25 ms for this function).
    picked = generators.index_select(0, chosen.reshape(-1)).to(dtype)
    samples = (w.unsqueeze(-1) * picked.reshape(n_samples, max_rays, K)).sum(dim=1)
    samples = samples.to(generators.dtype)
    if not return_weights:
        return samples
    weights = torch.zeros((n_samples, R), **kw).scatter_(1, chosen, w)
    return samples, weights.to(generators.dtype)
