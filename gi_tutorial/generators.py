"""A generative image prior: a small DCGAN generator, its training, and its shipped checkpoint.

GIAS (Jeon et al., 2021) searches the latent space, and then the weights, of a generator
trained on the data distribution. This module holds that generator: a DCGAN (Radford et
al., 2016) for 32x32 images with a 64-dimensional latent code, small enough to train on
a laptop CPU in about ten minutes.

The book ships one checkpoint, trained on the Fashion-MNIST train split (padded to 32x32).
It is produced by a command anyone can re-run (the seed, data, steps and sha256 are
recorded beside it, in ``checkpoints/<name>.json``)::

    python -m gi_tutorial.generators --steps 4000 --seed 0 --out gi_tutorial/checkpoints/fashion_mnist_dcgan.pt

and loaded with ``torch.load(..., weights_only=True)`` after its hash is checked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .storage import sha256_of

Z_DIM = 64
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINTS / "fashion_mnist_dcgan.pt"


class Generator(nn.Module):
    """DCGAN generator: z ``(B, z_dim)`` -> images ``(B, C, 32, 32)`` in [0, 1]."""

    def __init__(self, z_dim: int = Z_DIM, channels: int = 1, width: int = 48):
        super().__init__()
        self.z_dim, self.channels, self.width = z_dim, channels, width
        # what the weights were learned from: "data" (a GAN on images like the clients'), "gradients" (GIML)
        # or "nothing" (initialisation); a search through it assumes surrogate data only for "data"
        # (gi_tutorial.threats, gi_tutorial.spaces.generator_requires)
        self.trained_on = "nothing"
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z_dim, 4 * width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(True),  # 4x4
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(True),  # 8x8
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),  # 16x16
            nn.ConvTranspose2d(width, channels, 4, 2, 1),
            nn.Tanh(),  # 32x32 in [-1, 1]
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.net(z[:, :, None, None]) + 1) / 2  # [0, 1], the range every image in the book uses


class Discriminator(nn.Module):
    """DCGAN discriminator: images ``(B, C, 32, 32)`` in [0, 1] -> one logit each."""

    def __init__(self, channels: int = 1, width: int = 48):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1),
            nn.LeakyReLU(0.2, True),  # 16x16
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(4 * width, 1, 4, 1, 0),  # 1x1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(2 * x - 1).flatten()


def _init_weights(module: nn.Module) -> None:
    """DCGAN's initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def untrained_generator(seed: int = 0, channels: int = 1) -> Generator:
    """The generator at DCGAN's random initialisation for ``seed``, in eval mode: a prior that knows nothing.

    This is where DCGAN training and GIML's meta-learning start (chapter 5's "untrained G").
    """
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        generator = Generator(channels=channels)
        generator.apply(_init_weights)
    finally:
        torch.random.set_rng_state(state)
    return generator.eval()


def train_gan(
    images: torch.Tensor, steps: int, batch_size: int = 64, seed: int = 0, lr: float = 2e-4, log_every: int = 0
) -> Generator:
    """Train a DCGAN on ``images`` ``(N, C, 32, 32)`` in [0, 1] for ``steps`` iterations; return the generator (eval mode).

    Training runs on the images' device (move them to a GPU to train there).

    Raises:
        ValueError: images that are not ``(N, C, 32, 32)``.
    """
    if images.ndim != 4 or images.shape[-2:] != (32, 32):
        raise ValueError(f"expected images of shape (N, C, 32, 32), got {tuple(images.shape)}")
    device = images.device
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without reseeding the caller's global RNG
        torch.manual_seed(seed)
        generator, discriminator = Generator(channels=images.shape[1]), Discriminator(channels=images.shape[1])
        generator.apply(_init_weights)
        discriminator.apply(_init_weights)
    generator, discriminator = generator.to(device), discriminator.to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(seed)
    ones, zeros = torch.ones(batch_size, device=device), torch.zeros(batch_size, device=device)
    start = time.perf_counter()
    for step in range(steps):
        real = images[torch.randint(len(images), (batch_size,), generator=rng).to(device)]
        fake = generator(torch.randn(batch_size, generator.z_dim, generator=rng).to(device))
        loss_d = F.binary_cross_entropy_with_logits(discriminator(real), ones) + F.binary_cross_entropy_with_logits(
            discriminator(fake.detach()), zeros
        )
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(discriminator(fake), ones)  # the non-saturating loss
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(
                f"step {step:5d}  loss D {loss_d.item():.3f}  loss G {loss_g.item():.3f}  "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
    generator.trained_on = "data"
    return generator.eval()


def save_checkpoint(generator: Generator, path: str | Path, half: bool = False, **record) -> dict:
    """Save the generator's weights and, beside them, a JSON record (with the file's sha256).

    ``half=True`` stores floating-point tensors in float16 (half the size); loading turns them
    back into float32.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu()
        for k, v in generator.state_dict().items()
    }
    torch.save(state, path)
    record = {
        "file": path.name,
        "sha256": sha256_of(path),
        "z_dim": generator.z_dim,
        "channels": generator.channels,
        "width": generator.width,
        "dtype": "float16" if half else "float32",
        "trained_on": generator.trained_on,
        **record,
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def load_generator(path: str | Path = DEFAULT_CHECKPOINT, verify_hash: bool = True) -> Generator:
    """The generator stored at ``path`` (default: the shipped Fashion-MNIST one), in eval mode.

    The record beside the file (``.json``) gives its architecture and sha256; the weights
    are loaded with ``weights_only=True``.

    Raises:
        FileNotFoundError: no checkpoint or no record at ``path``.
        ValueError: the file's sha256 is not the recorded one (corrupt or replaced).
    """
    path = Path(path)
    record_path = path.with_suffix(".json")
    if not path.exists() or not record_path.exists():
        raise FileNotFoundError(
            f"no generator checkpoint at {path} (with its record {record_path.name}); "
            "train one with `python -m gi_tutorial.generators --out PATH`"
        )
    record = json.loads(record_path.read_text())
    if verify_hash:
        actual = sha256_of(path)
        if actual != record["sha256"]:
            raise ValueError(
                f"{path} has sha256 {actual[:16]}..., but its record says {record['sha256'][:16]}...: "
                "the checkpoint is corrupt or was replaced; re-train it with the command in "
                f"{record_path.name} or restore the file"
            )
    generator = Generator(record["z_dim"], record["channels"], record["width"])
    generator.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # float16 is cast to float32
    generator.trained_on = record.get("trained_on", "data")
    return generator.eval()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Train the book's DCGAN on the Fashion-MNIST train split.")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(DEFAULT_CHECKPOINT))
    args = parser.parse_args(argv)
    from . import config, data

    config.set_threads()
    images, _ = data.fashion_mnist("train")
    start = time.perf_counter()
    generator = train_gan(images, args.steps, args.batch_size, args.seed, log_every=250)
    seconds = time.perf_counter() - start
    record = save_checkpoint(
        generator,
        args.out,
        data=f"Fashion-MNIST train split, {len(images)} images, zero-padded to 32x32",
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        seconds=round(seconds, 1),
        torch=torch.__version__,
        command=f"python -m gi_tutorial.generators --steps {args.steps} --seed {args.seed} "
        f"--batch-size {args.batch_size} --out {args.out}",
    )
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
