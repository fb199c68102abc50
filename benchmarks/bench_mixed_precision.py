"""What ``mixed_precision="bf16"`` buys per training step, and what it costs
in learning.

1. **step rate**: images/s of :class:`~deepblur.ResNetBlurRegressor`'s own
   training step (``train_step``: the forward pass under ``torch.autocast``
   when ``mixed_precision="bf16"``, the loss, backward and Adam in float32)
   on batches of the shipped setting, for the recipe's network (width 8,
   depth 2, stem stride 4, Laplacian input) and widths 16 and 32, eager and
   compiled, float32 against bfloat16 with the same weights and batch:
   ratio in the same run (rounds interleaved, median). On each device
   present (the CPU; CUDA when available).
2. **learning** (``--train-images N``, 0 to skip): the 15-minute CPU
   recipe's training (``benchmarks/cpu_recipe.toml`` without its head, and
   with one operator per clean patch, so that both runs see the same data)
   on ``N`` images twice, float32 then bfloat16, same seed, on one thread
   with one data worker; the relative operator error of both on the
   same held-out natural images (the setting's noise), paired, beside the
   mean-gamma baseline, with their wall times.

Usage: ``python benchmarks/bench_mixed_precision.py [--threads 1]
[--rounds 5] [--train-images 64000] [--n-test 1024]`` (about 5 minutes for
part 1 on a 2-core CPU, half of it compiling, and 3 more per 64 000
training images).
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bench_devices import _rate

from deepblur.datasets import extract_patches, make_blurred_images, natural_image_split
from deepblur.datasets.simulate import BlurDataset
from deepblur.estimators.regressor import ResNetBlurRegressor
from deepblur.pretrained import load_default, relative_errors, train_regressor


def step_rates(model, images, device, widths, batch, rounds, compile):
    """{(width, precision): median images/s} of the regressor's train_step."""
    data = BlurDataset(images, model.basis, model.sampler, batch_size=batch,
                       n_batches=4, noise_std=(0.0, 0.02), device=device,
                       random_state=0)
    X, y = next(iter(data))
    if compile:     # a fresh cache: 2 precisions x widths x devices would
        torch._dynamo.reset()   # exceed its recompile limit (eager, silently)
    steps = {}
    for width in widths:
        state = None
        for precision in (None, "bf16"):
            torch.manual_seed(0)
            net = ResNetBlurRegressor(
                basis=model.basis, module__width=width, module__depth=2,
                module__stem_stride=4, module__input_norm="laplacian",
                criterion=torch.nn.MSELoss, lr=1e-4, device=str(device),
                compile=compile, mixed_precision=precision, verbose=0)
            net.initialize()
            if state is None:           # the same weights for both
                state = net.module_.state_dict()
            net.module_.load_state_dict(state)
            steps[(width, precision)] = (
                lambda net=net: net.train_step((X, y)))
    rates = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            rates[key].append(_rate(step, batch, device, seconds=2.0))
    return {key: float(np.median(r)) for key, r in rates.items()}


def learning(model, n_images, n_test, threads):
    """(errors, seconds) of the recipe trained in float32 and in bfloat16."""
    try:
        import tomllib
    except ModuleNotFoundError:          # Python 3.10
        import tomli as tomllib

    recipe = tomllib.loads((Path(__file__).parent / "cpu_recipe.toml").read_text())
    setting = dict(basis=model.basis, cone=model.cone, sampler=model.sampler,
                   params=dict(model.setting))
    train, test = natural_image_split()
    X, y = make_blurred_images(test, model.basis, model.sampler, n_test,
                               noise_std=model.setting["noise_std"],
                               boundary=model.setting["boundary"],
                               random_state=7)
    mean_gamma = model.sampler.sample(50_000).mean(0)
    keys = ("epochs", "batch_size", "lr", "width", "depth", "stem_stride",
            "input_norm", "criterion", "pool_size", "num_workers", "compile")
    out = {}
    for precision in (None, "bf16"):
        torch.set_num_threads(1)        # the training's, as the recipe's
        start = time.perf_counter()
        net = train_regressor(
            setting, train, n_images=n_images, device="cpu",
            noise_std=tuple(recipe["noise_std"]),
            output_bias=mean_gamma, random_state=recipe["seed"],
            mixed_precision=precision, verbose=0,
            **{k: recipe[k] for k in keys})
        seconds = time.perf_counter() - start
        torch.set_num_threads(threads)
        pred = net.predict(X)
        out[precision] = (relative_errors(y, pred, model.basis.gram_)["operator"],
                          seconds)
    base = relative_errors(y, np.broadcast_to(mean_gamma, y.shape),
                           model.basis.gram_)["operator"]
    return out, base


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--train-images", type=int, default=64_000,
                   help="images of each training of part 2 (0: skip it)")
    p.add_argument("--n-test", type=int, default=1024)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_default()
    images = extract_patches(natural_image_split()[0], 500,
                             tuple(model.basis.image_shape_), random_state=0)
    bf16_units = [name for name, probe in (
        ("AVX-512 BF16", "_is_avx512_bf16_supported"),
        ("AMX", "_is_amx_tile_supported"))
        if getattr(torch.cpu, probe, lambda: False)()]
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, bfloat16 units: "
          f"{', '.join(bf16_units) or 'none (emulated)'}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print("\n1. training step, images/s: float32, bfloat16 (ratio); "
          f"median of {args.rounds} interleaved rounds")
    for device in devices:
        name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else "CPU")
        batch = 64 if device.type == "cpu" else 256
        for compile in (False, True):
            rates = step_rates(model, images, device, args.widths, batch,
                               args.rounds, compile)
            for width in args.widths:
                r32, r16 = rates[(width, None)], rates[(width, "bf16")]
                print(f"   {name}, batch {batch}, width {width:2d}, "
                      f"{'compiled' if compile else 'eager   '}: {r32:7.0f} "
                      f"{r16:7.0f} ({r16 / r32:.2f}x)", flush=True)
    if args.train_images:
        print(f"\n2. the CPU recipe on {args.train_images} images (one thread, one "
              "data worker making the same stream for both, one operator per "
              "clean patch: the worker, not the step, may bound the bfloat16 "
              f"run), then {args.n_test} held-out natural images at "
              f"sigma = {model.setting['noise_std']}")
        torch.set_num_threads(1)
        out, base = learning(model, args.train_images, args.n_test, args.threads)
        e32, e16 = out[None][0], out["bf16"][0]
        diff = 100 * (e16 - e32)
        sem = 100 * (e16 - e32).std(ddof=1) / np.sqrt(len(e32))
        for precision, (err, seconds) in out.items():
            print(f"   {precision or 'float32':8s}: {100 * err.mean():.2f} % in "
                  f"{seconds:.0f} s ({args.train_images / seconds:.0f} images/s)")
        print(f"   bfloat16 - float32: {diff.mean():+.2f} +- {sem:.2f} points per "
              f"image (paired); time ratio {out[None][1] / out['bf16'][1]:.2f}x; "
              f"mean-gamma baseline {100 * base.mean():.2f} %")


if __name__ == "__main__":
    main()
