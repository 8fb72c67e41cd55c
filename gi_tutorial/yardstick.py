"""The yardstick: what an attacker gets with no gradient at all, and the pool identification ranks against.

A reconstruction's PSNR means little on its own. On Fashion-MNIST a guess that uses only
the label (the mean of the public images of that class) scores about 15 dB, and a random
sample of a generator trained on the same kind of data about 12 dB. A result that such a
guess also reaches is not a leak. So every score in the book stands beside its **floors**,
guesses that use no gradient (each with its threat model):

- **mean image**: the mean of a public sample of the data distribution, for every image
  (threat model D: surrogate data, nothing of the client);
- **label only**: the public sample's mean image of each shared label (threat model D: the
  labels, which the protocol shares or the gradient gives exactly, and surrogate data);
- **prior sample**: a random sample of the generative prior in play (what the prior gives
  before any gradient; D for a generator trained on data, C for one learned from gradients).

The floors are matched to the truth like the attacks (Hungarian matching over the batch), so
they get the same benefit of the doubt.

Identification ranks by SSIM, not PSNR. Measured on held-out test images 7000+ (victims S and
A, batch 4 to 16, 3 seeds, chapter 4's budgets; ``python benchmarks/identification_score.py``),
both scores leave the floors at their chance level (at most 1.6 % of images identified, for
about 1 % chance), and SSIM credits more of the attacks' reconstructions (GI-x 86 % against
81 % by PSNR, GIAS 93 % against 90 %): it compares local structure after normalising local
brightness and contrast, which an attack that matches the gradient's direction (the cosine
distance) leaves loosely determined. :func:`gi_tutorial.attacks.score` records both rates.

Beside PSNR, :func:`gi_tutorial.metrics.identification` asks whether the reconstruction is
closer to its own true image than to ``k`` other images of the same class, drawn from a
**pool** disjoint from every target. A plausible garment of the right class fails; a leak
passes. The floors measure its chance level, which matching over a batch can raise above
``1 / (k + 1)``.

Data: the public sample is the train split (the data the book's DCGAN was trained on); the
pool is Fashion-MNIST test images 8000 to 9999 (chapters draw their targets below 8000).
Where only the 20 test images of the foolbox wheel exist (quick mode on a fresh machine), both
fall back to those images, leaving out the targets: every code path runs, and the numbers are
labelled as a stand-in. On CIFAR-10 offline, the pool is the other shipped test images, ranked
regardless of class (2 per class would make same-class ranking meaningless).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from . import data
from .config import is_quick
from .metrics import Identification, identification

POOL_FIRST = 8000  # Fashion-MNIST test images from here on are the identification pool; targets come from below
K_CANDIDATES = 99  # same-class candidates per image: chance 1 % before matching


@dataclass
class Yardstick:
    """The public sample (for the floors) and the identification pool, with how to rank."""

    public_images: torch.Tensor  # (N, C, H, W): the attacker's public sample of the data distribution
    public_labels: torch.Tensor  # (N,)
    pool_images: torch.Tensor  # (M, C, H, W): identification candidates, disjoint from every target
    pool_labels: torch.Tensor  # (M,)
    k: int = K_CANDIDATES
    same_class: bool = True
    score: Literal["psnr", "ssim"] = "ssim"  # why SSIM: see the module docstring
    description: str = ""
    _class_means: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def mean_image(self, batch_size: int) -> torch.Tensor:
        """The public sample's mean image, ``batch_size`` times."""
        return self.public_images.mean(0, keepdim=True).expand(batch_size, -1, -1, -1).clone()

    def label_only(self, labels: torch.Tensor) -> torch.Tensor:
        """For each label, the mean public image of that class (the global mean for a class it lacks)."""
        out = []
        for label in labels.cpu().tolist():
            if label not in self._class_means:
                members = self.public_images[self.public_labels == label]
                self._class_means[label] = (members if len(members) else self.public_images).mean(0)
            out.append(self._class_means[label])
        return torch.stack(out)

    @staticmethod
    @torch.no_grad()
    def prior_sample(generator: nn.Module, batch_size: int, seed: int = 0) -> torch.Tensor:
        """``batch_size`` random samples ``G(z)``, ``z ~ N(0, I)``, on the CPU."""
        device = next(generator.parameters()).device
        z = torch.randn(batch_size, generator.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
        return generator.eval()(z).cpu()

    def identify(
        self,
        matched: torch.Tensor,
        truth: torch.Tensor,
        truth_labels: torch.Tensor,
        score: Literal["psnr", "ssim"] | None = None,
    ) -> Identification:
        """Identification of matched reconstructions against this pool (see :func:`~gi_tutorial.metrics.identification`),
        ranked by ``score`` (default: the yardstick's)."""
        score = score or self.score
        if self.same_class:
            return identification(
                matched,
                truth,
                self.pool_images,
                truth_labels=truth_labels,
                candidate_labels=self.pool_labels,
                k=self.k,
                score=score,
            )
        return identification(matched, truth, self.pool_images, k=self.k, score=score)


def _without(
    images: torch.Tensor, labels: torch.Tensor, exclude: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop every image that equals one in ``exclude`` (the targets), pixel for pixel."""
    if exclude is None or len(exclude) == 0:
        return images, labels
    flat, targets = images.flatten(1), exclude.detach().cpu().flatten(1)
    keep = torch.ones(len(images), dtype=torch.bool)
    for t in targets:
        keep &= (flat != t).any(dim=1)
    return images[keep], labels[keep]


def fashion_mnist(
    exclude: torch.Tensor | None = None, *, k: int = K_CANDIDATES, score: Literal["psnr", "ssim"] = "psnr"
) -> Yardstick:
    """The yardstick of chapters 3 to 7: the train split as public sample, test images 8000+ as the pool.

    Falls back to the 20 shipped test images (minus ``exclude``, the targets), ranked regardless
    of class, where the splits cannot be loaded, and says so in ``description``.
    """
    try:
        public, public_labels = data.fashion_mnist("train", allow_download=not is_quick())
        test, test_labels = data.fashion_mnist("test", allow_download=not is_quick())
        pool, pool_labels = test[POOL_FIRST:], test_labels[POOL_FIRST:]
        description = (
            f"public sample: the {len(public):,} Fashion-MNIST train images; identification pool: test "
            f"images {POOL_FIRST} to {len(test) - 1}, up to {k} of the same class per image"
        )
    except data.DataNotFoundError:
        public, public_labels = data.fashion_mnist("test", data.NUM_SHIPPED)
        public, public_labels = _without(public, public_labels, exclude)
        # 20 images leave some classes without a second member: rank against all of them, as cifar10() does
        description = (
            f"stand-in (the Fashion-MNIST splits are not on this machine): the {len(public)} shipped test "
            "images that are not targets, of any class, serve as public sample and pool"
        )
        return Yardstick(
            public,
            public_labels,
            public,
            public_labels,
            k=len(public),
            same_class=False,
            score=score,
            description=description,
        )
    pool, pool_labels = _without(pool, pool_labels, exclude)
    return Yardstick(
        public, public_labels, pool, pool_labels, k=k, same_class=True, score=score, description=description
    )


def cifar10(exclude: torch.Tensor | None = None, *, score: Literal["psnr", "ssim"] = "psnr") -> Yardstick:
    """The yardstick of chapters 1 and 2 (CIFAR-10).

    With the train and test splits (torchvision's download, e.g. in Colab): the train split as
    public sample, test images 8000+ as the pool, 99 same-class candidates. Offline, only the 20
    shipped test images exist: the pool is the shipped images that are not targets, ranked
    regardless of class, and the public sample is the same images.
    """
    try:
        public, public_labels = data.load_dataset("cifar10", "train", allow_download=not is_quick())
        test, test_labels = data.load_dataset("cifar10", "test", allow_download=not is_quick())
        pool, pool_labels = _without(test[POOL_FIRST:], test_labels[POOL_FIRST:], exclude)
        return Yardstick(
            public,
            public_labels,
            pool,
            pool_labels,
            k=K_CANDIDATES,
            same_class=True,
            score=score,
            description=f"public sample: the {len(public):,} CIFAR-10 train images; identification "
            f"pool: test images {POOL_FIRST}+, up to {K_CANDIDATES} of the same class",
        )
    except data.DataNotFoundError:
        shipped, shipped_labels = data.cifar10_targets(data.NUM_SHIPPED)
        others, other_labels = _without(shipped, shipped_labels, exclude)
        return Yardstick(
            others,
            other_labels,
            others,
            other_labels,
            k=len(others),
            same_class=False,
            score=score,
            description=f"offline: the {len(others)} other shipped CIFAR-10 test images, of any class, "
            "serve as public sample and identification pool",
        )
