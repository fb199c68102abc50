"""What limits the blind identification of gamma: three probes beside a network.

Same setting and test sets as ``bench_regressor.py`` (held-out natural
sources and the bundled microscopy images, sigma = 0.01, every row beside the
mean-gamma baseline), with a trained model (default: the shipped one):

1. **Hand-crafted features + ridge.** :func:`deepblur.features.blur_features`:
   per block (default: a 4x4 grid of 32x32 blocks; ``--window``,
   ``--stride``), the shape of the local power spectrum (Hann window, log
   power in ``--radial`` x ``--angular`` bins, its mean removed:
   contrast-free), the mean-normalised intensity profile of the first 12
   rows/columns along each edge (4 segments per edge: what a zero boundary
   reveals of the border PSFs), and the image's mean. A ridge
   regression (``RidgeCV``) is fitted in the metric of the Gram matrix (targets
   ``L^T gamma`` with ``G = L L^T``), so it minimises the squared operator
   error. It needs no network and trains in seconds: how much of gamma do
   simple, content-agnostic statistics carry? (``--mlp``: also an MLP on
   them.)
2. **Stacking.** The same ridge on the features plus the network's estimate:
   what the network misses that the features carry.
   (``--probe``: a linear probe, the same ridge on the network's last feature
   maps before its head, 2048 numbers for the width-16 network (4096 for the
   shipped width-32 one), with its estimate, and with the features too:
   whether the head, not the features, limits the network.)
3. **Parametric-bootstrap bias correction** (``--bootstrap``). Re-blur an
   estimate of the clean image with the estimate ``g`` of gamma, predict again
   (``r`` noise draws) and correct ``g - (mean(pred) - g)``. With the true
   clean image (oracle) this bounds what a content-dependent bias correction
   can gain; with the TV-deblurred image (``lam="auto"``) it is what a user
   would get, at the price of one deblurring and ``r`` predictions per image.

The network's estimates are taken raw (not projected on the sampler's
support), so that every probe sees the same numbers. The shipped network now
carries the stacking of item 2 folded in (its blur-statistics head), so on it
the stacking stacks the statistics a second time: the tables recorded in
``benchmarks/README.md`` were measured on the network before the head, whose
``model.*`` files are those of commit ``1b1b5f8`` (pass their directory to
``--model`` to reproduce them).

Usage: ``python benchmarks/bench_identifiability.py [--boundary crop]
[--n-train 20000] [--bootstrap 128]``. ``--boundary crop`` tests on windows
of larger scenes (the case of real images; the shipped network was trained
with the zero boundary).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_regressor import summary
from sklearn.linear_model import RidgeCV
from sklearn.neural_network import MLPRegressor

from deepblur.datasets.images import (
    extract_patches,
    load_microscopy_images,
    natural_image_split,
)
from deepblur.datasets.simulate import blur_images, make_blurred_images
from deepblur.estimators.deblur import TVDeblurrer
from deepblur.features import blur_features
from deepblur.pretrained import load_model
from deepblur.pretrained._io import DEFAULT_DIR


def features(X, **spec):
    """The blur statistics of :mod:`deepblur.features` (what
    ``SpectralBlurRegressor`` regresses on)."""
    return blur_features(X, batch_size=500, **spec)


class GramRidge:
    """Regression of gamma minimising the squared operator error (default ridge)."""

    def __init__(self, gram, regressor=None):
        self.chol = np.linalg.cholesky(gram)
        self.regressor = regressor or RidgeCV(alphas=np.logspace(-2, 4, 13))

    def fit(self, Z, gamma):
        self.mean, self.std = Z.mean(0), Z.std(0) + 1e-8
        self.ridge = self.regressor.fit(
            (Z - self.mean) / self.std, gamma @ self.chol)
        return self

    def predict(self, Z):
        out = self.ridge.predict((Z - self.mean) / self.std)
        return np.linalg.solve(self.chol.T, out.T).T


def feature_maps(net, X, batch_size=256):
    """The network's last feature maps, before its head, flattened.

    Read from the module's own forward pass (a hook on its last residual
    block), so that they are computed from what the stem sees: the image with
    its Laplacian or other input channels (``input_norm``, ``coord_channels``),
    not the bare image.
    """
    module = net.module_.eval()
    device = next(module.parameters()).device
    out = []
    hook = module.blocks[-1].register_forward_hook(
        lambda _module, _input, output: out.append(
            output.flatten(1).float().cpu().numpy()))
    try:
        with torch.no_grad():
            for i in range(0, len(X), batch_size):
                module(torch.as_tensor(X[i:i + batch_size], dtype=torch.float32,
                                       device=device)[:, None])
    finally:
        hook.remove()
    return np.concatenate(out)


def bootstrap(net, basis, u, gamma_hat, noise, boundary, reps, seed):
    """``g - (mean_r net(H[g] u + eta_r) - g)``: one bias-correction step."""
    bias = 0.0
    for r in range(reps):
        y = blur_images(np.clip(u, 0, None), gamma_hat, basis, noise_std=noise,
                        boundary=boundary, random_state=seed + r)
        bias = bias + (net.predict(y) - gamma_hat) / reps
    return gamma_hat - bias


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_DIR))
    parser.add_argument("--boundary", choices=("zero", "crop"), default="zero")
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=512)
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="test images of the bias correction (0: skip)")
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--window", type=int, default=32,
                        help="block size of the local spectra")
    parser.add_argument("--stride", type=int, default=None,
                        help="step between blocks (default: --window)")
    parser.add_argument("--radial", type=int, default=6)
    parser.add_argument("--angular", type=int, default=4)
    parser.add_argument("--mlp", action="store_true",
                        help="also fit an MLP (512-256 units) on the features")
    parser.add_argument("--probe", action="store_true",
                        help="also fit a ridge on the network's last feature maps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, project=False)
    basis, sampler, net = model.basis, model.sampler, model.regressor
    gram, noise = basis.gram_, model.setting["noise_std"]
    mean_gamma = sampler.sample(50_000).mean(0)
    train_images, test_images = natural_image_split()

    t = time.perf_counter()
    X, y = make_blurred_images(train_images, basis, sampler, args.n_train,
                               noise_std=noise, pool_size=20_000,
                               boundary=args.boundary, random_state=11)
    spec = dict(window=args.window, stride=args.stride, n_radial=args.radial,
                n_angular=args.angular)
    F, P = features(X, **spec), net.predict(X)
    M = feature_maps(net, X) if args.probe else None
    del X
    print(f"{args.n_train} training images, features and network estimates: "
          f"{time.perf_counter() - t:.0f} s ({F.shape[1]} features)")
    t = time.perf_counter()
    ridge = GramRidge(gram).fit(F, y)
    stacked = GramRidge(gram).fit(np.c_[F, P], y)
    mlp = GramRidge(gram, MLPRegressor(
        hidden_layer_sizes=(512, 256), alpha=1e-3, batch_size=256,
        early_stopping=True, n_iter_no_change=10, random_state=0)).fit(F, y) \
        if args.mlp else None
    probes = {"probe": GramRidge(gram).fit(np.c_[M, P], y),
              "probe+feat.": GramRidge(gram).fit(np.c_[M, P, F], y)
              } if args.probe else {}
    print(f"regression fits: {time.perf_counter() - t:.1f} s")

    rng = np.random.RandomState(123)
    tests = {"natural": test_images,
             "microscopy": extract_patches(load_microscopy_images(), args.n_test,
                                           basis.image_shape_, random_state=rng)}
    for name, images in tests.items():
        X, y = make_blurred_images(images, basis, sampler, args.n_test,
                                   noise_std=noise, boundary=args.boundary,
                                   random_state=rng)
        Ft, Pt = features(X, **spec), net.predict(X)
        base = np.tile(mean_gamma, (len(y), 1))
        print(f"--- {name} ({args.boundary} boundary, {len(y)} images)")
        summary("network", y, Pt, base, gram)
        summary("features", y, ridge.predict(Ft), base, gram)
        summary("stacked", y, stacked.predict(np.c_[Ft, Pt]), base, gram)
        if mlp is not None:
            summary("MLP", y, mlp.predict(Ft), base, gram)
        if probes:
            Mt = feature_maps(net, X)
            summary("probe", y, probes["probe"].predict(np.c_[Mt, Pt]), base, gram)
            summary("probe+feat.", y, probes["probe+feat."].predict(
                np.c_[Mt, Pt, Ft]), base, gram)

    if args.bootstrap:
        u = extract_patches(test_images, args.bootstrap, basis.image_shape_,
                            random_state=7).astype(np.float32)
        u = u[u.mean((1, 2)) > 1e-3]  # blur_images scales each to mean 0.5
        gamma = sampler.sample(len(u))
        y = blur_images(u, gamma, basis, noise_std=noise, boundary=args.boundary,
                        random_state=9)
        g = net.predict(y)
        base = np.tile(mean_gamma, (len(u), 1))
        print(f"--- bias correction (natural, {len(u)} images, {args.reps} "
              "noise draws)")
        summary("network", gamma, g, base, gram)

        def corrected(u_est, reps=args.reps):
            return bootstrap(net, basis, u_est, g, noise, args.boundary, reps, 10)

        summary("oracle u", gamma, corrected(u), base, gram)
        summary("oracle, 1 draw", gamma, corrected(u, 1), base, gram)
        summary("u = blurry", gamma, corrected(y), base, gram)
        t = time.perf_counter()
        deblurrer = TVDeblurrer(basis, lam="auto", max_iter=200).fit()
        u_hat = np.concatenate([deblurrer.transform(y[i:i + 32], gamma=g[i:i + 32])
                                for i in range(0, len(y), 32)])
        print(f"TV deblurring: {(time.perf_counter() - t) / len(y):.2f} s/image")
        summary("TV u", gamma, corrected(u_hat), base, gram)

if __name__ == "__main__":
    main()
