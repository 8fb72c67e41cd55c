"""Checkers for the book's exercises: run a student's function against the reference.

Each ``check_*`` function calls the student's implementation on several fresh cases
built from real gradients, compares with the library's reference, and raises an
AssertionError that says which case failed and how; on success it prints one line and
returns True. Instructors can use the same functions to grade submissions.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import analytic, fl, models, objectives, priors

NUM_CASES = 5


def _passed(name: str, cases: int) -> bool:
    print(f"✓ {name}: matches the reference on {cases} cases")
    return True


def _close(name: str, case: int, got, expected, atol: float) -> None:
    got = torch.as_tensor(got, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert got.shape == expected.shape, f"{name}, case {case}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    error = (got - expected).abs().max().item() if got.numel() else 0.0
    assert error <= atol, f"{name}, case {case}: largest difference from the reference is {error:.3g} (tolerance {atol:g})"


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


def check_average_gradients(student: Callable) -> bool:
    """Chapter 0: ``student(gradient_lists, batch_sizes)`` returns the batch-size-weighted average gradient list."""
    for case in range(NUM_CASES):
        _, updates = _random_clients(case)
        got = student([list(u.gradients) for u in updates], [u.batch_size for u in updates])
        expected = fl.average_gradients(updates)
        assert len(got) == len(expected), f"average, case {case}: expected {len(expected)} tensors, got {len(got)}"
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
        assert got == int(y), f"label recovery, case {case}: the true label is {int(y)}, got {got}"
    return _passed("label recovery", NUM_CASES)


def check_fc_input_recovery(student: Callable) -> bool:
    """Chapter 1: ``student(weight_grad, bias_grad)`` returns the input of a fully connected layer with bias."""
    for case in range(NUM_CASES):
        g = torch.Generator().manual_seed(case)
        layer = torch.nn.Linear(20, 7)
        x = torch.rand(1, 20, generator=g)
        loss = torch.nn.functional.cross_entropy(layer(x), torch.tensor([case % 7]))
        weight_grad, bias_grad = torch.autograd.grad(loss, [layer.weight, layer.bias])
        got = student(weight_grad.clone(), bias_grad.clone())
        _close("fully connected input recovery", case, got, x[0], atol=1e-5)
    return _passed("fully connected input recovery", NUM_CASES)


def check_count_unknowns(student: Callable) -> bool:
    """Chapter 1: ``student(model, image_shape, batch_size)`` returns ``(unknowns, equations)``."""
    cases = [("lenet", (3, 32, 32), 1), ("lenet", (3, 32, 32), 8), ("convnet_gap", (1, 32, 32), 4),
             ("convnet_fc", (3, 32, 32), 2), ("resnet18", (3, 32, 32), 16)]
    for case, (name, shape, b) in enumerate(cases):
        model = models.build_model(name, in_channels=shape[0])
        expected = analytic.count_unknowns(model, shape, b)
        got = tuple(int(v) for v in student(model, shape, b))
        assert got == (expected.unknowns, expected.equations), (
            f"counting, case {case} ({name}, batch {b}): expected {(expected.unknowns, expected.equations)}, got {got}")
    return _passed("count_unknowns", len(cases))


def _differentiable_close(name: str, case: int, student_value, expected: torch.Tensor, inputs: list[torch.Tensor],
                          atol: float, check_gradient: bool = True) -> None:
    """Compare values, then the gradients w.r.t. ``inputs``: a prior or distance must be differentiable."""
    _close(name, case, torch.as_tensor(student_value).detach(), expected.detach(), atol=atol)
    if not check_gradient:
        return
    assert isinstance(student_value, torch.Tensor) and student_value.requires_grad, (
        f"{name}, case {case}: the value is right but autograd cannot differentiate it; the reconstruction loop "
        "needs a tensor computed with torch operations (no .item(), numpy or Python floats)")
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
    """Chapter 2: ``student(batch_means, batch_vars, target_means, target_vars)`` returns Yin et al.'s BN distance.

    Each argument is a list with one ``(C_l,)`` tensor per BatchNorm layer, in module
    order. The expected value (without the prior's weight) is

    .. math:: \\sum_l m_l \\big(\\lVert \\mu_l - \\mu^*_l \\rVert_2 + \\lVert \\sigma^2_l - \\sigma^{*2}_l \\rVert_2\\big),
              \\quad m_1 = 10,\\ m_{l>1} = 1,

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
        _differentiable_close(f"BN statistics ({len(widths)} BatchNorm layers)", case, got, expected, inputs,
                              atol=1e-4, check_gradient=case != 4)
    return _passed("BN statistics distance", NUM_CASES)


def _small_generator(seed: int):
    from .generators import Generator

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Generator(z_dim=8, channels=1, width=4).eval()


def check_latent_loss(student: Callable) -> bool:
    """Chapter 3: ``student(z, generator, model, labels, target_gradients)`` returns the L2 gradient distance of G(z).

    The value must be differentiable w.r.t. ``z`` (one latent-search step is its backward pass).
    """
    for case in range(NUM_CASES):
        g = torch.Generator().manual_seed(500 + case)
        generator = _small_generator(500 + case)
        model = models.build_model("lenet", in_channels=1, seed=500 + case)
        b = 1 + case % 3
        labels = torch.randint(0, 10, (b,), generator=g)
        target = fl.batch_gradients(model, torch.rand(b, 1, 32, 32, generator=g), labels)[0]
        z = torch.randn(b, generator.z_dim, generator=g, requires_grad=True)
        expected = objectives.gradient_distance(fl.batch_gradients(model, generator(z), labels, create_graph=True)[0],
                                                target)
        got = student(z, generator, model, labels, [t.clone() for t in target])
        _differentiable_close("latent loss", case, got, expected, [z], atol=1e-4 * max(1.0, float(expected.detach())))
    return _passed("latent loss", NUM_CASES)


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
        assert len(copies) == len(z), f"stage-2 copies, case {case}: expected {len(z)} copies, got {len(copies)}"
        assert all(c is not generator for c in copies), f"stage-2 copies, case {case}: a copy is the original generator"
        with torch.no_grad():
            for p in copies[0].parameters():
                p.add_(0.1)
        moved = torch.cat([c(z[i:i + 1]) for i, c in enumerate(copies)]).detach()
        assert not torch.allclose(moved[0], images[0].detach()), (
            f"stage-2 copies, case {case}: changing copy 0 did not change image 0")
        assert torch.allclose(moved[1:], images[1:].detach(), atol=1e-6), (
            f"stage-2 copies, case {case}: changing copy 0 changed other images: the copies share weights")
        assert all(torch.equal(v, generator.state_dict()[k]) for k, v in before.items()), (
            f"stage-2 copies, case {case}: the original generator was changed")
    return _passed("generator copies", NUM_CASES)
