#!/usr/bin/env python3
"""Side by side with breaching 0.1.2 (Geiping et al.) on the same case: time to quality and step cost.

    make peer-benchmark              # everything: about 70 minutes on one core, 17 of them breaching's DLG
    make peer-benchmark PEER_ARGS=--quick                # smoke test: a few iterations of everything
    python3 benchmarks/peer.py --batches 1 --dlg-iters 20 --recipes fast,ig30,lbfgs   # a subset
    python3 benchmarks/peer.py --batches 4 --dlg-batches "" --recipes tv,ig300 --first-image 4   # other images

The first run creates its own virtual environment, ``${GI_PEER_ROOT:-/tmp/gi-peer}/venv``,
separate from the project's ``.venv`` (breaching is never a dependency of the package or of
its tests): torch 2.14.1, torchvision 0.29.1 and breaching 0.1.2 from PyPI, torchmetrics,
tqdm and scipy, the foolbox 3.3.4 wheel without its dependencies (only for the 20 CIFAR-10
test images it ships; it is never imported), and this checkout with ``pip install --no-deps -e``.
The script then runs itself again inside that environment, on one thread.

The case is breaching's own: ``1_single_image_small`` with ``model=ResNet18``, built by
``breaching.cases.construct_case`` after ``torch.manual_seed(0)``, the model as breaching's
server sends it. Offline, two things are replaced and nothing else: the user's dataloader
yields the first CIFAR-10 test images that ``gi_tutorial.data`` loads (breaching's own
validation transform, ToTensor + Normalize, applied to them), and breaching's report (whose
LPIPS would download AlexNet weights) is skipped: every PSNR here is ``gi_tutorial.metrics``'
(images clamped to [0, 1], the batch matched to the truth by the Hungarian algorithm).

Our library attacks the very same model object and the very same shared gradient, with
breaching's normalisation folded into a wrapper so that its images live in [0, 1]; the
script checks that our gradient of the true images equals breaching's shared gradient.

Time is CPU time of this (one-threaded) process by default, so that other jobs on a shared
machine do not stretch it (``--clock wall`` for wall-clock time): on an idle core the two agree.
Every attack is timed from its call to the moment an iterate exists: breaching's by a hook
on its objective (called once per iteration), ours by a pixel space that stamps the clock at
the end of every iteration (``project()`` runs once per iteration).

Per batch size it prints one row per attack: iterations, gradient evaluations, seconds, ms per
evaluation, final PSNR, PSNR at fractions of breaching IG's time, the time to reach breaching
IG's final PSNR (and the speed-up against breaching IG's whole run) and the time to 30 dB; then
the marginal cost of an iteration of ``invert.reconstruct`` against a bare double-backprop step
on the same model. A closing block checks issue 11's targets; a level counts there from when a
run stays at or above it until its final iterate (a crossing that does not hold is marked *).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("GI_PEER_ROOT", "/tmp/gi-peer"))
VENV = ROOT / "venv"
PINS = ["torch==2.14.1", "torchvision==0.29.1", "breaching==0.1.2", "torchmetrics", "tqdm", "scipy"]
STAMP = VENV / ".gi-peer-installed"


# ---------------------------------------------------------------------------------------------
# Stage 1: the separate environment, then this script again inside it
# ---------------------------------------------------------------------------------------------
def in_peer_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    wanted = " ".join(PINS) + f" | {REPO}"
    if STAMP.exists() and STAMP.read_text().strip() == wanted and python.exists():
        return python
    print(f"# creating {VENV} (breaching 0.1.2 and torch 2.14.1 from PyPI; the project's .venv is not touched)",
          flush=True)
    ROOT.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    if not python.exists():
        subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + PINS, check=True)
    subprocess.run(pip + ["--no-deps", "foolbox==3.3.4"], check=True)  # the 20 shipped test images, never imported
    subprocess.run(pip + ["--no-deps", "-e", str(REPO)], check=True)
    STAMP.write_text(wanted + "\n")
    return python


def relaunch(argv: list[str]) -> int:
    python = ensure_venv()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GI_TUTORIAL_PROGRESS="0",
               PYTHONUNBUFFERED="1")
    return subprocess.run([str(python), str(Path(__file__).resolve()), *argv], env=env).returncode


# ---------------------------------------------------------------------------------------------
# Stage 2: the benchmark (inside the peer venv)
# ---------------------------------------------------------------------------------------------
RECIPE_DEFAULTS = {  # name -> (description, options, space options, iterations, batches); filled by recipes()
    "fast": ("L2 + TV 1e-4, Adam 0.2, constant lr", None, None, 150, (1, 4)),
    "ig": ("cosine + TV 1e-2, signed Adam 0.1, step decay", None, None, 1000, (1, 4)),
    "ig300": ("cosine + TV 1e-2, signed Adam 0.1, decay over 300", None, None, 300, (4,)),
    "ig30": ("cosine + TV 1e-3, signed Adam 0.1, step decay", None, None, 2000, (1,)),
    "lbfgs": ("L2, L-BFGS lr 1 (<= 20 evals/it), no box", None, None, 10, (1, 4)),
    "tv": ("cosine + TV 1e-1, signed Adam 0.1, decay over 150", None, None, 150, (1, 4)),
    "lbfgs130": ("L2, L-BFGS lr 1, 130 steps (<= 2600 evals), no box", None, None, 130, (1,)),
}


def recipes():
    """Our recipes: name -> (description, options of invert.reconstruct, PixelSpace options, iterations, batches).

    Found by a sweep of the library's options on this case (PSNR against gradient evaluations):
    the fewest evaluations to breaching's PSNR come from plain Adam on the L2 distance with a
    constant, larger step; the highest PSNR per evaluation late in a run from signed Adam on the
    cosine distance with step decay and a light TV weight (the Inverting Gradients recipe).
    L-BFGS runs without the box: clamping after its steps corrupts its curvature pairs.
    """
    from gi_tutorial import priors

    tv = priors.TotalVariation
    options = {
        "fast": (dict(distance="l2", optimizer="adam", lr=0.2, priors=[tv(1e-4)]), dict()),
        "ig": (dict(distance="cosine", optimizer="adam", signed=True, lr=0.1, lr_decay=True, priors=[tv(1e-2)]), dict()),
        # the same, shorter: its step decay comes after 112 iterations, where batch 4 then climbs past breaching
        "ig300": (dict(distance="cosine", optimizer="adam", signed=True, lr=0.1, lr_decay=True, priors=[tv(1e-2)]), dict()),
        "ig30": (dict(distance="cosine", optimizer="adam", signed=True, lr=0.1, lr_decay=True, priors=[tv(1e-3)]), dict()),
        "lbfgs": (dict(distance="l2", optimizer="lbfgs", lr=1.0), dict(box=None)),
        # a strong smoothness prior: fastest to breaching's batch-4 PSNR (a level 2 dB above a flat grey image),
        # with blurry images; found by a sweep of TV weights at batch 4 (1e-2, 3e-2, 1e-1)
        "tv": (dict(distance="cosine", optimizer="adam", signed=True, lr=0.1, lr_decay=True, priors=[tv(1e-1)]), dict()),
        # the same L-BFGS for about as many evaluations as fit in 500 s: DLG with known labels, for the 30 dB target
        "lbfgs130": (dict(distance="l2", optimizer="lbfgs", lr=1.0), dict(box=None)),
    }
    return {name: (d[0], *options[name], d[3], d[4]) for name, d in RECIPE_DEFAULTS.items()}


class Clock:
    def __init__(self, kind: str):
        import time

        self.now = time.process_time if kind == "cpu" else time.perf_counter


def build_case(batch: int, attack: str, iters: int, images01, labels, seed: int = 0):
    """breaching's ResNet-18 case on our images, exactly as breaching builds it (dataloader replaced)."""
    import contextlib
    import io

    import breaching
    import breaching.cases.users
    import numpy as np
    import torch
    from breaching.cases.data.datasets_vision import _parse_data_augmentations, _torchvision_collate
    from PIL import Image

    pil = [Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for x in images01[:batch]]
    ys = [int(y) for y in labels[:batch]]

    class OurImages(torch.utils.data.Dataset):  # what breaching's CIFAR10 dataset would yield (validation transform)
        def __init__(self, transform, cfg_data):
            self.transform = transform
            self.classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

        def __len__(self):
            return len(pil)

        def __getitem__(self, i):
            return self.transform(pil[i]), ys[i]

    def construct_dataloader(cfg_data, cfg_impl, user_idx=0, return_full_dataset=False):
        ds = OurImages(_parse_data_augmentations(cfg_data, cfg_data.examples_from_split), cfg_data)
        dl = torch.utils.data.DataLoader(ds, batch_size=len(ds), shuffle=False, collate_fn=_torchvision_collate)
        dl.name = cfg_data.name
        return dl

    breaching.cases.users.construct_dataloader = construct_dataloader
    case_over = ["model=ResNet18", f"user.num_data_points={batch}"]
    if attack == "deepleakage":
        case_over.append("user.provide_labels=False")  # its joint optimisation of labels refuses given labels
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        cfg_case = breaching.get_case_config("1_single_image_small", overrides=case_over)
        cfg_attack = breaching.get_attack_config(attack, overrides=[f"optim.max_iterations={iters}",
                                                                     "restarts.num_trials=1"])
    setup = dict(device=torch.device("cpu"), dtype=torch.float)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        user, server, model, loss_fn = breaching.cases.construct_case(cfg_case, setup)
        attacker = breaching.attacks.prepare_attack(server.model, server.loss, cfg_attack, setup)
    payload = server.distribute_payload()
    shared, true = user.compute_local_updates(payload)
    mean = torch.as_tensor(cfg_case.data.mean)[None, :, None, None]
    std = torch.as_tensor(cfg_case.data.std)[None, :, None, None]
    return dict(server=server, attacker=attacker, payload=payload, shared=shared, true=true, mean=mean, std=std)


def psnr_of(images, truth) -> float:
    from gi_tutorial import metrics

    return metrics.summarize(metrics.evaluate(images, truth))["psnr"]


def run_breaching(batch, attack, iters, images01, labels, clock, every):
    """One breaching attack: (curve [(seconds, iteration, psnr)], final psnr, seconds, ms per iteration)."""
    case = build_case(batch, attack, iters, images01, labels)
    attacker, mean, std = case["attacker"], case["mean"], case["std"]
    truth = (case["true"]["data"] * std + mean).clamp(0, 1)
    marks, snaps = [], []  # (iteration, t) at every iteration's start; snapshots of the iterate
    evals = [0]  # objective evaluations (L-BFGS evaluates several times per iteration)
    original = attacker._compute_objective

    def hooked(candidate, labels_, rec_model, optimizer, shared_data, iteration):
        t = clock.now()
        marks.append((iteration, t))
        if iteration % every == 0:
            snaps.append((t, iteration, candidate.detach().clone()))
        closure = original(candidate, labels_, rec_model, optimizer, shared_data, iteration)

        def counted():
            evals[0] += 1
            return closure()

        return counted

    attacker._compute_objective = hooked
    start = clock.now()
    rec, stats = attacker.reconstruct([case["payload"]], [case["shared"]], {}, dryrun=False)
    seconds = clock.now() - start
    to01 = lambda x: x * std + mean  # noqa: E731
    curve = [(t - start, it, psnr_of(to01(x), truth)) for t, it, x in snaps]
    final = psnr_of(to01(rec["data"].detach()), truth)
    curve.append((seconds, len(marks), final))
    return dict(curve=curve, final=final, seconds=seconds, iterations=len(marks), evals=evals[0])


def wrapped_model(case):
    import torch

    mean, std = case["mean"], case["std"]

    class Normalized(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.register_buffer("mean", mean.clone())
            self.register_buffer("std", std.clone())

        def forward(self, x):
            return self.model((x - self.mean) / self.std)

    wrapped = Normalized(case["server"].model)
    wrapped.train(case["server"].model.training)  # the mode breaching's server model is in (eval: public buffers)
    return wrapped


def run_ours(update, model, truth, recipe, iters, clock, every):
    from gi_tutorial import invert, spaces

    description, options, space_options = recipe[:3]
    stamps, evals = [], [0]

    class TimedPixelSpace(spaces.PixelSpace):  # stamps the clock at the end of every iteration, counts evaluations
        def images(self):
            evals[0] += 1
            return super().images()

        def project(self):
            super().project()
            stamps.append(clock.now())

    space = TimedPixelSpace(tuple(truth.shape), **space_options)
    start = clock.now()
    rec = invert.reconstruct(update, model, space, num_iters=iters, history_every=every, progress=False, **options)
    seconds = clock.now() - start
    stamps = stamps[1:]  # the first stamp is init()'s projection, before iteration 0
    curve = []
    for snap in rec.history:  # snapshot i holds the iterate that iteration i-1 produced
        t = 0.0 if snap.iteration == 0 else stamps[min(snap.iteration, len(stamps)) - 1] - start
        curve.append((t, snap.iteration, psnr_of(snap.images, truth)))
    curve[-1] = (seconds, curve[-1][1], curve[-1][2])  # the final iterate, after its ranking evaluation
    return dict(curve=curve, final=curve[-1][2], seconds=seconds, iterations=rec.iterations, evals=evals[0])


def bare_ratio(model, update, labels, shape, n, rounds):
    """Marginal ms per library iteration (2n minus n) vs a hand-written double-backprop + Adam step, interleaved."""
    import copy
    import statistics
    import time

    import torch
    import torch.nn.functional as F
    from gi_tutorial import invert

    target = [g for g in update.gradients]

    def bare(k, model=model):
        params = [p for p in model.parameters() if p.requires_grad]
        x = torch.rand(shape, requires_grad=True)
        opt = torch.optim.Adam([x], lr=0.1, fused=True)
        start = time.process_time()
        for _ in range(k):
            opt.zero_grad()
            grads = torch.autograd.grad(F.cross_entropy(model(x), labels), params, create_graph=True)
            loss = sum((g - t).pow(2).sum() for g, t in zip(grads, target))
            loss.backward(inputs=[x])
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        return time.process_time() - start

    def lib(k):
        def run(m):
            start = time.process_time()
            invert.reconstruct(update, model, labels=labels, image_shape=shape[1:], num_iters=m, optimizer="adam",
                               lr=0.1, distance="l2", progress=False)
            return time.process_time() - start
        return run(2 * k) - run(k)

    bare(1), lib(1)  # warm-up
    ours, ref, copied = [], [], []
    for _ in range(rounds):
        ours.append(lib(n) / n)
        ref.append(bare(n) / n)
        copied.append(bare(n, copy.deepcopy(model)) / n)  # for comparison: a deep copy of the model is slower
    return (1000 * statistics.median(ours), 1000 * statistics.median(ref),
            statistics.median(a / b for a, b in zip(ours, ref)), 1000 * statistics.median(copied))


def time_to(curve, level):
    return next((t for t, _, p in curve if p >= level), None)


def time_held(curve, level):
    """From when on every later iterate (the final one included) stays at or above `level`; None if the final is below."""
    held = None
    for t, _, p in curve:
        if p >= level:
            held = t if held is None else held
        else:
            held = None
    return held


def at_time(curve, seconds):
    """PSNR of the last iterate that existed at `seconds` (None before the first)."""
    before = [p for t, _, p in curve if t <= seconds]
    return before[-1] if before else None


def mark(curve, level, reach):
    if reach is None:
        return "never"
    return f"{reach:.1f} s" + ("" if time_held(curve, level) is not None else "*")


def fmt(x, spec="6.2f", none="-"):
    return none if x is None else format(x, spec)


def benchmark(args) -> int:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    import warnings

    warnings.filterwarnings("ignore")
    from importlib.metadata import version

    import breaching  # noqa: F401
    from gi_tutorial import data, fl

    clock = Clock(args.clock)
    all_recipes = recipes()
    chosen = [r for r in args.recipes.split(",") if r]
    unknown = [r for r in chosen if r not in all_recipes]
    if unknown:
        print(f"unknown recipe(s) {unknown}; known: {sorted(all_recipes)}", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    first = args.first_image
    if not 0 <= first <= 20 - max(batches):
        print(f"--first-image must be in [0, {20 - max(batches)}] (20 CIFAR-10 test images ship offline)", file=sys.stderr)
        return 2
    images01, labels = data.cifar10_targets(first + max(batches), allow_download=False)
    images01, labels = images01[first:], labels[first:]  # the case's images: test images first, first + 1, ...
    q = args.quick
    ig_iters = args.ig_iters or (5 if q else 1000)
    dlg_iters = args.dlg_iters or (2 if q else 300)
    print(f"# breaching {version('breaching')} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"clock: {args.clock} time of this process | case: breaching 1_single_image_small, ResNet18, seed 0 | "
          f"CIFAR-10 test images {first}-{first + max(batches) - 1} (gi_tutorial.data) | quick={q}", flush=True)
    summary = []
    for batch in batches:
        print(f"\n=== batch {batch} ===", flush=True)
        rows = []  # (label, result)
        ig = run_breaching(batch, "invertinggradients", ig_iters, images01, labels, clock,
                           every=max(1, ig_iters // 200))
        rows.append(("breaching invertinggradients (defaults)", ig))
        print(f"breaching invertinggradients: {ig['iterations']} it, {ig['seconds']:.1f} s, final {ig['final']:.2f} dB",
              flush=True)
        if batch in [int(b) for b in args.dlg_batches.split(",") if b]:
            dlg = run_breaching(batch, "deepleakage", dlg_iters, images01, labels, clock, every=1)
            rows.append(("breaching deepleakage (L-BFGS, labels optimised)", dlg))
            print(f"breaching deepleakage: {dlg['iterations']} it, {dlg['seconds']:.1f} s, final {dlg['final']:.2f} dB",
                  flush=True)
        target_psnr, target_s = ig["final"], ig["seconds"]

        case = build_case(batch, "invertinggradients", 1, images01, labels)
        model = wrapped_model(case)
        truth = (case["true"]["data"] * case["std"] + case["mean"]).clamp(0, 1)
        shared_labels = case["shared"]["metadata"]["labels"]
        update = fl.SharedUpdate(gradients=tuple(g.detach() for g in case["shared"]["gradients"]), batch_size=batch,
                                 labels=shared_labels)
        own = fl.client_update(model, truth, case["true"]["labels"])
        err = max(float((a - b).abs().max()) for a, b in zip(own.gradients, update.gradients))
        print(f"model in {'train' if model.training else 'eval'} mode; max |our gradient - breaching's shared gradient| "
              f"on the true images: {err:.1e}; max |breaching's images - gi_tutorial.data's|: "
              f"{float((truth - images01[:batch]).abs().max()):.1e}", flush=True)

        for name in chosen:
            recipe = all_recipes[name]
            only = getattr(args, f"batches_{name}")
            if batch not in ([int(b) for b in only.split(",") if b] if only is not None else recipe[4]):
                continue
            iters = getattr(args, f"iters_{name}") or (3 if q else recipe[3])
            res = run_ours(update, model, truth, recipe, iters, clock, every=max(1, iters // 200))
            rows.append((f"ours {name}: {recipe[0]}", res))
            print(f"ours {name}: {res['iterations']} it, {res['seconds']:.1f} s, final {res['final']:.2f} dB", flush=True)

        lib_ms, bare_ms, ratio, copy_ms = bare_ratio(model, update, shared_labels, tuple(truth.shape),
                                            n=2 if q else args.ratio_iters, rounds=1 if q else args.ratio_rounds)
        checkpoints = [float(c) for c in args.checkpoints.split(",")] if args.checkpoints else \
            [round(target_s * f, 1) for f in (0.05, 0.1, 0.25, 0.5, 1.0)]
        grey = psnr_of(torch.full_like(truth, 0.5), truth)
        start = next((f"{r['curve'][0][2]:.2f} dB" for label, r in rows if label.startswith("ours")), "-")
        print(f"\nbatch {batch}: breaching IG's final PSNR {target_psnr:.2f} dB after {target_s:.1f} s; "
              f"1/10 of its time = {target_s / 10:.1f} s. For scale: a flat mid-grey image scores {grey:.2f} dB, "
              f"our uniform-noise start {start}. PSNR (dB) at each time (s) is that "
              f"of the last iterate computed by then.", flush=True)
        head = (f"{'attack':<50} {'iters':>5} {'evals':>5} {'seconds':>7} {'ms/eval':>7} {'final':>6} | "
                + " ".join(f"{'@' + format(c, 'g') + 's':>7}" for c in checkpoints)
                + f" | {'to ' + format(target_psnr, '.2f') + ' dB':>12} {'speed-up':>8} | {'to 30 dB':>9}")
        print(head)
        print("-" * len(head))
        for label, r in rows:
            reach = time_to(r["curve"], target_psnr)
            reach30 = time_to(r["curve"], 30.0)
            print(f"{label[:50]:<50} {r['iterations']:>5} {r['evals']:>5} {r['seconds']:>7.1f} "
                  f"{1000 * r['seconds'] / max(1, r['evals']):>7.0f} {r['final']:>6.2f} | "
                  + " ".join(f"{fmt(at_time(r['curve'], c), '7.2f'):>7}" for c in checkpoints)
                  + f" | {mark(r['curve'], target_psnr, reach):>12} "
                  f"{fmt(target_s / reach, '.1f') + 'x' if reach else '-':>8} | "
                  f"{mark(r['curve'], 30.0, reach30):>9}")
        print("(* : the PSNR crossed that level then, but the run's final iterate is below it)")
        print(f"per-step cost: an L2 Adam iteration of invert.reconstruct vs a bare double-backprop + Adam step on this "
              f"model (marginal cost, median of {1 if q else args.ratio_rounds} interleaved rounds): {lib_ms:.0f} ms vs "
              f"{bare_ms:.0f} ms = {ratio:.3f}x; the bare step on a deep copy of the model (why invert.reconstruct "
              f"attacks the caller's model and puts its buffers back, instead of copying it): {copy_ms:.0f} ms = "
              f"{copy_ms / bare_ms:.3f}x", flush=True)
        ours = [(label, r) for label, r in rows if label.startswith("ours")]

        def first(level, when):  # the earliest time over our recipes (inf if none)
            found = [(when(r["curve"], level), label.split(":")[0]) for label, r in ours]
            return min(((t, name) for t, name in found if t is not None), default=(float("inf"), "none"))

        best = (first(target_psnr, time_held), first(target_psnr, time_to))
        best30 = (first(30.0, time_held), first(30.0, time_to))
        top = max(((r["final"], r["seconds"], label.split(":")[0]) for label, r in ours), default=None)
        summary.append((batch, target_psnr, target_s, best, best30, top, ratio))

    print("\n=== targets (issue 11) ===")
    never = lambda x: "never" if x == float("inf") else f"{x:.1f} s"  # noqa: E731
    print("(a level counts from when the run stays at or above it to its final iterate; a first crossing that "
          "does not hold is shown apart)")
    for batch, target_psnr, target_s, best, best30, top, ratio in summary:
        print(f"batch {batch}: reach breaching's {target_psnr:.2f} dB in <= {target_s / 10:.1f} s (1/10 of {target_s:.1f} s): "
              f"held from {never(best[0][0])} ({best[0][1]}), first crossed at {never(best[1][0])} ({best[1][1]}) -> "
              f"{'MET' if best[0][0] <= target_s / 10 else 'NOT MET'}")
        if batch == 1:
            extra = f"; highest final PSNR {top[0]:.2f} dB after {top[1]:.1f} s ({top[2]})" if top else ""
            print(f"batch 1: reach 30 dB in <= 500 s: held from {never(best30[0][0])} ({best30[0][1]}), first crossed at "
                  f"{never(best30[1][0])} ({best30[1][1]}) -> {'MET' if best30[0][0] <= 500 else 'NOT MET'}{extra}")
        print(f"batch {batch}: per-step cost vs bare step {ratio:.3f}x (<= 1.05) -> {'MET' if ratio <= 1.05 else 'NOT MET'}")
    return 0


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: a few iterations of everything")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--first-image", type=int, default=0,
                    help="the case's first CIFAR-10 test image (0): other images check that a verdict is not picked")
    ap.add_argument("--dlg-batches", default="1", help="batch sizes breaching's DLG runs at ('' for none)")
    ap.add_argument("--ig-iters", type=int, default=None, help="breaching invertinggradients iterations (1000)")
    ap.add_argument("--dlg-iters", type=int, default=None, help="breaching deepleakage L-BFGS steps (300)")
    ap.add_argument("--recipes", default="fast,ig,ig300,ig30,lbfgs,tv,lbfgs130", help="our recipes, comma-separated")
    for name, (description, _, _, iters, batches) in RECIPE_DEFAULTS.items():
        ap.add_argument(f"--iters-{name}", type=int, default=None, help=f"iterations of {name}: {description} ({iters})")
        ap.add_argument(f"--batches-{name}", default=None,
                        help=f"batch sizes {name} runs at ({','.join(map(str, batches))})")
    ap.add_argument("--checkpoints", default="", help="seconds at which to read PSNR (default: 5, 10, 25, 50 and 100%% "
                                                      "of breaching IG's time)")
    ap.add_argument("--ratio-iters", type=int, default=10)
    ap.add_argument("--ratio-rounds", type=int, default=5)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--no-venv", action="store_true", help="run in the current interpreter (breaching installed)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if not (in_peer_venv() or args.no_venv):
        return relaunch(argv)
    return benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
