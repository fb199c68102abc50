"""Where the shipped network's error on the paper's protocol comes from.

Two probes on held-out natural images (zero boundary, sigma = the model's
noise), each beside the network's error and the mean-gamma baseline of the
same images:

1. **Content and operator** (default): the per-image operator error against
   how much detail the clean image has (mean gradient magnitude, overall and
   in its four flattest 32x32 blocks) and against how far the true gamma is
   from the mean gamma (the baseline's error), in quantile bins; how the
   error is spread over the images; and whether the estimates are shrunk
   towards the mean gamma (``<g_hat - m, g - m>_G / <g - m, g - m>_G`` and
   the error of ``m + c (g_hat - m)`` for a few ``c``).
2. **Data-fit refinement** (``--refine N``): ``y = sum_k gamma_k A_k(u) +
   eta`` is linear in gamma once the clean image ``u`` is known, so gamma
   can be refitted by least squares against the data. With the true ``u``
   (oracle) this says how much the data hold; with ``u`` TV-deblurred
   with the network's estimate it is what a user could do, then alternated
   (deblur with the refit, refit again), and combined with the network's
   estimate as a prior (posterior mean, the network's error covariance
   measured on training-source images).

Usage: ``python benchmarks/bench_error_sources.py [--n 4096] [--refine 32]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from bench_regressor import summary

from deepblur.datasets.images import extract_patches, natural_image_split
from deepblur.datasets.simulate import blur_images
from deepblur.estimators.deblur import TVDeblurrer
from deepblur.pretrained import load_model, relative_errors
from deepblur.pretrained._io import DEFAULT_DIR


def simulate(model, images, n, seed):
    """Clean patches scaled to mean 0.5 (as the simulator does), gamma, y."""
    u = extract_patches(images, n, tuple(model.basis.image_shape_),
                        random_state=seed).astype(np.float64)
    u = u[u.mean((1, 2)) > 1e-3]
    u *= 0.5 / u.mean((1, 2), keepdims=True)
    gamma = model.sampler.sample(len(u))
    y = blur_images(u, gamma, model.basis, noise_std=model.setting["noise_std"],
                    normalize=None, random_state=seed + 1).astype(np.float64)
    return u, gamma, y


def by_bins(label, values, err, base, n_bins=(0, .1, .25, .5, .75, .9, 1)):
    q = np.quantile(values, n_bins)
    rank = np.corrcoef(np.argsort(np.argsort(values)),
                       np.argsort(np.argsort(err["operator"])))[0, 1]
    print(f"--- error by {label} (Spearman r = {rank:.2f})")
    for lo, hi in zip(q[:-1], q[1:], strict=True):
        s = (values >= lo) & (values <= hi)
        print(f"  [{lo:.4f}, {hi:.4f}] {s.sum():5d} images: operator "
              f"{100 * err['operator'][s].mean():.2f} % (direction "
              f"{100 * err['direction'][s].mean():.2f}, scale "
              f"{100 * err['scale'][s].mean():.2f}) | baseline "
              f"{100 * base['operator'][s].mean():.2f} %")


def content_probe(model, u, gamma, pred, mean_gamma):
    G = model.basis.gram_
    base_pred = np.tile(mean_gamma, (len(u), 1))
    err, base = relative_errors(gamma, pred, G), relative_errors(gamma, base_pred, G)
    gy, gx = np.gradient(u, axis=(1, 2))
    h, w = u.shape[1] // 4, u.shape[2] // 4
    blocks = np.sqrt(gx**2 + gy**2)[:, :4 * h, :4 * w].reshape(
        len(u), 4, h, 4, w).mean((2, 4)).reshape(len(u), 16)
    by_bins("mean gradient of the clean image", blocks.mean(1), err, base)
    by_bins("gradient of its 4 flattest blocks", np.sort(blocks, 1)[:, :4].mean(1),
            err, base)
    by_bins("distance of gamma from the mean (baseline error)",
            base["operator"], err, base)
    e = np.sort(err["operator"])
    print("operator error quantiles 10/25/50/75/90/99 %:",
          " / ".join(f"{100 * v:.2f}" for v in np.quantile(e, [.1, .25, .5, .75,
                                                                .9, .99])))
    print(f"share of the mean error from the worst 10 % of the images: "
          f"{e[-(len(e) // 10):].sum() / e.sum():.3f} (0.100 if even)")

    def ip(a, b):
        return np.einsum("nk,kl,nl->n", a, G, b)

    d, q = gamma - mean_gamma, pred - mean_gamma
    print(f"shrinkage <g_hat - m, g - m>_G / <g - m, g - m>_G: pooled "
          f"{ip(q, d).sum() / ip(d, d).sum():.3f}, median "
          f"{np.median(ip(q, d) / ip(d, d)):.3f}")
    for c in (0.95, 1.0, 1.05, 1.1):
        e = relative_errors(gamma, mean_gamma + c * q, G)["operator"].mean()
        print(f"  m + {c:g} (g_hat - m): operator {100 * e:.2f} %")


def terms(op, u, K):
    """``A[i, k] = e_k * (f_k u_i)``, float64 (n, K, H, W)."""
    eye = torch.eye(K, dtype=torch.float64)
    return torch.stack([op.forward(torch.as_tensor(ui)[None].expand(K, -1, -1),
                                   eye) for ui in u]).numpy()


def least_squares(A, y, prior=None, data_var=None, prior_inv=None):
    out = np.empty(A.shape[:2])
    for i in range(len(y)):
        a = A[i].reshape(A.shape[1], -1)
        M, b = a @ a.T, a @ y[i].ravel()
        if prior is not None:
            M, b = M / data_var[i] + prior_inv, b / data_var[i] + prior_inv @ prior[i]
        out[i] = np.linalg.solve(M, b)
    return out


def refine_probe(model, train_images, test_images, n, mean_gamma):
    basis, net = model.basis, model.regressor
    op, K, G = basis.operator_, basis.gram_.shape[0], basis.gram_
    _, g_tr, y_tr = simulate(model, train_images, 1024, 3)
    r = net.predict(y_tr.astype(np.float32)) - g_tr
    prior_inv = np.linalg.inv(r.T @ r / len(r) + 1e-12 * np.eye(K))
    u, gamma, y = simulate(model, test_images, n, 7)
    g = net.predict(y.astype(np.float32)).astype(np.float64)
    base = np.tile(mean_gamma, (len(u), 1))
    print(f"--- data-fit refinement ({len(u)} natural images)")
    summary("network", gamma, g, base, G)
    summary("LS, true u", gamma, least_squares(terms(op, u, K), y), base, G)
    deblurrer = TVDeblurrer(basis, lam="auto", max_iter=200).fit()

    def deblur(coef):
        return np.concatenate([deblurrer.transform(y[i:i + 16], gamma=coef[i:i + 16])
                               for i in range(0, len(y), 16)])

    t = time.perf_counter()
    u_hat = deblur(g)
    print(f"TV deblurring: {(time.perf_counter() - t) / len(y):.2f} s/image")
    A = terms(op, u_hat, K)
    g_ls = least_squares(A, y)
    summary("LS, TV u", gamma, g_ls, base, G)
    # per-pixel variance of the data misfit at the network's estimate
    resid = np.array([((np.tensordot(g[i], A[i], 1) - y[i]) ** 2).mean()
                      for i in range(len(y))])
    for c in (1.0, 10.0, 100.0):
        summary(f"posterior x{c:g}", gamma,
                least_squares(A, y, g, resid * c, prior_inv), base, G)
    coef = g_ls
    for it in range(2):
        coef = least_squares(terms(op, deblur(coef), K), y)
        summary(f"alternate {it + 1}", gamma, coef, base, G)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_DIR))
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--refine", type=int, default=0, metavar="N",
                        help="test images of the data-fit refinement (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    model = load_model(args.model)
    train_images, test_images = natural_image_split()
    mean_gamma = model.sampler.sample(50_000).mean(0)
    u, gamma, y = simulate(model, test_images, args.n, 31)
    pred = model.regressor.predict(y.astype(np.float32))
    print(f"{len(u)} held-out natural images, noise {model.setting['noise_std']}")
    summary("network", gamma, pred, np.tile(mean_gamma, (len(u), 1)),
            model.basis.gram_)
    content_probe(model, u, gamma, pred, mean_gamma)
    if args.refine:
        refine_probe(model, train_images, test_images, args.refine, mean_gamma)


if __name__ == "__main__":
    main()
