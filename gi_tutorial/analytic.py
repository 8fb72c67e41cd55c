"""What a gradient gives away in closed form, without any optimisation.

- Label recovery from the last layer (iDLG, Zhao et al., 2020): with cross-entropy, the
  bias gradient of the output layer is ``softmax(z) - onehot(y)``, whose only negative
  entry is the true class, whatever the activations before it. Its weight gradient is
  ``(softmax(z) - onehot(y)) a^T``: iDLG's rule, the row that sums negative, needs a
  non-negative input ``a`` (sigmoid, ReLU) and is only the fallback for a layer without bias.
- Exact input recovery from a fully connected layer with bias (Phong et al., 2018;
  Geiping et al., 2020): ``dL/dW = delta x^T`` and ``dL/db = delta``, so for one image
  ``x = (dL/dW)_i / (dL/db)_i`` for any row ``i`` with ``(dL/db)_i != 0``.
- Counting: a batch of ``B`` images of shape ``(C, H, W)`` is ``B*C*H*W`` unknowns; the
  update is one equation per parameter, however large the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .fl import SharedUpdate, trainable_parameters
from .models import num_parameters


def last_linear_gradients(update: SharedUpdate, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias gradients of the model's last ``nn.Linear`` layer, read from an update.

    Raises:
        ValueError: the model has no linear layer, or the update does not match the model.
    """
    update.check_matches(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer to read labels from")
    return linear_gradients(update, model, linears[-1])


def linear_gradients(update: SharedUpdate, model: nn.Module, layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias gradients of one linear layer of the model, read from an update."""
    index = {id(p): i for i, p in enumerate(trainable_parameters(model))}
    weight_grad = update.gradients[index[id(layer.weight)]]
    bias_grad = update.gradients[index[id(layer.bias)]] if layer.bias is not None else None
    return weight_grad, bias_grad


def label_scores(update: SharedUpdate, model: nn.Module) -> torch.Tensor:
    """One score per class, negative for the classes of the batch: what label recovery ranks.

    The last linear layer's bias gradient when it has a bias: with the mean cross-entropy
    over ``B`` images it is ``(sum_b softmax(z_b) - counts) / B``, exact for any
    activation. Without a bias, the row sums of its weight gradient,
    ``sum_b (softmax(z_b) - onehot(y_b)) sum(a_b) / B`` (iDLG), whose signs are right only
    when the layer's input ``a`` is non-negative (after a sigmoid or a ReLU; not after a
    LeakyReLU).

    Returns:
        a ``(num_classes,)`` tensor on the gradient's device.

    Raises:
        ValueError: the model has no linear layer, or the update does not match the model.
    """
    weight_grad, bias_grad = last_linear_gradients(update, model)  # (num_classes, features), (num_classes,)
    return bias_grad if bias_grad is not None else weight_grad.sum(dim=1)


def recover_label(update: SharedUpdate, model: nn.Module) -> torch.Tensor:
    """The label of a single image: the class whose score (:func:`label_scores`) is lowest.

    With a bias on the last layer this is exact for any model: the bias gradient is
    ``softmax(z) - onehot(y)``, negative only at the label (unless the model gives the
    label a probability that rounds to 1, when the gradient is all zeros and nothing
    leaks). Without a bias it falls back to iDLG's weight-row sums, which need a
    non-negative input to the last layer.

    Returns:
        a ``(1,)`` int64 tensor on the gradient's device.

    Raises:
        ValueError: the model has no linear layer, or the update does not match the model.
    """
    return label_scores(update, model).argmin().reshape(1)


def label_from_weight_gradient(weight_grad: torch.Tensor) -> int:
    """iDLG's rule on the output layer's weight gradient ``(num_classes, features)``: the row that sums negative.

    Right only when the layer's input is non-negative; :func:`recover_label` prefers the bias gradient.

    Raises:
        ValueError: a gradient that is not 2-D.
    """
    if weight_grad.ndim != 2:
        raise ValueError(f"expected a weight gradient of shape (num_classes, features), got {tuple(weight_grad.shape)}")
    return int(weight_grad.sum(dim=1).argmin())


def recover_labels(update: SharedUpdate, model: nn.Module, batch_size: int | None = None) -> torch.Tensor:
    """Labels of a batch whose labels are all different: the ``B`` classes with the lowest scores.

    With a bias on the last layer, the score of class ``c`` is the bias gradient
    ``(P_c - n_c) / B``, where ``P_c = sum_b softmax(z_b)_c`` is the probability the
    whole batch gives ``c`` and ``n_c`` the number of images labelled ``c``. A class
    outside the batch scores ``P_c / B >= 0``. So the result is exact, for any
    activation, when the labels are unique and every one of them has ``P_c < 1`` (strictly
    negative score): typical of an untrained model, whose predictions are spread out.
    A class that the model predicts for most images can collect ``P_c >= 1``, score
    non-negative and be missed. Repeated labels are never counted. Without a bias the
    weight-row sums are used (iDLG), which also need a non-negative input to the last layer.

    Returns:
        the recovered labels, sorted, as an int64 tensor on the gradient's device.

    Raises:
        ValueError: the batch size is unknown, or larger than the number of classes.
    """
    scores = label_scores(update, model)
    batch_size = batch_size or update.batch_size
    if batch_size is None:
        raise ValueError("recover_labels needs the batch size: pass batch_size or share it in the update")
    if batch_size > scores.shape[0]:
        raise ValueError(f"a batch of {batch_size} cannot have unique labels among {scores.shape[0]} classes")
    return scores.argsort()[:batch_size].sort().values


def recover_fc_input(weight_grad: torch.Tensor, bias_grad: torch.Tensor) -> torch.Tensor:
    """The exact input of a fully connected layer with bias, from a one-image gradient.

    Every row ``i`` gives ``x = weight_grad[i] / bias_grad[i]``; the row with the largest
    ``|bias_grad[i]|`` is the best conditioned.

    Args:
        weight_grad: ``(out_features, in_features)``.
        bias_grad: ``(out_features,)``.

    Returns:
        the layer's input, ``(in_features,)``.

    Raises:
        ValueError: shapes that do not belong to one linear layer, or an all-zero bias gradient.
    """
    if weight_grad.ndim != 2 or bias_grad.ndim != 1 or weight_grad.shape[0] != bias_grad.shape[0]:
        raise ValueError(
            "expected weight_grad (out, in) and bias_grad (out,) of one linear layer, "
            f"got {tuple(weight_grad.shape)} and {tuple(bias_grad.shape)}"
        )
    i = bias_grad.abs().argmax()
    if bias_grad[i] == 0:
        raise ValueError("the bias gradient is zero everywhere: the input cannot be recovered")
    return weight_grad[i] / bias_grad[i]


@dataclass(frozen=True)
class Count:
    """Unknowns (pixels) against equations (gradient entries) for a model and batch."""

    unknowns: int
    equations: int

    @property
    def ratio(self) -> float:
        """Equations per unknown: below 1 the system is under-determined by counting alone."""
        return self.equations / self.unknowns


def count_unknowns(model: nn.Module, image_shape: tuple[int, int, int], batch_size: int = 1) -> Count:
    """Count the pixels an attacker must find against the gradient entries it sees.

    Args:
        model: the victim model.
        image_shape: ``(C, H, W)`` of one image.
        batch_size: images behind the (averaged) gradient.

    Raises:
        ValueError: an image shape that is not (C, H, W), or a batch size below 1.
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    c, h, w = image_shape
    return Count(unknowns=batch_size * c * h * w, equations=num_parameters(model))
