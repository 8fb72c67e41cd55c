"""How close a reconstruction is to the truth: PSNR, SSIM, LPIPS, after matching the batch.

A batch gradient is an average, so it does not say which reconstructed image is which:
:func:`match_batch` pairs reconstructions with true images (Hungarian algorithm on the
mean squared error) before any score is computed.

- PSNR and SSIM come from torchmetrics (SSIM with an 11x11 Gaussian window, sigma 1.5,
  as in Wang et al., 2004), on images in [0, 1]. torchmetrics averages the SSIM map over
  the whole image, border included (reflect-padded); scikit-image averages only the
  interior, so on 32x32 images the two differ in the third decimal.
- LPIPS (Zhang et al., 2018) needs ImageNet AlexNet weights, which torchvision downloads
  (233 MB). :func:`load_lpips` loads them where they can be had (online, or cached in
  ``$TORCH_HOME/hub/checkpoints``) and otherwise returns an :class:`LPIPSMetric` whose
  ``available`` is False and whose ``reason`` says why: tables then say "not computed".
  A random backbone is never substituted.
- Every function accepts tensors on any device (the attack may run on a GPU) and
  returns CPU tensors or Python floats: scores are small, and NumPy/SciPy need the CPU.
- 40 dB is a root-mean-square error of 1% of the pixel range (about 2.5 of 255 grey
  levels): the eye sees no difference, but it is not a copy. Above it, PSNR keeps growing
  with every digit the optimiser gains and a mean is dominated by the best images, so
  :func:`summarize` also reports PSNR capped at 40 dB and the share of images above a
  threshold.
- PSNR flatters: on Fashion-MNIST a guess from the label alone (the class-mean image) scores
  about 15 dB. :func:`identification` asks what PSNR cannot: is a reconstruction closer to its
  own true image than to K other images of the same class? A plausible garment of the right
  class is not; a leak is. Its chance level, for a guess that uses no gradient, is measured
  with the floors of :mod:`gi_tutorial.yardstick`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

# torchmetrics (about 3 s to import, most of it torchvision, which it imports) and scipy.optimize are
# imported by the functions that use them, so that a chapter or a process that scores nothing does
# not pay for them.
from .storage import download, sha256_of

PSNR_CAP = 40.0
PSNR_EXACT = 100.0  # an exact copy (PSNR inf in float32) counts as this in a plain mean
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def _cpu_pair(reconstruction: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as detached float32 CPU tensors, after checking that they are (B, C, H, W) and of one shape."""
    if reconstruction.ndim != 4 or reconstruction.shape != truth.shape:
        raise ValueError(
            "reconstruction and truth must both be (B, C, H, W) and of the same shape, got "
            f"{tuple(reconstruction.shape)} and {tuple(truth.shape)}"
        )
    return reconstruction.detach().cpu().float(), truth.detach().cpu().float()


def psnr(reconstruction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1], ``(B,)`` on the CPU; an exact copy gives inf.

    ``PSNR = 10 log10(1 / MSE)``, the mean squared error taken over each image's pixels.

    >>> x = torch.zeros(1, 1, 4, 4)
    >>> round(psnr(x + 0.1, x).item(), 4)
    20.0

    Raises:
        ValueError: inputs that are not two (B, C, H, W) batches of one shape.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    r, t = _cpu_pair(reconstruction, truth)
    return peak_signal_noise_ratio(r, t, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(reconstruction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Gaussian window, sigma 1.5) for images in [0, 1], ``(B,)`` on the CPU.

    Raises:
        ValueError: inputs that are not two (B, C, H, W) batches of one shape.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    r, t = _cpu_pair(reconstruction, truth)
    return structural_similarity_index_measure(r, t, data_range=1.0, reduction="none")


def match_batch(reconstruction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The order of the reconstruction that best matches the truth: ``reconstruction[order]`` pairs with ``truth``.

    The order is an int64 CPU tensor (index a tensor on another device with ``order.to(device)``).

    >>> truth = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    >>> match_batch(truth.flip(0), truth).tolist()
    [1, 0]

    Raises:
        ValueError: inputs that are not two (B, C, H, W) batches of one shape.
    """
    from scipy.optimize import linear_sum_assignment

    r, t = _cpu_pair(reconstruction, truth)
    cost = torch.cdist(t.flatten(1).double(), r.flatten(1).double()).pow(2).numpy()  # (truth, reconstruction)
    _, columns = linear_sum_assignment(cost)
    return torch.as_tensor(columns, dtype=torch.int64)


class LPIPSMetric:
    """LPIPS with the AlexNet backbone, or an explicit "not computed" when the weights are missing."""

    def __init__(self, model: torch.nn.Module | None, reason: str = ""):
        self.model = model
        self.reason = reason

    @property
    def available(self) -> bool:
        return self.model is not None

    @torch.no_grad()
    def __call__(self, reconstruction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor | None:
        """Per-image LPIPS ``(B,)`` on the CPU (lower is closer), or None when not available.

        Raises:
            ValueError: inputs that are not two (B, C, H, W) batches of one shape.
        """
        if self.model is None:
            return None
        r, t = _cpu_pair(reconstruction, truth)
        device = next(self.model.parameters()).device
        r, t = r.to(device), t.to(device)
        if r.shape[1] == 1:  # the backbone expects RGB
            r, t = r.expand(-1, 3, -1, -1), t.expand(-1, 3, -1, -1)
        return self.model(r, t, normalize=True).flatten().cpu()  # normalize: [0, 1] -> [-1, 1]


def alexnet_checkpoint_path(checkpoint_dir: str | os.PathLike | None = None) -> Path:
    """Where torchvision caches the AlexNet weights (``$TORCH_HOME/hub/checkpoints`` by default)."""
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    return folder / Path(ALEXNET_URL).name


def load_lpips(
    allow_download: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    verify_hash: bool = True,
) -> LPIPSMetric:
    """LPIPS (AlexNet) if its ImageNet backbone can be had, else a metric that says why not.

    Args:
        allow_download: fetch the backbone (233 MB) when it is not cached: each read under a
            socket timeout (offline, this fails fast) and the whole under a deadline
            (:func:`gi_tutorial.storage.download`), so a trickling network cannot stall a chapter.
        checkpoint_dir: folder of the cached ``alexnet-owt-7be5be79.pth``.
        verify_hash: check the file's sha256 prefix (``7be5be79``, part of its name).

    Raises:
        ValueError: a cached file whose hash does not match (it is corrupt or not AlexNet).
    """
    path = alexnet_checkpoint_path(checkpoint_dir)
    if not path.exists():
        if not allow_download:
            return LPIPSMetric(None, f"LPIPS not computed: the AlexNet weights are not cached at {path}")
        try:
            download(ALEXNET_URL, path, sha256_prefix=path.stem.split("-")[-1])
        except Exception as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            return LPIPSMetric(None, f"LPIPS not computed: the AlexNet weights could not be downloaded ({reason})")
    if verify_hash:
        prefix = path.stem.split("-")[-1]
        actual = sha256_of(path)
        if not actual.startswith(prefix):
            raise ValueError(
                f"{path} has sha256 {actual[:16]}..., expected a digest starting with {prefix}: "
                "the file is corrupt or not torchvision's AlexNet; delete it and download again"
            )
    return LPIPSMetric(_build_lpips(torch.load(path, map_location="cpu", weights_only=True)))


def _build_lpips(alexnet_state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """lpips' network with its shipped linear layers and the given AlexNet backbone weights."""
    import warnings

    import lpips
    import torchvision

    with warnings.catch_warnings():  # lpips 0.1.4 passes torchvision's deprecated `pretrained` flag
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)  # random trunk, replaced below
    alexnet = torchvision.models.alexnet(weights=None)
    alexnet.load_state_dict(alexnet_state)
    for block in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
        for name, layer in block.named_children():
            layer.load_state_dict(alexnet.features[int(name)].state_dict())
    return model.eval()


@dataclass
class Scores:
    """Per-image scores of a matched batch; ``lpips`` is None when not computed."""

    psnr: torch.Tensor
    ssim: torch.Tensor
    lpips: torch.Tensor | None
    order: torch.Tensor  # reconstruction[order] pairs with truth


def evaluate(
    reconstruction: torch.Tensor,
    truth: torch.Tensor,
    lpips_metric: LPIPSMetric | None = None,
    match: bool = True,
) -> Scores:
    """Clamp the reconstruction to [0, 1], match the batch (unless ``match=False``), then score every image.

    Inputs may live on any device; every score in the result is a CPU tensor.

    Raises:
        ValueError: inputs that are not two (B, C, H, W) batches of one shape.
    """
    reconstruction, truth = _cpu_pair(reconstruction, truth)
    reconstruction = reconstruction.clamp(0, 1)
    order = match_batch(reconstruction, truth) if match else torch.arange(len(truth))
    matched = reconstruction[order]
    return Scores(
        psnr=psnr(matched, truth),
        ssim=ssim(matched, truth),
        lpips=lpips_metric(matched, truth) if lpips_metric is not None else None,
        order=order,
    )


def summarize(scores: Scores, cap: float = PSNR_CAP, threshold: float = 30.0) -> dict[str, float | None]:
    """Batch means: PSNR (exact copies count as 100 dB), PSNR capped at ``cap``, share of images above ``threshold`` dB, SSIM, LPIPS."""
    p = scores.psnr.double()
    return {
        "psnr": float(p.clamp(max=PSNR_EXACT).mean()),
        "psnr_capped": float(p.clamp(max=cap).mean()),
        "share_above": float((p > threshold).double().mean()),
        "ssim": float(scores.ssim.mean()),
        "lpips": float(scores.lpips.mean()) if scores.lpips is not None else None,
    }


@dataclass
class Identification:
    """Per image: is the reconstruction closer to its own true image than to every candidate?"""

    identified: torch.Tensor  # (B,) bool
    rank: torch.Tensor  # (B,) int64: 1 when the true image scores strictly best; ties count against it
    candidates: torch.Tensor  # (B,) int64: how many candidates the true image was ranked against

    @property
    def rate(self) -> float:
        """The share of images identified."""
        return float(self.identified.double().mean())

    @property
    def chance(self) -> float:
        """The rate a guess unrelated to the images would get, ``mean_b 1 / (K_b + 1)`` (before any matching)."""
        return float((1.0 / (self.candidates.double() + 1)).mean())


def identification(
    matched: torch.Tensor,
    truth: torch.Tensor,
    candidates: torch.Tensor,
    *,
    truth_labels: torch.Tensor | None = None,
    candidate_labels: torch.Tensor | None = None,
    k: int | None = None,
    score: Literal["psnr", "ssim"] = "psnr",
) -> Identification:
    """Rank each true image among candidates by how well the reconstruction matches it.

    For image ``b``, the candidates are the first ``k`` images of ``candidates`` (with the label of
    ``truth[b]`` when labels are given), leaving out any exact copy of ``truth[b]``. The image
    counts as identified when ``score(matched[b], truth[b])`` is strictly above its score against
    every candidate. ``score`` is the PSNR (a distance in pixels) or the SSIM.

    Args:
        matched: reconstructions ``(B, C, H, W)``, already paired with ``truth`` (see :func:`evaluate`).
        truth: the true images ``(B, C, H, W)``.
        candidates: a pool ``(N, C, H, W)`` of other images, disjoint from the targets.
        truth_labels, candidate_labels: ``(B,)`` and ``(N,)``: rank among images of the same class.
        k: at most this many candidates per image (default: all that qualify).
        score: ``"psnr"`` or ``"ssim"``.

    Raises:
        ValueError: shapes that do not fit, labels given for only one side, an unknown score, or an
            image with no candidate at all.

    >>> truth = torch.stack([torch.full((1, 4, 4), v) for v in (0.2, 0.8)])
    >>> pool = torch.stack([torch.full((1, 4, 4), v) for v in (0.0, 0.5, 1.0)])
    >>> identification(truth + 0.01, truth, pool).identified.tolist()
    [True, True]
    """
    m, t = _cpu_pair(matched, truth)
    m = m.clamp(0, 1)
    pool = candidates.detach().cpu().float()
    if pool.ndim != 4 or pool.shape[1:] != t.shape[1:]:
        raise ValueError(f"candidates must be (N, {', '.join(map(str, t.shape[1:]))}), got {tuple(pool.shape)}")
    if (truth_labels is None) != (candidate_labels is None):
        raise ValueError("give both truth_labels and candidate_labels (same-class candidates), or neither")
    if score not in ("psnr", "ssim"):
        raise ValueError(f"score must be 'psnr' or 'ssim', got {score!r}")
    flat_pool = pool.flatten(1)
    identified, ranks, counts = [], [], []
    for b in range(len(t)):
        keep = (flat_pool != t[b].flatten()).any(dim=1)  # never rank an image against itself
        if truth_labels is not None:
            keep &= candidate_labels.cpu() == truth_labels[b].cpu()
        chosen = pool[keep.nonzero().flatten()[:k] if k is not None else keep.nonzero().flatten()]
        if len(chosen) == 0:
            raise ValueError(
                f"image {b} has no candidate to be ranked against (same class: {truth_labels is not None})"
            )
        others = torch.cat([t[b : b + 1], chosen])  # the truth first
        reference = m[b : b + 1].expand(len(others), -1, -1, -1)
        scores = psnr(reference, others) if score == "psnr" else ssim(reference, others)
        scores = torch.nan_to_num(scores, posinf=1e9)  # an exact match is the best possible score
        rank = 1 + int((scores[1:] >= scores[0]).sum())
        identified.append(rank == 1)
        ranks.append(rank)
        counts.append(len(chosen))
    return Identification(torch.tensor(identified), torch.tensor(ranks), torch.tensor(counts))
