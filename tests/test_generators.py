"""gi_tutorial.generators and the generator spaces: the shipped checkpoint, training, latent and weight search."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from gi_tutorial import fl, generators, invert, metrics, models, objectives, priors, spaces, storage, threats


@pytest.fixture(scope="module")
def generator():
    return generators.load_generator()


def test_shipped_checkpoint_matches_its_record(generator):
    record = json.loads(generators.DEFAULT_CHECKPOINT.with_suffix(".json").read_text())
    assert storage.sha256_of(generators.DEFAULT_CHECKPOINT) == record["sha256"]
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
        return torch.cat([g(self.z[b : b + 1]) for b, g in enumerate(self.copies)])

    def project(self):
        pass

    def state(self):
        return {}


@pytest.mark.parametrize("vectorise", ["layers", "vmap"])
def test_vectorised_copies_match_a_loop_over_modules(generator, vectorise):
    """Stage 2 in one call (per-copy layers, or vmap) computes the same images and weight gradients as
    one module per image, and takes the same steps (the dynamics are chaotic over long runs, so a few
    steps are compared)."""
    model = models.build_model("convnet_fc", in_channels=1)
    g = torch.Generator().manual_seed(2)
    targets = generator(torch.randn(3, generator.z_dim, generator=g)).detach().flip(-1)
    labels = torch.tensor([1, 4, 7])
    update = fl.client_update(model, targets, labels, share_labels=True)
    z = torch.randn(3, generator.z_dim, generator=g)
    vectorised, loop = spaces.GeneratorSpace(generator, 3, z=z, vectorise=vectorise), _LoopSpace(generator, z)
    assert (vectorised.copies is not None) == (vectorise == "layers")  # the DCGAN has a per-copy version
    grads = []
    for space in (vectorised, loop):
        weights = space.init(torch.Generator().manual_seed(0))
        candidate = fl.batch_gradients(model, space.images(), labels, create_graph=True)[0]
        grads.append(torch.autograd.grad(objectives.gradient_distance(candidate, update.gradients, "cosine"), weights))
    per_image = [torch.stack([grads[1][i + k * len(grads[0])] for k in range(3)]) for i in range(len(grads[0]))]
    for a, b in zip(grads[0], per_image):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    kwargs = dict(
        optimizer=invert.Adam(3e-4), num_iters=5, distance="l2", progress=False, threat_model=threats.DATA_ENHANCED
    )
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
    result = invert.gias(
        update,
        model,
        generator,
        latent=invert.Stage(30, 0.1, restarts=2),
        weights=invert.Stage(30, 1e-3),
        threat_model=threats.DATA_ENHANCED,
        progress=False,
    )
    assert result.weights.grad_loss < result.latent.grad_loss
    assert result.images.shape == (1, 1, 32, 32)
    assert metrics.psnr(result.weights.images, target) > metrics.psnr(result.latent.images, target)


class _EveryLayer(torch.nn.Module):
    """Every layer kind with a per-copy version, in settings the DCGAN does not use (bias, padding,
    output padding, dilation, groups), followed by a layer without weights."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 8 * 3 * 3)
        self.bn1 = torch.nn.BatchNorm1d(8 * 3 * 3)
        self.up = torch.nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, dilation=1)
        self.up_dilated = torch.nn.ConvTranspose2d(6, 4, 3, stride=1, padding=2, dilation=2, bias=False)
        self.up_point = torch.nn.ConvTranspose2d(4, 4, 4, stride=1, padding=0)  # 1x1 in: the matrix-product path
        self.conv = torch.nn.Conv2d(4, 6, 3, stride=1, padding=1, groups=2)
        self.bn2 = torch.nn.BatchNorm2d(6)
        self.z_dim = 6

    def forward(self, z):
        x = torch.relu(self.bn1(self.linear(z))).reshape(-1, 8, 3, 3)
        x = torch.tanh(self.up_dilated(self.up(x)))  # 3 -> 6 -> 6
        x = self.up_point(x.mean((2, 3), keepdim=True))  # 1 -> 4
        return torch.sigmoid(self.bn2(self.conv(x)))


def test_per_copy_layers_match_one_module_per_copy():
    """Each per-copy layer, through functional_call with stacked weights, gives image b what copy b
    alone gives it, and the same weight gradients, to 1e-5."""
    torch.manual_seed(0)
    net = _EveryLayer()
    for bn in (net.bn1, net.bn2):  # non-trivial running statistics and affine parameters
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    net.eval()
    z = torch.randn(3, 6)
    space = spaces.GeneratorSpace(net, 3, z=z)
    assert space.copies is not None
    weights = space.init(torch.Generator().manual_seed(0))
    with torch.no_grad():  # make the copies differ
        for w in weights:
            w.add_(0.1 * torch.randn_like(w))
    images = space.images()
    probe = torch.randn_like(images)
    grads = torch.autograd.grad((images * probe).sum(), weights)
    names = [name for name, _ in net.named_parameters()]
    for b in range(3):
        single = spaces.generator_from_state(net, space.state(), index=b).eval()
        expected = single(z[b : b + 1])
        torch.testing.assert_close(images[b : b + 1], expected, rtol=1e-5, atol=1e-5)
        expected_grads = torch.autograd.grad((expected * probe[b : b + 1]).sum(), list(single.parameters()))
        for name, got, want in zip(names, grads, expected_grads):
            torch.testing.assert_close(got[b], want, rtol=1e-5, atol=1e-5, msg=f"{name}, copy {b}")


def test_a_layer_without_a_per_copy_version_falls_back_to_vmap():
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.GroupNorm(2, 16))
    net.z_dim = 4
    z = torch.randn(2, 4)
    space = spaces.GeneratorSpace(net, 2, z=z)
    assert space.copies is None
    space.init(torch.Generator().manual_seed(0))
    torch.testing.assert_close(space.images(), net(z))
    with pytest.raises(ValueError, match="vectorise must be"):
        spaces.GeneratorSpace(net, 2, z=z, vectorise="loop")
