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
from dataclasses import dataclass, replace
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
    print(
        f"# creating {VENV} (breaching 0.1.2 and torch 2.14.1 from PyPI; the project's .venv is not touched)",
        flush=True,
    )
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
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GI_TUTORIAL_PROGRESS="0", PYTHONUNBUFFERED="1")
    return subprocess.run([str(python), str(Path(__file__).resolve()), *argv], env=env).returncode


# ---------------------------------------------------------------------------------------------
# Stage 2: the benchmark (inside the peer venv)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    """One call of ``invert.reconstruct`` on the pixels: distance, optimiser, prior, box and budget."""

    iters: int
    distance: str = "l2"  # "l2" or "cosine"
    optimizer: str = "adam"  # "adam" (invert.Adam) or "lbfgs" (invert.LBFGS, which needs box=False)
    lr: float = 0.1
    signed: bool = False  # Adam on the sign of the gradient (Geiping et al., 2020)
    decay: bool = False  # Adam's step decay x0.1 at 3/8, 5/8 and 7/8 of the phase
    tv: float = 0.0  # total-variation weight
    tv_end: float | None = None  # if set, the TV weight falls geometrically from tv to tv_end over the phase
    box: bool = True  # keep the pixels in [0, 1] after every step
    layers: str = "all"  # the distance's layer weights: "all", "normalised" (1 / ||g*_l||^2 each), "first:K", "last:K"
    restarts: int = 1  # random starts (first phase only), the lowest gradient distance kept
    max_iter: int = 20  # L-BFGS: evaluations per step at most
    line_search: bool = False  # L-BFGS: torch's strong-Wolfe line search (every step lowers the loss)

    def __str__(self) -> str:
        if self.optimizer == "lbfgs":
            opt = f"L-BFGS {self.lr:g}{' + Wolfe' if self.line_search else ''}"
        else:
            opt = f"{'signed ' if self.signed else ''}Adam {self.lr:g}{', decay' if self.decay else ''}"
        tv = f" + TV {self.tv:g}" + (f"->{self.tv_end:g}" if self.tv_end is not None else "") if self.tv else ""
        layers = "" if self.layers == "all" else f" ({self.layers} layers)"
        starts = f"{self.restarts} x " if self.restarts > 1 else ""
        return f"{starts}{self.iters} {self.distance}{layers}{tv}, {opt}{'' if self.box else ', no box'}"


@dataclass(frozen=True)
class Recipe:
    """Our attack: one or more phases, each starting from the last phase's images; the batch sizes it runs at."""

    phases: tuple[Phase, ...]
    batches: tuple[int, ...]
    note: str = ""

    def __str__(self) -> str:
        return " then ".join(str(p) for p in self.phases)

    def scaled(self, iters: int) -> Recipe:
        """The same recipe with ``iters`` iterations in all, shared among the phases as before."""
        total = sum(p.iters for p in self.phases)
        return replace(
            self, phases=tuple(replace(p, iters=max(1, round(p.iters * iters / total))) for p in self.phases)
        )


IG = dict(distance="cosine", signed=True, decay=True)  # the Inverting Gradients recipe (Geiping et al., 2020)
TV_SCHEDULE = Phase(600, tv=1e-1, tv_end=1e-3, **IG)  # the first phase of the batch-1 polish recipes below
RECIPES: dict[str, Recipe] = {
    # the fewest evaluations to breaching's batch-1 PSNR: plain Adam on the L2 distance, a constant larger step
    "fast": Recipe((Phase(150, lr=0.2, tv=1e-4),), (1, 4)),
    "ig": Recipe((Phase(1000, tv=1e-2, **IG),), (1, 4)),
    # the same, shorter: its step decay comes after 112 iterations, where batch 4 then climbs past breaching
    "ig300": Recipe((Phase(300, tv=1e-2, **IG),), (4,)),
    "ig30": Recipe((Phase(2000, tv=1e-3, **IG),), (1,)),
    # L-BFGS runs without the box: clamping after its steps corrupts its curvature pairs
    "lbfgs": Recipe((Phase(10, optimizer="lbfgs", lr=1.0, box=False),), (1, 4)),
    # a strong smoothness prior: fastest to breaching's batch-4 PSNR (a level 2 dB above a flat grey image),
    # with blurry images; found by a sweep of TV weights at batch 4 (1e-2, 3e-2, 1e-1) on images 0-3
    "tv": Recipe((Phase(150, tv=1e-1, **IG),), (1, 4)),
    # DLG with known labels for about as many evaluations as fit in 500 s at batch 1 (the 30 dB target)
    "lbfgs130": Recipe((Phase(130, optimizer="lbfgs", lr=1.0, box=False),), (1,)),
    # issue 22's candidates for floor + 6 dB at batch 4 within breaching's time (about 1000 evaluations):
    # L-BFGS on L2 for up to 1000 evaluations; the same with every layer's relative error weighted alike;
    # a TV schedule (smooth first, then sharpen); four short restarts, the best continued with less TV
    "lbfgs50": Recipe((Phase(50, optimizer="lbfgs", lr=1.0, box=False),), (1, 4)),
    "lbfgsnorm": Recipe((Phase(50, optimizer="lbfgs", lr=1.0, box=False, layers="normalised"),), (1, 4)),
    "tvsched": Recipe((Phase(800, tv=1e-1, tv_end=1e-3, **IG),), (1, 4)),
    "restarts": Recipe((Phase(40, tv=1e-1, restarts=4, **IG), Phase(600, tv=1e-2, **IG)), (1, 4)),
    # for 30 dB at batch 1: the TV schedule, then a phase without any prior, which TV's pull away from
    # the truth (README, plateau probe) no longer limits: L-BFGS on the cosine distance, or signed Adam
    # at a tenth of the step
    "polish": Recipe(
        (TV_SCHEDULE, Phase(30, distance="cosine", optimizer="lbfgs", lr=1.0, box=False)),
        (1,),
    ),
    # the same with a strong-Wolfe line search: from the truth plus noise (26 dB, image 17) it climbs where
    # signed Adam falls (peer_plateau.py --lbfgs)
    "polishwolfe": Recipe(
        (TV_SCHEDULE, Phase(100, distance="cosine", optimizer="lbfgs", lr=1.0, box=False, line_search=True)),
        (1,),
    ),
    "polishadam": Recipe((TV_SCHEDULE, Phase(800, distance="cosine", signed=True, decay=True, lr=0.01)), (1,)),
}
DEFAULT_RECIPES = "fast,ig,ig300,ig30,lbfgs,tv,lbfgs130"


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
        cfg_attack = breaching.get_attack_config(
            attack, overrides=[f"optim.max_iterations={iters}", "restarts.num_trials=1"]
        )
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
    """One breaching attack: curve [(seconds, iteration, psnr, evaluations)], final PSNR, seconds, iterations, evaluations."""
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
            snaps.append((t, iteration, candidate.detach().clone(), evals[0]))
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
    curve = [(t - start, it, psnr_of(to01(x), truth), ev) for t, it, x, ev in snaps]
    final = psnr_of(to01(rec["data"].detach()), truth)
    curve.append((seconds, len(marks), final, evals[0]))
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


def layer_weights(spec: str, target) -> list[float] | None:
    """The distance's per-tensor weights for a Phase's ``layers``."""
    if spec == "all":
        return None
    if spec == "normalised":  # every tensor's relative error counts alike, whatever its gradient's scale
        return [1.0 / max(float(t.pow(2).sum()), 1e-30) for t in target]
    kind, _, count = spec.partition(":")
    k, n = int(count), len(target)
    if kind == "first":
        return [1.0 if i < k else 0.0 for i in range(n)]
    if kind == "last":
        return [1.0 if i >= n - k else 0.0 for i in range(n)]
    raise ValueError(f"unknown layers {spec!r}; expected all, normalised, first:K or last:K")


def run_ours(update, model, truth, recipe: Recipe, clock, points: int = 200):
    """Run one recipe: its curve [(seconds, iteration, psnr, evaluations)], final PSNR, seconds, iterations, evaluations.

    Time is stamped at the end of every iteration (``project()`` runs once per iteration). With
    restarts, the curve is what an attacker who interleaves the trials would hold: at each
    snapshot, the trial with the lowest gradient distance so far, at the summed time of all trials.
    """

    from gi_tutorial import invert, priors, spaces

    evals = [0]
    curve: list[tuple[float, int, float, int]] = []
    start = clock.now()
    previous = None  # the last phase's images: where the next phase starts
    done = 0  # iterations of earlier phases
    for phase in recipe.phases:
        tv = priors.TotalVariation(phase.tv) if phase.tv else None
        trial_stamps: list[list[tuple[float, int]]] = []  # per trial: (time, evaluations) at init, then per iteration
        warm = previous

        class TimedPixelSpace(spaces.PixelSpace):
            def init(self, rng):
                trial_stamps.append([])
                return super().init(rng)

            def images(self):
                evals[0] += 1
                return super().images()

            def project(self):
                super().project()
                stamps = trial_stamps[-1]
                stamps.append((clock.now(), evals[0]))
                if tv is not None and phase.tv_end is not None:  # a geometric schedule of the TV weight
                    tv.weight = phase.tv * (phase.tv_end / phase.tv) ** min(1.0, (len(stamps) - 1) / phase.iters)

        if phase.optimizer == "lbfgs":
            optimizer = invert.LBFGS(phase.lr, max_iter=phase.max_iter, line_search=phase.line_search)
        else:
            optimizer = invert.Adam(phase.lr, signed=phase.signed, decay=phase.decay)
        space = TimedPixelSpace(
            tuple(truth.shape), init="rand" if warm is None else warm, box=(0.0, 1.0) if phase.box else None
        )
        phase_start = clock.now()
        rec = invert.reconstruct(
            update,
            model,
            space,
            optimizer=optimizer,
            num_iters=phase.iters,
            restarts=phase.restarts if warm is None else 1,
            distance=phase.distance,
            layer_weights=layer_weights(phase.layers, update.gradients),
            priors=[tv] if tv is not None else [],
            history_every=max(1, phase.iters // points),
            progress=False,
        )
        phase_end = clock.now()
        offset, evals_before = phase_start - start, trial_stamps[0][0][1]
        histories = [{s.iteration: s for s in trial.history} for trial in rec.trials]
        for snap in rec.trials[rec.best].history[:-1]:  # snapshot i holds the iterate that iteration i-1 produced
            i = snap.iteration
            found = [(h[i].grad_loss, k) for k, h in enumerate(histories) if i in h]
            chosen = histories[min(found)[1]][i]
            t = (
                offset
                + sum(s[min(i, len(s) - 1)][0] - s[0][0] for s in trial_stamps)
                + (trial_stamps[0][0][0] - phase_start)
            )
            ev = evals_before + sum(s[min(i, len(s) - 1)][1] - s[0][1] for s in trial_stamps)
            curve.append((t, done + i, psnr_of(chosen.images, truth), ev))
        curve.append((phase_end - start, done + phase.iters, psnr_of(rec.images, truth), evals[0]))  # after the ranking
        previous = rec.images.clone()
        done += phase.iters
    seconds = clock.now() - start
    return dict(curve=curve, final=curve[-1][2], seconds=seconds, iterations=done, evals=evals[0])


def bare_ratio(model, update, labels, shape, n, rounds):
    """Marginal ms per library iteration (2n minus n) vs a hand-written double-backprop + Adam step, interleaved."""
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    from gi_tutorial import invert, spaces

    target = list(update.gradients)

    def bare(k):
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
            invert.reconstruct(
                update,
                model,
                spaces.PixelSpace(shape),
                optimizer=invert.Adam(0.1),
                num_iters=m,
                labels=labels,
                distance="l2",
                progress=False,
            )
            return time.process_time() - start

        return run(2 * k) - run(k)

    bare(1), lib(1)  # warm-up
    ours, ref = [], []
    for _ in range(rounds):
        ours.append(lib(n) / n)
        ref.append(bare(n) / n)
    ratios = sorted(a / b for a, b in zip(ours, ref))
    return 1000 * statistics.median(ours), 1000 * statistics.median(ref), statistics.median(ratios), ratios


def time_to(curve, level):
    return next((point[0] for point in curve if point[2] >= level), None)


def evals_to(curve, level):
    """Gradient evaluations until `level` is first reached (None if never): a measure that machine load leaves alone."""
    return next((point[3] for point in curve if point[2] >= level), None)


def time_held(curve, level):
    """From when on every later iterate (the final one included) stays at or above `level`; None if the final is below."""
    held = None
    for t, _, p, _ in curve:
        if p >= level:
            held = t if held is None else held
        else:
            held = None
    return held


def at_time(curve, seconds):
    """PSNR of the last iterate that existed at `seconds` (None before the first)."""
    before = [p for t, _, p, _ in curve if t <= seconds]
    return before[-1] if before else None


def mark(curve, level):
    """The first time (s) and evaluations at which `level` is reached, starred when the final iterate is below it
    again; 'never' if not reached."""
    reach = time_to(curve, level)
    if reach is None:
        return "never"
    return f"{reach:.0f} s/{evals_to(curve, level)}" + ("" if time_held(curve, level) is not None else "*")


def fmt(x, spec="6.2f", none="-"):
    return none if x is None else format(x, spec)


def floors(truth, others, seed: int = 0) -> dict[str, float]:
    """PSNR of the guesses that use no gradient, and of our starting iterate.

    - ``grey``: a flat mid-grey image;
    - ``mean``: the mean image of the other shipped CIFAR-10 test images (a public sample, the case's own
      images left out);
    - ``start``: the uniform-noise start of our pixel space (seed 0), where every recipe begins.
    The floor of the headline is the higher of grey and mean: a result below it shows no leak.
    """
    import torch

    from gi_tutorial import spaces

    batch = len(truth)
    start = spaces.PixelSpace(tuple(truth.shape)).init(torch.Generator().manual_seed(seed))[0].detach()
    out = {
        "grey": psnr_of(torch.full_like(truth, 0.5), truth),
        "mean": psnr_of(others.mean(0, keepdim=True).expand(batch, -1, -1, -1).clone(), truth),
        "start": psnr_of(start, truth),
    }
    out["floor"] = max(out["grey"], out["mean"])
    return out


def cached_breaching(args, batch, attack, iters, images01, labels, clock, every):
    """breaching's attack, or with --reuse-breaching its stored result for the same case, clock and iterations."""
    import json

    first = args.first_image
    path = ROOT / "out" / f"breaching_{attack}_b{batch}_first{first}_{iters}it_{args.clock}.json"
    if args.reuse_breaching and path.exists():
        stored = json.loads(path.read_text())
        # results stored before evaluations were recorded: breaching's IG evaluates once per iteration
        stored["curve"] = [tuple(p) if len(p) == 4 else (*p, p[1]) for p in stored["curve"]]
        print(f"(breaching {attack}: stored result {path} reused)", flush=True)
        return stored
    result = run_breaching(batch, attack, iters, images01, labels, clock, every)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result) + "\n")
    return result


def benchmark(args) -> int:
    import json

    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    import warnings

    warnings.filterwarnings("ignore")
    from importlib.metadata import version

    import breaching  # noqa: F401

    from gi_tutorial import data, fl

    clock = Clock(args.clock)
    chosen = []  # (name, recipe)
    for item in (r for r in args.recipes.split(",") if r):
        name, _, iters = item.partition(":")
        if name not in RECIPES:
            print(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}", file=sys.stderr)
            return 2
        chosen.append((name, RECIPES[name].scaled(int(iters)) if iters else RECIPES[name]))
    batches = [int(b) for b in args.batches.split(",")]
    first = args.first_image
    if not 0 <= first <= data.NUM_SHIPPED - max(batches):
        print(
            f"--first-image must be in [0, {data.NUM_SHIPPED - max(batches)}] ({data.NUM_SHIPPED} CIFAR-10 test "
            "images ship offline)",
            file=sys.stderr,
        )
        return 2
    shipped, shipped_labels = data.cifar10_targets(data.NUM_SHIPPED, allow_download=False)
    images01, labels = shipped[first:], shipped_labels[first:]  # the case's images: test images first, first + 1, ...
    q = args.quick
    ig_iters = args.ig_iters or (5 if q else 1000)
    dlg_iters = args.dlg_iters or (2 if q else 300)
    print(
        f"# breaching {version('breaching')} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
        f"clock: {args.clock} time of this process | case: breaching 1_single_image_small, ResNet18, seed 0 | "
        f"CIFAR-10 test images {first}-{first + max(batches) - 1} (gi_tutorial.data) | quick={q}",
        flush=True,
    )
    print(
        "# Identification (is a reconstruction closer to its own image than to others of its class?) is not "
        f"measured here: offline, only {data.NUM_SHIPPED} CIFAR-10 test images exist, about 2 per class, too few "
        "candidates for a meaningful rank. PSNR is read against the no-gradient floors instead.",
        flush=True,
    )
    summary, record = [], {}
    for batch in batches:
        print(f"\n=== batch {batch}, CIFAR-10 test images {first}-{first + batch - 1} ===", flush=True)
        rows = []  # (label, result)
        ig = cached_breaching(
            args, batch, "invertinggradients", ig_iters, images01, labels, clock, every=max(1, ig_iters // 200)
        )
        rows.append(("breaching invertinggradients (defaults)", ig))
        print(
            f"breaching invertinggradients: {ig['iterations']} it, {ig['seconds']:.1f} s, final {ig['final']:.2f} dB",
            flush=True,
        )
        if batch in [int(b) for b in args.dlg_batches.split(",") if b]:
            dlg = cached_breaching(args, batch, "deepleakage", dlg_iters, images01, labels, clock, every=1)
            rows.append(("breaching deepleakage (L-BFGS, labels optimised)", dlg))
            print(
                f"breaching deepleakage: {dlg['iterations']} it, {dlg['seconds']:.1f} s, final {dlg['final']:.2f} dB",
                flush=True,
            )
        target_psnr, target_s = ig["final"], ig["seconds"]

        case = build_case(batch, "invertinggradients", 1, images01, labels)
        model = wrapped_model(case)
        truth = (case["true"]["data"] * case["std"] + case["mean"]).clamp(0, 1)
        shared_labels = case["shared"]["metadata"]["labels"]
        update = fl.SharedUpdate(
            gradients=tuple(g.detach() for g in case["shared"]["gradients"]), batch_size=batch, labels=shared_labels
        )
        own = fl.client_update(model, truth, case["true"]["labels"])
        err = max(float((a - b).abs().max()) for a, b in zip(own.gradients, update.gradients))
        print(
            f"model in {'train' if model.training else 'eval'} mode; max |our gradient - breaching's shared gradient| "
            f"on the true images: {err:.1e}; max |breaching's images - gi_tutorial.data's|: "
            f"{float((truth - images01[:batch]).abs().max()):.1e}",
            flush=True,
        )
        keep = torch.ones(len(shipped), dtype=torch.bool)
        keep[first : first + batch] = False
        fl_ = floors(truth, shipped[keep])
        floor = fl_["floor"]
        meaningful = target_psnr >= floor + 3

        for name, recipe in chosen:
            only = args.only_batches
            if batch not in ([int(b) for b in only.split(",") if b] if only else recipe.batches):
                continue
            res = run_ours(update, model, truth, recipe.scaled(3) if q else recipe, clock)
            rows.append((f"ours {name}: {recipe}", res))
            print(
                f"ours {name}: {res['iterations']} it, {res['seconds']:.1f} s, final {res['final']:.2f} dB", flush=True
            )

        if args.ratio_rounds > 0:
            lib_ms, bare_ms, ratio, ratios = bare_ratio(
                model,
                update,
                shared_labels,
                tuple(truth.shape),
                n=2 if q else args.ratio_iters,
                rounds=1 if q else args.ratio_rounds,
            )
        else:
            lib_ms = bare_ms = ratio = ratios = None
        checkpoints = (
            [float(c) for c in args.checkpoints.split(",")]
            if args.checkpoints
            else [round(target_s * f, 1) for f in (0.05, 0.1, 0.25, 0.5, 1.0)]
        )
        print(
            f"\nbatch {batch}: floors (no gradient): flat mid-grey {fl_['grey']:.2f} dB, mean image of the other "
            f"{int(keep.sum())} shipped CIFAR-10 images {fl_['mean']:.2f} dB; our uniform-noise start "
            f"{fl_['start']:.2f} dB. Floor = {floor:.2f} dB (the higher guess); floor + 3 dB = {floor + 3:.2f}, "
            f"floor + 6 dB = {floor + 6:.2f}.\nbreaching IG's final {target_psnr:.2f} dB "
            f"({target_psnr - floor:+.2f} dB over the floor) after {target_s:.1f} s: time to it is "
            f"{'meaningful' if meaningful else 'NOT meaningful (under floor + 3 dB: it measures who blurs best)'}."
            f" PSNR (dB) at each time (s) is that of the last iterate computed by then.",
            flush=True,
        )
        head = (
            f"{'attack':<58} {'iters':>5} {'evals':>5} {'seconds':>7} {'ms/eval':>7} {'final':>6} {'-floor':>6} | "
            + " ".join(f"{'@' + format(c, 'g') + 's':>7}" for c in checkpoints)
            + f" | {'to floor+3':>11} {'to floor+6':>11} | {'to ' + format(target_psnr, '.2f') + ' dB':>12} "
            f"{'speed-up':>8} | {'to 30 dB':>11}"
        )
        print(head)
        print("-" * len(head))
        row_record = []
        for label, r in rows:
            reach = time_to(r["curve"], target_psnr)
            speedup = "-" if not reach else f"{target_s / reach:.1f}x" + ("" if meaningful else "(n/m)")
            print(
                f"{label[:58]:<58} {r['iterations']:>5} {r['evals']:>5} {r['seconds']:>7.1f} "
                f"{1000 * r['seconds'] / max(1, r['evals']):>7.0f} {r['final']:>6.2f} {r['final'] - floor:>+6.2f} | "
                + " ".join(f"{fmt(at_time(r['curve'], c), '7.2f'):>7}" for c in checkpoints)
                + f" | {mark(r['curve'], floor + 3):>11} {mark(r['curve'], floor + 6):>11} | "
                f"{mark(r['curve'], target_psnr):>12} {speedup:>8} | {mark(r['curve'], 30.0):>11}"
            )
            row_record.append(
                dict(
                    label=label,
                    **{k: r[k] for k in ("final", "seconds", "iterations", "evals", "curve")},
                    to_floor3=time_to(r["curve"], floor + 3),
                    held_floor3=time_held(r["curve"], floor + 3),
                    to_floor6=time_to(r["curve"], floor + 6),
                    held_floor6=time_held(r["curve"], floor + 6),
                    to_30=time_to(r["curve"], 30.0),
                    held_30=time_held(r["curve"], 30.0),
                    evals_floor3=evals_to(r["curve"], floor + 3),
                    evals_floor6=evals_to(r["curve"], floor + 6),
                )
            )
        print(
            "(times to a level: CPU seconds / gradient evaluations; * : the PSNR crossed that level then, but the run's "
            "final iterate is below it; n/m: not meaningful, breaching's final is under floor + 3 dB)"
        )
        if ratio is not None:
            print(
                f"per-step cost: an L2 Adam iteration of invert.reconstruct (marginal: 2n iterations minus n) vs a bare "
                f"double-backprop + Adam step on this model, median of {len(ratios)} interleaved rounds: {lib_ms:.0f} ms "
                f"vs {bare_ms:.0f} ms = {ratio:.3f}x (rounds: {' '.join(f'{r:.3f}' for r in ratios)})",
                flush=True,
            )
        ours = [(label, r) for label, r in rows if label.startswith("ours")]

        def earliest(level, when):  # the earliest time over our recipes (inf if none)
            found = [(when(r["curve"], level), label.split(":")[0]) for label, r in ours]
            return min(((t, name) for t, name in found if t is not None), default=(float("inf"), "none"))

        summary.append(
            dict(
                batch=batch,
                floors=fl_,
                target=target_psnr,
                target_s=target_s,
                meaningful=meaningful,
                breaching_floor3=time_held(ig["curve"], floor + 3),
                breaching_floor6=time_held(ig["curve"], floor + 6),
                floor3=earliest(floor + 3, time_held),
                floor6=earliest(floor + 6, time_held),
                target_held=earliest(target_psnr, time_held),
                held30=earliest(30.0, time_held),
                top=max(((r["final"], r["seconds"], label.split(":")[0]) for label, r in ours), default=None),
                ratio=ratio,
            )
        )
        record[batch] = dict(
            floors=fl_,
            rows=row_record,
            ratio=ratio,
            ratios=ratios,
            lib_ms=lib_ms,
            bare_ms=bare_ms,
            images=list(range(first, first + batch)),
        )

    print("\n=== summary and targets (issue 22) ===")
    print("(a level counts from when the run stays at or above it to its final iterate)")
    never = lambda x: "never" if x is None or x == float("inf") else f"{x:.1f} s"  # noqa: E731
    print(
        f"{'batch':>5} {'images':>7} | {'grey':>6} {'mean':>6} {'start':>6} {'floor':>6} | {'breaching':>9} "
        f"{'-floor':>6} {'s':>6} | {'br. floor+3':>11} {'ours floor+3':>19} | {'br. floor+6':>11} "
        f"{'ours floor+6':>19} | {'best final':>22}"
    )
    for s in summary:
        f = s["floors"]
        top = f"{s['top'][0]:.2f} dB ({s['top'][2][5:]})" if s["top"] else "-"
        images = f"{first}-{first + s['batch'] - 1}"
        print(
            f"{s['batch']:>5} {images:>7} | "
            f"{f['grey']:>6.2f} {f['mean']:>6.2f} {f['start']:>6.2f} {f['floor']:>6.2f} | {s['target']:>9.2f} "
            f"{s['target'] - f['floor']:>+6.2f} {s['target_s']:>6.0f} | {never(s['breaching_floor3']):>11} "
            f"{never(s['floor3'][0]) + ' ' + s['floor3'][1][5:]:>19} | {never(s['breaching_floor6']):>11} "
            f"{never(s['floor6'][0]) + ' ' + s['floor6'][1][5:]:>19} | {top:>22}"
        )
    for s in summary:
        b, t, ts = s["batch"], s["target"], s["target_s"]
        if s["meaningful"]:
            print(
                f"batch {b}: breaching's {t:.2f} dB in <= {ts / 10:.1f} s (1/10 of its time): held from "
                f"{never(s['target_held'][0])} ({s['target_held'][1]}) -> "
                f"{'MET' if s['target_held'][0] <= ts / 10 else 'NOT MET'}"
            )
        else:
            print(f"batch {b}: breaching's {t:.2f} dB is under floor + 3 dB: time to it is not a meaningful target")
        if b > 1:
            print(
                f"batch {b}: floor + 6 dB ({s['floors']['floor'] + 6:.2f}) within breaching's {ts:.0f} s: held from "
                f"{never(s['floor6'][0])} ({s['floor6'][1]}) -> {'MET' if s['floor6'][0] <= ts else 'NOT MET'}"
            )
        else:
            print(
                f"batch 1: 30 dB held in <= 500 s: from {never(s['held30'][0])} ({s['held30'][1]}) -> "
                f"{'MET' if s['held30'][0] <= 500 else 'NOT MET'}"
            )
        if s["ratio"] is not None:
            print(
                f"batch {b}: per-step cost vs bare step {s['ratio']:.3f}x (<= 1.05) -> "
                f"{'MET' if s['ratio'] <= 1.05 else 'NOT MET'}"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(dict(argv=sys.argv[1:], first_image=first, clock=args.clock, batches=record), indent=1) + "\n"
        )
        print(f"(results written to {args.json})")
    return 0


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: a few iterations of everything")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument(
        "--first-image",
        type=int,
        default=0,
        help="the case's first CIFAR-10 test image (0): other images check that a verdict is not picked",
    )
    ap.add_argument("--dlg-batches", default="1", help="batch sizes breaching's DLG runs at ('' for none)")
    ap.add_argument("--ig-iters", type=int, default=None, help="breaching invertinggradients iterations (1000)")
    ap.add_argument("--dlg-iters", type=int, default=None, help="breaching deepleakage L-BFGS steps (300)")
    ap.add_argument(
        "--recipes",
        default=DEFAULT_RECIPES,
        help="our recipes, comma-separated, each NAME or NAME:ITERATIONS; known: "
        + "; ".join(f"{n} = {r} (batches {','.join(map(str, r.batches))})" for n, r in RECIPES.items()),
    )
    ap.add_argument(
        "--only-batches", default="", help="run every chosen recipe at these batch sizes (default: each recipe's own)"
    )
    ap.add_argument(
        "--reuse-breaching",
        action="store_true",
        help="reuse breaching's stored result for the same case, iterations and clock (under "
        "$GI_PEER_ROOT/out) instead of running it again",
    )
    ap.add_argument(
        "--checkpoints",
        default="",
        help="seconds at which to read PSNR (default: 5, 10, 25, 50 and 100%% of breaching IG's time)",
    )
    ap.add_argument("--ratio-iters", type=int, default=10)
    ap.add_argument("--ratio-rounds", type=int, default=5, help="interleaved rounds of the per-step ratio (0: skip it)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--json", default="", help="also write every curve and figure to this JSON file")
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
