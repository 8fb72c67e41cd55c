"""The book's attacks by name, their budgets as data, and the battery that runs and scores them.

Every attack is a *recipe*: a search space, a distance, priors, an optimiser and a budget,
run by the one loop of :mod:`gi_tutorial.invert`. ``print(recipe)`` says what it is, which
paper it follows and under which threat model (:mod:`gi_tutorial.threats`) it runs.

- **DLG** (Zhu et al., 2019): pixels, L2 distance, L-BFGS, no box.
- **GI-x** (Geiping et al., 2020, "Inverting Gradients"): pixels in the box [0, 1], cosine
  distance, total variation, signed Adam with step decay.
- **GI-z** (a generator's latent space, as CSGM, Bora et al., 2017): restarts, the best kept.
- **GI-w**: the generator's weights, one copy per image, from a random code.
- **GIAS** (Jeon et al., 2021): GI-z, then one copy of the weights per image from ``z*``.
- The **floors** of :mod:`gi_tutorial.yardstick`: guesses that use no gradient.

Budgets live in :data:`BUDGETS`, one entry per chapter, so that chapters and their check
scripts run the same attacks (quick mode shrinks every budget to a few steps).
:func:`run_battery` runs a list of recipes on one update and records, per recipe, the PSNR
(capped at 40 dB), the SSIM, the identification rate and its chance level, the final gradient
distance and the seconds, as a row of a :class:`~gi_tutorial.stats.Tally`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import torch
import torch.nn as nn

from . import metrics, threats
from .config import is_quick
from .fl import SharedUpdate
from .invert import LBFGS, Adam, Stage, gias, reconstruct, resolve_labels
from .objectives import Distance
from .priors import TotalVariation
from .spaces import GeneratorSpace, LatentSpace, PixelSpace
from .stats import Tally
from .yardstick import Yardstick

__all__ = [
    "Budget",
    "BUDGETS",
    "Outcome",
    "PixelAttack",
    "GenerativeAttack",
    "Floor",
    "dlg",
    "gi_x",
    "gi_z",
    "gi_w",
    "gias_attack",
    "floors",
    "battery",
    "budget_for",
    "run_battery",
    "adaptive_model",
]


@dataclass(frozen=True)
class Outcome:
    """What one recipe produced on one update."""

    images: torch.Tensor  # (B, C, H, W), on the CPU
    grad_loss: float | None  # the final gradient distance (None for a floor, which never looks at the gradient)
    seconds: float


class Recipe(Protocol):
    name: str

    def run(
        self,
        update: SharedUpdate,
        model: nn.Module,
        *,
        image_shape: tuple[int, int, int],
        generators: dict[str, nn.Module],
        yardstick: Yardstick | None,
        seed: int,
    ) -> dict[str, Outcome]: ...


def _generator(generators: dict[str, nn.Module], role: str) -> nn.Module:
    if role not in generators:
        raise ValueError(
            f"this recipe searches through the generator {role!r}, but the battery was given "
            f"{sorted(generators) or 'no generators'}: pass generators={{{role!r}: G, ...}}"
        )
    return generators[role]


@dataclass(frozen=True)
class PixelAttack:
    """Search the pixels (DLG, GI-x)."""

    name: str
    num_iters: int
    optimizer: Adam | LBFGS
    distance: Distance = "cosine"
    tv: float = 0.0
    restarts: int = 1
    box: bool = True
    adaptive: bool = False  # against a pruned update: match only the kept entries (:func:`adaptive_model`)
    paper: str = ""

    def run(self, update, model, *, image_shape, generators, yardstick, seed) -> dict[str, Outcome]:
        space = PixelSpace((update.batch_size, *image_shape), box=(0.0, 1.0) if self.box else None)
        priors = [TotalVariation(self.tv)] if self.tv else []
        attacked = adaptive_model(model, update) if self.adaptive else model
        run = reconstruct(
            update,
            attacked,
            space,
            optimizer=self.optimizer,
            num_iters=self.num_iters,
            restarts=self.restarts,
            distance=self.distance,
            priors=priors,
            seed=seed,
            threat_model=threats.PARAMETER_AWARE,
        )
        return {self.name: Outcome(run.images, run.grad_loss, run.seconds)}

    def __str__(self) -> str:
        box = "in the box [0, 1]" if self.box else "unconstrained"
        tv = f", total variation {self.tv:g}" if self.tv else ""
        starts = f"{self.restarts} restarts x " if self.restarts > 1 else ""
        adaptive = ", matching only the entries the client kept (adaptive)" if self.adaptive else ""
        return (
            f"{self.name} ({self.paper}): pixels {box}; {self.distance} distance{tv}{adaptive}; "
            f"{starts}{self.num_iters} steps of {self.optimizer}; {threats.PARAMETER_AWARE}"
        )


@dataclass(frozen=True)
class GenerativeAttack:
    """Search through a generator (GI-z, GI-w, GIAS); ``generator`` names its role in the battery's ``generators``."""

    name: str
    generator: str
    latent: Stage | None  # stage 1 (latent codes); None: GI-w, weights from a random code
    weights: Stage | None  # stage 2 (per-image weights); None: GI-z
    latent_name: str | None = None  # also record stage 1 under this name (GIAS's first stage is GI-z)
    shared: bool = False  # one copy of the weights for the batch (GIML's inner loop)
    adaptive: bool = False
    paper: str = ""

    def run(self, update, model, *, image_shape, generators, yardstick, seed) -> dict[str, Outcome]:
        generator = _generator(generators, self.generator)
        threat_model = threats.threat_model_for(generator)
        attacked = adaptive_model(model, update) if self.adaptive else model
        batch = update.batch_size
        if self.latent is not None and self.weights is not None:
            result = gias(
                update,
                attacked,
                generator,
                latent=self.latent,
                weights=self.weights,
                shared=self.shared,
                threat_model=threat_model,
                seed=seed,
            )
            out = {
                self.name: Outcome(
                    result.images, result.weights.grad_loss, result.latent.seconds + result.weights.seconds
                )
            }
            if self.latent_name:
                out[self.latent_name] = Outcome(result.latent.images, result.latent.grad_loss, result.latent.seconds)
            return out
        stage = self.latent or self.weights
        space = (
            LatentSpace(generator, batch)
            if self.latent is not None
            else GeneratorSpace(generator, batch, shared=self.shared)
        )
        run = reconstruct(
            update,
            attacked,
            space,
            optimizer=Adam(stage.lr, decay=True),
            num_iters=stage.num_iters,
            restarts=stage.restarts,
            distance=stage.distance,
            priors=stage.priors,
            seed=seed,
            threat_model=threat_model,
        )
        return {self.name: Outcome(run.images, run.grad_loss, run.seconds)}

    def __str__(self) -> str:
        parts = []
        if self.latent is not None:
            parts.append(f"latent codes z: {self.latent}")
        if self.weights is not None:
            copies = "one shared copy" if self.shared else "one copy per image"
            start = "from z*" if self.latent is not None else "from a random z"
            parts.append(f"then the generator's weights ({copies}, {start}): {self.weights}")
        return (
            f"{self.name} ({self.paper}): through the generator {self.generator!r}; "
            + "; ".join(parts)
            + "; threat model D if the generator was trained on data like the clients', C if it was not"
        )


FloorKind = Literal["mean image", "label only", "prior sample"]


@dataclass(frozen=True)
class Floor:
    """A guess that uses no gradient (:mod:`gi_tutorial.yardstick`)."""

    name: str
    kind: FloorKind
    generator: str | None = None  # for "prior sample"

    def run(self, update, model, *, image_shape, generators, yardstick, seed) -> dict[str, Outcome]:
        start = time.perf_counter()
        batch = update.batch_size
        if self.kind == "prior sample":
            images = Yardstick.prior_sample(_generator(generators, self.generator), batch, seed)
        elif yardstick is None:
            raise ValueError(f"the floor {self.name!r} needs a yardstick (its public sample): pass yardstick=...")
        elif self.kind == "mean image":
            images = yardstick.mean_image(batch)
        elif self.kind == "label only":
            images = yardstick.label_only(resolve_labels(update, model, None))
        else:
            raise ValueError(f"unknown floor {self.kind!r}; expected 'mean image', 'label only' or 'prior sample'")
        return {self.name: Outcome(images.cpu(), None, time.perf_counter() - start)}

    def __str__(self) -> str:
        what = {
            "mean image": "the public sample's mean image for every image (threat model D, no gradient)",
            "label only": "the public sample's mean image of each label (threat model D, the labels only, no gradient)",
            "prior sample": f"a random sample G(z) of the generator {self.generator!r}, no gradient",
        }[self.kind]
        return f"{self.name} (floor): {what}"


@dataclass(frozen=True)
class Budget:
    """The budgets of one chapter's attacks: steps, restarts and learning rates, as data."""

    x_iters: int  # GI-x steps
    z_iters: int  # GI-z (stage 1) steps per restart
    z_restarts: int
    w_iters: int  # GI-w / GIAS stage 2 steps
    x_restarts: int = 1
    tv: float = 1e-3  # GI-x's total variation
    z_lr: float = 0.1
    w_lr: float = 3e-4  # small steps keep each copy near the prior (1e-3 is worse, 3e-3 diverges)
    dlg_iters: int = 100
    dlg_restarts: int = 3


BUDGETS: dict[str, Budget] = {
    "ch4": Budget(x_iters=400, z_iters=150, z_restarts=2, w_iters=250),
    "central": Budget(x_iters=250, z_iters=80, z_restarts=2, w_iters=120),
    "ch5": Budget(x_iters=400, z_iters=150, z_restarts=2, w_iters=250),
    "ch6": Budget(x_iters=300, z_iters=100, z_restarts=2, w_iters=150),
}
QUICK = Budget(x_iters=3, z_iters=3, z_restarts=1, w_iters=3, dlg_iters=2, dlg_restarts=1)


def budget_for(name: str | Budget) -> Budget:
    """A chapter's budget by name (see :data:`BUDGETS`), or the quick one in quick mode.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if isinstance(name, Budget):
        return QUICK if is_quick() else name
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; expected one of {', '.join(BUDGETS)}")
    return QUICK if is_quick() else BUDGETS[name]


def dlg(budget: Budget) -> PixelAttack:
    """DLG as iDLG runs it: L2 distance, L-BFGS at 1, unboxed pixels, restarts."""
    return PixelAttack(
        "DLG",
        budget.dlg_iters,
        LBFGS(1.0),
        distance="l2",
        restarts=budget.dlg_restarts,
        box=False,
        paper="Zhu et al., 2019",
    )


def gi_x(budget: Budget, *, name: str = "GI-x", adaptive: bool = False) -> PixelAttack:
    """Inverting Gradients: cosine distance, total variation, signed Adam at 0.1 with step decay, the box."""
    return PixelAttack(
        name,
        budget.x_iters,
        Adam(0.1, signed=True, decay=True),
        distance="cosine",
        tv=budget.tv,
        restarts=budget.x_restarts,
        adaptive=adaptive,
        paper="Geiping et al., 2020",
    )


def gi_z(budget: Budget, generator: str = "dcgan", *, name: str = "GI-z") -> GenerativeAttack:
    """The latent search alone."""
    return GenerativeAttack(
        name,
        generator,
        Stage(budget.z_iters, budget.z_lr, restarts=budget.z_restarts),
        None,
        paper="Bora et al., 2017; Jeon et al., 2021",
    )


def gi_w(budget: Budget, generator: str = "dcgan", *, name: str = "GI-w") -> GenerativeAttack:
    """The weight search alone, one copy per image, from random codes (the GIAS paper's ablation)."""
    return GenerativeAttack(name, generator, None, Stage(budget.w_iters, budget.w_lr), paper="Jeon et al., 2021")


def gias_attack(
    budget: Budget,
    generator: str = "dcgan",
    *,
    name: str = "GIAS",
    latent_name: str | None = "GI-z",
    adaptive: bool = False,
) -> GenerativeAttack:
    """GIAS; its first stage is recorded as ``latent_name`` too (GI-z for free)."""
    return GenerativeAttack(
        name,
        generator,
        Stage(budget.z_iters, budget.z_lr, restarts=budget.z_restarts),
        Stage(budget.w_iters, budget.w_lr),
        latent_name=latent_name,
        adaptive=adaptive,
        paper="Jeon et al., 2021",
    )


def floors(generator: str | None = "dcgan", *, mean_image: bool = False) -> list[Floor]:
    """The no-gradient floors: label only, a sample of ``generator`` (if any), and optionally the mean image."""
    out = [Floor("label only", "label only")]
    if generator is not None:
        out.append(
            Floor("prior sample" if generator == "dcgan" else f"prior sample ({generator})", "prior sample", generator)
        )
    if mean_image:
        out.append(Floor("mean image", "mean image"))
    return out


def battery(
    budget: str | Budget,
    *,
    generator: str = "dcgan",
    methods: Sequence[str] = ("GI-x", "GI-z", "GIAS"),
    with_floors: bool = True,
) -> list:
    """The recipes of a chapter: ``methods`` (GI-x, GI-z, GI-w, GIAS, DLG) with its budget, then the floors."""
    b = budget_for(budget)
    recipes: list = []
    if "DLG" in methods:
        recipes.append(dlg(b))
    if "GI-x" in methods:
        recipes.append(gi_x(b))
    if "GIAS" in methods:
        recipes.append(gias_attack(b, generator, latent_name="GI-z" if "GI-z" in methods else None))
    elif "GI-z" in methods:
        recipes.append(gi_z(b, generator))
    if "GI-w" in methods:
        recipes.append(gi_w(b, generator))
    unknown = set(methods) - {"DLG", "GI-x", "GI-z", "GI-w", "GIAS"}
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; expected DLG, GI-x, GI-z, GI-w or GIAS")
    if with_floors:
        recipes += floors(generator)
    return recipes


def score(
    images: torch.Tensor,
    truth: torch.Tensor,
    truth_labels: torch.Tensor,
    yardstick: Yardstick | None,
    lpips: metrics.LPIPSMetric | None = None,
) -> tuple[dict, torch.Tensor]:
    """A batch's scores after matching: mean PSNR (capped at 40 dB), SSIM, LPIPS (if computed), the
    identification rate by the yardstick's score and its chance level, the rates by SSIM and by PSNR
    (``identified_ssim``, ``identified_psnr``); and the matched images."""
    scores = metrics.evaluate(images, truth, lpips)
    matched = images.detach().cpu().clamp(0, 1)[scores.order]
    summary = metrics.summarize(scores)
    row = {"psnr": summary["psnr_capped"], "ssim": summary["ssim"]}
    if summary["lpips"] is not None:
        row["lpips"] = summary["lpips"]
    if yardstick is not None:
        found = {s: yardstick.identify(matched, truth, truth_labels, score=s) for s in ("ssim", "psnr")}
        row.update(
            identified=found[yardstick.score].rate,
            chance=found[yardstick.score].chance,
            identified_ssim=found["ssim"].rate,
            identified_psnr=found["psnr"].rate,
        )
    return row, matched


def run_battery(
    update: SharedUpdate,
    model: nn.Module,
    recipes: Sequence,
    *,
    truth: torch.Tensor,
    truth_labels: torch.Tensor,
    yardstick: Yardstick | None,
    generators: dict[str, nn.Module] | None = None,
    tally: Tally | None = None,
    lpips: metrics.LPIPSMetric | None = None,
    seed: int = 0,
    **key,
) -> dict[str, torch.Tensor]:
    """Run every recipe on one update, score it against the truth, and record a row per recipe.

    The attacks see only the update, the model, the generators and the public sample; the truth
    and its labels are used for scoring alone. Each row of ``tally`` holds ``key`` (e.g. victim,
    batch, seed), ``method``, and the scores: ``psnr`` (batch mean, capped at 40 dB), ``ssim``,
    ``identified`` (the share of images identified) and ``chance``, ``grad_loss`` (None for a
    floor), ``seconds``, and ``lpips`` where it was computed. ``seed`` seeds the attacks' random
    starts, and fills the tally's ``seed`` key when ``key`` does not.

    Returns:
        the matched reconstructions of every recipe, by name (for figures).

    Raises:
        ValueError: a recipe needs a generator or a yardstick that was not given, or knowledge
            its threat model does not give.
    """
    generators = generators or {}
    image_shape = tuple(truth.shape[1:])
    truth = truth.detach().cpu()
    shown = {}
    for recipe in recipes:
        for name, outcome in recipe.run(
            update, model, image_shape=image_shape, generators=generators, yardstick=yardstick, seed=seed
        ).items():
            row, matched = score(outcome.images, truth, truth_labels, yardstick, lpips)
            shown[name] = matched
            if tally is not None:
                keys = {**key, **({"seed": seed} if "seed" in tally.keys and "seed" not in key else {})}
                tally.add(**keys, method=name, **row, grad_loss=outcome.grad_loss, seconds=outcome.seconds)
    return shown


def with_budget(recipe, **changes):
    """A copy of a recipe with some fields changed (e.g. ``num_iters`` for a fair-budget comparison)."""
    return replace(recipe, **changes)


class _MaskedGradients(nn.Module):
    """The victim with the same outputs, whose parameter gradients are zero outside ``masks``."""

    def __init__(self, model: nn.Module, masks: tuple[torch.Tensor, ...]):
        super().__init__()
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m.to(torch.get_default_dtype()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        masked = {}
        for i, name in enumerate(self.names):
            p, m = params[name], getattr(self, f"mask{i}")
            masked[name] = p * m + (p * (1 - m)).detach()  # value p; gradient m * dL/dp
        return torch.func.functional_call(self.model, masked, (x,))


def adaptive_model(model: nn.Module, update: SharedUpdate) -> nn.Module:
    """The model an attacker who knows the pruning masks inverts: its gradients are zero where the client's are.

    Against a pruned update the plain attacker compares its candidate's full gradient with
    a gradient whose pruned entries are zero; the adaptive attacker compares only the kept
    entries, as the GIAS authors' ``sim_cmpr`` does. Passing this model to
    :func:`~gi_tutorial.invert.reconstruct` (or :func:`~gi_tutorial.invert.gias`) does
    that with the unchanged loop: the forward pass is the victim's, and the gradient of
    every parameter is masked. Without pruning records it returns a copy of the model.
    """
    from .defenses import kept_masks  # the masks are the defense's public record

    masks = kept_masks(update)
    local = copy.deepcopy(model)
    if masks is None:
        return local
    update.check_matches(model)
    return _MaskedGradients(local, masks).train(model.training)
