"""Where the 15-minute CPU recipe's training step spends its time, and what a
cheaper step at about the same capacity would buy.

The recipe's network (``benchmarks/cpu_recipe.toml``: width 8, depth 2, stem
stride 4, the image and its Laplacian, spatial head), batches of 64 images of
128x128, one thread:

1. **profile** of the eager step: milliseconds per step of the convolutions
   (forward and backward) by stage, beside the whole step;
2. **variants**, compiled steps (``torch.compile``, as the recipe trains),
   images/s and their ratio to the recipe's network measured in the same run:
   one residual block instead of two at stage 1 (the 8-channel, 32x32 stage),
   no batch norm inside the residual blocks, and width 16 for scale;
3. **data**: images/s of the recipe's data worker (``BlurDataset`` in the
   shipped model's setting, noise in [0, 0.02]) with one and two gammas per
   clean patch: the whole run goes at the slower of the step and the worker;
4. **side by side**: the compiled step and the worker (one gamma per patch)
   in two processes of one thread each, as the recipe runs them, alone and
   then together for ``--seconds`` each: what each loses to the other on a
   2-core CPU (shared caches, memory bandwidth, clock).

Usage: ``python benchmarks/bench_step_cost.py`` (about 5 minutes).
"""
import argparse
import multiprocessing as mp
import time

import numpy as np
import torch
from torch import nn

from deepblur.datasets.images import natural_image_split
from deepblur.datasets.simulate import BlurDataset
from deepblur.nets import ResNet
from deepblur.pretrained import load_default

BATCH = 64


def recipe_net(width=8):
    torch.manual_seed(0)
    return ResNet(20, width=width, depth=2, stem_stride=4, head="spatial",
                  input_norm="laplacian")


def variant(name):
    """The recipe's network changed as ``name`` says."""
    if name == "width 16":
        return recipe_net(16)
    net = recipe_net()
    if name == "one block at stage 1":
        blocks = list(net.blocks)
        del blocks[1]                       # stage 1's second block
        net.blocks = nn.Sequential(*blocks)
    elif name == "no batch norm in the blocks":
        for block in net.blocks:
            block.bn1, block.bn2 = nn.Identity(), nn.Identity()
    elif name != "recipe":
        raise ValueError(name)
    return net


def make_step(net, compiled):
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    fn = torch.compile(net) if compiled else net
    X, y = torch.rand(BATCH, 128, 128), torch.rand(BATCH, 20)

    def step():
        loss = nn.functional.mse_loss(fn(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def rate(step, n=10, warmup=2):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return BATCH / float(np.median(times))


def profile_stages(n=10):
    """Milliseconds per eager step: convolutions by stage, and the step."""
    from torch.profiler import ProfilerActivity, profile
    step = make_step(recipe_net(), compiled=False)
    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t = time.perf_counter()
        for _ in range(n):
            step()
        total = (time.perf_counter() - t) / n * 1e3
    # a convolution's stage is read from its weight: stage s has 8 * 2^(s-1)
    # output channels, the stem a 9x9 kernel, the head's 1x1 reduction 8
    by_stage = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key == "aten::mkldnn_convolution":
            weight = e.input_shapes[1]
        elif e.key == "aten::convolution_backward":
            weight = e.input_shapes[2]
        else:
            continue
        c_out, c_in, k = weight[0], weight[1], weight[-1]
        if k == 9:
            label = "stem"
        elif k == 1 and c_out < c_in:
            label = "head"
        else:
            label = f"stage {int(np.log2(c_out // 8)) + 1}"
        by_stage[label] = by_stage.get(label, 0.0) + e.self_cpu_time_total / 1e3 / n
    return total, by_stage


def recipe_data(gammas_per_image=1, pool_size=2000, n_batches=10**6):
    """An iterator over the recipe's data worker's batches (shipped setting)."""
    model = load_default()
    train, _ = natural_image_split()
    return iter(BlurDataset(train, model.basis, model.sampler, batch_size=BATCH,
                            n_batches=n_batches, pool_size=pool_size,
                            random_state=0, noise_std=(0.0, 0.02),
                            gammas_per_image=gammas_per_image))


def data_rate(gammas_per_image, n=12):
    it = recipe_data(gammas_per_image, pool_size=500, n_batches=n + 2)
    next(it), next(it)
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    return BATCH * n / (time.perf_counter() - t)


def _step_process(seconds, queue, barrier):
    torch.set_num_threads(1)
    step = make_step(recipe_net(), compiled=True)
    for _ in range(5):
        step()
    barrier.wait()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        step()
        n += BATCH
    queue.put(("step", n / (time.perf_counter() - t)))


def _data_process(seconds, queue, barrier):
    torch.set_num_threads(1)
    it = recipe_data()
    next(it)
    barrier.wait()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        next(it)
        n += BATCH
    queue.put(("data", n / (time.perf_counter() - t)))


def side_by_side(seconds):
    """Images/s of the step and of the worker, alone and together."""
    ctx = mp.get_context("spawn")
    out = {}
    for targets in ((_step_process,), (_data_process,),
                    (_step_process, _data_process)):
        queue, barrier = ctx.Queue(), ctx.Barrier(len(targets))
        procs = [ctx.Process(target=f, args=(seconds, queue, barrier))
                 for f in targets]
        for proc in procs:
            proc.start()
        rates = dict(queue.get() for _ in procs)
        for proc in procs:
            proc.join()
        for name, r in rates.items():
            out[(name, len(targets) > 1)] = r
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=40.0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, batches of {BATCH}")

    total, by_stage = profile_stages()
    print(f"\n1. eager step, profiled: {total:.1f} ms per step under the profiler")
    for label in sorted(by_stage, key=lambda s: (s != "stem", s == "head", s)):
        print(f"   convolutions of {label:8s} {by_stage[label]:6.1f} ms "
              f"({by_stage[label] / total:5.1%} of the step)")

    print("\n2. compiled steps, images/s (ratio to the recipe; rounds interleaved,"
          f" median of {args.rounds})")
    names = ("recipe", "one block at stage 1", "no batch norm in the blocks",
             "width 16")
    nets = {name: variant(name) for name in names}
    steps = {name: make_step(net, compiled=True) for name, net in nets.items()}
    rates = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            rates[name].append(rate(steps[name]))
    base = float(np.median(rates["recipe"]))
    for name in names:
        r = float(np.median(rates[name]))
        n_params = sum(p.numel() for p in nets[name].parameters())
        print(f"   {name:30s} {r:6.0f}  ({r / base:.2f}x; {n_params} parameters)")

    print("\n3. data worker (one thread), images/s")
    for g in (1, 2):
        print(f"   gammas_per_image={g}: {data_rate(g):6.0f}", flush=True)

    print(f"\n4. compiled step and data worker, two processes, {args.seconds:g} s "
          "each: images/s alone, together (ratio)")
    rates = side_by_side(args.seconds)
    for name in ("step", "data"):
        alone, together = rates[(name, False)], rates[(name, True)]
        print(f"   {name}: {alone:6.0f} alone, {together:6.0f} together "
              f"({together / alone:.2f}x)")


if __name__ == "__main__":
    main()
