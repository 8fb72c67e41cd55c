"""gi_tutorial.exercises, chapter 2: the checkers accept correct answers written independently of the library,
and reject plausible mistakes.

No "student" here calls gi_tutorial.priors or gi_tutorial.objectives (the checkers' references): each correct
answer is written another way, so a test passes only if two independent implementations agree.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gi_tutorial import exercises

CheckFailed = exercises.CheckFailed


# --- correct answers, written without the library ----------------------------------------


def tv_by_diff(x):
    return torch.diff(x, dim=-1).abs().mean() + torch.diff(x, dim=-2).abs().mean()


def tv_by_convolution(x):
    b, c, h, w = x.shape
    flat = x.reshape(b * c, 1, h, w)
    across = F.conv2d(flat, torch.tensor([[[[-1.0, 1.0]]]], dtype=x.dtype))
    down = F.conv2d(flat, torch.tensor([[[[-1.0], [1.0]]]], dtype=x.dtype))
    return across.abs().sum() / across.numel() + down.abs().sum() / down.numel()


def cosine_accumulated(c, t):
    dot = sum((a * b).sum() for a, b in zip(c, t))
    norm_c = torch.sqrt(sum(a.pow(2).sum() for a in c))
    norm_t = torch.sqrt(sum(b.pow(2).sum() for b in t))
    return 1 - dot / (norm_c * norm_t)


def cosine_concatenated(c, t):
    return 1 - F.cosine_similarity(torch.cat([a.flatten() for a in c]), torch.cat([b.flatten() for b in t]), dim=0)


def bn_vector_norm(bm, bv, tm, tv):
    total = 0
    for layer, (m, v, a, b) in enumerate(zip(bm, bv, tm, tv)):
        weight = 10.0 if layer == 0 else 1.0
        total = total + weight * (torch.linalg.vector_norm(m - a) + torch.linalg.vector_norm(v - b))
    return total


def bn_square_root(bm, bv, tm, tv):
    """sqrt of the sum of squares: the same norm; at distance 0 its NaN gradient is not held against it."""
    return sum(
        (10 if i == 0 else 1) * ((m - a).pow(2).sum().sqrt() + (v - b).pow(2).sum().sqrt())
        for i, (m, v, a, b) in enumerate(zip(bm, bv, tm, tv))
    )


@pytest.mark.parametrize(
    "checker, solution",
    [
        (exercises.check_total_variation, tv_by_diff),
        (exercises.check_total_variation, tv_by_convolution),
        (exercises.check_cosine_distance, cosine_accumulated),
        (exercises.check_cosine_distance, cosine_concatenated),
        (exercises.check_bn_statistics, bn_vector_norm),
        (exercises.check_bn_statistics, bn_square_root),
    ],
)
def test_checkers_accept_independent_answers(checker, solution, capsys):
    state = torch.random.get_rng_state()
    assert checker(solution) is True
    out = capsys.readouterr().out
    assert out.startswith("✓") and out.count("\n") == 1
    assert torch.equal(torch.random.get_rng_state(), state), "the checker changed the global random state"


# --- plausible mistakes ---------------------------------------------------------------------


def tv_summed(x):
    return torch.diff(x, dim=-1).abs().sum() + torch.diff(x, dim=-2).abs().sum()


def tv_isotropic(x):
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).sqrt().mean()


def tv_one_direction(x):
    return 2 * torch.diff(x, dim=-1).abs().mean()


def tv_as_float(x):
    return tv_by_diff(x).item()


def cosine_per_layer(c, t):
    return sum(1 - F.cosine_similarity(a.flatten(), b.flatten(), dim=0) for a, b in zip(c, t)) / len(c)


def cosine_similarity_not_distance(c, t):
    return 1 - cosine_accumulated(c, t)


def cosine_detached(c, t):
    return cosine_accumulated([a.detach() for a in c], t)


def bn_squared(bm, bv, tm, tv):
    return sum(
        (10 if i == 0 else 1) * ((m - a).pow(2).sum() + (v - b).pow(2).sum())
        for i, (m, v, a, b) in enumerate(zip(bm, bv, tm, tv))
    )


def bn_unweighted(bm, bv, tm, tv):
    return sum((m - a).norm() + (v - b).norm() for m, v, a, b in zip(bm, bv, tm, tv))


def bn_means_only(bm, bv, tm, tv):
    return sum((10 if i == 0 else 1) * (m - a).norm() for i, (m, a) in enumerate(zip(bm, tm)))


@pytest.mark.parametrize(
    "checker, wrong, message",
    [
        (exercises.check_total_variation, tv_summed, r"total variation \(1, 3, 32, 32\), case 0: largest difference"),
        (
            exercises.check_total_variation,
            tv_isotropic,
            r"total variation \(1, 3, 32, 32\), case 0: largest difference",
        ),
        (exercises.check_total_variation, tv_one_direction, r"total variation .*, case 0: largest difference"),
        (exercises.check_total_variation, tv_as_float, "case 0: the value is right but autograd cannot differentiate"),
        (exercises.check_cosine_distance, cosine_per_layer, "cosine distance, case 0: largest difference"),
        (
            exercises.check_cosine_distance,
            cosine_similarity_not_distance,
            "cosine distance, case 0: largest difference",
        ),
        (exercises.check_cosine_distance, cosine_detached, "cosine distance, case 0: the value is right but autograd"),
        (
            exercises.check_bn_statistics,
            bn_squared,
            r"BN statistics \(1 BatchNorm layers\), case 0: largest difference",
        ),
        (
            exercises.check_bn_statistics,
            bn_unweighted,
            r"BN statistics \(1 BatchNorm layers\), case 0: largest difference",
        ),
        (
            exercises.check_bn_statistics,
            bn_means_only,
            r"BN statistics \(1 BatchNorm layers\), case 0: largest difference",
        ),
    ],
)
def test_checkers_reject_mistakes(checker, wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checker(wrong)
