"""Gradient matching: how far a candidate's gradient is from the shared one.

- ``"l2"``: the squared Euclidean distance summed over layers, as in DLG (Zhu et al., 2019).
- ``"cosine"``: one minus the cosine similarity of all layers' gradients concatenated,
  as in Geiping et al. (2020); it ignores the gradient's scale, which a trained model
  or a noisy update changes, and matches its direction.

``layer_weights`` weighs (or, with zeros, selects) layers; by default all count equally.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Distance = Literal["l2", "cosine"]


def check_gradients(candidate: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> None:
    """Raise ValueError unless the two gradient lists have the same length and shapes."""
    if len(candidate) != len(target):
        raise ValueError(
            f"gradient lists differ in length: {len(candidate)} candidate tensors vs {len(target)} shared; "
            "they must come from the same model"
        )
    for i, (c, t) in enumerate(zip(candidate, target)):
        if c.shape != t.shape:
            raise ValueError(
                f"gradient {i} has shape {tuple(c.shape)} in the candidate but {tuple(t.shape)} in the shared update"
            )


def gradient_distance(
    candidate: Sequence[torch.Tensor],
    target: Sequence[torch.Tensor],
    kind: Distance = "l2",
    layer_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    r"""Distance between two lists of per-parameter gradients.

    .. math::
        d_{\ell_2} = \sum_l w_l \lVert g_l - g^*_l \rVert^2, \qquad
        d_{\cos} = 1 - \frac{\sum_l w_l \langle g_l, g^*_l \rangle}
                           {\sqrt{\sum_l w_l \lVert g_l\rVert^2}\sqrt{\sum_l w_l \lVert g^*_l\rVert^2}}

    Args:
        candidate: gradients of the attacker's current guess (differentiable).
        target: the shared gradients.
        kind: ``"l2"`` or ``"cosine"``.
        layer_weights: one non-negative weight per tensor; None means all 1.

    Raises:
        ValueError: lists that do not match, an unknown kind, or wrong number of weights.

    >>> g = [torch.ones(2, 2), torch.ones(3)]
    >>> float(gradient_distance(g, [torch.zeros(2, 2), torch.ones(3)]))
    4.0
    >>> abs(float(gradient_distance(g, [2 * x for x in g], kind="cosine"))) < 1e-6
    True
    """
    check_gradients(candidate, target)
    if layer_weights is None:  # unweighted: no multiplications on the autograd tape
        terms = [(c, t) for c, t in zip(candidate, target)]
        weigh = lambda i, x: x  # noqa: E731
    else:
        if len(layer_weights) != len(target):
            raise ValueError(f"need one layer weight per gradient tensor ({len(target)}), got {len(layer_weights)}")
        selected = [i for i, w in enumerate(layer_weights) if w != 0]
        terms = [(candidate[i], target[i]) for i in selected]
        weights = [layer_weights[i] for i in selected]
        weigh = lambda i, x: weights[i] * x  # noqa: E731
    if kind == "l2":
        return sum(weigh(i, (c - t).pow(2).sum()) for i, (c, t) in enumerate(terms))
    if kind == "cosine":
        dot = sum(weigh(i, (c * t).sum()) for i, (c, t) in enumerate(terms))
        norm_c = sum(weigh(i, c.pow(2).sum()) for i, (c, _) in enumerate(terms))
        norm_t = sum(weigh(i, t.pow(2).sum()) for i, (_, t) in enumerate(terms))
        return 1 - dot / (norm_c * norm_t).clamp_min(1e-24).sqrt()  # clamp before sqrt: finite gradient at 0
    raise ValueError(f"unknown gradient distance {kind!r}; expected 'l2' or 'cosine'")
