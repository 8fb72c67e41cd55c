"""Checkers for the book's exercises: run a student's function against the reference.

Each ``check_*`` function calls the student's implementation on several fresh cases
built from real gradients, compares with the library's reference, and raises an
AssertionError that says which case failed and how; on success it prints one line and
returns True. Instructors can use the same functions to grade submissions.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import analytic, fl, models

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
