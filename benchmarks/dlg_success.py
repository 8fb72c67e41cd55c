"""How often DLG succeeds: iDLG-style DLG on the sigmoid LeNet, one CIFAR-10 image at a time.

    python benchmarks/dlg_success.py                     # 200 steps x 2 restarts: about 20 minutes, 1 thread
    python benchmarks/dlg_success.py --num-iters 100 --restarts 1
    python benchmarks/dlg_success.py --seeds 0 --images 2 --num-iters 5   # a smoke test

For each model seed and each of the first ``--images`` CIFAR-10 test images, the client
shares the gradient of one image (batch size shared, label not); the attacker recovers
the label from the last layer's bias gradient (exact, see
:func:`gi_tutorial.analytic.recover_label`) and runs DLG (Zhu et al., 2019):
L2 gradient matching, L-BFGS with lr 1, ``--restarts`` random starts, the one with the
lowest gradient distance kept. Only the final images are clamped to [0, 1], for scoring
(:func:`gi_tutorial.metrics.evaluate`). Clamping after every step would corrupt L-BFGS's
curvature pairs (the step it takes is not the step it measured), so ``invert.reconstruct``
refuses L-BFGS on a boxed pixel space.

The table gives, per seed, the images that reach ``--threshold`` dB PSNR, the mean PSNR
(capped at 40 dB, see :mod:`gi_tutorial.metrics`), and the seconds the seed took; the
``best of k`` columns say how many images would succeed with only the first ``k``
restarts (trial ``k`` does not depend on how many come after it).
"""

from __future__ import annotations

import argparse
import time

import torch

from gi_tutorial import config, data, fl, invert, metrics, models, spaces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds")
    parser.add_argument("--images", type=int, default=20, help="first N CIFAR-10 test images (at most 20 offline)")
    parser.add_argument("--num-iters", type=int, default=200, help="L-BFGS steps per restart")
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--init", choices=("rand", "randn"), default="rand")
    parser.add_argument("--threshold", type=float, default=30.0, help="PSNR (dB) that counts as a success")
    args = parser.parse_args()
    config.set_threads()

    images, labels = data.cifar10_targets(args.images)
    print(
        f"DLG on LeNet, batch 1, L-BFGS lr 1, {args.num_iters} steps x {args.restarts} restarts, "
        f"init {args.init}, no box (final images clamped), "
        f"{torch.get_num_threads()} thread(s)"
    )
    header = ["seed", f">= {args.threshold:g} dB", "mean PSNR (capped)", "seconds", "labels right"]
    header += [f"best of {k}" for k in range(1, args.restarts)]
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for seed in args.seeds:
        model = models.build_model("lenet", seed=seed)
        psnrs, prefix_successes, right, start = [], [0] * args.restarts, 0, time.perf_counter()
        for i in range(args.images):
            x, y = images[i : i + 1], labels[i : i + 1]
            update = fl.client_update(model, x, y)  # shares the batch size, not the label
            space = spaces.PixelSpace((1, 3, 32, 32), init=args.init, box=None)
            rec = invert.reconstruct(
                update,
                model,
                space,
                optimizer=invert.LBFGS(1.0),
                distance="l2",
                num_iters=args.num_iters,
                restarts=args.restarts,
                progress=False,
            )
            right += int(torch.equal(rec.labels, y))
            psnrs.append(metrics.evaluate(rec.images, x).psnr.item())
            for k in range(1, args.restarts + 1):  # the best of the first k trials, by gradient distance
                best = min(rec.trials[:k], key=lambda t: t.grad_loss)
                prefix_successes[k - 1] += int(metrics.evaluate(best.images, x).psnr.item() >= args.threshold)
        seconds = time.perf_counter() - start
        p = torch.tensor(psnrs, dtype=torch.float64)
        row = [
            str(seed),
            f"{int((p >= args.threshold).sum())}/{args.images}",
            f"{float(p.clamp(max=metrics.PSNR_CAP).mean()):.1f}",
            f"{seconds:.0f}",
            f"{right}/{args.images}",
        ]
        row += [f"{prefix_successes[k - 1]}/{args.images}" for k in range(1, args.restarts)]
        print("| " + " | ".join(row) + " |", flush=True)
        print("  PSNR per image: " + " ".join(f"{v:.1f}" for v in psnrs), flush=True)


if __name__ == "__main__":
    main()
