"""Measure how well the shared gradient pins down the images: the Jacobian's spectrum for victims S, A and B.

    python benchmarks/conditioning.py                       # the shipped grid, about 30 min on one core
    python benchmarks/conditioning.py --victims S --seeds 0 --batches 1 4 --out none   # a slice, seconds

For each victim (S = ``convnet_s``, A = ``convnet_fc``, B = ``convnet_gap``; one input channel,
untrained, ``build_model(..., seed=k)``) and seed ``k``, it takes the Fashion-MNIST test images
``first + 8k`` to ``first + 8k + 7`` with their labels (``--first-image``, default 9000: no chapter
target and no check script uses them; each seed has its own group) and computes the singular
values of ``J = dg/dx``, the Jacobian of the shared gradient at the true batch, for the first 1, 4
and 8 images of the group (nested batches, one Gram matrix per seed:
:func:`gi_tutorial.conditioning.nested_spectra`). The Jacobians are computed in float32, the
attacker's own arithmetic, and multiplied in float64; the float32 error of J is measured at
batch 1 of each victim's first seed, against float64, to show it lies below the tolerance.

Each row of the shipped ``gi_tutorial/results/conditioning.json`` (``conditioning.load_shipped()``)
is one (victim, seed, batch): ``victim``, ``model``, ``seed``, ``batch``, ``images`` (test indices),
``labels``, then :meth:`Spectrum.summary`: ``unknowns``, ``equations`` (independent gradient
entries), ``entries``, ``ratio`` (unknowns / equations), ``numerical_rank`` (singular values above
``rtol * s_1``, ``rtol`` in the provenance), ``rank_deficit`` (unknowns - numerical rank),
``effective_rank`` (entropy), ``largest`` (s_1), ``gradient_norm`` (||g||), ``image_norm`` (||x||),
``condition_number`` (s_1 over the smallest value s_r above the tolerance),
``relative_condition_number`` (||g|| / (||x|| s_r): a relative gradient error e leaves a relative
image error up to e times this), ``smallest`` and ``smallest_relative`` (the 8 smallest,
smallest first, absolute and over s_1), ``below`` (how many are at most 1e-2 ... 1e-6 of s_1),
``spectrum_index`` / ``spectrum_relative`` (64 evenly spaced points of s_i / s_1), ``seconds``
(this row's eigenvalues, plus the seed's Jacobians and Gram matrix on its largest batch).
``float32_errors`` holds ``||J32 - J64||_2 / ||J64||_2`` per victim.

With ``--out none`` nothing is written; a table is printed either way.

``--label-probe`` measures instead whether two images that share a label make the Jacobian
ill-conditioned: for each victim, batches of 4 whose labels are all different against batches
of 4 with one label twice (``--groups`` of each, disjoint, from test image ``--first-image``,
default 9100 here; group ``k`` attacks the victim with seed ``k``), at batch 4:

    python benchmarks/conditioning.py --label-probe --victims S A --groups 5 --out none
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from gi_tutorial import conditioning, config, data, models, stats, storage

GROUP = 8  # images per seed: the largest batch


def measure(
    victims: list[str],
    seeds: list[int],
    batches: list[int],
    first_image: int,
    dtype: torch.dtype,
    scratch: str | None,
    check_float32: bool,
) -> dict:
    """The rows and float32 errors of the benchmark (see the module docstring)."""
    images, labels = data.fashion_mnist("test", first_image + GROUP * (max(seeds) + 1))
    rows, errors = [], {}
    for victim in victims:
        name = models.VICTIMS[victim]
        for seed in seeds:
            model = models.build_model(name, in_channels=1, seed=seed)
            first = first_image + GROUP * seed
            x, y = images[first : first + max(batches)], labels[first : first + max(batches)]
            start = time.perf_counter()
            k_matrix = conditioning.image_gram(model, x, y, dtype=dtype, scratch=scratch)  # once for every batch size
            gram_seconds = time.perf_counter() - start
            for b in batches:
                start = time.perf_counter()
                spec = conditioning.spectrum_of_first(k_matrix, model, x, y, b)
                seconds = time.perf_counter() - start + (gram_seconds if b == max(batches) else 0)
                rows.append(
                    {
                        "victim": victim,
                        "model": name,
                        "seed": seed,
                        "batch": b,
                        "images": list(range(first, first + b)),
                        "labels": y[:b].tolist(),
                        **spec.summary(),
                        "seconds": round(seconds, 1),
                    }
                )
                r = rows[-1]
                print(
                    f"{victim} seed {seed} batch {b}: unknowns {r['unknowns']:,}, equations {r['equations']:,}, "
                    f"ratio {r['ratio']:.2f}, rank {r['numerical_rank']:,} (deficit {r['rank_deficit']}), "
                    f"effective rank {r['effective_rank']:.0f}, condition {r['condition_number']:.3g} "
                    f"(relative {r['relative_condition_number']:.3g}), "
                    f"smallest s/s1 {r['smallest_relative'][0]:.2e}, {r['seconds']:.0f} s",
                    flush=True,
                )
            if check_float32 and seed == seeds[0]:
                start = time.perf_counter()
                errors[victim] = conditioning.float32_error(model, x[:1], y[:1])
                print(
                    f"{victim}: float32 error of J at batch 1 = {errors[victim]:.2e} of s_1 "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    return {"rows": rows, "float32_errors": errors}


def label_groups(labels: torch.Tensor, first: int, groups: int, size: int = 4) -> dict[str, list[list[int]]]:
    """Disjoint batches of test indices from ``first`` on: ``groups`` with distinct labels, ``groups`` with one label twice.

    Greedy, in the test set's order: a "distinct" batch takes the next unused images whose labels
    are new to it; a "shared" batch takes the next unused image, the next unused one with its label,
    then the next ones whose labels are new to the batch.
    """
    used: set[int] = set()
    out: dict[str, list[list[int]]] = {"distinct": [], "shared": []}
    for kind in ("distinct", "shared"):
        while len(out[kind]) < groups:
            batch: list[int] = []
            for i in range(first, len(labels)):
                if i in used:
                    continue
                seen = [int(labels[j]) for j in batch]
                twin = kind == "shared" and len(batch) == 1
                if (twin and int(labels[i]) == seen[0]) or (not twin and int(labels[i]) not in seen):
                    batch.append(i)
                if len(batch) == size:
                    break
            if len(batch) < size:
                raise ValueError(f"not enough test images from {first} for {groups} {kind} groups")
            used.update(batch)
            out[kind].append(batch)
    return out


def label_probe(victims: list[str], groups: int, first_image: int, dtype: torch.dtype, scratch: str | None) -> dict:
    """Spectra at batch 4, labels all different against one label twice (see the module docstring)."""
    images, labels = data.fashion_mnist("test")
    batches = label_groups(labels, first_image, groups)
    rows = []
    for victim in victims:
        for kind, members in batches.items():
            for k, index in enumerate(members):
                model = models.build_model(models.VICTIMS[victim], in_channels=1, seed=k)
                start = time.perf_counter()
                spec = conditioning.spectrum(model, images[index], labels[index], dtype=dtype, scratch=scratch)
                summary = spec.summary()
                rows.append(
                    {
                        "victim": victim,
                        "kind": kind,
                        "seed": k,
                        "images": index,
                        "labels": labels[index].tolist(),
                        **{
                            key: summary[key]
                            for key in (
                                "unknowns",
                                "equations",
                                "numerical_rank",
                                "rank_deficit",
                                "effective_rank",
                                "condition_number",
                                "smallest_relative",
                            )
                        },
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
                r = rows[-1]
                print(
                    f"{victim} {kind} seed {k} labels {r['labels']}: condition {r['condition_number']:.3g}, "
                    f"smallest s/s1 {r['smallest_relative'][0]:.2e}, rank {r['numerical_rank']}, {r['seconds']:.0f} s",
                    flush=True,
                )
    print("\n| victim | labels | log10 condition number | smallest s/s1 (min to max) | n |\n|---|---|---|---|---|")
    for victim in victims:
        for kind in batches:
            cell = [r for r in rows if r["victim"] == victim and r["kind"] == kind]
            logs = stats.mean_sd([np.log10(r["condition_number"]) for r in cell])
            small = [r["smallest_relative"][0] for r in cell]
            print(
                f"| {victim} | {kind} | {logs.format('{:.2f}', with_n=False)} | {min(small):.1e} to {max(small):.1e} | "
                f"{len(cell)} |"
            )
    return {"label_probe": rows}


def print_table(rows: list[dict]) -> None:
    """Mean ± sd (ddof = 1) over seeds, per victim and batch size."""
    print(
        "\n| victim | batch | unknowns | equations | ratio | numerical rank | rank deficit | effective rank | "
        "log10 condition number | log10 relative condition number | smallest s/s1 | "
        "s at 10% / 50% / 90% of the spectrum, over s1 | n |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for victim in dict.fromkeys(r["victim"] for r in rows):
        for b in dict.fromkeys(r["batch"] for r in rows if r["victim"] == victim):
            cell = [r for r in rows if r["victim"] == victim and r["batch"] == b]

            def ms(key, fmt="{:.0f}", f=lambda v: v):
                return stats.mean_sd([f(r[key]) for r in cell]).format(fmt, with_n=False)

            def quantile(q):
                return stats.mean_sd(
                    [np.interp(q * (r["unknowns"] - 1), r["spectrum_index"], r["spectrum_relative"]) for r in cell]
                ).format("{:.2g}", with_n=False)

            print(
                f"| {victim} | {b} | {cell[0]['unknowns']:,} | {cell[0]['equations']:,} | {cell[0]['ratio']:.2f} | "
                f"{ms('numerical_rank')} | {ms('rank_deficit')} | {ms('effective_rank')} | "
                f"{ms('condition_number', '{:.1f}', np.log10)} | {ms('relative_condition_number', '{:.1f}', np.log10)} | "
                f"{ms('smallest_relative', '{:.2e}', lambda v: v[0])} | "
                f"{quantile(0.1)} / {quantile(0.5)} / {quantile(0.9)} | {len(cell)} |"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victims", nargs="+", default=["S", "A", "B"], choices=sorted(models.VICTIMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--first-image", type=int, default=9000)
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="precision of the Jacobians (their products are float64 either way)",
    )
    parser.add_argument(
        "--scratch", default=None, help="folder for Jacobians too big for memory (default: system temp)"
    )
    parser.add_argument("--no-float32-check", action="store_true", help="skip the float32 error of J at batch 1")
    parser.add_argument("--out", default=str(conditioning.SHIPPED), help="results file, or 'none'")
    parser.add_argument(
        "--label-probe",
        action="store_true",
        help="distinct labels against one shared label, at batch 4 (see the module docstring)",
    )
    parser.add_argument("--groups", type=int, default=5, help="batches of each kind for --label-probe")
    args = parser.parse_args(argv)
    if args.label_probe:
        config.set_threads()
        start = time.perf_counter()
        first = 9100 if args.first_image == 9000 else args.first_image
        results = label_probe(args.victims, args.groups, first, getattr(torch, args.dtype), args.scratch)
        print(f"{len(results['label_probe'])} cases in {time.perf_counter() - start:.0f} s")
        if args.out not in ("none", str(conditioning.SHIPPED)):
            storage.save_results(
                args.out,
                results,
                command="python benchmarks/conditioning.py " + " ".join(sys.argv[1:] if argv is None else argv),
                groups=args.groups,
                first_image=first,
                seconds=round(time.perf_counter() - start, 1),
            )
        return 0
    if max(args.batches) > GROUP or min(args.batches) < 1:
        parser.error(f"batch sizes must lie in [1, {GROUP}]")
    threads = config.set_threads()
    start, cpu_start = time.perf_counter(), time.process_time()
    results = measure(
        args.victims,
        args.seeds,
        sorted(args.batches),
        args.first_image,
        getattr(torch, args.dtype),
        args.scratch,
        not args.no_float32_check,
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    print_table(results["rows"])
    print(f"\n{len(results['rows'])} cases in {seconds:.0f} s ({cpu_seconds:.0f} s CPU) on {threads} thread(s)")
    if args.out != "none":
        command = "python benchmarks/conditioning.py" + (
            "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)
        )
        storage.save_results(
            args.out,
            results,
            command=command,
            seeds=args.seeds,
            victims=args.victims,
            batches=sorted(args.batches),
            data=f"Fashion-MNIST test images {args.first_image} + 8 * seed + (0..7), padded to 32x32; "
            "batch b = the group's first b images",
            jacobian_dtype=args.dtype,
            rtol=conditioning.RTOL_FLOAT32,
            seconds=round(seconds, 1),
            cpu_seconds=round(cpu_seconds, 1),
            threads=threads,
            torch=torch.__version__,
        )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
