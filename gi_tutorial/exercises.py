"""Checkers for the book's exercises: run a student's function against the reference.

Each ``check_*`` function calls the student's implementation on several fresh cases
built from real gradients, compares with the library's reference (it calls the library's
function, never a copy of its formula), and raises :class:`CheckFailed` that says which case
failed and how; on success it prints one line and returns True. Instructors can use the
same functions to grade submissions.

The checkers never use ``assert``: ``python -O`` strips assert statements, and a grader
run that way would pass every answer.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from . import analytic, fl, models, objectives, priors

NUM_CASES = 5


class CheckFailed(AssertionError):
    """A student's answer disagrees with the reference; the message names the case and the difference.

    A subclass of :class:`AssertionError`, so that graders and test runners that count a failed
    assertion as a wrong answer (pytest, nbgrader, otter-grader) count this one too, and code
    that catches ``AssertionError`` keeps working. It is raised explicitly, so ``python -O``
    does not remove it.
    """


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _passed(name: str, cases: int) -> bool:
    print(f"✓ {name}: matches the reference on {cases} cases")
    return True


def _close(name: str, case: int, got, expected, atol: float) -> None:
    got = torch.as_tensor(got, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    _require(
        got.shape == expected.shape,
        f"{name}, case {case}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}",
    )
    error = (got - expected).abs().max().item() if got.numel() else 0.0
    _require(
        error <= atol,  # NaN fails too
        f"{name}, case {case}: largest difference from the reference is {error:.3g} (tolerance {atol:g})",
    )


def _random_clients(seed: int, num_clients: int = 3):
    g = torch.Generator().manual_seed(seed)
    model = models.build_model("lenet", seed=seed)
    updates = []
    for _ in range(num_clients):
        b = int(torch.randint(1, 5, (1,), generator=g))
        x = torch.rand(b, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (b,), generator=g)
        updates.append(fl.client_update(model, x, y))
    return model, updates


def _same_length(name: str, case: int, got, expected) -> None:
    _require(len(got) == len(expected), f"{name}, case {case}: expected {len(expected)} tensors, got {len(got)}")


def check_average_gradients(student: Callable) -> bool:
    """Chapter 0: ``student(gradient_lists, batch_sizes)`` returns the batch-size-weighted average gradient list."""
    for case in range(NUM_CASES):
        _, updates = _random_clients(case)
        got = student([list(u.gradients) for u in updates], [u.batch_size for u in updates])
        expected = fl.average_gradients(updates)
        _same_length("average", case, got, expected)
        for layer, (a, b) in enumerate(zip(got, expected)):
            _close(f"average (tensor {layer})", case, a, b, atol=1e-6)
    return _passed("average_gradients", NUM_CASES)


def check_label_recovery(student: Callable) -> bool:
    """Chapter 1: ``student(weight_grad)`` returns the label (an int) of a single image (iDLG)."""
    for case in range(NUM_CASES):
        model = models.build_model("lenet", seed=100 + case)
        x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(case))
        y = torch.tensor([(3 * case + 1) % 10])
        update = fl.client_update(model, x, y)
        weight_grad, _ = analytic.last_linear_gradients(update, model)
        got = int(student(weight_grad.clone()))
        _require(got == int(y), f"label recovery, case {case}: the true label is {int(y)}, got {got}")
    return _passed("label recovery", NUM_CASES)


def check_fc_input_recovery(student: Callable) -> bool:
    """Chapter 1: ``student(weight_grad, bias_grad)`` returns the input of a fully connected layer with bias."""
    for case in range(NUM_CASES):
        g = torch.Generator().manual_seed(case)
        with torch.random.fork_rng():  # a fresh layer without touching the caller's random state
            torch.manual_seed(case)
            layer = torch.nn.Linear(20, 7)
        x = torch.rand(1, 20, generator=g)
        loss = torch.nn.functional.cross_entropy(layer(x), torch.tensor([case % 7]))
        weight_grad, bias_grad = torch.autograd.grad(loss, [layer.weight, layer.bias])
        got = student(weight_grad.clone(), bias_grad.clone())
        _close("fully connected input recovery", case, got, x[0], atol=1e-5)
    return _passed("fully connected input recovery", NUM_CASES)


def check_count_unknowns(student: Callable) -> bool:
    """Chapter 1: ``student(model, image_shape, batch_size)`` returns ``(unknowns, equations)``.

    The reference is :func:`gi_tutorial.analytic.count_unknowns`: the pixels of the batch, and
    the *independent* gradient entries (all entries less those that an exact identity fixes,
    :func:`gi_tutorial.analytic.exact_dependencies`).
    """
    cases = [
        ("lenet", (3, 32, 32), 1),
        ("lenet", (3, 32, 32), 8),
        ("convnet_gap", (1, 32, 32), 4),
        ("convnet_fc", (3, 32, 32), 2),
        ("resnet18", (3, 32, 32), 16),
    ]
    for case, (name, shape, b) in enumerate(cases):
        model = models.build_model(name, in_channels=shape[0])
        expected = analytic.count_unknowns(model, shape, b)
        got = tuple(int(v) for v in student(model, shape, b))
        _require(
            got == (expected.unknowns, expected.equations),
            f"counting, case {case} ({name}, batch {b}): expected {(expected.unknowns, expected.equations)}, got {got}",
        )
    return _passed("count_unknowns", len(cases))


def _differentiable_close(
    name: str,
    case: int,
    student_value,
    expected: torch.Tensor,
    inputs: list[torch.Tensor],
    atol: float,
    check_gradient: bool = True,
) -> None:
    """Compare values, then the gradients w.r.t. ``inputs``: a prior or distance must be differentiable."""
    _close(name, case, torch.as_tensor(student_value).detach(), expected.detach(), atol=atol)
    if not check_gradient:
        return
    _require(
        isinstance(student_value, torch.Tensor) and student_value.requires_grad,
        f"{name}, case {case}: the value is right but autograd cannot differentiate it; the reconstruction loop "
        "needs a tensor computed with torch operations (no .item(), numpy or Python floats)",
    )
    got = torch.autograd.grad(student_value, inputs, allow_unused=True)
    want = torch.autograd.grad(expected, inputs, allow_unused=True)
    for i, (a, b) in enumerate(zip(got, want)):
        a = torch.zeros_like(inputs[i]) if a is None else a
        b = torch.zeros_like(inputs[i]) if b is None else b
        _close(f"{name} (gradient w.r.t. input {i})", case, a, b, atol=atol)


def check_total_variation(student: Callable) -> bool:
    """Chapter 2: ``student(images)`` returns the anisotropic total variation of a ``(B, C, H, W)`` batch.

    The reference is :func:`gi_tutorial.priors.total_variation`: the mean absolute
    difference of horizontal neighbours plus that of vertical neighbours.
    """
    shapes = [(1, 3, 32, 32), (4, 3, 32, 32), (2, 1, 28, 28), (3, 3, 8, 16), (1, 2, 5, 7)]
    for case, shape in enumerate(shapes):
        g = torch.Generator().manual_seed(200 + case)
        ramp = torch.linspace(0, 1, shape[-1]).expand(shape)  # smooth: small TV
        images = (ramp + (0.05 + 0.3 * case) * torch.rand(shape, generator=g)).requires_grad_(True)
        expected = priors.total_variation(images)
        _differentiable_close(f"total variation {shape}", case, student(images), expected, [images], atol=1e-5)
    return _passed("total_variation", len(shapes))


def check_cosine_distance(student: Callable) -> bool:
    """Chapter 2: ``student(candidate, target)`` returns 1 - cosine similarity of two gradient lists.

    Both arguments are lists of tensors, one per parameter; the similarity is that of
    all tensors flattened and concatenated, as in
    ``gi_tutorial.objectives.gradient_distance(candidate, target, kind="cosine")``.
    """
    for case in range(NUM_CASES):
        g = torch.Generator().manual_seed(300 + case)
        model = models.build_model("lenet", seed=300 + case)
        x = torch.rand(2, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (2,), generator=g)
        target = list(fl.client_update(model, x, y).gradients)
        if case == 3:  # a scaled copy: distance 0, whatever the scale
            candidate = [(7.0 * t).requires_grad_(True) for t in target]
        elif case == 4:  # the opposite direction: distance 2
            candidate = [(-0.5 * t).requires_grad_(True) for t in target]
        else:
            other = fl.client_update(model, torch.rand(2, 3, 32, 32, generator=g), y)
            candidate = [c.clone().requires_grad_(True) for c in other.gradients]
        expected = objectives.gradient_distance(candidate, target, kind="cosine")
        got = student(list(candidate), [t.clone() for t in target])
        _differentiable_close("cosine distance", case, got, expected, candidate, atol=1e-5)
    return _passed("cosine gradient distance", NUM_CASES)


def check_bn_statistics(student: Callable) -> bool:
    r"""Chapter 2: ``student(batch_means, batch_vars, target_means, target_vars)`` returns Yin et al.'s BN distance.

    Each argument is a list with one ``(C_l,)`` tensor per BatchNorm layer, in module
    order. The expected value (without the prior's weight) is

    .. math:: \sum_l m_l \big(\lVert \mu_l - \mu^*_l \rVert_2 + \lVert \sigma^2_l - \sigma^{*2}_l \rVert_2\big),
              \quad m_1 = 10,\ m_{l>1} = 1,

    with Euclidean norms (not squared), as
    ``gi_tutorial.priors.bn_statistics_distance(list(zip(batch_means, batch_vars)),
    list(zip(target_means, target_vars)))`` computes it.
    """
    for case in range(NUM_CASES):
        g = torch.Generator().manual_seed(400 + case)
        widths = (8, 16, 16)[: 1 + case % 3]
        with torch.random.fork_rng():  # a fresh model without touching the caller's random state
            torch.manual_seed(400 + case)
            model = models.ConvNet(3, 10, widths=widths, strides=(1, 2, 2)[: len(widths)], head="gap", batch_norm=True)
        images = torch.rand(3, 3, 16, 16, generator=g)
        y = torch.randint(0, 10, (3,), generator=g)
        _, target = fl.batch_gradients(model, images, y, record_bn=True)
        candidate = images if case == 4 else torch.rand(3, 3, 16, 16, generator=g)  # case 4: the true batch, distance 0
        _, recorded = fl.batch_gradients(model, candidate, y, record_bn=True)
        batch = [(m.detach().requires_grad_(True), v.detach().requires_grad_(True)) for m, v in recorded]
        target = [(m.detach(), v.detach()) for m, v in target]
        expected = priors.bn_statistics_distance(batch, target, first_layer_weight=10.0)
        got = student([m for m, _ in batch], [v for _, v in batch], [m for m, _ in target], [v for _, v in target])
        inputs = [t for pair in batch for t in pair]
        # at distance 0 the norm has no gradient (torch's subgradient is 0, sqrt(sum of squares) gives NaN)
        _differentiable_close(
            f"BN statistics ({len(widths)} BatchNorm layers)",
            case,
            got,
            expected,
            inputs,
            atol=1e-4,
            check_gradient=case != 4,
        )
    return _passed("BN statistics distance", NUM_CASES)


def _small_generator(seed: int):
    from .generators import Generator

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Generator(z_dim=8, channels=1, width=4).eval()


def check_latent_loss(student: Callable) -> bool:
    """Chapter 3: ``student(z, generator, model, labels, target_gradients)`` returns the L2 gradient distance of G(z).

    The reference is :func:`gi_tutorial.objectives.gradient_distance` (``"l2"``) between the
    gradient of the mean cross-entropy on ``generator(z)`` (:func:`gi_tutorial.fl.batch_gradients`)
    and the target. The value must be differentiable w.r.t. ``z`` (one latent-search step is
    its backward pass), and its gradient w.r.t. ``z`` must be the reference's.
    """
    for case in range(NUM_CASES):
        g = torch.Generator().manual_seed(500 + case)
        generator = _small_generator(500 + case)
        model = models.build_model("lenet", in_channels=1, seed=500 + case)
        b = 1 + case % 3
        labels = torch.randint(0, 10, (b,), generator=g)
        target = fl.batch_gradients(model, torch.rand(b, 1, 32, 32, generator=g), labels)[0]
        z = torch.randn(b, generator.z_dim, generator=g, requires_grad=True)
        expected = objectives.gradient_distance(
            fl.batch_gradients(model, generator(z), labels, create_graph=True)[0], target
        )
        got = student(z, generator, model, labels, [t.clone() for t in target])
        _differentiable_close("latent loss", case, got, expected, [z], atol=1e-4 * max(1.0, float(expected.detach())))
    return _passed("latent loss", NUM_CASES)


def _unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    state = module.state_dict()
    return all(torch.equal(v, state[k]) for k, v in before.items())


def check_generator_copies(student: Callable) -> bool:
    """Chapter 4: ``student(generator, z)`` returns ``(images, copies)``: one generator copy per code.

    ``images`` must equal ``generator(z)`` at the start, ``copies`` must be ``len(z)``
    independent modules (changing one copy's weights changes only its own image), and the
    original generator must not be among them or changed.
    """
    for case in range(NUM_CASES):
        generator = _small_generator(600 + case)
        z = torch.randn(2 + case % 3, generator.z_dim, generator=torch.Generator().manual_seed(case))
        before = {k: v.clone() for k, v in generator.state_dict().items()}
        images, copies = student(generator, z)
        _close("stage-2 images at the start", case, images.detach(), generator(z).detach(), atol=1e-6)
        _require(len(copies) == len(z), f"stage-2 copies, case {case}: expected {len(z)} copies, got {len(copies)}")
        _require(
            all(c is not generator for c in copies), f"stage-2 copies, case {case}: a copy is the original generator"
        )
        with torch.no_grad():
            for p in copies[0].parameters():
                p.add_(0.1)
        moved = torch.cat([c(z[i : i + 1]) for i, c in enumerate(copies)]).detach()
        _require(
            not torch.allclose(moved[0], images[0].detach()),
            f"stage-2 copies, case {case}: changing copy 0 did not change image 0",
        )
        _require(
            torch.allclose(moved[1:], images[1:].detach(), atol=1e-6),
            f"stage-2 copies, case {case}: changing copy 0 changed other images: the copies share weights",
        )
        _require(_unchanged(generator, before), f"stage-2 copies, case {case}: the original generator was changed")
    return _passed("generator copies", NUM_CASES)


def _as_module(tensors) -> nn.Module:
    module = nn.Module()
    module.params = nn.ParameterList(nn.Parameter(p.clone()) for p in tensors)
    return module


def check_reptile_step(student: Callable) -> bool:
    """Chapter 5: ``student(theta, adapted, step_size)`` returns ``theta + step_size * mean_i(adapted_i - theta)``.

    ``theta`` is a list of tensors, ``adapted`` a list (one per task) of such lists. The
    reference is :func:`gi_tutorial.giml.reptile_step`, run on modules holding the same
    tensors. The inputs must not change; a case where every adapted list equals ``theta``
    must give a zero step, and the others a step of exactly the right size.
    """
    from .giml import reptile_step

    for case in range(NUM_CASES):
        g = torch.Generator().manual_seed(700 + case)
        shapes = [(3, 2), (4,), (2, 2, 2)]
        theta = [torch.randn(s, generator=g) for s in shapes]
        tasks = 1 + case % 3
        adapted = [
            [p.clone() if case == 0 else p + torch.randn(p.shape, generator=g) for p in theta] for _ in range(tasks)
        ]
        step_size = (0.1, 0.5, 1.0, 0.25, 0.05)[case]
        before = [p.clone() for p in theta], [[p.clone() for p in ps] for ps in adapted]
        reference = _as_module(theta)  # computed on copies, before the student's function sees the inputs
        reptile_step(reference, [_as_module(ps) for ps in adapted], step_size)  # positional: its name changed once
        got = student(theta, adapted, step_size)
        _same_length("Reptile step", case, got, theta)
        for i, (a, b) in enumerate(zip(got, reference.params)):
            _close(f"Reptile step, tensor {i}", case, torch.as_tensor(a).detach(), b.detach(), atol=1e-6)
        _require(
            all(torch.equal(p, q) for p, q in zip(theta, before[0])),
            f"Reptile step, case {case}: theta was changed in place (return new tensors)",
        )
        _require(
            all(torch.equal(p, q) for ps, qs in zip(adapted, before[1]) for p, q in zip(ps, qs)),
            f"Reptile step, case {case}: the adapted weights were changed",
        )
    return _passed("Reptile step", NUM_CASES)


def check_inner_round(student: Callable) -> bool:
    """Chapter 5: ``student(update, model, generator)`` returns the adapted generator of one GIML task.

    The result must be a new module with the generator's architecture, the original must be
    unchanged, the weights must have moved, and a latent search with the adapted generator
    must match the update's gradient better than the same search with the original.
    """
    from .invert import Adam, reconstruct
    from .spaces import LatentSpace
    from .threats import DATA_ENHANCED

    cases = 3
    for case in range(cases):
        generator = _small_generator(800 + case)
        with torch.random.fork_rng():  # a fresh victim without touching the caller's random state
            torch.manual_seed(800 + case)
            model = models.ConvNet(1, 10, widths=(4, 8), strides=(2, 2), head="flatten")
        g = torch.Generator().manual_seed(case)
        b = 1 + case % 2
        x = torch.rand(b, 1, 32, 32, generator=g)
        update = fl.client_update(model, x, torch.randint(0, 10, (b,), generator=g), share_labels=True)
        before = {k: v.clone() for k, v in generator.state_dict().items()}
        adapted = student(update, model, generator)
        _require(
            isinstance(adapted, nn.Module) and adapted is not generator,
            f"inner round, case {case}: return a new generator module, not the original",
        )
        _require(_unchanged(generator, before), f"inner round, case {case}: the original generator was changed")
        shapes = [tuple(p.shape) for p in generator.parameters()]
        _require(
            [tuple(p.shape) for p in adapted.parameters()] == shapes,
            f"inner round, case {case}: the adapted generator does not have the generator's architecture",
        )
        moved = max((p - q).abs().max().item() for p, q in zip(adapted.parameters(), generator.parameters()))
        _require(moved > 1e-5, f"inner round, case {case}: the adapted weights equal the original ones (a zero step)")
        distances = [
            reconstruct(
                update,
                model,
                LatentSpace(candidate, b),
                optimizer=Adam(0.05),
                num_iters=20,
                distance="cosine",
                threat_model=DATA_ENHANCED,
                seed=case,
                progress=False,
            ).grad_loss
            for candidate in (generator, adapted)
        ]
        _require(
            distances[1] < distances[0],
            f"inner round, case {case}: a latent search with the adapted generator matches the gradient worse "
            f"({distances[1]:.4f}) than with the original ({distances[0]:.4f})",
        )
    return _passed("inner round", cases)


# --- Chapter 6: defenses -------------------------------------------------------------------


def check_clip_and_noise(student: Callable) -> bool:
    """Chapter 6: ``student(gradients, clip_norm, noise_multiplier, generator)`` clips the global norm, then adds noise.

    This is what :func:`gi_tutorial.defenses.local_gaussian` does to one client's update.
    Checked: with no noise, the result equals ``local_gaussian(update, clip_norm, 0, ...)``
    (norm at most the bound, direction kept); with noise, the added noise has mean 0 and
    standard deviation ``noise_multiplier * clip_norm`` (a statistical test over every entry:
    any way of drawing it from ``generator`` passes); the same generator seed gives the same
    result; the input tensors are not changed.
    """
    from . import defenses

    for case in range(NUM_CASES):
        _, updates = _random_clients(700 + case, num_clients=1)
        update = updates[0]
        norm = float(defenses.global_norm(update.gradients))
        clip_norm = norm * (0.3, 0.8, 1.5, 0.05, 3.0)[case]
        before = [g.clone() for g in update.gradients]
        expected = defenses.local_gaussian(update, clip_norm, 0.0, torch.Generator().manual_seed(case)).gradients
        quiet = student(list(update.gradients), clip_norm, 0.0, torch.Generator().manual_seed(case))
        _require(
            all(torch.equal(g, b) for g, b in zip(update.gradients, before)),
            f"clip and noise, case {case}: the input gradients were changed in place",
        )
        _same_length("clip and noise", case, quiet, expected)
        for layer, (a, b) in enumerate(zip(quiet, expected)):
            _close(f"clip without noise (tensor {layer})", case, a, b, atol=1e-6 * max(1.0, clip_norm))
        z = (0.5, 1.0, 2.0, 0.1, 1.0)[case]
        noisy = student(list(update.gradients), clip_norm, z, torch.Generator().manual_seed(case))
        again = student(list(update.gradients), clip_norm, z, torch.Generator().manual_seed(case))
        _same_length("clip and noise", case, noisy, expected)
        noise = torch.cat([(torch.as_tensor(a) - b).flatten() for a, b in zip(noisy, expected)]).double()
        std, n = float(noise.std()), noise.numel()
        # n > 60,000 entries: the sample sd is within 5% of the true one with overwhelming probability
        _require(
            abs(std / (z * clip_norm) - 1) < 0.05,
            f"clip and noise, case {case}: the noise's standard deviation is {std:.4g}, expected "
            f"noise_multiplier * clip_norm = {z * clip_norm:.4g} (draw it after clipping, scaled by the bound)",
        )
        _require(
            abs(float(noise.mean())) < 6 * z * clip_norm / n**0.5,
            f"clip and noise, case {case}: the noise is not centred",
        )
        _require(
            all(torch.equal(a, b) for a, b in zip(noisy, again)),
            f"clip and noise, case {case}: the same generator seed gave different results: "
            "draw the noise from `generator`",
        )
        _require(
            all(torch.equal(g, b) for g, b in zip(update.gradients, before)),
            f"clip and noise, case {case}: the input gradients were changed in place",
        )
    return _passed("clip and noise", NUM_CASES)


def check_schedule_epsilon(student: Callable) -> bool:
    """Chapter 6: ``student(noise_multiplier, num_clients, clients_per_round, rounds, delta)`` returns epsilon.

    One Poisson-subsampled Gaussian mechanism per round, with sampling rate
    ``clients_per_round / num_clients``, composed over the rounds: the client-level epsilon of
    central DP-FedAvg, :func:`gi_tutorial.defenses.central_epsilon` (add/remove adjacency).
    Compared with its RDP accountant (its PRV accountant's answer is accepted too), within 1%.
    """
    from . import defenses

    cases = [
        (1.0, 1000, 10, 100, 1e-5),
        (0.8, 500, 50, 40, 1e-4),
        (2.0, 10_000, 100, 1000, 1e-6),
        (1.2, 100, 100, 10, 1e-3),
        (0.6, 2000, 20, 200, 1e-5),
    ]
    for case, (z, n, m, t, delta) in enumerate(cases):
        got = float(student(z, n, m, t, delta))
        schedule = defenses.FLSchedule(num_clients=n, clients_per_round=m, rounds=t, delta=delta)
        references = {name: defenses.central_epsilon(z, schedule, accountant=name) for name in ("rdp", "prv")}
        _require(
            any(abs(got / ref - 1) < 0.01 for ref in references.values()),
            f"epsilon, case {case} (z={z}, {m} of {n} clients per round, {t} rounds, delta={delta}): got {got:.4g}, "
            f"expected {references['rdp']:.4g} (RDP) or {references['prv']:.4g} (PRV)",
        )
    return _passed("schedule epsilon", len(cases))
