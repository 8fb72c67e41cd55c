"""What a gradient gives away in closed form, without any optimisation.

- Label recovery from the last layer (iDLG, Zhao et al., 2020): with cross-entropy, the
  bias gradient of the output layer is ``softmax(z) - onehot(y)``, whose only negative
  entry is the true class, whatever the activations before it. Its weight gradient is
  ``(softmax(z) - onehot(y)) a^T``: iDLG's rule, the row that sums negative, needs a
  non-negative input ``a`` (sigmoid, ReLU) and is only the fallback for a layer without bias.
- Exact input recovery from a fully connected layer with bias (Phong et al., 2018;
  Geiping et al., 2020): ``dL/dW = delta x^T`` and ``dL/db = delta``, so for one image
  ``x = (dL/dW)_i / (dL/db)_i`` for any row ``i`` with ``(dL/db)_i != 0``.
- Counting: a batch of ``B`` images of shape ``(C, H, W)`` is ``B*C*H*W`` unknowns (fewer in a
  generator's latent space, more in its weights); the update is one equation per parameter,
  however large the batch, less the entries that exact identities fix: with softmax
  cross-entropy the last layer's gradient sums to zero over the classes, and (Leaky)ReLU
  units can be rescaled (Kunin et al., 2021, "Neural mechanics", derive such identities
  from a network's symmetries). ``Count.ratio`` is always unknowns per independent
  equation: above 1, under-determined by count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .fl import SharedUpdate, trainable_parameters
from .models import MLP, ConvNet, num_parameters


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


def linear_gradients(
    update: SharedUpdate, model: nn.Module, layer: nn.Linear
) -> tuple[torch.Tensor, torch.Tensor | None]:
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


SPACES = ("pixels", "latent", "weights", "shared_weights")


@dataclass(frozen=True)
class Count:
    """Unknowns (in one search space) against the independent equations a shared gradient gives.

    Attributes:
        unknowns: the numbers the attacker searches (pixels, latent codes or generator weights).
        equations: the *independent gradient entries*: all entries less those that an exact,
            input-independent linear identity fixes from the others (see :func:`exact_dependencies`).
        entries: all gradient entries, one per trainable parameter.
        space: the search space counted (one of :data:`SPACES`).
    """

    unknowns: int
    equations: int
    entries: int
    space: str = "pixels"

    @property
    def dependent(self) -> int:
        """Gradient entries that exact identities fix from the others (``entries - equations``)."""
        return self.entries - self.equations

    @property
    def ratio(self) -> float:
        """Unknowns per independent equation: above 1 the problem is under-determined by count."""
        return self.unknowns / self.equations

    @property
    def under_determined(self) -> bool:
        """More unknowns than independent equations (``ratio > 1``)."""
        return self.unknowns > self.equations


def exact_dependencies(model: nn.Module) -> dict[str, int]:
    """The gradient entries that exact linear identities fix, whatever the batch: rule -> number of entries.

    Each rule is one linear identity among the gradient entries that holds for every input
    batch and every label (its coefficients are the model's weights, which the server knows),
    so it removes one equation:

    - ``"softmax"``: softmax cross-entropy does not change when the same vector is added to
      every row of the last linear layer (logits ``z + c``), so its weight gradient sums to
      zero over the classes, one identity per input feature, and its bias gradient sums to
      zero too: ``in_features + 1`` (``in_features`` without a bias). Any model whose last
      layer with weights is an ``nn.Linear``.
    - ``"rescaling"``: a (Leaky)ReLU is positively homogeneous, so multiplying the weights and
      bias into a hidden unit by ``a > 0`` and the weights out of it by ``1/a`` leaves the
      loss unchanged; differentiating at ``a = 1``,
      ``<w_in, g_in> + b g_b = <w_out, g_out>``: one identity per hidden unit (per channel of
      a convolution). :class:`~gi_tutorial.models.MLP` and :class:`~gi_tutorial.models.ConvNet`
      (with BatchNorm, the BatchNorm scale and shift play the part of the incoming weights).
    - ``"bias_before_batchnorm"``: a convolution's bias feeding a BatchNorm moves nothing in
      train mode (the batch mean absorbs it: its gradient is exactly zero) and in eval mode
      acts exactly like the BatchNorm shift (its gradient is the shift's times
      ``gamma / sqrt(running_var + eps)``): one identity per channel.
    - ``"scale_before_batchnorm"`` (eval mode only): with the running statistics fixed,
      scaling a channel's convolution weights and bias by ``a``, its BatchNorm scale by
      ``1/a`` and moving its shift to compensate changes nothing: one identity per channel.
      In train mode the same rescaling is undone by the batch statistics only up to
      BatchNorm's ``eps``: a near-dependency, not an exact one, and not counted.

    The model's mode (train or eval) is read from its BatchNorm layers, as the client would
    use it. The rules are the ones proved for this module's models, and
    ``tests/test_analytic.py`` checks on small ones that the gradients of many random
    batches span exactly the count that remains. LeNet's sigmoids admit no rescaling. For
    other architectures (ResNet-18) only the softmax rule is applied, so the independent
    count is an upper bound there. Weights are taken in general position (an all-zero unit
    would make its rescaling identity empty).
    """
    rules: dict[str, int] = {}
    with_weights = [
        m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm))
    ]
    if with_weights and isinstance(with_weights[-1], nn.Linear) and with_weights[-1].weight.requires_grad:
        last = with_weights[-1]
        rules["softmax"] = last.in_features + (1 if last.bias is not None and last.bias.requires_grad else 0)
    if isinstance(model, MLP):
        rules["rescaling"] = model.hidden.out_features
    elif isinstance(model, ConvNet):
        convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
        rules["rescaling"] = sum(c.out_channels for c in convs)
        layers = list(model.features)
        before_bn = [
            a
            for a, b in zip(layers, layers[1:])
            if isinstance(a, nn.Conv2d) and a.bias is not None and isinstance(b, nn.modules.batchnorm._BatchNorm)
        ]
        if before_bn:
            rules["bias_before_batchnorm"] = sum(c.out_channels for c in before_bn)
        evaluated = [
            b
            for a, b in zip(layers, layers[1:])
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.modules.batchnorm._BatchNorm) and not b.training
        ]
        if evaluated:
            rules["scale_before_batchnorm"] = sum(b.num_features for b in evaluated)
    return rules


def independent_entries(model: nn.Module) -> int:
    """Gradient entries less the exact dependencies of :func:`exact_dependencies`: the equations an attacker has."""
    return num_parameters(model) - sum(exact_dependencies(model).values())


def count(
    model: nn.Module,
    image_shape: tuple[int, int, int],
    batch_size: int = 1,
    space: str = "pixels",
    generator: nn.Module | None = None,
) -> Count:
    """Count the unknowns of a search space against the independent gradient entries.

    The equations do not depend on the space: the shared gradient is the same. The unknowns do:

    - ``"pixels"`` (GI-x): ``B * C * H * W``;
    - ``"latent"`` (GI-z, and stage 1 of GIAS): ``B * z_dim``;
    - ``"weights"`` (stage 2 of GIAS; GI-w): one copy of the generator's weights per image,
      ``B * |w|``, the codes fixed;
    - ``"shared_weights"`` (GIML's inner loop): one copy for the whole batch, ``|w|``.

    A count is necessary, not sufficient: the search in a generator's space is also
    restricted to what the generator can draw, and equations can be nearly redundant
    (:mod:`gi_tutorial.conditioning` measures how much they actually pin down).

    >>> from gi_tutorial import models
    >>> c = count(models.build_model("lenet"), (3, 32, 32), 5)  # DLG's LeNet, five CIFAR-10 images
    >>> c.unknowns, c.entries, c.equations, c.under_determined
    (15360, 15826, 15057, True)

    Args:
        model: the victim model.
        image_shape: ``(C, H, W)`` of one image.
        batch_size: images behind the (averaged) gradient.
        space: one of :data:`SPACES`.
        generator: the generator of the latent and weight spaces (needs ``z_dim`` for ``"latent"``).

    Raises:
        ValueError: an image shape that is not (C, H, W), a batch size below 1, an unknown
            space, or a generator space without a generator.
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; expected one of {', '.join(SPACES)}")
    if space != "pixels" and generator is None:
        raise ValueError(f"counting the {space!r} space needs the generator: pass generator=...")
    if space == "pixels":
        c, h, w = image_shape
        unknowns = batch_size * c * h * w
    elif space == "latent":
        z_dim = getattr(generator, "z_dim", None)
        if not isinstance(z_dim, int):
            raise ValueError("counting the 'latent' space needs a generator with an integer z_dim attribute")
        unknowns = batch_size * z_dim
    else:
        weights = sum(p.numel() for p in generator.parameters())  # every weight is searched (spaces.GeneratorSpace)
        unknowns = weights * (1 if space == "shared_weights" else batch_size)
    return Count(unknowns=unknowns, equations=independent_entries(model), entries=num_parameters(model), space=space)


def count_unknowns(model: nn.Module, image_shape: tuple[int, int, int], batch_size: int = 1) -> Count:
    """The pixel count, ``count(model, image_shape, batch_size, space="pixels")`` (chapter 1's name for it).

    Raises:
        ValueError: an image shape that is not (C, H, W), or a batch size below 1.
    """
    return count(model, image_shape, batch_size, space="pixels")
