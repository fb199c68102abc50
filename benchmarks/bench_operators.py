"""Product-convolution forward/adjoint: FFT floor, naive loop, DeepInverse.

Setting of issue 2: K=20, 128x128 images, 31x31 kernels, float32, zero boundary,
batch 1 and 64. Every ratio is against references measured in the same run:

* FFT floor: the K+1 real FFTs the method needs (K forward of the weighted
  images, one inverse), at the same padded size (the smallest FFT-friendly size
  >= N + k//2), best over batch chunkings;
* naive: a per-k loop doing one forward and one inverse FFT per component
  (2K FFTs), whole batch at once;
* DeepInverse's ``SpaceVaryingBlur`` with the same kernels and maps, when
  ``deepinv`` is importable (run this file from the benchmark venv, see
  benchmarks/README.md).

Usage: ``python benchmarks/bench_operators.py [--quick] [--device cuda]``
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from deepblur.datasets import make_random_operators
from deepblur.operators.product_convolution import ProductConvolution


def best_time(fn, repeat=7, min_time=0.2):
    """Best wall time of ``fn()`` over repeats (each repeat loops >= min_time)."""
    fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = time.perf_counter() - t0
    inner = max(1, int(min_time / max(one, 1e-6)))
    best = np.inf
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def fft_floor(n, K, M, device, dtype, chunks, direction):
    """Best time over chunkings of the K+1 FFTs per image the method needs.

    forward: K forward real FFTs (the weighted images) and one inverse;
    adjoint: one forward real FFT (the image) and K inverse.
    """
    Mr = M[1] // 2 + 1
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    n_fwd, n_inv = (K, 1) if direction == "forward" else (1, K)
    results = {}
    for c in chunks:
        c = min(c, n)
        x = torch.randn(c, n_fwd, *M, device=device, dtype=dtype)
        z = torch.randn(c, n_inv, M[0], Mr, device=device, dtype=cdtype)
        steps = int(np.ceil(n / c))

        def run(x=x, z=z, steps=steps):
            for _ in range(steps):
                torch.fft.rfft2(x)
                torch.fft.irfft2(z, s=M)

        results[c] = best_time(run)
    best = min(results, key=results.get)
    return results[best], best


def naive_forward(u, gamma, kernels_hat, maps, M, H, W):
    y = torch.zeros_like(u)
    for k in range(maps.shape[0]):
        spec = torch.fft.rfft2(maps[k] * u, s=M) * kernels_hat[k]
        y += gamma[:, k, None, None] * torch.fft.irfft2(spec, s=M)[:, :H, :W]
    return y


def naive_adjoint(v, gamma, kernels_hat, maps, M, H, W):
    out = torch.zeros_like(v)
    spec_v = None
    for k in range(maps.shape[0]):
        # a naive loop recomputes the image's spectrum for every k
        spec_v = torch.fft.rfft2(v, s=M)
        corr = torch.fft.irfft2(spec_v * kernels_hat[k].conj(), s=M)[:, :H, :W]
        out += gamma[:, k, None, None] * maps[k] * corr
    return out


def deepinv_physics(kernels, maps, device, dtype, use_fft):
    """DeepInverse's SpaceVaryingBlur with the same families (gamma = 1)."""
    try:
        from deepinv.physics import SpaceVaryingBlur
    except ImportError:
        return None
    # y = sum_k h_k * (w_k . x); filters (b, c, K, h, w), multipliers
    # (b, c, K, H, W); 'constant' padding is zero extension ("same" output).
    h = kernels.to(device=device, dtype=dtype)[None, None]
    w = maps.to(device=device, dtype=dtype)[None, None]
    return SpaceVaryingBlur(filters=h, multipliers=w, padding="constant",
                            use_fft=use_fft, device=device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 1 and 8 only")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--chunk-sweep", action="store_true",
                   help="also time the operator at several batch chunk sizes")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float32
    K, N, k = 20, 128, 31
    torch.manual_seed(0)
    ops = make_random_operators(K // 2, image_shape=(N, N), kernel_shape=(k, k),
                                grid_shape=(4, 4), random_state=0)
    kernels = torch.from_numpy(ops.kernels.reshape(K, k, k))
    maps = torch.from_numpy(ops.maps.reshape(K, N, N))
    op = ProductConvolution(kernels, maps, "zero")
    M = op.fft_shape
    spectra, maps_d, _ = op._buffers(device, dtype)
    print(f"# deepblur operator benchmark: K={K}, image {N}x{N}, kernel {k}x{k}, "
          f"float32, zero boundary, FFT size {M}")
    print(f"# machine: {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {device}")
    dinv = {}
    for use_fft in (False, True):
        phys = deepinv_physics(kernels, maps, device, dtype, use_fft)
        if phys is None:
            print("# deepinv not importable: DeepInverse columns skipped")
            break
        # check the configuration is equivalent: same operator, same output
        u0 = torch.rand(2, N, N, device=device, dtype=dtype)
        ref = op.forward(u0, torch.ones(K, dtype=dtype, device=device))
        with torch.no_grad():
            out = phys.A(u0[:, None])[:, 0]
        diff = float((out - ref).abs().max() / ref.abs().max())
        print(f"# deepinv SpaceVaryingBlur(use_fft={use_fft}) vs deepblur: max "
              f"relative difference {diff:.1e}")
        if diff < 1e-4:
            dinv["fft" if use_fft else "direct"] = phys
    batches = [1, 8] if args.quick else [1, 64]
    rows = []
    for n in batches:
        u = torch.rand(n, N, N, device=device, dtype=dtype)
        g = torch.rand(n, K, device=device, dtype=dtype)
        chunks = [1, 2, 4, 8, 16, 64]
        floors = {d: fft_floor(n, K, M, device, dtype, chunks, d)
                  for d in ("forward", "adjoint")}
        t_fwd = best_time(lambda u=u, g=g: op.forward(u, g))
        t_adj = best_time(lambda u=u, g=g: op.adjoint(u, g))
        t_nf = best_time(lambda u=u, g=g: naive_forward(u, g, spectra, maps_d, M, N, N))
        t_na = best_time(lambda u=u, g=g: naive_adjoint(u, g, spectra, maps_d, M, N, N))
        row = dict(n=n, floor_fwd=floors["forward"][0],
                   floor_adj=floors["adjoint"][0], fwd=t_fwd, adj=t_adj,
                   naive_fwd=t_nf, naive_adj=t_na)
        for tag, phys in dinv.items():
            x = u[:, None]
            with torch.no_grad():
                # deepinv takes no gamma: timed with gamma = 1 (its best case)
                row[f"dinv_{tag}_fwd"] = best_time(lambda x=x, p=phys: p.A(x),
                                                   repeat=3)
                row[f"dinv_{tag}_adj"] = best_time(
                    lambda x=x, p=phys: p.A_adjoint(x), repeat=3)
        rows.append(row)
        print(f"\nbatch {n}:")
        for name in ("fwd", "adj"):
            ours, floor = row[name], row["floor_" + name]
            best_c = floors["forward" if name == "fwd" else "adjoint"][1]
            line = (f"  {'forward' if name == 'fwd' else 'adjoint'}: "
                    f"{1e3 * ours:8.2f} ms = {ours / floor:5.2f}x the FFT floor "
                    f"({1e3 * floor:.2f} ms, chunk {best_c}), "
                    f"naive {1e3 * row['naive_' + name]:8.2f} ms "
                    f"({row['naive_' + name] / ours:5.2f}x slower)")
            for tag in dinv:
                t = row[f"dinv_{tag}_{name}"]
                line += (f"\n      deepinv ({tag}) {1e3 * t:9.2f} ms "
                         f"({t / ours:6.1f}x slower)")
            print(line)
    if args.chunk_sweep:
        n = batches[-1]
        u = torch.rand(n, N, N, device=device, dtype=dtype)
        g = torch.rand(n, K, device=device, dtype=dtype)
        print(f"\nchunk sweep, batch {n} (images per FFT batch):")
        for c in [1, 2, 4, 8, 16, 64]:
            opc = ProductConvolution(kernels, maps, "zero", batch_chunk=c)
            t_f = best_time(lambda opc=opc: opc.forward(u, g))
            t_a = best_time(lambda opc=opc: opc.adjoint(u, g))
            print(f"  chunk {c:3d}: forward {1e3 * t_f:8.2f} ms, "
                  f"adjoint {1e3 * t_a:8.2f} ms")
    return rows


if __name__ == "__main__":
    main()
