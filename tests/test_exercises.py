"""gi_tutorial.exercises: each checker accepts correct solutions and rejects wrong ones, saying why."""
from __future__ import annotations

import pytest

from gi_tutorial import analytic, exercises, fl


# --- average_gradients -------------------------------------------------------------------

def reference_average(gradient_lists, batch_sizes):
    updates = [fl.SharedUpdate(gradients=tuple(g), batch_size=b) for g, b in zip(gradient_lists, batch_sizes)]
    return fl.average_gradients(updates)


def handwritten_average(gradient_lists, batch_sizes):
    total = sum(batch_sizes)
    return [sum(b * grads[i] for grads, b in zip(gradient_lists, batch_sizes)) / total
            for i in range(len(gradient_lists[0]))]


def unweighted_average(gradient_lists, batch_sizes):
    return [sum(grads[i] for grads in gradient_lists) / len(gradient_lists) for i in range(len(gradient_lists[0]))]


def average_dropping_a_tensor(gradient_lists, batch_sizes):
    return handwritten_average(gradient_lists, batch_sizes)[:-1]


@pytest.mark.parametrize("solution", [reference_average, handwritten_average])
def test_average_checker_accepts(solution, capsys):
    assert exercises.check_average_gradients(solution) is True
    assert "average_gradients: matches the reference on 5 cases" in capsys.readouterr().out


def test_average_checker_rejects_an_unweighted_mean():
    with pytest.raises(AssertionError, match=r"average \(tensor \d+\), case \d: largest difference from the reference is .* \(tolerance 1e-06\)"):
        exercises.check_average_gradients(unweighted_average)


def test_average_checker_rejects_a_missing_tensor():
    with pytest.raises(AssertionError, match="average, case 0: expected 8 tensors, got 7"):
        exercises.check_average_gradients(average_dropping_a_tensor)


# --- label recovery ----------------------------------------------------------------------

def handwritten_label(weight_grad):
    sums = [float(row.sum()) for row in weight_grad]
    return sums.index(min(sums))


@pytest.mark.parametrize("solution", [analytic.label_from_weight_gradient, handwritten_label])
def test_label_checker_accepts(solution):
    assert exercises.check_label_recovery(solution) is True


def test_label_checker_rejects_argmax():
    with pytest.raises(AssertionError, match=r"label recovery, case 0: the true label is 1, got \d"):
        exercises.check_label_recovery(lambda w: int(w.sum(dim=1).argmax()))


# --- fully connected input recovery ------------------------------------------------------

def handwritten_fc_input(weight_grad, bias_grad):
    # dW = delta x^T and db = delta, so delta^T dW = |delta|^2 x^T: least squares over all rows
    return bias_grad @ weight_grad / (bias_grad @ bias_grad)


@pytest.mark.parametrize("solution", [analytic.recover_fc_input, handwritten_fc_input])
def test_fc_checker_accepts(solution):
    assert exercises.check_fc_input_recovery(solution) is True


def test_fc_checker_rejects_an_undivided_row():
    with pytest.raises(AssertionError, match=r"fully connected input recovery, case 0: largest difference .* \(tolerance 1e-05\)"):
        exercises.check_fc_input_recovery(lambda w, b: w[b.abs().argmax()])


def test_fc_checker_rejects_the_wrong_shape():
    with pytest.raises(AssertionError, match=r"expected shape \(20,\), got \(1, 20\)"):
        exercises.check_fc_input_recovery(lambda w, b: analytic.recover_fc_input(w, b)[None])


# --- counting ----------------------------------------------------------------------------

def reference_count(model, image_shape, batch_size):
    count = analytic.count_unknowns(model, image_shape, batch_size)
    return count.unknowns, count.equations


def handwritten_count(model, image_shape, batch_size):
    c, h, w = image_shape
    return batch_size * c * h * w, sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("solution", [reference_count, handwritten_count])
def test_count_checker_accepts(solution):
    assert exercises.check_count_unknowns(solution) is True


def test_count_checker_rejects_counting_one_image_only():
    def one_image(model, image_shape, batch_size):
        return handwritten_count(model, image_shape, 1)

    # case 0 has batch 1, so the first failure is case 1 (lenet, batch 8)
    with pytest.raises(AssertionError, match=r"counting, case 1 \(lenet, batch 8\): expected \(24576, 15826\), got \(3072, 15826\)"):
        exercises.check_count_unknowns(one_image)


def test_count_checker_rejects_counting_weights_only():
    def weights_only(model, image_shape, batch_size):
        c, h, w = image_shape
        return batch_size * c * h * w, sum(p.numel() for p in model.parameters() if p.ndim > 1)

    with pytest.raises(AssertionError, match=r"counting, case 0 \(lenet, batch 1\)"):
        exercises.check_count_unknowns(weights_only)
