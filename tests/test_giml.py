"""gi_tutorial.giml: the threat model of the stream, one inner round, the Reptile step, meta-training, snapshots."""
from __future__ import annotations

import copy
import inspect

import pytest
import torch

from gi_tutorial import data, fl, generators, giml, invert, models, spaces

TINY = giml.InnerSettings(latent_iters=30, latent_lr=0.05, weight_iters=40, weight_lr=1e-3)


@pytest.fixture(scope="module")
def private(empty_root):
    """The clients' private images: the 20 Fashion-MNIST test images that ship with the foolbox wheel."""
    return data.load_dataset("fashion_mnist", "test", 20, root=empty_root, allow_download=False)


@pytest.fixture(scope="module")
def victim():
    return models.build_model("convnet_fc", in_channels=1, seed=1)


def _perturbed(generator, scale, seed):
    g = torch.Generator().manual_seed(seed)
    moved = copy.deepcopy(generator)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return moved


def test_reptile_step_moves_every_parameter_by_epsilon_times_the_mean_difference():
    theta = generators.untrained_generator(seed=3)
    adapted = [_perturbed(theta, 0.1, seed) for seed in (1, 2, 3)]
    stepped = copy.deepcopy(theta)
    giml.reptile_step(stepped, adapted, epsilon=0.25)
    for (name, before), after, *primes in zip(theta.named_parameters(), stepped.parameters(),
                                              *(a.parameters() for a in adapted)):
        expected = before + 0.25 * (torch.stack(primes).mean(0) - before)
        assert torch.allclose(after, expected, atol=1e-7), name
        assert not torch.equal(after, before), name
    for (name, b0), b1 in zip(theta.named_buffers(), stepped.buffers()):
        assert torch.equal(b0, b1), f"buffer {name} moved"


def test_the_authors_adam_variant_steps_against_the_pseudo_gradient():
    theta = generators.untrained_generator(seed=3)
    target = _perturbed(theta, 0.1, 7)
    stepped = copy.deepcopy(theta)
    optimizer = torch.optim.Adam(stepped.parameters(), lr=0.5)
    giml.reptile_step(stepped, [target], epsilon=1e-3, optimizer=optimizer)
    for before, after, prime in zip(theta.parameters(), stepped.parameters(), target.parameters()):
        # Adam's first step is lr * g / (|g| + eps): lr towards theta' in every coordinate that differs
        differs = (prime - before).abs() > 1e-4
        assert torch.allclose((after - before)[differs], 1e-3 * torch.sign(prime - before)[differs], rtol=1e-2)


def test_one_meta_step_moves_theta_by_epsilon_times_the_adapted_difference(private, victim):
    """Catches the bug of the authors' StyleGAN path, where theta' is the unadapted generator (a zero step)."""
    images, labels = private
    rounds = list(giml.fl_rounds(images, labels, victim, 1, seed=4))
    theta = generators.untrained_generator(seed=0)
    theta_prime, run = giml.inner_round(rounds[0].updates[0], rounds[0].model, theta, TINY, seed=9)
    moved = [(a - b).abs().max().item() for a, b in zip(theta_prime.parameters(), theta.parameters())]
    assert max(moved) > 1e-3, "the inner round did not adapt the generator"
    assert run.weights.grad_loss < run.latent.grad_loss  # adapting the weights matched the gradient better
    result = giml.meta_train(rounds, theta, 1, epsilon=0.4, inner=TINY, seed=9, progress=False)
    for before, prime, after in zip(theta.parameters(), theta_prime.parameters(), result.generator.parameters()):
        assert torch.allclose(after - before, 0.4 * (prime - before), atol=1e-6)


def test_a_few_meta_steps_lower_the_next_rounds_latent_distance(private, victim):
    images, labels = private
    rounds = list(giml.fl_rounds(images, labels, victim, 9, seed=0))
    untrained = generators.untrained_generator(seed=0)
    result = giml.meta_train(rounds[:8], untrained, 8, inner=TINY, progress=False)
    held_out = rounds[8]
    distances = []
    for g in (untrained, result.generator):
        run = invert.reconstruct(held_out.updates[0], held_out.model, spaces.LatentSpace(g, 1),
                                 optimizer=invert.Adam(0.05, decay=True), num_iters=30, distance="cosine", progress=False)
        distances.append(run.grad_loss)
    assert distances[1] < 0.7 * distances[0], distances


def test_meta_training_sees_no_image(private, victim):
    """The meta-learner takes rounds, not images: poisoning the clients' images after they shared
    their updates changes nothing."""
    assert "images" not in inspect.signature(giml.meta_train).parameters
    images, labels = private
    secret = images.clone()
    rounds = list(giml.fl_rounds(secret, labels, victim, 2, seed=0))
    kwargs = dict(inner=giml.InnerSettings(latent_iters=5, weight_iters=5), seed=0, progress=False)
    clean = giml.meta_train(rounds, generators.untrained_generator(0), 2, **kwargs)
    secret.fill_(float("nan"))
    poisoned = giml.meta_train(rounds, generators.untrained_generator(0), 2, **kwargs)
    for a, b in zip(clean.generator.parameters(), poisoned.generator.parameters()):
        assert torch.equal(a, b) and torch.isfinite(b).all()


def test_the_victim_trains_every_few_rounds(private, victim):
    images, labels = private
    rounds = list(giml.fl_rounds(images, labels, victim, 3, fedsgd_every=2, seed=0))
    same = [torch.equal(a, b) for a, b in zip(rounds[0].model.parameters(), rounds[1].model.parameters())]
    changed = [torch.equal(a, b) for a, b in zip(rounds[1].model.parameters(), rounds[2].model.parameters())]
    assert all(same) and not any(changed)
    assert all(torch.equal(a, b) for a, b in zip(victim.parameters(), rounds[0].model.parameters()))
    assert all(u.labels is not None and u.batch_size == 1 for r in rounds for u in r.updates)


def test_bad_input_gets_a_clear_error(private, victim):
    images, labels = private
    rounds = list(giml.fl_rounds(images, labels, victim, 2, seed=0))
    g = generators.untrained_generator(0)
    for epsilon in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"epsilon must be in \(0, 1\]"):
            giml.meta_train(rounds, g, 1, epsilon=epsilon)
        with pytest.raises(ValueError, match=r"epsilon must be in \(0, 1\]"):
            giml.reptile_step(g, [g], epsilon)
    with pytest.raises(ValueError, match="num_steps must be at least 1"):
        giml.meta_train(rounds, g, 0)
    with pytest.raises(ValueError, match="num_rounds"):
        next(giml.fl_rounds(images, labels, victim, 0))
    with pytest.raises(ValueError, match="larger than the stream's 2"):
        giml.meta_train(rounds, g, 1, meta_batch=3)
    with pytest.raises(ValueError, match="ran out"):
        giml.meta_train(iter(rounds), g, 3, inner=giml.InnerSettings(latent_iters=2, weight_iters=2), progress=False)
    other = models.build_model("convnet_gap", in_channels=1)
    mismatched = [giml.FLRound(0, other, rounds[0].updates)]
    with pytest.raises(ValueError, match="does not match the model|trainable parameters"):
        giml.meta_train(mismatched, g, 1)
    with pytest.raises(ValueError, match="outer"):
        giml.meta_train(rounds, g, 1, outer="sgd")


def test_snapshots_round_trip_in_half_precision(tmp_path):
    g = _perturbed(generators.untrained_generator(0), 0.05, 1)
    generators.save_checkpoint(g, giml.snapshot_path(7, tmp_path), half=True, meta_steps=7)
    generators.save_checkpoint(g, giml.snapshot_path(12, tmp_path), half=True, meta_steps=12)
    assert giml.shipped_steps(tmp_path) == [7, 12]
    loaded = giml.load_snapshot(folder=tmp_path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for a, b in zip(g.parameters(), loaded.parameters()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)
    with pytest.raises(FileNotFoundError, match=r"shipped: \[7, 12\]"):
        giml.load_snapshot(3, folder=tmp_path)
    with pytest.raises(FileNotFoundError, match="no GIML snapshots"):
        giml.load_snapshot(folder=tmp_path / "empty")


def test_a_task_whose_search_diverges_moves_nothing(private, victim):
    images, labels = private
    rounds = list(giml.fl_rounds(images, labels, victim, 1, seed=0))
    theta = generators.untrained_generator(0)
    with torch.no_grad():
        theta.net[1].running_var.fill_(-1.0)  # a broken BatchNorm: every image is NaN
    theta_prime, run = giml.inner_round(rounds[0].updates[0], rounds[0].model, theta, TINY)
    assert run is None  # the latent search diverged: no run to build on
    assert all(torch.equal(a, b) for a, b in zip(theta.parameters(), theta_prime.parameters()))
    assert theta_prime is not theta
