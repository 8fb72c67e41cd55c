"""Would restarts run faster as one batched computation? A measurement, not a feature.

    python benchmarks/batched_restarts.py [--restarts 4] [--steps 20]

``invert.reconstruct`` runs its restarts one after another. The alternative is one step for
all R trials at once: the R x B candidate images go through the victim in one batch, and
``torch.func.vmap`` over the trials gives each trial its own parameter gradient (and so its
own gradient distance), which is then differentiated with respect to the images. This script
times one gradient-matching step (cosine distance, Adam) both ways, interleaved, on the
book's small victims and on ResNet-18 (eval mode), and prints the ratio. The loop keeps
sequential restarts unless this shows a clear win.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from gi_tutorial import config, fl, models, objectives


def sequential_step(model, params, target, xs, labels, opts):
    for x, opt in zip(xs, opts):
        opt.zero_grad()
        grads, _ = fl.batch_gradients(model, x, labels, create_graph=True)
        objectives.gradient_distance(grads, target, "cosine").backward(inputs=[x])
        opt.step()


def batched_step(model, params, target, x_all, labels, opt):
    names = list(params)

    def loss_of_params(p, x):
        return F.cross_entropy(functional_call(model, p, (x,)), labels)

    def distance(x):
        g = grad(loss_of_params)(params, x)
        return objectives.gradient_distance([g[n] for n in names], target, "cosine")

    opt.zero_grad()
    vmap(distance)(x_all).sum().backward(inputs=[x_all])  # each trial's distance depends only on its own images
    opt.step()


def measure(name, batch_size, restarts, steps, rounds):
    model = models.build_model(name, in_channels=3 if name in ("lenet", "resnet18") else 1).eval()
    shape = (batch_size, model.in_channels, 32, 32)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(batch_size) % 10
    target = fl.client_update(model, torch.rand(shape, generator=g), labels).gradients
    params = {n: p.detach() for n, p in model.named_parameters()}
    xs = [torch.rand(shape, generator=g).requires_grad_(True) for _ in range(restarts)]
    opts = [torch.optim.Adam([x], lr=0.1) for x in xs]
    x_all = torch.stack([x.detach() for x in xs]).requires_grad_(True)  # (R, B, C, H, W)
    opt_all = torch.optim.Adam([x_all], lr=0.1)
    seq, bat = [], []
    sequential_step(model, params, target, xs, labels, opts)  # warm-up
    batched_step(model, params, target, x_all, labels, opt_all)
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            sequential_step(model, params, target, xs, labels, opts)
        seq.append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        for _ in range(steps):
            batched_step(model, params, target, x_all, labels, opt_all)
        bat.append((time.perf_counter() - start) / steps)
    s, b = 1000 * statistics.median(seq), 1000 * statistics.median(bat)
    print(
        f"  {name:10s} batch {batch_size}, {restarts} restarts: sequential {s:8.1f} ms, batched {b:8.1f} ms, "
        f"batched / sequential {b / s:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config.set_threads()
    print(f"one step of {args.restarts} restarts, cosine matching, Adam; median of {args.rounds} interleaved rounds")
    for name, b in (("lenet", 1), ("convnet_fc", 1), ("convnet_fc", 4), ("convnet_gap", 4)):
        measure(name, b, args.restarts, args.steps, args.rounds)
    measure("resnet18", 1, args.restarts, max(2, args.steps // 10), args.rounds)


if __name__ == "__main__":
    main()
