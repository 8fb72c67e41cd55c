"""gi_tutorial.objectives and gi_tutorial.priors: gradient distances and total variation."""

from __future__ import annotations

import math

import pytest
import torch

from gi_tutorial import objectives, priors
from gi_tutorial.objectives import gradient_distance

# two "layers": candidate c and target t
C = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
T = [torch.tensor([0.0, 2.0]), torch.tensor([1.0])]


def test_l2_by_hand():
    # (1-0)^2 + (2-2)^2 + (3-1)^2 = 1 + 0 + 4
    assert gradient_distance(C, T, "l2").item() == pytest.approx(5.0)
    assert gradient_distance(C, T).item() == pytest.approx(5.0)  # l2 is the default


def test_cosine_by_hand():
    # <c, t> = 0 + 4 + 3 = 7, |c|^2 = 1 + 4 + 9 = 14, |t|^2 = 0 + 4 + 1 = 5
    assert gradient_distance(C, T, "cosine").item() == pytest.approx(1 - 7 / math.sqrt(70), abs=1e-6)
    # opposite directions: distance 2; orthogonal: 1
    assert gradient_distance(C, [-x for x in C], "cosine").item() == pytest.approx(2.0, abs=1e-6)
    assert gradient_distance([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 5.0])], "cosine").item() == pytest.approx(
        1.0
    )


def test_cosine_is_scale_invariant_and_l2_is_not():
    g = torch.Generator().manual_seed(0)
    c = [torch.randn(4, 3, generator=g), torch.randn(5, generator=g)]
    t = [torch.randn(4, 3, generator=g), torch.randn(5, generator=g)]
    base = gradient_distance(c, t, "cosine").item()
    assert 0 < base < 2
    for scale in (1e-3, 0.5, 7.0, 1e3):
        assert gradient_distance(c, [scale * x for x in t], "cosine").item() == pytest.approx(base, abs=1e-5)
        assert gradient_distance([scale * x for x in c], t, "cosine").item() == pytest.approx(base, abs=1e-5)
    assert gradient_distance(c, [7.0 * x for x in t], "l2").item() != pytest.approx(
        gradient_distance(c, t, "l2").item()
    )


@pytest.mark.parametrize("kind", ["l2", "cosine"])
def test_zero_for_identical_lists(kind):
    g = torch.Generator().manual_seed(1)
    c = [torch.randn(3, 3, generator=g), torch.randn(2, generator=g)]
    assert abs(gradient_distance(c, [x.clone() for x in c], kind).item()) < 1e-6


def test_layer_weights_select_and_weigh_layers():
    assert gradient_distance(C, T, "l2", layer_weights=[1, 0]).item() == pytest.approx(1.0)
    assert gradient_distance(C, T, "l2", layer_weights=[0, 1]).item() == pytest.approx(4.0)
    assert gradient_distance(C, T, "l2", layer_weights=[2.0, 0.5]).item() == pytest.approx(2 * 1 + 0.5 * 4)
    # cosine on the second layer only: [3] vs [1] point the same way
    assert gradient_distance(C, T, "cosine", layer_weights=[0, 1]).item() == pytest.approx(0.0, abs=1e-6)
    # first layer only: <[1,2],[0,2]> = 4, |c|^2 = 5, |t|^2 = 4
    assert gradient_distance(C, T, "cosine", layer_weights=[1, 0]).item() == pytest.approx(
        1 - 4 / math.sqrt(20), abs=1e-6
    )
    # weights within the cosine: <.> = 2*4 + 1*3, |c|^2 = 2*5 + 9, |t|^2 = 2*4 + 1
    assert gradient_distance(C, T, "cosine", layer_weights=[2, 1]).item() == pytest.approx(
        1 - 11 / math.sqrt(19 * 9), abs=1e-6
    )


def test_a_zero_weighted_layer_may_even_hold_nan():
    bad = [C[0], torch.tensor([float("nan")])]
    assert gradient_distance(bad, T, "l2", layer_weights=[1, 0]).item() == pytest.approx(1.0)


def test_wrong_number_of_layer_weights():
    with pytest.raises(ValueError, match="one layer weight per gradient tensor"):
        gradient_distance(C, T, layer_weights=[1.0])


def test_mismatched_lengths_mention_the_same_model():
    with pytest.raises(ValueError, match="same model"):
        gradient_distance(C, T[:1])


def test_mismatched_shapes_mention_the_shapes():
    with pytest.raises(ValueError, match=r"gradient 1 has shape \(2,\) in the candidate but \(1,\)"):
        gradient_distance([C[0], torch.zeros(2)], T)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown gradient distance 'l1'"):
        gradient_distance(C, T, "l1")


@pytest.mark.parametrize("kind", ["l2", "cosine"])
def test_distance_is_differentiable(kind):
    c = [x.clone().requires_grad_(True) for x in C]
    gradient_distance(c, T, kind).backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in c)
    if kind == "l2":  # d/dc sum (c - t)^2 = 2 (c - t)
        assert torch.equal(c[0].grad, 2 * (C[0] - T[0])) and torch.equal(c[1].grad, 2 * (C[1] - T[1]))


def test_cosine_gradient_is_finite_at_a_zero_candidate():
    c = [torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)]
    d = gradient_distance(c, T, "cosine")
    assert d.item() == pytest.approx(1.0)
    d.backward()
    assert all(torch.isfinite(x.grad).all() for x in c)


def test_check_gradients_accepts_matching_lists():
    objectives.check_gradients(C, [torch.zeros(2), torch.zeros(1)])


def test_total_variation_known_values():
    assert priors.total_variation(torch.zeros(2, 3, 8, 8)).item() == 0.0
    assert priors.total_variation(torch.full((1, 1, 5, 5), 0.7)).item() == pytest.approx(0.0)
    # a horizontal ramp 0, 1, 2: every horizontal step is 1, no vertical change
    ramp = torch.tensor([[0.0, 1.0, 2.0]] * 3).reshape(1, 1, 3, 3)
    assert priors.total_variation(ramp).item() == pytest.approx(1.0)
    assert priors.total_variation(ramp.transpose(-1, -2)).item() == pytest.approx(1.0)
    # a 2x2 checkerboard: every neighbour differs by 1 in both directions
    checker = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).reshape(1, 1, 2, 2)
    assert priors.total_variation(checker).item() == pytest.approx(2.0)
    # one bright pixel in the corner of a 3x3 image: 1 of 6 horizontal and 1 of 6 vertical steps
    spot = torch.zeros(1, 1, 3, 3)
    spot[..., 0, 0] = 1.0
    assert priors.total_variation(spot).item() == pytest.approx(2 / 6)


def test_total_variation_prior_includes_its_weight():
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    prior = priors.TotalVariation(weight=0.3)
    assert prior.needs_bn_statistics is False
    assert prior(x, priors.PriorContext()).item() == pytest.approx(0.3 * priors.total_variation(x).item())
