"""Every search space, GIML's inner round and the metrics on a CUDA device (skipped without one)."""
from __future__ import annotations

import pytest
import torch

from gi_tutorial import fl, generators, giml, invert, metrics, models, spaces, threats

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def case():
    device = torch.device("cuda")
    generator = generators.load_generator().to(device)
    victim = models.build_model("convnet_fc", in_channels=1).to(device)
    x = generator(torch.randn(2, generator.z_dim, device=device)).detach().flip(-1)
    update = fl.client_update(victim, x, torch.tensor([1, 5], device=device), share_labels=True)
    return device, generator, victim, x, update


@pytest.mark.parametrize("kind", ["pixels", "latent", "copies", "shared"])
def test_every_space_reconstructs_on_cuda(case, kind):
    device, generator, victim, x, update = case
    space = {"pixels": lambda: spaces.PixelSpace((2, 1, 32, 32)),  # device None: follows the model
             "latent": lambda: spaces.LatentSpace(generator, 2),
             "copies": lambda: spaces.GeneratorSpace(generator, 2),
             "shared": lambda: spaces.GeneratorSpace(generator, 2, shared=True)}[kind]()
    result = invert.reconstruct(update, victim, space, optimizer=invert.Adam(1e-3 if kind in ("copies", "shared") else 0.1),
                                num_iters=5, distance="cosine", threat_model=threats.DATA_ENHANCED, progress=False)
    assert result.images.device.type == "cpu" and torch.isfinite(result.images).all()
    scores = metrics.evaluate(result.images.to(device), x)
    assert scores.psnr.device.type == "cpu" and torch.isfinite(scores.psnr).all()


def test_giml_inner_round_on_cuda(case):
    device, generator, victim, x, update = case
    theta = generators.untrained_generator(0).to(device)
    adapted, run = giml.inner_round(update, victim, theta, giml.InnerSettings(latent_iters=3, weight_iters=3))
    assert next(adapted.parameters()).device.type == "cuda" and run is not None
