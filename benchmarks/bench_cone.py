"""Cone simplification (Algorithm 1) and sampling (Algorithm 2) on the CPU.

Setting of issue 3: P = 100 000 coefficient vectors in K = 20 dimensions,
N = 100 kept rays; 1 000 000 samples from those 100 rays with up to K active
generators each. Every ratio is against references measured in the same run:

* greedy loop (running max-cosine vector, O(P K) per step) against
  - its floor: the N matrix-vector passes over the (P, K) rows it must make;
  - the paper read literally, vectorised per step: every step recomputes the
    angles of all remaining rows to all kept rays (O(P K n) at step n),
    measured at P / 5 and scaled by 5 (the cost is linear in P);
  - a pure-Python loop over rows and kept rays, measured on a small problem
    and extrapolated by its count of (row, kept ray) angle evaluations;
* circumcenter by constraint generation against the same second-order cone
  program on all P rows at once;
* sampler against a per-sample Python loop with numpy's own draws
  (``choice(replace=False)``, ``dirichlet``), extrapolated from 20 000 samples.

Usage: ``python benchmarks/bench_cone.py [--quick]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from deepblur.solvers.cone import (
    _circumcenter_unit,
    _greedy_select,
    _normalize_rows,
    cone_nnls,
    sample_cone,
    sample_cone_torch,
    simplify_cone,
)

GREEDY_GOAL_S = 2.0
SAMPLER_GOAL_PER_S = 1e6


def best_time(fn, repeat=5):
    """Best wall time of ``fn()`` over ``repeat`` calls (after one warm-up)."""
    fn()
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def make_gammas(P, K, seed=0):
    """Coefficient vectors in a pointed cone: |N(0, 1)| entries."""
    return np.abs(np.random.default_rng(seed).standard_normal((P, K)))


def matvec_floor(U, n_rays):
    """N matrix-vector passes over the rows (single-threaded, as the loop)."""
    v = U[0].copy()
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(n_rays):
            out = U @ v
            v = U[int(np.argmin(out))]


def literal_vectorised(U, center, n_rays):
    """Algorithm 1 as written: recompute all angles to all kept rays per step."""
    kept = [center]
    remaining = np.ones(len(U), dtype=bool)
    chosen = []
    for _ in range(n_rays):
        angles = np.arccos(np.clip(U @ np.array(kept).T, -1.0, 1.0))
        min_angle = np.where(remaining, angles.min(axis=1), -np.inf)
        p = int(np.argmax(min_angle))
        remaining[p] = False
        kept.append(U[p])
        chosen.append(p)
    return np.array(chosen)


def python_loop(U, center, n_rays):
    """Algorithm 1 with a Python loop over rows and kept rays."""
    kept = [center]
    remaining = list(range(len(U)))
    chosen = []
    for _ in range(n_rays):
        best, best_angle = None, -np.inf
        for p in remaining:
            row = U[p]
            angle = min(np.arccos(min(1.0, max(-1.0, row @ r))) for r in kept)
            if angle > best_angle:
                best, best_angle = p, angle
        remaining.remove(best)
        kept.append(U[best])
        chosen.append(best)
    return np.array(chosen)


def angle_evaluations(P, n_rays):
    """(row, kept ray) pairs Algorithm 1 evaluates: sum_n (P - n) (n + 1)."""
    n = np.arange(n_rays)
    return float(np.sum((P - n) * (n + 1)))


def naive_sampler(generators, n_samples, max_rays, alpha_range, rng):
    R, K = generators.shape
    out = np.empty((n_samples, K))
    for i in range(n_samples):
        J = rng.integers(1, max_rays + 1)
        z = rng.choice(R, size=J, replace=False)
        beta = rng.dirichlet(np.ones(J))
        alpha = rng.uniform(*alpha_range)
        out[i] = alpha * (beta @ generators[z])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, smaller references"
    )
    args = parser.parse_args()
    repeat = 2 if args.quick else 5
    P, K, N = 100_000, 20, 100
    n_samples = 1_000_000

    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}")
    print(f"setting: P={P}, K={K}, N={N} rays; {n_samples} samples, "
          f"max_rays=K, alpha in [0.5, 1.5]\n")

    X = make_gammas(P, K)
    U = _normalize_rows(X)

    # --- Algorithm 1 ---------------------------------------------------------
    t_circ = best_time(lambda: _circumcenter_unit(U), repeat=min(repeat, 3))
    center, radius = _circumcenter_unit(U)
    t_greedy = best_time(lambda: _greedy_select(U, center, N), repeat=repeat)
    t_fit = best_time(lambda: simplify_cone(X, N), repeat=min(repeat, 3))
    t_floor = best_time(lambda: matvec_floor(U, N), repeat=repeat)

    P_lit = P // 5
    t_literal = 5 * best_time(
        lambda: literal_vectorised(U[:P_lit], center, N), repeat=1
    )
    indices = _greedy_select(U[:P_lit], center, N)[0]
    assert np.array_equal(literal_vectorised(U[:P_lit], center, N), indices)

    P_py, N_py = (300, 10) if args.quick else (1000, 20)
    t_py_small = best_time(lambda: python_loop(U[:P_py], center, N_py), repeat=1)
    assert np.array_equal(
        python_loop(U[:P_py], center, N_py), _greedy_select(U[:P_py], center, N_py)[0]
    )
    t_python = t_py_small * angle_evaluations(P, N) / angle_evaluations(P_py, N_py)

    import cvxpy as cp

    def full_program():
        x, t = cp.Variable(K), cp.Variable()
        cp.Problem(cp.Maximize(t), [U @ x >= t, cp.norm(x, 2) <= 1]).solve(
            solver="CLARABEL"
        )
        return float(t.value)

    t_full = best_time(full_program, repeat=1)
    gap = abs(full_program() - np.cos(radius))

    print("Algorithm 1 (ConeSimplifier.fit)")
    verdict = "met" if t_greedy < GREEDY_GOAL_S else "MISSED"
    print(f"  greedy loop                 {t_greedy * 1e3:9.1f} ms   "
          f"goal < {GREEDY_GOAL_S:.0f} s: {verdict}")
    print(f"    floor: N mat-vec passes   {t_floor * 1e3:9.1f} ms   "
          f"greedy / floor = {t_greedy / t_floor:.2f}")
    print(f"    literal, vectorised/step  {t_literal:9.2f} s    "
          f"(measured at P={P_lit}, x5)  speed-up {t_literal / t_greedy:.0f}x")
    print(f"    pure-Python loop          {t_python:9.0f} s    "
          f"(measured at P={P_py}, N={N_py}: {t_py_small:.2f} s, extrapolated)  "
          f"speed-up {t_python / t_greedy:.0f}x")
    print(f"  circumcenter (constr. gen.) {t_circ * 1e3:9.1f} ms   "
          f"full program {t_full:.2f} s, speed-up {t_full / t_circ:.1f}x, "
          f"|cos r - t_full| = {gap:.1e}")
    print(f"  simplify_cone total         {t_fit * 1e3:9.1f} ms   "
          f"(normalise + circumcenter + greedy)")

    # --- Algorithm 2 ---------------------------------------------------------
    rays = simplify_cone(X, N)[0]
    t_sample = best_time(
        lambda: sample_cone(rays, n_samples, random_state=0), repeat=min(repeat, 3)
    )
    rate = n_samples / t_sample
    n_naive = 5_000 if args.quick else 20_000
    rng = np.random.default_rng(0)
    t_naive = best_time(
        lambda: naive_sampler(rays, n_naive, K, (0.5, 1.5), rng), repeat=1
    )
    naive_rate = n_naive / t_naive
    G = torch.as_tensor(rays)
    g = torch.Generator().manual_seed(0)
    torch_times = {}
    threads = torch.get_num_threads()
    for n_threads in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n_threads)
        torch_times[n_threads] = (
            best_time(
                lambda: sample_cone_torch(G, 64, max_rays=K, generator=g),
                repeat=20,
            ),
            best_time(
                lambda: sample_cone_torch(G, 100_000, max_rays=K, generator=g),
                repeat=repeat,
            ),
        )
    torch.set_num_threads(threads)

    print("\nAlgorithm 2 (ConeSampler.sample)")
    print(f"  sample_cone                 {rate / 1e6:9.2f} M samples/s "
          f"({t_sample * 1e3:.0f} ms for {n_samples})   goal >= 1 M/s: "
          f"{'met' if rate >= SAMPLER_GOAL_PER_S else 'MISSED'}")
    print(f"    per-sample Python loop    {naive_rate / 1e3:9.1f} k samples/s  "
          f"speed-up {rate / naive_rate:.0f}x")
    for n_threads, (t_64, t_big) in torch_times.items():
        print(f"  sample_cone_torch, {n_threads} thread(s): batch of 64 in "
              f"{t_64 * 1e6:.0f} us; {1e5 / t_big / 1e6:.2f} M samples/s "
              f"in batches of 1e5")

    # --- transform / score ---------------------------------------------------
    n_rows = 500 if args.quick else 2000
    held_out = make_gammas(n_rows, K, seed=1)
    t_nnls = best_time(lambda: cone_nnls(held_out, rays), repeat=min(repeat, 3))
    print("\nConeSimplifier.transform / score (NNLS per row, N=100, K=20)")
    print(f"  cone_nnls                   {t_nnls / n_rows * 1e6:9.1f} us per row")


if __name__ == "__main__":
    main()
