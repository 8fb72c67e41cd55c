"""Every search space, GIML's inner round and the metrics give on a CUDA device what they give on the CPU.

Skipped where there is no CUDA device.

Each case is built on the CPU from fixed seeds and copied to the device, so both runs start from the same
numbers; TF32 (on by default for cuDNN convolutions on recent GPUs, 10-bit mantissas) is switched off so
that the device computes in float32 as the CPU does. What is compared: the shared update, the loss at
every iteration of a short reconstruction, the images it ends with, and the displacement of the
generator's weights in GIML's inner round. The tolerances allow for float32 summation in another order;
Adam's first steps are about ``lr * sign(g)``, so a gradient entry within rounding of zero may step the
other way, which a mean over all pixels absorbs and a maximum would not.
"""

from __future__ import annotations

import copy

import pytest
import torch

from gi_tutorial import fl, generators, giml, invert, metrics, models, spaces, threats

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
LOSS_RTOL = 1e-3  # relative difference of two losses computed on the two devices
ITERS = 8


@pytest.fixture(scope="module", autouse=True)
def float32_on_the_device():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def case():
    """The same generator, victim, private batch and labels, built once on the CPU from fixed seeds."""
    generator = generators.load_generator()
    victim = models.build_model("convnet_fc", in_channels=1, seed=0)
    z = torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = generator(z).flip(-1)  # outside the generator's range, as in chapter 4
    return generator, victim, x, torch.tensor([1, 5])


def _on(device, generator, victim, x, labels):
    generator, victim = copy.deepcopy(generator).to(device), copy.deepcopy(victim).to(device)
    update = fl.client_update(victim, x.to(device), labels.to(device), share_labels=True)
    return generator, victim, update


def test_the_shared_update_on_cuda_is_the_cpus(case):
    _, _, cpu_update = _on(CPU, *case)
    _, _, cuda_update = _on(CUDA, *case)
    assert len(cpu_update.gradients) == len(cuda_update.gradients)
    for i, (a, b) in enumerate(zip(cpu_update.gradients, cuda_update.gradients)):
        assert b.device.type == "cuda"
        scale = float(a.abs().max())
        assert torch.allclose(b.cpu(), a, rtol=1e-4, atol=1e-5 * scale), f"gradient {i}"


SPACES = {
    "pixels": (lambda g: spaces.PixelSpace((2, 1, 32, 32)), 0.01),  # device None: follows the model
    "latent": (lambda g: spaces.LatentSpace(g, 2), 0.01),
    "copies": (lambda g: spaces.GeneratorSpace(g, 2), 1e-4),
    "shared": (lambda g: spaces.GeneratorSpace(g, 2, shared=True), 1e-4),
}


@pytest.mark.parametrize("kind", list(SPACES))
def test_every_space_reconstructs_on_cuda_as_on_the_cpu(case, kind):
    make_space, lr = SPACES[kind]
    runs = {}
    for device in (CPU, CUDA):
        generator, victim, update = _on(device, *case)
        runs[device.type] = invert.reconstruct(
            update,
            victim,
            make_space(generator),
            optimizer=invert.Adam(lr),
            num_iters=ITERS,
            restarts=1,
            distance="cosine",
            threat_model=threats.DATA_ENHANCED,
            seed=3,
            progress=False,
        )
    cpu, cuda = runs["cpu"], runs["cuda"]
    assert cuda.images.device.type == "cpu" and torch.isfinite(cuda.images).all()
    cpu_losses, cuda_losses = torch.tensor(cpu.trials[0].losses), torch.tensor(cuda.trials[0].losses)
    assert len(cpu_losses) == len(cuda_losses) == ITERS
    # the comparison of later losses means something only if the run moved well beyond the tolerance
    assert cpu_losses[-1] < cpu_losses[0] * (1 - 10 * LOSS_RTOL), cpu_losses
    assert torch.allclose(cuda_losses[0], cpu_losses[0], rtol=1e-5), "the loss at the same start differs"
    assert torch.allclose(cuda_losses, cpu_losses, rtol=LOSS_RTOL), (cpu_losses, cuda_losses)
    assert (cuda.images - cpu.images).abs().mean() < 1e-3
    cuda_scores = metrics.evaluate(cuda.images.to(CUDA), case[2].to(CUDA))
    cpu_scores = metrics.evaluate(cuda.images, case[2])
    assert cuda_scores.psnr.device.type == "cpu" and torch.equal(cuda_scores.psnr, cpu_scores.psnr)


def test_giml_inner_round_on_cuda_moves_the_weights_as_on_the_cpu(case):
    settings = giml.InnerSettings(latent_iters=4, weight_iters=4)
    moved = {}
    for device in (CPU, CUDA):
        _, victim, update = _on(device, *case)
        theta = generators.untrained_generator(0).to(device)
        adapted, run = giml.inner_round(update, victim, theta, settings, seed=1)
        assert run is not None and next(adapted.parameters()).device.type == device.type
        moved[device.type] = torch.cat(
            [(a - t).detach().flatten().cpu() for a, t in zip(adapted.parameters(), theta.parameters())]
        )
    assert moved["cpu"].abs().max() > 0, "the inner round moved nothing on the CPU"
    # the displacement of the weights agrees to 5% of its size (a wrong step on the device moves them elsewhere)
    assert (moved["cuda"] - moved["cpu"]).abs().mean() < 0.05 * moved["cpu"].abs().mean()
