"""Print the book's speed figures: seconds per chapter, ms per inversion step, overhead ratio.

    python benchmarks/run.py                 # everything (several minutes)
    python benchmarks/run.py --steps         # only the per-step figures
    python benchmarks/run.py --chapters      # only the chapter runtimes (full and quick mode)
    python benchmarks/run.py --chapters --only ch04 --markdown          # one chapter, as a Markdown table
    python benchmarks/run.py --chapters --from-book _build/execution_times.json --readme
                                             # the README's table, from the times of the last `make book`
    python benchmarks/run.py --generator     # only GI-z and GIAS stage-2 step costs against GI-x
    python benchmarks/run.py --generator --victims convnet_fc --batches 4 --iters 2 --rounds 1   # a smoke test

The overhead ratio compares one iteration of ``invert.reconstruct`` (its marginal cost:
a run of 2N iterations minus a run of N) with a bare
forward + double-backward + Adam step written inline on the same model and batch; the
two are interleaved in one process (median of several rounds) so that machine load
affects both alike. Timings are on one thread, as the book runs (config.set_threads()).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from gi_tutorial import attacks, config, fl, generators, invert, models, objectives, priors, spaces, storage, threats

ROOT = Path(__file__).resolve().parent.parent


def bare_steps(model: torch.nn.Module, update: fl.SharedUpdate, labels: torch.Tensor, shape, num_iters: int) -> float:
    """Seconds for ``num_iters`` hand-written gradient-matching steps (the reference cost)."""
    x = torch.rand(shape, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1, fused=True)  # the fastest Adam torch has, as the library uses
    params = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter()
    for _ in range(num_iters):
        opt.zero_grad()
        grads = torch.autograd.grad(F.cross_entropy(model(x), labels), params, create_graph=True)
        loss = sum((g - t).pow(2).sum() for g, t in zip(grads, update.gradients))
        loss.backward(inputs=[x])
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return time.perf_counter() - start


def library_steps(model, update, labels, shape, num_iters: int) -> float:
    """Seconds for ``num_iters`` iterations of ``invert.reconstruct``, without its fixed costs.

    A run has per-run costs (copying the model, one final evaluation to rank restarts);
    the marginal cost of an iteration is the difference between a run of 2N and one of N.
    """

    def run(n: int) -> float:
        return invert.reconstruct(
            update,
            model,
            spaces.PixelSpace(shape),
            optimizer=invert.Adam(0.1),
            num_iters=n,
            labels=labels,
            distance="l2",
            progress=False,
        ).seconds

    return run(2 * num_iters) - run(num_iters)


def step_figures(name: str, batch_size: int, num_iters: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = models.build_model(name)
    model.train()
    shape = (batch_size, 3, 32, 32)
    x = torch.rand(shape)
    labels = torch.arange(batch_size) % 10
    update = fl.client_update(model, x, labels, share_labels=True)
    library_steps(model, update, labels, shape, 2)  # warm-up
    bare_steps(model, update, labels, shape, 2)
    lib, bare = [], []
    for _ in range(rounds):
        lib.append(library_steps(model, update, labels, shape, num_iters) / num_iters)
        bare.append(bare_steps(model, update, labels, shape, num_iters) / num_iters)
    return {
        "library_ms": 1000 * statistics.median(lib),
        "bare_ms": 1000 * statistics.median(bare),
        "ratio": statistics.median(a / b for a, b in zip(lib, bare)),
    }


def generator_step_figures(victim_name: str, batch_size: int, num_iters: int, rounds: int) -> dict[str, float]:
    """Marginal ms per step of GI-x, GI-z and GIAS stage 2 on one victim, each as the book runs it.

    GI-x is chapter 4's pixel attack (:func:`gi_tutorial.attacks.gi_x`: cosine distance, total
    variation 1e-3, signed Adam, the box); GI-z and stage 2 are :func:`gi_tutorial.invert.gias`'s
    stages (cosine distance, Adam). Stage 2 runs the per-image copies as the library does
    (per-copy layers); ``vmap`` runs them through ``torch.func.vmap``; ``shared`` is one copy
    for the whole batch (GIML's inner loop), the same generator work without per-image weights.
    """
    generator = generators.load_generator()
    victim = models.build_model(victim_name, in_channels=1)
    g = torch.Generator().manual_seed(0)
    x = generator(torch.randn(batch_size, generator.z_dim, generator=g)).detach()
    update = fl.client_update(victim, x, torch.arange(batch_size) % 10, share_labels=True)
    z = torch.randn(batch_size, generator.z_dim, generator=g)
    budget = attacks.BUDGETS["ch4"]
    gi_x = attacks.gi_x(budget)
    pixel = dict(optimizer=gi_x.optimizer, distance=gi_x.distance, priors=[priors.TotalVariation(gi_x.tv)])
    latent = dict(optimizer=invert.Adam(budget.z_lr, decay=True), distance="cosine")
    weights = dict(optimizer=invert.Adam(budget.w_lr, decay=True), distance="cosine")
    make = {
        "GI-x": (lambda: spaces.PixelSpace((batch_size, 1, 32, 32)), pixel),
        "GI-z": (lambda: spaces.LatentSpace(generator, batch_size), latent),
        "stage 2": (lambda: spaces.GeneratorSpace(generator, batch_size, z=z), weights),
        "vmap": (lambda: spaces.GeneratorSpace(generator, batch_size, z=z, vectorise="vmap"), weights),
        "shared": (lambda: spaces.GeneratorSpace(generator, batch_size, z=z, shared=True), weights),
    }

    def run(name: str, n: int) -> float:
        space, options = make[name]
        start = time.process_time()  # CPU time of this one-threaded process: other jobs on the machine stretch it less
        invert.reconstruct(
            update, victim, space(), num_iters=n, threat_model=threats.DATA_ENHANCED, progress=False, **options
        )
        return time.process_time() - start

    def marginal(name: str) -> float:
        return (run(name, 2 * num_iters) - run(name, num_iters)) / num_iters

    def flops(name: str) -> float:
        """Matrix-product and convolution FLOPs of one step: the images, their gradient, the distance, its backward."""
        space, options = make[name]
        space = space()
        variables = space.init(torch.Generator().manual_seed(0))
        with FlopCounterMode(display=False) as counter:
            images = space.images()
            grads, _ = fl.batch_gradients(victim, images, update.labels, create_graph=True)
            loss = objectives.gradient_distance(grads, update.gradients, options["distance"])
            for prior in options.get("priors", ()):
                loss = loss + prior(images, None)
            loss.backward(inputs=variables)
        return counter.get_total_flops()

    def adam_steps(n: int) -> float:
        """Seconds per Adam step over the per-image copies' weights alone: a part of stage 2 that no
        arrangement of the generator's layers removes (it reads and writes every weight and both
        moments at every step, batch_size x the generator's parameters)."""
        space = spaces.GeneratorSpace(generator, batch_size, z=z)
        variables = space.init(torch.Generator().manual_seed(0))
        for v in variables:
            v.grad = torch.randn_like(v)
        opt = invert._adam(variables, budget.w_lr)
        opt.step()
        start = time.process_time()
        for _ in range(n):
            opt.step()
        return (time.process_time() - start) / n

    work = {name: flops(name) for name in make if name != "vmap"}  # the counter does not see through vmap
    times = {name: [] for name in make}
    times["adam"] = []
    for name in make:  # warm-up
        marginal(name)
    for _ in range(rounds):  # interleaved, so machine load affects every method alike
        for name in make:
            times[name].append(marginal(name))
        times["adam"].append(adam_steps(num_iters))
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    return {
        **ms,
        **{f"{name}_ratio": ms[name] / ms["GI-x"] for name in times},
        **{f"{name}_flops": work[name] / work["GI-x"] for name in work},
    }


def chapter_seconds(notebook: Path, quick: bool) -> float:
    """Wall time to execute a notebook top to bottom in a fresh kernel."""
    env = dict(os.environ, GI_TUTORIAL_QUICK="1" if quick else "0", GI_TUTORIAL_PROGRESS="0")
    code = (
        "import nbformat, nbclient, sys; nb = nbformat.read(sys.argv[1], 4); "
        "nbclient.NotebookClient(nb, timeout=3600, kernel_name='python3', "
        "resources={'metadata': {'path': sys.argv[2]}}).execute()"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(notebook), str(notebook.parent)], env=env, check=True)
    return time.perf_counter() - start


BEGIN, END = "<!-- chapter-times: begin -->", "<!-- chapter-times: end -->"


def chapter_title(notebook: Path) -> str:
    """A chapter's heading (its first Markdown line that starts with "# "), or its file name."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return notebook.stem


def times_table(columns: dict[str, dict[str, float | None]], total_label: str, totals: dict[str, float]) -> str:
    """A Markdown table: one row per chapter (in the book's order), one column per setting, then the totals.

    >>> print(times_table({"full": {"ch00_x.ipynb": 11.2, "ch01_y.ipynb": None}}, "all", {"full": 20.0}))
    | chapter | full |
    |---|---|
    | ch00_x | 11 s |
    | ch01_y | not run |
    | **all** | **20 s** |
    """
    names = list(next(iter(columns.values())))
    lines = ["| chapter | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        path = ROOT / "book" / name
        title = chapter_title(path) if path.exists() else Path(name).stem
        cells = [f"{c[name]:.0f} s" if c.get(name) is not None else "not run" for c in columns.values()]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append(f"| **{total_label}** | " + " | ".join(f"**{totals[c]:.0f} s**" for c in columns) + " |")
    return "\n".join(lines)


def from_book(path: Path) -> tuple[str, str]:
    """The table of a `make book` run's chapter times (``tools/execute_book.py``'s execution_times.json) and its origin."""
    run = json.loads(path.read_text())
    label = "quick mode" if run["quick"] else "full settings"
    column = f"{label} (`make book`, {run['workers']} at a time)"
    table = times_table(
        {column: run["chapters"]}, f"all chapters, {run['workers']} at a time", {column: run["seconds"]}
    )
    origin = (
        f"`tools/execute_book.py` in `make book` on commit {run['commit']} ({run['date']}), {run['cores']} CPU cores, "
        f"{run['workers']} chapters at a time, one torch thread each"
    )
    return table, origin


def write_readme(readme: Path, table: str, command: str, origin: str, markers: tuple[str, str] = (BEGIN, END)) -> None:
    """Replace what lies between two README markers (the chapter-times ones by default) with ``table``,
    saying where it came from."""
    begin, end = markers
    text = readme.read_text()
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise SystemExit(f"{readme} needs one {begin!r} line and, after it, one {end!r} line")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    block = f"{begin}\nWritten by `{command}` from {origin}:\n\n{table}\n{end}"
    readme.write_text(head + block + tail)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", action="store_true", help="only the per-step figures")
    parser.add_argument("--chapters", action="store_true", help="only the chapter runtimes")
    parser.add_argument("--generator", action="store_true", help="only the generator-space step costs")
    parser.add_argument("--victims", default="convnet_fc,convnet_gap", help="victims of --generator")
    parser.add_argument("--batches", default="1,4,8", help="batch sizes of --generator")
    parser.add_argument("--iters", type=int, default=20, help="steps per timed run of --generator (2N minus N)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of --generator (the median)")
    parser.add_argument(
        "--only", nargs="+", default=None, help="--chapters: only the chapters whose name has one of these"
    )
    parser.add_argument(
        "--from-book",
        type=Path,
        default=None,
        help="--chapters: read the times of a `make book` run (_build/execution_times.json) instead of executing",
    )
    parser.add_argument("--markdown", action="store_true", help="--chapters: print the times as a Markdown table")
    parser.add_argument(
        "--readme", action="store_true", help="--chapters: write that table into README.md between its markers"
    )
    args = parser.parse_args(argv)
    command = storage.command(__file__, argv)
    both = not (args.steps or args.chapters or args.generator)
    config.set_threads()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU cores")
    if args.steps or both:
        print("\nms per inversion step (Adam, L2 matching), library loop vs bare double-backprop step:")
        for name, b, iters, rounds in (("lenet", 1, 200, 5), ("resnet18", 4, 5, 3)):
            f = step_figures(name, b, iters, rounds)
            print(
                f"  {name:9s} batch {b}: library {f['library_ms']:8.1f} ms, bare {f['bare_ms']:8.1f} ms, "
                f"ratio {f['ratio']:.3f}"
            )
    if args.generator or both:
        print(
            "\nms per step (CPU time, median of interleaved rounds) in the generator's spaces, and its ratio to a\n"
            "pixel-space (GI-x) step, each as the book runs it; in brackets the same ratio in FLOPs (matrix products\n"
            "and convolutions, torch.utils.flop_counter), what the ratio would be if every FLOP cost the same:\n"
            "  stage 2 = GIAS's per-image copies of the weights, as the library runs them (per-copy layers);\n"
            "  vmap = the same copies through torch.func.vmap; one copy = a single copy shared by the batch\n"
            "  (GIML's inner loop: the generator's own work, with no per-image weights); Adam = the fused Adam\n"
            "  step over the per-image copies alone, a part of stage 2 that grows with the batch (its weights and\n"
            "  both moments, read and written at every step)"
        )
        for victim in args.victims.split(","):
            for b in (int(b) for b in args.batches.split(",")):
                f = generator_step_figures(victim, b, args.iters, args.rounds)
                print(
                    f"  {victim:11s} batch {b}: GI-x {f['GI-x']:5.1f} ms | GI-z {f['GI-z']:5.1f} ms "
                    f"{f['GI-z_ratio']:.2f}x ({f['GI-z_flops']:.2f}) | stage 2 {f['stage 2']:5.1f} ms "
                    f"{f['stage 2_ratio']:.2f}x ({f['stage 2_flops']:.2f}) | vmap {f['vmap']:5.1f} ms "
                    f"{f['vmap_ratio']:.2f}x | one copy {f['shared']:5.1f} ms {f['shared_ratio']:.2f}x "
                    f"({f['shared_flops']:.2f}) | Adam {f['adam']:5.1f} ms {f['adam_ratio']:.2f}x",
                    flush=True,
                )
    if (args.chapters or both) and args.from_book is not None:
        table, origin = from_book(args.from_book)
        print(f"\nchapter times of {origin}:\n{table}")
        if args.readme:
            write_readme(ROOT / "README.md", table, command, origin)
            print("(written into README.md)")
    elif args.chapters or both:
        print("\nseconds per chapter (fresh kernel, top to bottom, one after another):")
        total = {"full": 0.0, "quick": 0.0}
        times: dict[str, dict[str, float]] = {"full settings": {}, "quick mode": {}}
        for nb in sorted((ROOT / "book").glob("*.ipynb")):
            if args.only and not any(o in nb.name for o in args.only):
                continue
            quick = chapter_seconds(nb, quick=True)
            full = chapter_seconds(nb, quick=False)
            total["full"] += full
            total["quick"] += quick
            times["full settings"][nb.name], times["quick mode"][nb.name] = full, quick
            print(f"  {nb.stem:32s} full {full:7.1f} s   quick {quick:6.1f} s", flush=True)
        print(f"  {'all chapters':32s} full {total['full']:7.1f} s   quick {total['quick']:6.1f} s")
        if args.markdown or args.readme:
            table = times_table(times, "these chapters, one after another", dict(zip(times, total.values())))
            print(table)
            if args.readme:
                origin = (
                    f"a fresh kernel per chapter, one after another, on {os.cpu_count()} CPU cores (one torch thread)"
                )
                write_readme(ROOT / "README.md", table, command, origin)
                print("(written into README.md)")


if __name__ == "__main__":
    main()
