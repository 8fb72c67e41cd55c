"""How well a shared gradient pins down the images: the singular spectrum of its Jacobian.

Counting (:func:`gi_tutorial.analytic.count`) says whether there are enough independent
equations; it cannot say whether they are *good* ones. That is the Jacobian's job. At the
client's true batch ``x*`` (its labels, the model in the mode the client used), let
``g(x)`` be the shared gradient as a function of the images and ``J = dg/dx`` its Jacobian,
``(gradient entries) x (unknown pixels)``. To first order, moving the batch by ``dx`` moves
the gradient by ``J dx``, so the singular values ``s_1 >= ... >= s_n`` of ``J`` say how
strongly each direction of image space shows in the gradient:

- ``s_i = 0``: the direction is invisible to first order; the batch is not identifiable
  locally (rank deficiency: under-determined in fact, not just by count);
- ``s_i > 0`` but tiny next to ``s_1``: the direction is visible in exact arithmetic, but a
  small error in matching the gradient is a large error in the images (ill-conditioned);
- ``J^T J`` is also the Gauss-Newton Hessian of the L2 gradient-matching loss at the true
  batch (the residual is zero there), so its eigenvalues ``s_i^2`` are the curvature that
  DLG's loss has around the answer.

Everything is computed with ``torch.func`` (forward-mode ``jvp`` columns, vectorised with
``vmap``; ``vjp`` for the operator of :func:`largest_singular_values`), in float64 so that the
measurement itself adds no rounding the attacker would not have. Two ways:

- :func:`gram`: ``J^T J`` (unknowns x unknowns) in float64, its eigenvalues by LAPACK: every
  singular value, for up to about 10^4 unknowns. When the model treats each image on its own
  (no BatchNorm in train mode), ``J = [J_1 ... J_B] / B`` with ``J_b`` the single-image
  Jacobian, so only ``B`` Jacobians of one image are computed, and the Gram matrix of the
  first ``k`` images is a corner of the one of ``B`` (:func:`nested_spectra`). Big Jacobians
  go through a scratch file on disk.
- :func:`largest_singular_values`: the largest few by Lanczos (``scipy.sparse.linalg.svds``
  on a ``LinearOperator`` made of ``jvp`` and ``vjp``), for cases whose Gram matrix is too
  big to form. The smallest ones are out of a Krylov method's reach in practice (they are
  clustered near 0; see there).

Summaries (:class:`Spectrum`): the numerical rank at float32 precision (tolerance
:data:`RTOL_FLOAT32`, justified there), the rank deficit (unknowns minus that rank), the
entropy effective rank of Roy and Vetterli (2007), the smallest singular values, the
condition number of the well-determined part (``s_1`` over the smallest singular value
above the tolerance), and the relative condition number of recovering the images from the
gradient, ``||g|| / (||x|| s_r)``: how far a relative error in matching the gradient can
carry the images. R-GAP (Zhu and Blaschko, 2021) first argued that the rank of these
equations, not their number, decides; this module measures it for whole networks.

The benchmark ``benchmarks/conditioning.py`` measures victims S, A and B at batch sizes 1, 4
and 8 and ships the result; :func:`load_shipped` reads it.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jvp, vjp, vmap

from . import analytic
from .storage import RESULTS, load_results

SHIPPED = RESULTS / "conditioning.json"

# The numerical rank counts singular values above RTOL_FLOAT32 * s_1. The attacker's gradients
# are float32: by Weyl's inequality, a singular value of the exact J below ||J32 - J||_2 (the
# error float32 arithmetic makes in J itself) cannot be told from zero by anyone computing in
# float32. ||J32 - J||_2 / s_1 measured 1.78e-7, 1.93e-7 and 1.74e-7 on victims S, A and B
# (seed 0, Fashion-MNIST test image 9000; benchmarks/conditioning.py ships them, and
# tests/test_conditioning.py checks victim S's against the bound); 1e-6 sits five times above
# them. It also sits above what the float64 Gram matrix resolves (about sqrt(eps64) * s_1 =
# 1.5e-8 s_1: eigenvalues of J^T J carry an absolute error of about eps64 * s_1^2).
RTOL_FLOAT32 = 1e-6


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _functional_copy(model: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A copy of the model in its own mode, in ``dtype``, whose BatchNorm layers do not update running statistics.

    In train mode BatchNorm normalises with the batch's statistics either way; not tracking
    the running ones keeps the copy stateless, which ``vmap`` needs.
    """
    local = copy.deepcopy(model).to(device=device, dtype=dtype)
    for m in local.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
    return local


def couples_batch(model: nn.Module) -> bool:
    """True when one image's gradient depends on the others (BatchNorm in train mode).

    Otherwise the mean gradient is the mean of per-image gradients, and the Jacobian splits
    into one block per image.
    """
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


def gradient_function(
    model: nn.Module, labels: torch.Tensor, dtype: torch.dtype = torch.float64
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> g(x)``: the flattened gradient of the mean cross-entropy, as the client computes it, in ``dtype``.

    The model runs in the mode it is in (a copy, so its BatchNorm statistics are not touched);
    the result has one entry per trainable parameter, in ``model.parameters()`` order, like
    :func:`gi_tutorial.fl.client_update`. The function is made of ``torch.func`` transforms, so
    it can be differentiated again (``jvp``, ``vjp``, ``vmap``).
    """
    device = labels.device
    local = _functional_copy(model, dtype, device)
    trainable = {name: p.detach() for name, p in local.named_parameters() if p.requires_grad}
    frozen = {name: p.detach() for name, p in local.named_parameters() if not p.requires_grad}
    buffers = dict(local.named_buffers())

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(local, {**params, **frozen, **buffers}, (x,)), labels)

    def g(x: torch.Tensor) -> torch.Tensor:
        return _flat(list(torch.func.grad(loss)(trainable, x).values()))

    return g


def _checked(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor of shape (B, C, H, W), got {tuple(images.shape)}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({images.shape[0]},), got {tuple(labels.shape)}")


def _columns(g: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """``J e_j`` for the unit vectors ``e_start ... e_{stop-1}`` of x's flattened entries: ``(stop - start, P)``."""
    n = x.numel()
    tangents = torch.zeros(stop - start, n, dtype=x.dtype, device=x.device)
    tangents[torch.arange(stop - start), torch.arange(start, stop)] = 1
    return vmap(lambda t: jvp(g, (x,), (t.reshape(x.shape),))[1])(tangents)


def _jacobian_rows_t(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype, chunk: int, per_image: bool
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(column offset, J^T rows)`` blocks of the batch's Jacobian (per-image Jacobians, unscaled, if ``per_image``)."""
    # a copy, never a view: forward-mode AD on a view makes a tangent for the view's whole base
    # (a batch sliced from the test set would cost a test set's worth of zeros per column)
    x = images.detach().to(dtype=dtype, copy=True)
    if per_image:
        for b in range(len(x)):
            g = gradient_function(model, labels[b : b + 1], dtype)
            d = x[b : b + 1].numel()
            for j in range(0, d, chunk):
                yield b * d + j, _columns(g, x[b : b + 1], j, min(j + chunk, d))
    else:
        g = gradient_function(model, labels, dtype)
        for j in range(0, x.numel(), chunk):
            yield j, _columns(g, x, j, min(j + chunk, x.numel()))


def jacobian(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype = torch.float64, chunk: int = 64
) -> torch.Tensor:
    """The dense Jacobian ``dg/dx`` of the shared gradient w.r.t. the batch, ``(P, B*C*H*W)``, by forward mode.

    ``P`` is the number of gradient entries (trainable parameters). For small cases only:
    the matrix is ``P * B*C*H*W`` numbers.

    Raises:
        ValueError: images that are not ``(B, C, H, W)`` float, or labels that do not match them.
    """
    _checked(model, images, labels)
    _numpy_dtype(dtype)
    rows_t = [block for _, block in _jacobian_rows_t(model, images, labels, dtype, chunk, per_image=False)]
    return torch.cat(rows_t).T


def _scratch_array(shape: tuple[int, int], dtype: np.dtype, memory_limit: int, folder: str | None):
    """An array in memory when it fits in ``memory_limit`` bytes, else a file-backed one (returns its path too)."""
    if np.prod(shape) * np.dtype(dtype).itemsize <= memory_limit:
        return np.empty(shape, dtype=dtype), None
    handle = tempfile.NamedTemporaryFile(dir=folder, prefix="gi_jacobian_", suffix=".bin", delete=False)
    handle.close()
    return np.memmap(handle.name, dtype=dtype, mode="w+", shape=shape), handle.name


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return np.dtype(np.float32 if dtype == torch.float32 else np.float64)


def _gram_of_rows(jt: np.ndarray, d: int, row_block: int) -> torch.Tensor:
    """``J^T J`` in float64 from ``jt = J^T`` (unknowns x entries), by blocks of ``row_block`` rows of ``J``.

    Only the upper blocks of ``d`` x ``d`` are multiplied (half the work of ``J^T J`` at once).
    """
    n, num_entries = jt.shape
    gram_matrix = torch.zeros(n, n, dtype=torch.float64)
    for r in range(0, num_entries, row_block):
        rows = torch.from_numpy(np.ascontiguousarray(jt[:, r : r + row_block], dtype=np.float64))  # (n, R)
        for b in range(0, n, d):
            for c in range(b, n, d):
                gram_matrix[b : b + d, c : c + d] += rows[b : b + d] @ rows[c : c + d].T
    for b in range(0, n, d):  # mirror the upper blocks
        gram_matrix[b : b + d, b : b + d] = (
            torch.triu(gram_matrix[b : b + d, b : b + d]) + torch.triu(gram_matrix[b : b + d, b : b + d], 1).T
        )
        for c in range(b + d, n, d):
            gram_matrix[c : c + d, b : b + d] = gram_matrix[b : b + d, c : c + d].T
    return gram_matrix


def _gram_from_blocks(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    dtype: torch.dtype,
    chunk: int,
    memory_limit: int,
    scratch: str | os.PathLike | None,
    row_block: int,
    per_image: bool,
) -> torch.Tensor:
    """``J^T J`` (or the per-image ``K``), from Jacobian columns computed in ``dtype`` and multiplied in float64."""
    n = images.numel()
    num_entries = sum(p.numel() for p in model.parameters() if p.requires_grad)
    jt, path = _scratch_array(
        (n, num_entries), _numpy_dtype(dtype), memory_limit, None if scratch is None else str(scratch)
    )
    try:
        for offset, block in _jacobian_rows_t(model, images, labels, dtype, chunk, per_image):
            jt[offset : offset + len(block)] = block.cpu().numpy()
        return _gram_of_rows(jt, images[0].numel() if per_image else n, row_block)
    finally:
        if path is not None:
            del jt
            os.unlink(path)


def image_gram(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    dtype: torch.dtype = torch.float64,
    chunk: int = 32,
    memory_limit: int = 2 << 30,
    scratch: str | os.PathLike | None = None,
    row_block: int = 8192,
) -> torch.Tensor:
    """The Gram matrix of the per-image Jacobians, ``K[b, c] = J_b^T J_c`` (blocks of ``C*H*W``), in float64.

    ``J_b`` is the Jacobian of image ``b``'s *own* gradient (its loss alone) w.r.t. its pixels.
    For a model that treats each image on its own (:func:`couples_batch` is False), the
    shared gradient of the first ``k`` images is the mean of theirs, so its Gram matrix
    ``J^T J`` is ``K[:k*d, :k*d] / k**2`` (``d = C*H*W``): one call serves every nested batch.

    Args:
        dtype: the precision of the Jacobians themselves (the model runs in it); their
            products are always summed in float64. float64 (default) is the exact map;
            float32 is the attacker's own arithmetic, within :func:`float32_error` of it,
            and about twice as fast.
        chunk: Jacobian columns per ``vmap``-ed ``jvp``.
        memory_limit: the Jacobians (``P x B*d`` numbers) stay in memory up to this many
            bytes, else go to a scratch file under ``scratch`` (default: the system's
            temporary folder), deleted afterwards.
        row_block: rows of ``J`` multiplied at a time.

    Raises:
        ValueError: a model that couples the images of a batch (use :func:`gram`), a batch
            that is not ``(B, C, H, W)`` with matching labels, or a dtype other than float32/64.
    """
    _checked(model, images, labels)
    if couples_batch(model):
        raise ValueError(
            "the model couples the images of a batch (BatchNorm in train mode): per-image Jacobians "
            "do not add up to the batch's; use gram(...) instead"
        )
    return _gram_from_blocks(model, images, labels, dtype, chunk, memory_limit, scratch, row_block, per_image=True)


def gram(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    dtype: torch.dtype = torch.float64,
    chunk: int = 32,
    memory_limit: int = 2 << 30,
    scratch: str | os.PathLike | None = None,
) -> torch.Tensor:
    """``J^T J`` for the shared gradient of the batch, ``(B*C*H*W, B*C*H*W)`` in float64.

    Through per-image Jacobians when the model treats each image on its own, else through
    the whole batch's (BatchNorm in train mode: every image's pixels move every image's
    gradient). Options as in :func:`image_gram`.

    Raises:
        ValueError: a batch that is not ``(B, C, H, W)`` with matching labels.
    """
    _checked(model, images, labels)
    if couples_batch(model):
        return _gram_from_blocks(model, images, labels, dtype, chunk, memory_limit, scratch, 8192, per_image=False)
    return image_gram(model, images, labels, dtype, chunk, memory_limit, scratch) / len(images) ** 2


@dataclass(frozen=True)
class Spectrum:
    """The singular values of ``J = dg/dx`` at a true batch, with what they are compared against.

    Attributes:
        singular_values: one per unknown (``n`` of them; when the gradient has fewer entries
            than unknowns, the extra ones are 0), in decreasing order, float64: square roots
            of the Gram matrix's eigenvalues (negative rounding clipped to 0).
        equations: independent gradient entries (:func:`gi_tutorial.analytic.count`).
        entries: all gradient entries.
        gradient_norm: ``||g(x*)||``.
        image_norm: ``||x*||``, the true batch's pixels as one vector. With the gradient's
            norm it turns singular values into relative terms: moving the batch by a relative
            ``t`` along direction ``i`` moves the gradient by a relative
            ``t * s_i * image_norm / gradient_norm`` (to first order).
    """

    singular_values: np.ndarray
    equations: int
    entries: int
    gradient_norm: float
    image_norm: float

    @property
    def unknowns(self) -> int:
        return len(self.singular_values)

    @property
    def largest(self) -> float:
        return float(self.singular_values[0])

    def relative(self) -> np.ndarray:
        """``s_i / s_1``."""
        return self.singular_values / self.singular_values[0]

    def rank(self, rtol: float = RTOL_FLOAT32) -> int:
        """Singular values above ``rtol * s_1`` (default: the float32 numerical rank, see :data:`RTOL_FLOAT32`)."""
        return int((self.relative() > rtol).sum())

    @property
    def numerical_rank(self) -> int:
        return self.rank()

    @property
    def rank_deficit(self) -> int:
        """Unknowns minus the numerical rank: directions the gradient does not see at float32 precision."""
        return self.unknowns - self.numerical_rank

    @property
    def effective_rank(self) -> float:
        """Roy and Vetterli's (2007) entropy effective rank, ``exp(-sum p_i log p_i)`` with ``p_i = s_i / sum s``.

        Equal to ``k`` for ``k`` equal non-zero singular values; smaller when a few dominate.

        >>> round(Spectrum(np.array([2.0, 2.0, 0.0]), 3, 3, 1.0, 1.0).effective_rank, 6)
        2.0
        """
        p = self.singular_values[self.singular_values > 0]
        p = p / p.sum()
        return float(np.exp(-(p * np.log(p)).sum()))

    @property
    def condition_number(self) -> float:
        """``s_1`` over the smallest singular value above the tolerance: the well-determined part's condition number.

        Infinite when no singular value is above it (a gradient that does not depend on the images).
        """
        rank = self.numerical_rank
        return float(self.singular_values[0] / self.singular_values[rank - 1]) if rank else math.inf

    @property
    def relative_condition_number(self) -> float:
        """How much a relative error in the gradient can grow in the images: ``||g|| / (||x|| s_r)``.

        The textbook condition number of recovering ``x`` from ``g`` (to first order): a gradient
        matched to a relative error ``e`` leaves the images uncertain by a relative error up to
        ``e`` times this, along the weakest direction the gradient still sees (``s_r``, the
        smallest singular value above the tolerance). Unlike :attr:`condition_number` it also
        counts how weak the *strongest* direction is next to the gradient's size.
        """
        rank = self.numerical_rank
        if not rank:
            return math.inf
        return float(self.gradient_norm / (self.image_norm * self.singular_values[rank - 1]))

    def smallest(self, k: int = 8) -> np.ndarray:
        """The ``k`` smallest singular values, smallest first."""
        return self.singular_values[::-1][:k].copy()

    def below(self, rtol: float) -> int:
        """How many singular values are at most ``rtol * s_1``."""
        return self.unknowns - self.rank(rtol)

    def summary(self, num_smallest: int = 8, num_quantiles: int = 64) -> dict:
        """A JSON-ready summary: counts, ranks, condition number, smallest values and a thinned spectrum."""
        rel = self.relative()
        index = np.unique(np.linspace(0, self.unknowns - 1, num_quantiles).round().astype(int))
        return {
            "unknowns": self.unknowns,
            "equations": self.equations,
            "entries": self.entries,
            "ratio": self.unknowns / self.equations,
            "numerical_rank": self.numerical_rank,
            "rank_deficit": self.rank_deficit,
            "effective_rank": self.effective_rank,
            "largest": self.largest,
            "gradient_norm": self.gradient_norm,
            "image_norm": self.image_norm,
            "condition_number": self.condition_number,
            "relative_condition_number": self.relative_condition_number,
            "smallest": self.smallest(num_smallest).tolist(),
            "smallest_relative": (self.smallest(num_smallest) / self.largest).tolist(),
            "below": {f"{t:g}": self.below(t) for t in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)},
            "spectrum_index": index.tolist(),
            "spectrum_relative": rel[index].tolist(),
        }


def spectrum_from_gram(
    gram_matrix: torch.Tensor, equations: int, entries: int, gradient_norm: float, image_norm: float
) -> Spectrum:
    """A :class:`Spectrum` from ``J^T J`` (eigenvalues in float64, clipped at 0, square-rooted, decreasing)."""
    eigenvalues = torch.linalg.eigvalsh(gram_matrix.double()).flip(0).clamp(min=0)
    return Spectrum(eigenvalues.sqrt().numpy(), equations, entries, gradient_norm, image_norm)


def _norms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """``(||g(x)||, ||x||)`` in float64."""
    x = images.detach().to(dtype=torch.float64, copy=True)
    return float(gradient_function(model, labels)(x).norm()), float(x.norm())


def spectrum(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **gram_options) -> Spectrum:
    """Every singular value of ``dg/dx`` at the batch ``(images, labels)``, from :func:`gram`.

    Example (victim S, one Fashion-MNIST image; about 2 s)::

        s = conditioning.spectrum(models.build_model("convnet_s", in_channels=1), x[:1], y[:1])
        s.numerical_rank, s.rank_deficit, s.condition_number, s.smallest(4)
    """
    _checked(model, images, labels)
    c = analytic.count(model, tuple(images.shape[1:]), len(images))
    return spectrum_from_gram(
        gram(model, images, labels, **gram_options), c.equations, c.entries, *_norms(model, images, labels)
    )


def spectrum_of_first(
    k_matrix: torch.Tensor, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, k: int
) -> Spectrum:
    """The spectrum of the shared gradient of the first ``k`` images, from their :func:`image_gram` ``k_matrix``.

    Raises:
        ValueError: ``k`` outside ``[1, len(images)]``, or a ``k_matrix`` too small for ``k`` images.
    """
    d = images[0].numel()
    if not 1 <= k <= len(images) or k_matrix.shape[0] < k * d:
        raise ValueError(
            f"k must lie in [1, {min(len(images), k_matrix.shape[0] // d)}] for this batch and Gram matrix, got {k}"
        )
    c = analytic.count(model, tuple(images.shape[1:]), k)
    return spectrum_from_gram(
        k_matrix[: k * d, : k * d] / k**2, c.equations, c.entries, *_norms(model, images[:k], labels[:k])
    )


def nested_spectra(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_sizes: Sequence[int], **gram_options
) -> dict[int, Spectrum]:
    """Spectra of the first ``k`` images of the batch, for each ``k`` in ``batch_sizes``, from one :func:`image_gram`.

    The cheap way to measure several batch sizes: the Jacobians of ``max(batch_sizes)`` images
    are computed once. Options (``dtype``, ``scratch``, ...) as in :func:`image_gram`.

    Example (victim S, Fashion-MNIST test images 9000-9003; a few seconds)::

        x, y = data.fashion_mnist("test", 9004)
        spectra = conditioning.nested_spectra(models.build_model("convnet_s", in_channels=1),
                                              x[9000:], y[9000:], (1, 4))
        {b: (s.numerical_rank, s.condition_number) for b, s in spectra.items()}

    Raises:
        ValueError: a batch size outside ``[1, len(images)]``, or a model that couples the batch.
    """
    if not batch_sizes or min(batch_sizes) < 1 or max(batch_sizes) > len(images):
        raise ValueError(f"batch sizes must lie in [1, {len(images)}], got {list(batch_sizes)}")
    biggest = max(batch_sizes)
    k_matrix = image_gram(model, images[:biggest], labels[:biggest], **gram_options)
    return {k: spectrum_of_first(k_matrix, model, images, labels, k) for k in batch_sizes}


def float32_error(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int = 32) -> float:
    """``||J32 - J64||_2 / ||J64||_2``: the relative error that float32 arithmetic makes in the Jacobian at this batch.

    By Weyl's inequality, the singular values of the Jacobian an attacker computes in float32
    are within this (times ``s_1``) of the exact ones: below it, a singular value cannot be
    told from zero. Holds the difference (``P x B*C*H*W`` float32 numbers) in memory: small batches.
    """
    _checked(model, images, labels)
    exact = _jacobian_rows_t(model, images, labels, torch.float64, chunk, per_image=False)
    rounded = _jacobian_rows_t(model, images, labels, torch.float32, chunk, per_image=False)
    num_entries = sum(p.numel() for p in model.parameters() if p.requires_grad)
    difference = np.empty(
        (images.numel(), num_entries), dtype=np.float32
    )  # (J32 - J64)^T; float32 keeps 7 digits of it
    for (offset, e), (_, r) in zip(exact, rounded):
        difference[offset : offset + len(e)] = (r.double() - e).cpu().numpy()
    error = _gram_of_rows(difference, images.numel(), 8192)
    error_norm = float(torch.linalg.eigvalsh(error)[-1].clamp(min=0).sqrt())
    return error_norm / float(largest_singular_values(model, images, labels, k=1)[0])


def largest_singular_values(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, k: int = 6, tol: float = 0.0, seed: int = 0
) -> np.ndarray:
    """The ``k`` largest singular values of ``dg/dx`` by Lanczos, without forming the Jacobian.

    ``scipy.sparse.linalg.svds`` (ARPACK) on a ``LinearOperator`` whose products are ``jvp``
    (``J v``) and ``vjp`` (``J^T u``) of the gradient function, in float64, each on the whole
    batch; tens of products. For the top of the spectrum of cases too big for :func:`gram`.
    The *smallest* singular values are out of its reach in practice: they are clustered near 0
    (on the small ConvNet of the tests, ARPACK on ``s_1^2 I - J^T J`` did not converge in 1,081
    iterations for 108 unknowns), so a Krylov method needs about as many products as there are
    unknowns; there, the Gram matrix is the cheaper exact way.

    Returns:
        the ``k`` values in decreasing order.

    Raises:
        ValueError: ``k`` not below the number of unknowns.
    """
    from scipy.sparse.linalg import LinearOperator, svds

    _checked(model, images, labels)
    x = images.detach().to(dtype=torch.float64, copy=True)  # not a view (see _jacobian_rows_t)
    n = x.numel()
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, {n - 1}] for {n} unknowns, got {k}")
    g = gradient_function(model, labels)
    _, vjp_fn = vjp(g, x)
    num_entries = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def matvec(v: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(v.ravel(), dtype=np.float64)).reshape(x.shape).to(x.device)
        return jvp(g, (x,), (t,))[1].cpu().numpy()

    def rmatvec(u: np.ndarray) -> np.ndarray:
        c = torch.from_numpy(np.ascontiguousarray(u.ravel(), dtype=np.float64)).to(x.device)
        return vjp_fn(c)[0].reshape(-1).cpu().numpy()

    operator = LinearOperator((num_entries, n), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)
    values = svds(
        operator,
        k=k,
        which="LM",
        tol=tol,
        v0=np.random.default_rng(seed).standard_normal(n),
        return_singular_vectors=False,
        solver="arpack",
    )
    return np.sort(values)[::-1]


def load_shipped(path: str | os.PathLike = SHIPPED) -> tuple[list[dict], dict]:
    """The shipped measurement of ``benchmarks/conditioning.py``: ``(rows, provenance)``.

    One row per (victim, seed, batch size); see the benchmark's docstring for the fields.

    Raises:
        FileNotFoundError: no shipped results (run ``python benchmarks/conditioning.py``).
        ValueError: a file whose results do not match their recorded hash.
    """
    results, provenance = load_results(Path(path))
    return results["rows"], provenance
