"""gi_tutorial.generators and the generator spaces: the shipped checkpoint, training, latent and weight search."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from gi_tutorial import fl, generators, invert, metrics, models, objectives, priors, spaces


@pytest.fixture(scope="module")
def generator():
    return generators.load_generator()


def test_shipped_checkpoint_matches_its_record(generator):
    record = json.loads(generators.DEFAULT_CHECKPOINT.with_suffix(".json").read_text())
    assert metrics.sha256_of(generators.DEFAULT_CHECKPOINT) == record["sha256"]
    for key in ("seed", "steps", "data", "command", "seconds"):
        assert key in record
    assert generators.DEFAULT_CHECKPOINT.stat().st_size < 5 * 2**20  # a small file, as shipped
    assert not generator.training


def test_generator_outputs_images_in_range(generator):
    x = generator(torch.randn(3, generator.z_dim, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (3, 1, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert x.std() > 0.1  # not a constant image: the generator was trained


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "g.pt"
    shutil.copy(generators.DEFAULT_CHECKPOINT, path)
    shutil.copy(generators.DEFAULT_CHECKPOINT.with_suffix(".json"), path.with_suffix(".json"))
    generators.load_generator(path)  # an intact copy loads
    with open(path, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="sha256"):
        generators.load_generator(path)
    with pytest.raises(FileNotFoundError, match="no generator checkpoint"):
        generators.load_generator(tmp_path / "missing.pt")


def test_training_and_saving_round_trip(tmp_path):
    images = torch.rand(32, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    g = generators.train_gan(images, steps=2, batch_size=8, seed=3)
    record = generators.save_checkpoint(g, tmp_path / "tiny.pt", seed=3, steps=2)
    loaded = generators.load_generator(tmp_path / "tiny.pt")
    z = torch.randn(2, g.z_dim)
    assert torch.equal(loaded(z), g(z)) and record["steps"] == 2
    with pytest.raises(ValueError, match="N, C, 32, 32"):
        generators.train_gan(torch.rand(4, 28, 28), steps=1)


def test_latent_space_and_latent_norm(generator):
    space = spaces.LatentSpace(generator, 2)
    (z,) = space.init(torch.Generator().manual_seed(0))
    assert z.shape == (2, generator.z_dim) and z.requires_grad
    assert space.images().shape == (2, 1, 32, 32)
    assert not any(p.requires_grad for p in space.generator.parameters())  # the generator is frozen
    context = priors.PriorContext(space=space)
    with torch.no_grad():
        space.z.copy_(torch.ones_like(space.z))  # exactly on the shell ||z||^2 / d = 1
    assert priors.LatentNorm(1.0)(space.images(), context).item() == pytest.approx(0.0)
    with torch.no_grad():
        space.z.mul_(3)
    assert priors.LatentNorm(1.0)(space.images(), context).item() == pytest.approx(64.0)
    with pytest.raises(ValueError, match="latent codes"):
        priors.LatentNorm(1.0)(space.images(), priors.PriorContext(space=spaces.PixelSpace((1, 1, 2, 2))))


def test_generator_space_copies_are_independent(generator):
    z = torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(1))
    space = spaces.GeneratorSpace(generator, 2, z=z)
    params = space.init(torch.Generator().manual_seed(0))
    before = space.images().detach()
    assert torch.allclose(before, generator(z), atol=1e-6)  # every copy starts at the prior
    with torch.no_grad():
        for w in params:
            w[0].add_(0.05)  # move copy 0 only
    after = space.images().detach()
    assert not torch.allclose(after[0], before[0]) and torch.equal(after[1], before[1])
    assert len(params) == len(list(generator.parameters()))
    assert all(w.shape == (2, *p.shape) for w, p in zip(params, generator.parameters()))
    moved = spaces.generator_from_state(generator, space.state(), index=0)
    assert torch.allclose(moved(z[:1]), after[:1], atol=1e-6)
    with pytest.raises(ValueError, match="z must have shape"):
        spaces.GeneratorSpace(generator, 3, z=z)
    with pytest.raises(ValueError, match="index=b"):
        spaces.generator_from_state(generator, space.state())
    with pytest.raises(ValueError, match="no generator weights"):
        spaces.generator_from_state(generator, {"z": z})


class _LoopSpace:
    """The per-image copies as a Python loop over modules: the reference the vectorised space must match."""

    def __init__(self, generator, z):
        self.base, self.z, self.batch_size, self.device = copy.deepcopy(generator).eval(), z, len(z), z.device

    def init(self, rng):
        self.copies = torch.nn.ModuleList(copy.deepcopy(self.base).requires_grad_(True) for _ in range(len(self.z)))
        return list(self.copies.parameters())

    def images(self):
        return torch.cat([g(self.z[b:b + 1]) for b, g in enumerate(self.copies)])

    def project(self):
        pass

    def state(self):
        return {}


def test_vectorised_copies_match_a_loop_over_modules(generator):
    """Stage 2 in one vmap call computes the same images and weight gradients as one module per image,
    and takes the same steps (the dynamics are chaotic over long runs, so a few steps are compared)."""
    model = models.build_model("convnet_fc", in_channels=1)
    g = torch.Generator().manual_seed(2)
    targets = generator(torch.randn(3, generator.z_dim, generator=g)).detach().flip(-1)
    labels = torch.tensor([1, 4, 7])
    update = fl.client_update(model, targets, labels, share_labels=True)
    z = torch.randn(3, generator.z_dim, generator=g)
    vectorised, loop = spaces.GeneratorSpace(generator, 3, z=z), _LoopSpace(generator, z)
    grads = []
    for space in (vectorised, loop):
        weights = space.init(torch.Generator().manual_seed(0))
        candidate = fl.batch_gradients(model, space.images(), labels, create_graph=True)[0]
        grads.append(torch.autograd.grad(objectives.gradient_distance(candidate, update.gradients, "cosine"), weights))
    per_image = [torch.stack([grads[1][i + k * len(grads[0])] for k in range(3)]) for i in range(len(grads[0]))]
    for a, b in zip(grads[0], per_image):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    kwargs = dict(lr=3e-4, num_iters=5, distance="l2", progress=False)
    ran = [invert.reconstruct(update, model, space, **kwargs) for space in (vectorised, loop)]
    assert not torch.allclose(ran[0].images, generator(z).detach(), atol=1e-3)  # the weights moved
    assert torch.allclose(ran[0].images, ran[1].images, atol=1e-5)


def test_shared_generator_space_is_one_copy_for_the_batch(generator):
    z = torch.randn(3, generator.z_dim, generator=torch.Generator().manual_seed(1))
    space = spaces.GeneratorSpace(generator, 3, z=z, shared=True)
    params = space.init(torch.Generator().manual_seed(0))
    assert all(w.shape == p.shape for w, p in zip(params, generator.parameters()))
    assert torch.allclose(space.images(), generator(z), atol=1e-6)
    with torch.no_grad():
        params[0].add_(0.05)
    after = space.images().detach()
    assert all(not torch.allclose(after[b], generator(z)[b]) for b in range(3))  # one copy moves every image
    adapted = spaces.generator_from_state(generator, space.state())
    assert torch.allclose(adapted(z), after, atol=1e-6)


def test_gias_stage_two_lowers_the_gradient_distance(generator):
    """On a Fashion-MNIST-like target outside the generator's exact range, the weight search
    matches the gradient better than the latent search it starts from."""
    model = models.build_model("convnet_fc", in_channels=1)
    target = generator(torch.randn(1, generator.z_dim, generator=torch.Generator().manual_seed(5))).detach()
    target = target.flip(-1)  # mirrored: near, not in, the range
    update = fl.client_update(model, target, torch.tensor([3]), share_labels=True)
    result = invert.gias(update, model, generator, latent_iters=30, weight_iters=30, restarts=2,
                         distance="cosine", weight_lr=1e-3, progress=False)
    assert result.weights.grad_loss < result.latent.grad_loss
    assert result.images.shape == (1, 1, 32, 32)
    assert metrics.psnr(result.weights.images, target) > metrics.psnr(result.latent.images, target)
