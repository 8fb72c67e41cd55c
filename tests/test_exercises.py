"""gi_tutorial.exercises (chapters 0, 1 and 3-6): every checker accepts a correct answer written independently of
the library, and rejects plausible wrong answers with a CheckFailed that says which case failed and how.

The "students" here never call the function the checker compares with: each correct answer is written
another way (by hand, or through a different library), so a test passes only if two independent
implementations agree. Chapter 2's checkers are in test_exercises_ch2.py.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gi_tutorial import analytic, exercises, models

CheckFailed = exercises.CheckFailed


# --- the exception ------------------------------------------------------------------------


def test_checkers_raise_their_own_exception_and_nothing_in_the_package_asserts():
    """CheckFailed is an AssertionError (graders count it as a wrong answer), raised by a plain `raise`.

    `python -O` strips `assert` statements and `if __debug__:` blocks. None exists in any module
    of the package (the checkers and every helper they call), so under -O the checkers grade as
    they do here, where the tests below make each of them reject a wrong answer. (Running one
    under `python -O` in a subprocess showed the same, at 8 s: -O recompiles torch's modules.)
    """
    assert issubclass(CheckFailed, AssertionError)
    package = Path(exercises.__file__).parent
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert) or (isinstance(node, ast.Name) and node.id == "__debug__"):
                found.append(f"{path.name}:{node.lineno}")
    assert len(list(package.glob("*.py"))) > 20 and "exercises.py" in {p.name for p in package.glob("*.py")}
    assert not found, f"statements that python -O strips: {found}"
    with pytest.raises(CheckFailed, match=r"average \(tensor"):
        exercises.check_average_gradients(unweighted_average)


# --- chapter 0: average_gradients -----------------------------------------------------------


def handwritten_average(gradient_lists, batch_sizes):
    total = sum(batch_sizes)
    return [
        sum(b * grads[i] for grads, b in zip(gradient_lists, batch_sizes)) / total
        for i in range(len(gradient_lists[0]))
    ]


def stacked_average(gradient_lists, batch_sizes):
    weights = torch.tensor(batch_sizes, dtype=torch.float32) / sum(batch_sizes)
    return [torch.einsum("k,k...->...", weights, torch.stack(position)) for position in zip(*gradient_lists)]


def unweighted_average(gradient_lists, batch_sizes):
    return [sum(grads[i] for grads in gradient_lists) / len(gradient_lists) for i in range(len(gradient_lists[0]))]


def average_dropping_a_tensor(gradient_lists, batch_sizes):
    return handwritten_average(gradient_lists, batch_sizes)[:-1]


@pytest.mark.parametrize("solution", [handwritten_average, stacked_average])
def test_average_checker_accepts(solution, capsys):
    assert exercises.check_average_gradients(solution) is True
    assert "average_gradients: matches the reference on 5 cases" in capsys.readouterr().out


def test_average_checker_rejects_an_unweighted_mean():
    with pytest.raises(
        CheckFailed,
        match=r"average \(tensor \d+\), case \d: largest difference from the reference "
        r"is .* \(tolerance 1e-06\)",
    ):
        exercises.check_average_gradients(unweighted_average)


def test_average_checker_rejects_a_missing_tensor():
    with pytest.raises(CheckFailed, match="average, case 0: expected 8 tensors, got 7"):
        exercises.check_average_gradients(average_dropping_a_tensor)


# --- chapter 1: label recovery ----------------------------------------------------------------


def handwritten_label(weight_grad):
    # LeNet's features are sigmoids (positive): only the true class's row has a negative sum
    sums = [float(row.sum()) for row in weight_grad]
    return sums.index(min(sums))


@pytest.mark.parametrize("solution", [analytic.label_from_weight_gradient, handwritten_label])
def test_label_checker_accepts(solution):
    assert exercises.check_label_recovery(solution) is True


def test_label_checker_rejects_argmax():
    with pytest.raises(CheckFailed, match=r"label recovery, case 0: the true label is 1, got \d"):
        exercises.check_label_recovery(lambda w: int(w.sum(dim=1).argmax()))


# --- chapter 1: fully connected input recovery ----------------------------------------------


def handwritten_fc_input(weight_grad, bias_grad):
    # dW = delta x^T and db = delta, so delta^T dW = |delta|^2 x^T: least squares over all rows
    return bias_grad @ weight_grad / (bias_grad @ bias_grad)


@pytest.mark.parametrize("solution", [analytic.recover_fc_input, handwritten_fc_input])
def test_fc_checker_accepts(solution):
    assert exercises.check_fc_input_recovery(solution) is True


def test_fc_checker_rejects_an_undivided_row():
    with pytest.raises(
        CheckFailed,
        match=r"fully connected input recovery, case 0: largest difference .* "
        r"\(tolerance 1e-05\)",
    ):
        exercises.check_fc_input_recovery(lambda w, b: w[b.abs().argmax()])


def test_fc_checker_rejects_the_wrong_shape():
    with pytest.raises(CheckFailed, match=r"expected shape \(20,\), got \(1, 20\)"):
        exercises.check_fc_input_recovery(lambda w, b: handwritten_fc_input(w, b)[None])


# --- chapter 1: counting --------------------------------------------------------------------


def handwritten_count(model, image_shape, batch_size):
    """Pixels, and the gradient entries less the ones that exact identities fix (worked out by hand)."""
    c, h, w = image_shape
    entries = sum(p.numel() for p in model.parameters() if p.requires_grad)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    # logits z and z + (c, ..., c) give the same softmax: the last layer's gradient sums to 0 over the classes,
    # one identity per input feature, one for the bias
    fixed = last.in_features + 1
    if isinstance(model, models.ConvNet):
        # a LeakyReLU channel scaled by a on the way in and by 1/a on the way out computes the same function
        fixed += sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    return batch_size * c * h * w, entries - fixed


def every_entry_counted(model, image_shape, batch_size):
    c, h, w = image_shape
    return batch_size * c * h * w, sum(p.numel() for p in model.parameters())


def test_count_checker_accepts_an_independent_count():
    assert exercises.check_count_unknowns(handwritten_count) is True


def test_count_checker_rejects_counting_one_image_only():
    def one_image(model, image_shape, batch_size):
        return handwritten_count(model, image_shape, 1)

    # case 0 has batch 1, so the first failure is case 1 (lenet, batch 8)
    with pytest.raises(
        CheckFailed,
        match=r"counting, case 1 \(lenet, batch 8\): expected \(24576, \d+\), "
        r"got \(3072, \d+\)",
    ):
        exercises.check_count_unknowns(one_image)


def test_count_checker_rejects_every_entry_as_an_equation():
    """Counting every gradient entry ignores the entries that the softmax identity fixes."""
    with pytest.raises(CheckFailed, match=r"counting, case 0 \(lenet, batch 1\)"):
        exercises.check_count_unknowns(every_entry_counted)


def test_count_checker_rejects_counting_weights_only():
    def weights_only(model, image_shape, batch_size):
        c, h, w = image_shape
        return batch_size * c * h * w, sum(p.numel() for p in model.parameters() if p.ndim > 1)

    with pytest.raises(CheckFailed, match=r"counting, case 0 \(lenet, batch 1\)"):
        exercises.check_count_unknowns(weights_only)


# --- chapter 3: the latent loss ---------------------------------------------------------------


def _gradients(model, images, labels, reduction="mean", create_graph=True):
    loss = F.cross_entropy(model(images), labels, reduction=reduction)
    return torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], create_graph=create_graph)


def latent_loss(z, generator, model, labels, target_gradients):
    grads = _gradients(model, generator(z), labels)
    return sum(((g - t) ** 2).sum() for g, t in zip(grads, target_gradients))


def latent_loss_flat(z, generator, model, labels, target_gradients):
    grads = torch.cat([g.reshape(-1) for g in _gradients(model, generator(z), labels)])
    target = torch.cat([t.reshape(-1) for t in target_gradients])
    return torch.dot(grads - target, grads - target)


def latent_loss_without_graph(z, generator, model, labels, target_gradients):
    grads = _gradients(model, generator(z), labels, create_graph=False)
    return sum(((g - t) ** 2).sum() for g, t in zip(grads, target_gradients))


def latent_loss_summed_over_the_batch(z, generator, model, labels, target_gradients):
    grads = _gradients(model, generator(z), labels, reduction="sum")
    return sum(((g - t) ** 2).sum() for g, t in zip(grads, target_gradients))


def latent_loss_norm_not_squared(z, generator, model, labels, target_gradients):
    return latent_loss(z, generator, model, labels, target_gradients).sqrt()


@pytest.mark.parametrize("solution", [latent_loss, latent_loss_flat])
def test_latent_loss_checker_accepts(solution):
    assert exercises.check_latent_loss(solution) is True


@pytest.mark.parametrize(
    "wrong, message",
    [
        (latent_loss_without_graph, r"latent loss, case 0: the value is right but autograd cannot differentiate it"),
        (latent_loss_summed_over_the_batch, r"latent loss, case 1: largest difference"),  # case 0 is batch 1
        (latent_loss_norm_not_squared, r"latent loss, case 0: largest difference"),
    ],
)
def test_latent_loss_checker_rejects(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        exercises.check_latent_loss(wrong)


# --- chapter 4: generator copies --------------------------------------------------------------


def make_copies(generator, z):
    copies = [copy.deepcopy(generator) for _ in range(len(z))]
    return torch.cat([c(code[None]) for c, code in zip(copies, z)]), copies


def shallow_copies(generator, z):
    copies = [copy.copy(generator) for _ in range(len(z))]  # copy.copy shares the Parameter objects
    return generator(z), copies


def one_copy_for_all(generator, z):
    shared = copy.deepcopy(generator)
    return shared(z), [shared] * len(z)


def original_first(generator, z):
    images, copies = make_copies(generator, z)
    return images, [generator] + copies[1:]


def test_generator_copies_checker_accepts():
    assert exercises.check_generator_copies(make_copies) is True


@pytest.mark.parametrize(
    "wrong, message",
    [
        (shallow_copies, "changing copy 0 changed other images: the copies share weights"),
        (one_copy_for_all, "changing copy 0 changed other images: the copies share weights"),
        (original_first, "a copy is the original generator"),
    ],
)
def test_generator_copies_checker_rejects(wrong, message):
    with pytest.raises(CheckFailed, match=r"stage-2 copies, case 0: " + message):
        exercises.check_generator_copies(wrong)


# --- chapter 5: the Reptile step --------------------------------------------------------------


def reptile_convex(theta, adapted, step_size):
    return [
        (1 - step_size) * p + step_size * sum(task[i] for task in adapted) / len(adapted) for i, p in enumerate(theta)
    ]


def reptile_summed(theta, adapted, step_size):
    return [p + step_size * sum(task[i] - p for task in adapted) for i, p in enumerate(theta)]


def reptile_away_from_the_tasks(theta, adapted, step_size):
    return [p - step_size * (sum(task[i] for task in adapted) / len(adapted) - p) for i, p in enumerate(theta)]


def reptile_in_place(theta, adapted, step_size):
    for i, p in enumerate(theta):
        p.mul_(1 - step_size).add_(step_size * sum(task[i] for task in adapted) / len(adapted))
    return theta


def test_reptile_checker_accepts():
    assert exercises.check_reptile_step(reptile_convex) is True


@pytest.mark.parametrize(
    "wrong, message",
    [
        (reptile_summed, r"Reptile step, tensor 0, case 1: largest difference"),  # case 0: one task, a zero step
        (reptile_away_from_the_tasks, r"Reptile step, tensor 0, case 1: largest difference"),  # case 0: a zero step
        (reptile_in_place, r"Reptile step, case \d: theta was changed in place"),
    ],
)
def test_reptile_checker_rejects(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        exercises.check_reptile_step(wrong)


# --- chapter 5: one inner round ----------------------------------------------------------------


def _cosine_distance(model, images, labels, target):
    grads = _gradients(model, images, labels)
    dot = sum((g * t).sum() for g, t in zip(grads, target))
    norms = torch.sqrt(sum(g.pow(2).sum() for g in grads)) * torch.sqrt(sum(t.pow(2).sum() for t in target))
    return 1 - dot / norms


def inner_round_by_hand(update, model, generator, maximize=False, stage_2=True):
    """GIAS with one shared copy, written as two plain Adam loops (no library search)."""
    model = copy.deepcopy(model)
    codes = torch.randn(update.batch_size, generator.z_dim, generator=torch.Generator().manual_seed(0))
    frozen = copy.deepcopy(generator).eval().requires_grad_(False)
    z = codes.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=0.05)
    for _ in range(30):
        optimizer.zero_grad()
        _cosine_distance(model, frozen(z), update.labels, update.gradients).backward()
        optimizer.step()
    adapted = copy.deepcopy(generator).eval()
    if stage_2:
        optimizer = torch.optim.Adam(adapted.parameters(), lr=1e-3, maximize=maximize)
        for _ in range(30):
            optimizer.zero_grad()
            _cosine_distance(model, adapted(z.detach()), update.labels, update.gradients).backward()
            optimizer.step()
    return adapted


def inner_round_in_place(update, model, generator):
    adapted = inner_round_by_hand(update, model, generator)
    generator.load_state_dict(adapted.state_dict())
    return generator


def test_inner_round_checker_accepts_a_hand_written_round():
    assert exercises.check_inner_round(inner_round_by_hand) is True


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda u, m, g: inner_round_by_hand(u, m, g, stage_2=False), "the adapted weights equal the original ones"),
        (lambda u, m, g: inner_round_by_hand(u, m, g, maximize=True), "a latent search with the adapted .* worse"),
        (inner_round_in_place, "return a new generator module, not the original"),
    ],
)
def test_inner_round_checker_rejects(wrong, message):
    with pytest.raises(CheckFailed, match=r"inner round, case 0: " + message):
        exercises.check_inner_round(wrong)


# --- chapter 6: clip and noise ----------------------------------------------------------------


def clip_and_noise_flat(gradients, clip_norm, noise_multiplier, generator):
    flat = torch.cat([g.reshape(-1) for g in gradients]).double()
    scale = min(1.0, clip_norm / float(flat.norm()))
    noisy = flat * scale + noise_multiplier * clip_norm * torch.randn(flat.numel(), generator=generator).double()
    pieces = noisy.float().split([g.numel() for g in gradients])
    return [piece.view_as(g) for piece, g in zip(pieces, gradients)]


def clip_each_tensor(gradients, clip_norm, noise_multiplier, generator):
    return [
        g * min(1.0, clip_norm / float(g.norm()))
        + noise_multiplier * clip_norm * torch.randn(g.shape, generator=generator)
        for g in gradients
    ]


def noise_not_scaled_by_the_bound(gradients, clip_norm, noise_multiplier, generator):
    return clip_and_noise_flat(gradients, clip_norm, noise_multiplier / clip_norm, generator)


def noise_before_clipping(gradients, clip_norm, noise_multiplier, generator):
    noisy = [g + noise_multiplier * clip_norm * torch.randn(g.shape, generator=generator) for g in gradients]
    return clip_and_noise_flat(noisy, clip_norm, 0.0, generator)


def noise_from_the_global_generator(gradients, clip_norm, noise_multiplier, generator):
    return clip_and_noise_flat(
        gradients, clip_norm, noise_multiplier, torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    )


def clip_in_place(gradients, clip_norm, noise_multiplier, generator):
    norm = float(torch.sqrt(sum(g.pow(2).sum() for g in gradients)))
    for g in gradients:
        g.mul_(min(1.0, clip_norm / norm)).add_(
            noise_multiplier * clip_norm * torch.randn(g.shape, generator=generator)
        )
    return gradients


def test_clip_and_noise_checker_accepts():
    assert exercises.check_clip_and_noise(clip_and_noise_flat) is True


@pytest.mark.parametrize(
    "wrong, message",
    [
        (clip_each_tensor, r"clip without noise \(tensor \d\), case 0: largest difference"),
        (noise_not_scaled_by_the_bound, r"clip and noise, case 0: the noise's standard deviation is"),
        (noise_before_clipping, r"clip and noise, case 0: the noise's standard deviation is"),
        (noise_from_the_global_generator, r"clip and noise, case 0: the same generator seed gave different results"),
        (clip_in_place, r"clip and noise, case 0: the input gradients were changed in place"),
    ],
)
def test_clip_and_noise_checker_rejects(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        exercises.check_clip_and_noise(wrong)


# --- chapter 6: epsilon of a schedule ---------------------------------------------------------


def epsilon_rdp(noise_multiplier, num_clients, clients_per_round, rounds, delta):
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=clients_per_round / num_clients)
    return accountant.get_epsilon(delta)


def epsilon_prv(noise_multiplier, num_clients, clients_per_round, rounds, delta):
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = [(noise_multiplier, clients_per_round / num_clients, rounds)]
    return accountant.get_epsilon(delta)


def epsilon_without_sampling(noise_multiplier, num_clients, clients_per_round, rounds, delta):
    return epsilon_rdp(noise_multiplier, 1, 1, rounds, delta)


def epsilon_composed_naively(noise_multiplier, num_clients, clients_per_round, rounds, delta):
    return rounds * epsilon_rdp(noise_multiplier, num_clients, clients_per_round, 1, delta)


@pytest.mark.parametrize("solution", [epsilon_rdp, epsilon_prv])
def test_schedule_epsilon_checker_accepts(solution):
    assert exercises.check_schedule_epsilon(solution) is True


@pytest.mark.parametrize("wrong", [epsilon_without_sampling, epsilon_composed_naively])
def test_schedule_epsilon_checker_rejects(wrong):
    with pytest.raises(CheckFailed, match=r"epsilon, case 0 \(z=1.0, 10 of 1000 clients per round, 100 rounds"):
        exercises.check_schedule_epsilon(wrong)
