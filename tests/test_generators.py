"""gi_tutorial.generators and the generator spaces: the shipped checkpoint, training, latent and weight search."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from gi_tutorial import fl, generators, invert, metrics, models, priors, spaces


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
        for p in space.copies[0].parameters():
            p.add_(0.05)
    after = space.images().detach()
    assert not torch.allclose(after[0], before[0]) and torch.equal(after[1], before[1])
    assert len(params) == 2 * len(list(generator.parameters()))
    with pytest.raises(ValueError, match="z must have shape"):
        spaces.GeneratorSpace(generator, 3, z=z)


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
