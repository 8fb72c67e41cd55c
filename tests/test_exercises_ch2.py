"""gi_tutorial.exercises, chapter 2: the checkers accept the reference and reject plausible mistakes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gi_tutorial import exercises, objectives, priors


def reference_bn(batch_means, batch_vars, target_means, target_vars):
    return priors.bn_statistics_distance(list(zip(batch_means, batch_vars)), list(zip(target_means, target_vars)))


@pytest.mark.parametrize("checker, reference", [
    (exercises.check_total_variation, priors.total_variation),
    (exercises.check_cosine_distance, lambda c, t: objectives.gradient_distance(c, t, kind="cosine")),
    (exercises.check_bn_statistics, reference_bn),
])
def test_checkers_accept_the_reference(checker, reference, capsys):
    assert checker(reference) is True
    out = capsys.readouterr().out
    assert out.startswith("✓") and out.count("\n") == 1


def tv_summed(x):
    return (x[..., :, 1:] - x[..., :, :-1]).abs().sum() + (x[..., 1:, :] - x[..., :-1, :]).abs().sum()


def tv_isotropic(x):
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).sqrt().mean()


def tv_one_direction(x):
    return 2 * (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def tv_as_float(x):
    return priors.total_variation(x).item()


def cosine_per_layer(c, t):
    return sum(1 - F.cosine_similarity(a.flatten(), b.flatten(), dim=0) for a, b in zip(c, t)) / len(c)


def cosine_similarity_not_distance(c, t):
    return 1 - objectives.gradient_distance(c, t, kind="cosine")


def cosine_detached(c, t):
    return objectives.gradient_distance([a.detach() for a in c], t, kind="cosine")


def bn_squared(bm, bv, tm, tv):
    return sum((10 if i == 0 else 1) * ((m - a).pow(2).sum() + (v - b).pow(2).sum())
               for i, (m, v, a, b) in enumerate(zip(bm, bv, tm, tv)))


def bn_unweighted(bm, bv, tm, tv):
    return priors.bn_statistics_distance(list(zip(bm, bv)), list(zip(tm, tv)), first_layer_weight=1.0)


def bn_means_only(bm, bv, tm, tv):
    return sum((10 if i == 0 else 1) * (m - a).norm() for i, (m, a) in enumerate(zip(bm, tm)))


@pytest.mark.parametrize("checker, wrong, message", [
    (exercises.check_total_variation, tv_summed, "largest difference"),
    (exercises.check_total_variation, tv_isotropic, "largest difference"),
    (exercises.check_total_variation, tv_one_direction, "largest difference"),
    (exercises.check_total_variation, tv_as_float, "autograd cannot differentiate"),
    (exercises.check_cosine_distance, cosine_per_layer, "largest difference"),
    (exercises.check_cosine_distance, cosine_similarity_not_distance, "largest difference"),
    (exercises.check_cosine_distance, cosine_detached, "autograd cannot differentiate"),
    (exercises.check_bn_statistics, bn_squared, "largest difference"),
    (exercises.check_bn_statistics, bn_unweighted, "largest difference"),
    (exercises.check_bn_statistics, bn_means_only, "largest difference"),
])
def test_checkers_reject_mistakes(checker, wrong, message):
    with pytest.raises(AssertionError, match=message):
        checker(wrong)


def test_bn_checker_accepts_an_equivalent_formula():
    """sqrt of the sum of squares is the same norm; at distance 0 its NaN gradient is not held against it."""
    def by_hand(bm, bv, tm, tv):
        return sum((10 if i == 0 else 1) * ((m - a).pow(2).sum().sqrt() + (v - b).pow(2).sum().sqrt())
                   for i, (m, v, a, b) in enumerate(zip(bm, bv, tm, tv)))
    assert exercises.check_bn_statistics(by_hand)


def test_bn_checker_leaves_the_global_random_state_alone():
    state = torch.random.get_rng_state()
    exercises.check_bn_statistics(reference_bn)
    assert torch.equal(torch.random.get_rng_state(), state)
