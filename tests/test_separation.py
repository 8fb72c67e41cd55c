"""gi_tutorial.separation: the Cocktail Party Attack (ICA on a fully connected layer's weight gradient)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from gi_tutorial import analytic, data, fl, metrics, models, separation

IMAGE_SHAPE = (3, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """FastICA runs in NumPy: keep its BLAS to one thread, like torch in these tests."""
    with threadpool_limits(limits=1):
        yield


def mlp_attack(b: int, root) -> dict:
    """The MLP (256 hidden units, first layer on the pixels) and the update of the first ``b`` CIFAR-10 test images."""
    x, y = data.cifar10_targets(b, root=root, allow_download=False)
    model = models.build_model("mlp")
    update = fl.client_update(model, x, y)  # only the gradient and the batch size are shared
    weight_grad, bias_grad = analytic.linear_gradients(update, model, model.hidden)
    return dict(x=x, model=model, update=update, weight_grad=weight_grad, bias_grad=bias_grad)


def analytic_baseline(weight_grad: torch.Tensor, bias_grad: torch.Tensor, b: int) -> torch.Tensor:
    """``dW_i / db_i`` for the ``b`` rows with the largest ``|db_i|``: exact for one image, a mixture for a batch."""
    rows = bias_grad.abs().argsort(descending=True)[:b]
    return (weight_grad[rows] / bias_grad[rows, None]).reshape(b, *IMAGE_SHAPE)


@pytest.fixture(scope="module")
def batch8(empty_root):
    attack = mlp_attack(8, empty_root)
    attack["images"] = separation.recover_batch(attack["update"], attack["model"], attack["model"].hidden, IMAGE_SHAPE)
    return attack


def test_unmixing_recovers_a_batch_of_8(batch8):
    x, images = batch8["x"], batch8["images"]
    assert images.shape == x.shape and images.min() >= 0 and images.max() <= 1
    scores = metrics.evaluate(images, x)
    # measured: mean 30.5 dB, SSIM 0.983, worst image 26.3 dB (any FastICA seed, any model seed: the rows
    # span the same space whatever the weights); ICA on the raw pixels instead of their differences: 13.9 dB
    assert scores.psnr.mean() > 26.0
    assert scores.psnr.min() > 22.0
    assert scores.ssim.mean() > 0.95
    # every image is found once: the matching pairs each with its own, not a duplicate
    assert sorted(scores.order.tolist()) == list(range(8))


def test_unmixing_beats_the_one_image_formula(batch8):
    """For a batch, a single row dW_i / db_i is a mixture of all the images (measured 14.1 dB for the top 8 rows)."""
    x, images = batch8["x"], batch8["images"]
    baseline = analytic_baseline(batch8["weight_grad"], batch8["bias_grad"], 8)
    single = analytic.recover_fc_input(batch8["weight_grad"], batch8["bias_grad"]).reshape(1, *IMAGE_SHAPE)
    unmixed = metrics.psnr(images[metrics.match_batch(images, x)], x).mean()
    assert unmixed > metrics.evaluate(baseline, x).psnr.mean() + 10
    assert unmixed > metrics.psnr(single.expand_as(x).clamp(0, 1), x).max() + 10  # 16.5 dB for the image it fits best


def test_unmixing_without_a_bias_gradient(batch8):
    """Without the bias the scale is guessed (brightest pixel = 1): measured 28.5 dB, worst image 19.4 dB."""
    images = separation.unmix_fc_gradient(batch8["weight_grad"], 8, IMAGE_SHAPE)
    scores = metrics.evaluate(images, batch8["x"])
    assert scores.psnr.mean() > 25.0 and scores.ssim.mean() > 0.95


def test_unmixing_recovers_a_batch_of_16(empty_root):
    attack = mlp_attack(16, empty_root)
    images = separation.unmix_fc_gradient(attack["weight_grad"], 16, IMAGE_SHAPE, bias_grad=attack["bias_grad"])
    scores = metrics.evaluate(images, attack["x"])
    # measured: mean 27.7 dB, SSIM 0.952, worst image 20.9 dB; the top 16 rows alone give 14.4 dB
    assert scores.psnr.mean() > 24.0
    assert scores.ssim.mean() > 0.9
    assert (
        scores.psnr.mean()
        > metrics.evaluate(analytic_baseline(attack["weight_grad"], attack["bias_grad"], 16), attack["x"]).psnr.mean()
        + 8
    )


def test_one_image_is_recovered_exactly(cifar_image):
    """With one source there is nothing to unmix: the bias fixes the scale and the image comes back exactly."""
    x, y = cifar_image
    model = models.build_model("mlp")
    images = separation.recover_batch(fl.client_update(model, x, y), model, model.hidden, IMAGE_SHAPE)
    assert metrics.psnr(images, x).item() > 60


def test_a_filter_commutes_with_the_mixing():
    """Why ICA may learn the unmixing on pixel differences: filtering the mixtures mixes the filtered images."""
    g = np.random.default_rng(0)
    sources = g.random((3, 2 * 4 * 5))  # three "images" of shape (2, 4, 5)
    mixing = g.standard_normal((7, 3))
    filtered_mixtures = separation.spatial_differences(mixing @ sources, (2, 4, 5))
    assert np.allclose(filtered_mixtures, mixing @ separation.spatial_differences(sources, (2, 4, 5)))
    assert filtered_mixtures.shape == (7, 2 * 4 * 4 + 2 * 3 * 5)


def test_bad_arguments_are_clear_errors(batch8, lenet, cifar_image):
    weight_grad, bias_grad = batch8["weight_grad"], batch8["bias_grad"]
    with pytest.raises(ValueError, match="image_shape must be"):
        separation.unmix_fc_gradient(weight_grad, 8, (32, 32))
    with pytest.raises(ValueError, match="weight_grad must be"):
        separation.unmix_fc_gradient(weight_grad, 8, (1, 32, 32))
    with pytest.raises(ValueError, match="between 1 and the layer's 256"):
        separation.unmix_fc_gradient(weight_grad, 300, IMAGE_SHAPE)
    with pytest.raises(ValueError, match="between 1"):
        separation.unmix_fc_gradient(weight_grad, 0, IMAGE_SHAPE)
    with pytest.raises(ValueError, match="bias_grad must have shape"):
        separation.unmix_fc_gradient(weight_grad, 8, IMAGE_SHAPE, bias_grad=bias_grad[:10])
    model, update = batch8["model"], batch8["update"]
    with pytest.raises(ValueError, match="batch size"):
        separation.recover_batch(update.replace(batch_size=None), model, model.hidden, IMAGE_SHAPE)
    with pytest.raises(ValueError, match="flattened"):
        separation.recover_batch(update, model, model.classifier, IMAGE_SHAPE)
    with pytest.raises(ValueError, match="a module of the model"):
        separation.recover_batch(update, model, models.build_model("mlp", seed=1).hidden, IMAGE_SHAPE)
    x, y = cifar_image
    with pytest.raises(ValueError, match="does not match the model|different model"):
        separation.recover_batch(fl.client_update(lenet, x, y), model, model.hidden, IMAGE_SHAPE)
