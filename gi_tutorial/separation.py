"""Source separation: unmix a batch from the weight gradient of a fully connected first layer.

The Cocktail Party Attack (Kariyappa et al., ICML 2023). For a linear layer
``z = W x + b`` that sees the raw pixels, the gradient of the batch's mean loss is

.. math:: \\frac{\\partial L}{\\partial W} = \\frac{1}{B}\\sum_{b=1}^{B} \\delta_b x_b^\\top = \\Delta X,
          \\qquad \\frac{\\partial L}{\\partial b} = \\frac{1}{B}\\sum_{b=1}^{B} \\delta_b = \\Delta \\mathbf{1},

with ``delta_b = dL_b/dz_b`` and ``Delta = (delta_1, ..., delta_B) / B``: every row of
the weight gradient is a linear mixture of the ``B`` images, like the microphones of a
cocktail party, each recording a different mixture of the same voices. Averaging did not destroy the images; it mixed them.
Independent component analysis (ICA) finds an unmixing matrix ``U`` (``B`` x rows) that
makes ``U dW`` a set of statistically independent signals, which are the images up to
order, sign and scale. Here:

- ICA is scikit-learn's FastICA (Hyvarinen and Oja, 2000), which also centres and
  whitens the rows and reduces them to ``B`` components.
- The unmixing is learnt on the rows' horizontal and vertical pixel differences, not
  on the raw pixels. A linear filter applied to every row commutes with the mixing
  (the filtered rows are the same mixture of the filtered images), and the differences
  of natural images are sparse, heavy-tailed and nearly independent from image to
  image, which is what ICA assumes; raw images are not (they all share a bright,
  smooth, positively correlated layout). The unmixing is then applied to the raw rows.
- Sign and scale: ICA cannot tell ``x`` from ``-2x``. The bias gradient can: the bias
  is a weight on an input that is 1 in every image, so ``U db`` gives each source's
  scale (with its sign) exactly, and ``x_k = (U dW)_k / (U db)_k``. This is the
  one-image formula ``x = dW_i / db_i`` of :mod:`~gi_tutorial.analytic`, applied to
  unmixed rows. Without a bias the sign is chosen to make the source's mean positive
  (pixels are non-negative) and the scale to make its brightest pixel 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from .analytic import linear_gradients
from .fl import SharedUpdate


def spatial_differences(rows: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Horizontal and vertical neighbour differences of each row seen as an image, concatenated.

    Args:
        rows: ``(N, C*H*W)``.
        image_shape: ``(C, H, W)``.

    Returns:
        ``(N, C*H*(W-1) + C*(H-1)*W)``.

    >>> spatial_differences(np.array([[0.0, 1.0, 2.0, 4.0]]), (1, 2, 2))  # the image [[0, 1], [2, 4]]
    array([[1., 2., 2., 3.]])
    """
    images = rows.reshape(len(rows), *image_shape)  # (N, C, H, W)
    dx = np.diff(images, axis=3).reshape(len(rows), -1)
    dy = np.diff(images, axis=2).reshape(len(rows), -1)
    return np.concatenate([dx, dy], axis=1)


def unmix_fc_gradient(
    weight_grad: torch.Tensor,
    batch_size: int,
    image_shape: tuple[int, int, int],
    bias_grad: torch.Tensor | None = None,
    seed: int = 0,
    max_iter: int = 1000,
) -> torch.Tensor:
    """Recover a batch of images from the weight gradient of a fully connected layer on the pixels.

    Args:
        weight_grad: ``(out_features, C*H*W)``, the gradient of the batch's mean loss.
        batch_size: ``B``, the number of images mixed in it (at most ``out_features``).
        image_shape: ``(C, H, W)`` of one image.
        bias_grad: ``(out_features,)``, the layer's bias gradient; when given, each
            source's sign and scale are exact (see the module docstring).
        seed: FastICA's random start.
        max_iter: FastICA's iteration limit.

    Returns:
        ``(B, C, H, W)`` in [0, 1], in no particular order (match before scoring).

    Raises:
        ValueError: shapes that do not fit, or more images than rows.
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    num_pixels = math.prod(image_shape)
    if weight_grad.ndim != 2 or weight_grad.shape[1] != num_pixels:
        raise ValueError(
            f"weight_grad must be (out_features, {num_pixels}) for images of shape "
            f"{tuple(image_shape)}, got {tuple(weight_grad.shape)}"
        )
    rows = weight_grad.shape[0]
    if not 1 <= batch_size <= rows:
        raise ValueError(
            f"batch_size must be between 1 and the layer's {rows} output features to unmix, got {batch_size}"
        )
    if bias_grad is not None and bias_grad.shape != (rows,):
        raise ValueError(f"bias_grad must have shape ({rows},), got {tuple(bias_grad.shape)}")

    mixtures = weight_grad.detach().cpu().double().numpy()  # (rows, D): dW = Delta X
    from sklearn.decomposition import FastICA  # here: scikit-learn takes about 0.5 s to import

    # fun="exp" is FastICA's contrast for strongly heavy-tailed sources, as image differences are
    ica = FastICA(
        n_components=batch_size, fun="exp", whiten="unit-variance", random_state=seed, max_iter=max_iter, tol=1e-6
    )
    ica.fit(spatial_differences(mixtures, image_shape).T)  # samples: filtered pixels; features: rows
    unmixing = ica.components_  # (B, rows), whitening included
    sources = unmixing @ mixtures  # (B, D): each a scaled copy s_k x_k of one image, up to ICA's error
    if bias_grad is not None:
        scale = unmixing @ bias_grad.detach().cpu().double().numpy()  # (B,): s_k, as the bias sees an input of 1
    else:
        sign = np.where(sources.mean(axis=1) < 0, -1.0, 1.0)
        scale = sign * np.abs(sources).max(axis=1)  # the brightest pixel of each image is taken to be 1
    images = sources / scale[:, None]
    return torch.from_numpy(images).float().reshape(batch_size, *image_shape).clamp(0, 1)


def recover_batch(
    update: SharedUpdate,
    model: nn.Module,
    layer: nn.Linear,
    image_shape: tuple[int, int, int],
    seed: int = 0,
) -> torch.Tensor:
    """The Cocktail Party Attack on an update: unmix the gradient of ``layer``, the model's first layer.

    ``layer`` must see the flattened pixels (e.g. ``MLP.hidden``); its bias gradient, if
    it has a bias, fixes each image's sign and scale.

    Returns:
        ``(B, C, H, W)`` in [0, 1], in no particular order.

    Raises:
        ValueError: the update does not match the model, no shared batch size, or a
            layer whose input is not an image of ``image_shape``.
    """
    update.check_matches(model)
    if update.batch_size is None:
        raise ValueError("source separation needs the number of images: share the batch size in the update")
    if not isinstance(layer, nn.Linear) or layer.in_features != math.prod(image_shape):
        raise ValueError(f"layer must be the nn.Linear that sees the flattened {tuple(image_shape)} images")
    if not any(m is layer for m in model.modules()):
        raise ValueError("layer must be a module of the model (e.g. model.hidden)")
    weight_grad, bias_grad = linear_gradients(update, model, layer)
    return unmix_fc_gradient(weight_grad, update.batch_size, image_shape, bias_grad=bias_grad, seed=seed)
