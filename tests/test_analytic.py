"""gi_tutorial.analytic: closed-form label and input recovery, and counting."""

from __future__ import annotations

import pytest
import torch

from gi_tutorial import analytic, fl, generators, models


@pytest.mark.parametrize("seed", range(10))
def test_recover_label_one_per_class(seed):
    label = seed  # seeds 0..9 cover every class once
    model = models.build_model("lenet", seed=seed)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    update = fl.client_update(model, x, torch.tensor([label]))
    got = analytic.recover_label(update, model)
    assert got.dtype == torch.int64 and got.shape == (1,)
    assert got.item() == label


def test_recover_label_on_a_real_image(lenet_update, cifar_image):
    model, update = lenet_update
    assert torch.equal(analytic.recover_label(update, model), cifar_image[1])


# LeNet (seed 1) predicts class 3 for most inputs; these batches do not contain class 3,
# the case in which the negative-row rule is exact (see the xfail test below for one that does).
@pytest.mark.parametrize("labels", [[7, 1, 4, 2], [0, 9, 5, 6], [8, 6, 2, 1]])
def test_recover_labels_of_a_batch_with_unique_labels(labels, random_batch):
    model = models.build_model("lenet", seed=1)
    x, _ = random_batch(4, seed=sum(labels))
    y = torch.tensor(labels)
    update = fl.client_update(model, x, y)  # shares the batch size
    got = analytic.recover_labels(update, model)
    assert got.dtype == torch.int64
    assert got.tolist() == sorted(labels)
    # the batch size can come from the argument instead of the update
    hidden = fl.client_update(model, x, y, share_batch_size=False)
    assert analytic.recover_labels(hidden, model, batch_size=4).tolist() == sorted(labels)


def test_recover_labels_on_real_images(cifar_batch):
    # CIFAR-10 test images 0, 1, 3 have the unique labels 3, 8, 0
    images, labels = cifar_batch
    idx = [0, 1, 3]
    model = models.build_model("lenet", seed=0)
    update = fl.client_update(model, images[idx], labels[idx])
    assert analytic.recover_labels(update, model).tolist() == sorted(labels[idx].tolist()) == [0, 3, 8]


@pytest.mark.parametrize("seed", range(5))
def test_negative_rows_are_always_true_labels(seed):
    """What the rule guarantees: after a sigmoid the last layer's input is positive, so a class
    outside the batch has a positive row sum; every negative row is a label of the batch."""
    g = torch.Generator().manual_seed(seed)
    model = models.build_model("lenet", seed=seed)
    x, y = torch.rand(4, 3, 32, 32, generator=g), torch.randperm(10, generator=g)[:4]
    weight_grad, _ = analytic.last_linear_gradients(fl.client_update(model, x, y), model)
    row_sums = weight_grad.sum(dim=1)
    outside = [c for c in range(10) if c not in y.tolist()]
    assert (row_sums[outside] > 0).all()
    assert set(torch.nonzero(row_sums < 0).flatten().tolist()) <= set(y.tolist())


def test_recover_labels_can_miss_a_class_the_model_favours():
    """The documented limit of the negative-row rule: class 3 collects probability from the other
    images, its row sum turns positive, and another class takes its place."""
    model = models.build_model("lenet", seed=1)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(17))
    y = torch.tensor([0, 9, 5, 3])
    recovered = analytic.recover_labels(fl.client_update(model, x, y), model).tolist()
    assert 3 not in recovered and {0, 5, 9} <= set(recovered)


def test_recover_labels_needs_the_batch_size(lenet, random_batch):
    x, y = random_batch(2)
    update = fl.client_update(lenet, x, y, share_batch_size=False)
    with pytest.raises(ValueError, match="batch size"):
        analytic.recover_labels(update, lenet)


def test_recover_labels_rejects_more_images_than_classes(lenet, random_batch):
    x, y = random_batch(11)
    with pytest.raises(ValueError, match="11 cannot have unique labels among 10"):
        analytic.recover_labels(fl.client_update(lenet, x, y), lenet)


def test_recover_fc_input_on_the_mlp_first_layer(cifar_image):
    x, y = cifar_image
    model = models.build_model("mlp")
    update = fl.client_update(model, x, y)
    weight_grad, bias_grad = analytic.linear_gradients(update, model, model.hidden)
    assert weight_grad.shape == (256, 3 * 32 * 32) and bias_grad.shape == (256,)
    recovered = analytic.recover_fc_input(weight_grad, bias_grad)
    assert recovered.shape == (3 * 32 * 32,)
    assert (recovered - x.flatten()).abs().max() < 1e-5


def test_linear_gradients_picks_the_layers_own_entries(random_batch):
    model = models.build_model("mlp")
    x, y = random_batch(1)
    update = fl.client_update(model, x, y)
    w, b = analytic.last_linear_gradients(update, model)
    assert w is update.gradients[2] and b is update.gradients[3]  # hidden.w, hidden.b, classifier.w, classifier.b
    w, b = analytic.linear_gradients(update, model, model.hidden)
    assert w is update.gradients[0] and b is update.gradients[1]


def test_last_linear_gradients_checks_the_update(lenet, random_batch):
    x, y = random_batch(1)
    update = fl.client_update(models.build_model("mlp"), x, y)
    with pytest.raises(ValueError):
        analytic.last_linear_gradients(update, lenet)
    conv_only = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3))
    with pytest.raises(ValueError, match="no nn.Linear"):
        analytic.last_linear_gradients(
            fl.SharedUpdate(gradients=tuple(torch.zeros_like(p) for p in conv_only.parameters())), conv_only
        )


@pytest.mark.parametrize(
    "weight_grad, bias_grad",
    [
        (torch.ones(5), torch.ones(5)),  # weight not 2-D
        (torch.ones(5, 3), torch.ones(5, 1)),  # bias not 1-D
        (torch.ones(5, 3), torch.ones(4)),  # different number of rows
    ],
)
def test_recover_fc_input_shape_errors(weight_grad, bias_grad):
    with pytest.raises(ValueError, match=r"weight_grad \(out, in\) and bias_grad \(out,\)"):
        analytic.recover_fc_input(weight_grad, bias_grad)


def test_recover_fc_input_zero_bias_gradient():
    with pytest.raises(ValueError, match="zero everywhere"):
        analytic.recover_fc_input(torch.ones(3, 4), torch.zeros(3))


def test_recover_fc_input_uses_a_nonzero_row():
    x = torch.tensor([0.25, -1.0, 3.0])
    delta = torch.tensor([0.0, 0.5, -2.0, 0.0])  # dead units give zero rows
    assert torch.allclose(analytic.recover_fc_input(torch.outer(delta, x), delta), x)


def test_label_from_weight_gradient_shape_error():
    with pytest.raises(ValueError, match=r"\(num_classes, features\)"):
        analytic.label_from_weight_gradient(torch.ones(10))
    assert analytic.label_from_weight_gradient(torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.1, 0.1]])) == 1


def test_count_unknowns_is_the_pixel_count():
    model = models.build_model("lenet")
    count = analytic.count_unknowns(model, (3, 32, 32), batch_size=8)
    assert count == analytic.count(model, (3, 32, 32), 8, space="pixels")
    assert count.unknowns == 8 * 3 * 32 * 32 == 24_576
    assert count.entries == models.num_parameters(model) == 15_826
    # softmax: the classifier's 10 x 768 weight gradient sums to zero over the classes (768) and so does its bias (1)
    assert count.dependent == 769 and count.equations == 15_826 - 769
    assert count.ratio == pytest.approx(24_576 / 15_057)  # unknowns per independent equation
    one = analytic.count_unknowns(model, (3, 32, 32))
    assert one.unknowns == 3072 and one.ratio < 1 < count.ratio
    assert not one.under_determined and count.under_determined
    gap = analytic.count_unknowns(models.build_model("convnet_gap", in_channels=1), (1, 32, 32), batch_size=4)
    assert (gap.unknowns, gap.entries, gap.equations) == (4 * 1024, 241_546, 241_546 - 129 - 352)


def test_the_true_counts_of_the_chapters():
    """LeNet is under-determined from batch 5 (6 by the raw parameter count); victim S at batch 16 has a ratio of 1.28."""
    lenet = models.build_model("lenet")
    first = next(b for b in range(1, 20) if analytic.count(lenet, (3, 32, 32), b).under_determined)
    raw_first = next(b for b in range(1, 20) if b * 3 * 32 * 32 > models.num_parameters(lenet))
    assert (first, raw_first) == (5, 6)
    victim_s = models.build_model("convnet_s", in_channels=1)
    count = analytic.count(victim_s, (1, 32, 32), 16)
    assert round(count.ratio, 2) == 1.28
    assert round(16 * 1024 / models.num_parameters(victim_s), 2) == 1.19  # what the raw count said
    assert analytic.exact_dependencies(victim_s) == {"softmax": 16 * 8 * 8 + 1, "rescaling": 8 + 16 + 16}


def test_count_per_search_space():
    victim_s = models.build_model("convnet_s", in_channels=1)
    generator = generators.Generator()
    weights = sum(p.numel() for p in generator.parameters())
    assert weights == 566_689  # the shipped DCGAN's size: stage 2 of GIAS searches this many numbers per image
    equations = analytic.independent_entries(victim_s)
    latent = analytic.count(victim_s, (1, 32, 32), 32, space="latent", generator=generator)
    assert (latent.unknowns, latent.equations, latent.space) == (32 * 64, equations, "latent")
    assert latent.ratio == pytest.approx(2048 / equations) and latent.ratio < 1
    per_image = analytic.count(victim_s, (1, 32, 32), 4, space="weights", generator=generator)
    assert per_image.unknowns == 4 * 566_689 and per_image.under_determined
    shared = analytic.count(victim_s, (1, 32, 32), 4, space="shared_weights", generator=generator)
    assert shared.unknowns == 566_689
    pixels = analytic.count(victim_s, (1, 32, 32), 4)
    assert len({c.equations for c in (latent, per_image, shared, pixels)}) == 1  # the gradient is the same


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(space="latent"), "needs the generator"),
        (dict(space="voxels"), "unknown space 'voxels'"),
        (dict(space="latent", generator=torch.nn.Linear(2, 2)), "z_dim"),
    ],
)
def test_count_space_errors(lenet, kwargs, match):
    with pytest.raises(ValueError, match=match):
        analytic.count(lenet, (3, 32, 32), 2, **kwargs)


@pytest.mark.parametrize("shape, batch, match", [((32, 32), 1, "image_shape"), ((3, 32, 32), 0, "batch_size")])
def test_count_unknowns_errors(lenet, shape, batch, match):
    with pytest.raises(ValueError, match=match):
        analytic.count_unknowns(lenet, shape, batch)


def _tiny_models():
    """Small enough that the span of their gradients can be computed exactly (float64)."""
    torch.manual_seed(1)
    bn_eval = models.ConvNet(1, 4, widths=(2, 3), strides=(1, 2), head="flatten", batch_norm=True, image_size=6).eval()
    with torch.no_grad():  # running statistics and affine parameters away from their defaults
        for m in bn_eval.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                (
                    m.running_mean.uniform_(-1, 1),
                    m.running_var.uniform_(0.5, 2),
                    m.weight.uniform_(0.5, 2),
                    m.bias.uniform_(-1, 1),
                )
    return {
        "linear": (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 4)), (1, 3, 3)),
        "mlp": (models.MLP(1, 4, hidden=5, image_size=3), (1, 3, 3)),
        "convnet": (models.ConvNet(1, 4, widths=(2, 3), strides=(1, 2), head="flatten", image_size=6), (1, 6, 6)),
        "convnet_gap": (models.ConvNet(1, 4, widths=(2, 3, 3), strides=(1, 2, 1), head="gap", image_size=6), (1, 6, 6)),
        "convnet_bn_train": (
            models.ConvNet(1, 4, widths=(2, 3), strides=(1, 2), head="flatten", batch_norm=True, image_size=6),
            (1, 6, 6),
        ),
        "convnet_bn_eval": (bn_eval, (1, 6, 6)),
    }


@pytest.mark.parametrize("name", list(_tiny_models()))
def test_independent_entries_is_the_dimension_of_the_gradients_span(name):
    """The exact dependencies are all there is: gradients of many random batches span exactly ``equations`` dimensions.

    An identity missed would leave the span smaller than the count; one counted that does not hold, larger.
    """
    model, shape = _tiny_models()[name]
    model = model.double()
    entries = models.num_parameters(model)
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(3 * entries):  # batches of 1 to 3 random images and labels
        b = 1 + i % 3
        # wide inputs, so that every (Leaky)ReLU unit takes both signs: a unit that never changes sign on the
        # sampled inputs is linear there and adds identities that hold on those inputs only (found with N(0, 1))
        x = 10 * torch.randn(b, *shape, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (b,), generator=g)
        rows.append(torch.cat([t.flatten() for t in fl.batch_gradients(model, x, y)[0]]))
    singular = torch.linalg.svdvals(torch.stack(rows))
    span = int((singular > 1e-10 * singular[0]).sum())
    assert span == analytic.independent_entries(model) < entries
    # a clear gap between the last direction counted and the first one not: the span is no rounding artefact
    # (in train mode BatchNorm's near-dependencies sit just above the gap, at about 1e-8 of the largest value)
    assert singular[span - 1] > 1e4 * singular[span]


def test_batchnorm_scale_identity_holds_only_in_eval_mode():
    models_ = _tiny_models()
    train, _ = models_["convnet_bn_train"]
    evaluated, _ = models_["convnet_bn_eval"]
    assert "scale_before_batchnorm" not in analytic.exact_dependencies(train)
    assert analytic.exact_dependencies(evaluated)["scale_before_batchnorm"] == 2 + 3
    assert analytic.exact_dependencies(train)["bias_before_batchnorm"] == 2 + 3


# LeakyReLU victims: the last layer's input can be negative, so only the bias gradient is exact.
LEAKY_VICTIMS = ("convnet_fc", "convnet_gap", "convnet_bn")


def _single_image_cases(name, num_seeds=3, num_images=4, negative_features=False):
    """(model, update, label, features) for random images of every class, one image per update.

    ``negative_features`` shifts the bias of the last layer before the last LeakyReLU to -2 (as
    training can), so the last linear layer's input is mostly negative.
    """
    for seed in range(num_seeds):
        model = models.build_model(name, seed=seed)
        if negative_features:
            last = [m for m in model.features if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))][-1]
            with torch.no_grad():
                last.bias.fill_(-2.0)
        g = torch.Generator().manual_seed(seed)
        for i in range(num_images):
            x = torch.rand(1, 3, 32, 32, generator=g) * 2 - 0.5  # also pixels outside [0, 1]
            y = torch.tensor([(3 * seed + 7 * i) % 10])
            with torch.no_grad():
                features = model.pool(model.features(x)).flatten(1)  # the last linear layer's input
            yield model, fl.client_update(model, x, y), y, features


@pytest.mark.parametrize("negative_features", [False, True])
@pytest.mark.parametrize("name", LEAKY_VICTIMS)
def test_recover_label_is_exact_on_the_leaky_relu_convnets(name, negative_features):
    for model, update, y, features in _single_image_cases(name, negative_features=negative_features):
        assert torch.equal(analytic.recover_label(update, model), y)
        weight_grad, bias_grad = analytic.last_linear_gradients(update, model)
        # the bias gradient is softmax - onehot: negative at the label only, and its entries sum to 0
        assert (bias_grad < 0).nonzero().flatten().tolist() == y.tolist()
        assert abs(bias_grad.sum().item()) < 1e-6
        # iDLG's weight-row rule: the row sums are the bias gradient times the sum of the features,
        # so they pick the label only while that sum is positive
        torch.testing.assert_close(weight_grad.sum(dim=1), bias_grad * features.sum(), rtol=1e-4, atol=1e-6)
        row_rule_right = analytic.label_from_weight_gradient(weight_grad) == y.item()
        assert row_rule_right == (features.sum() > 0).item()
        assert row_rule_right != negative_features


def test_recover_label_is_exact_on_real_images(cifar_batch):
    images, labels = cifar_batch
    for name in (*LEAKY_VICTIMS, "lenet", "mlp"):
        for seed in range(2):
            model = models.build_model(name, seed=seed)
            for i in range(len(images)):
                update = fl.client_update(model, images[i : i + 1], labels[i : i + 1])
                assert torch.equal(analytic.recover_label(update, model), labels[i : i + 1]), (name, seed, i)


@pytest.mark.parametrize("seed", range(3))
def test_recover_label_is_exact_on_resnet18(seed, cifar_batch):
    model = models.build_model("resnet18", seed=seed)  # train mode: BatchNorm uses the image's own statistics
    images, labels = cifar_batch
    for i in (seed, seed + 1):
        update = fl.client_update(model, images[i : i + 1], labels[i : i + 1])
        assert torch.equal(analytic.recover_label(update, model), labels[i : i + 1])
    x, y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed)), torch.tensor([9 - seed])
    assert analytic.recover_label(fl.client_update(model, x, y), model).tolist() == [9 - seed]


def test_recover_label_falls_back_to_the_weight_rows_without_a_bias():
    model = models.build_model("lenet", seed=2)
    model.classifier.bias = None  # the last layer has no bias: iDLG's rule on its (sigmoid, positive) input
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    update = fl.client_update(model, x, torch.tensor([6]))
    weight_grad, bias_grad = analytic.last_linear_gradients(update, model)
    assert bias_grad is None
    torch.testing.assert_close(analytic.label_scores(update, model), weight_grad.sum(dim=1))
    assert analytic.recover_label(update, model).tolist() == [6]


def _batch_probability(model, x):
    """The probability the whole batch gives each class, ``sum_b softmax(z_b)``, in the client's mode."""
    import copy

    with torch.no_grad():
        return copy.deepcopy(model)(x).softmax(dim=1).sum(dim=0)


@pytest.mark.parametrize("name", LEAKY_VICTIMS)
def test_recover_labels_is_exact_on_the_leaky_relu_convnets(name):
    """Unique labels, each given total probability < 1 by the batch: the B lowest bias entries are the labels."""
    for seed in range(3):
        model = models.build_model(name, seed=seed)
        g = torch.Generator().manual_seed(100 + seed)
        x, y = torch.rand(4, 3, 32, 32, generator=g), torch.randperm(10, generator=g)[:4]
        update = fl.client_update(model, x, y)
        assert (_batch_probability(model, x)[y] < 1).all()  # the documented condition holds here
        _, bias_grad = analytic.last_linear_gradients(update, model)
        assert set((bias_grad < 0).nonzero().flatten().tolist()) == set(y.tolist())
        assert analytic.recover_labels(update, model).tolist() == sorted(y.tolist())


def test_recover_labels_misses_a_label_only_when_the_batch_favours_it():
    """The documented limit: class 3 gets total probability >= 1 from the batch, its bias entry turns
    non-negative and another class takes its place; the labels with probability < 1 are all found."""
    model = models.build_model("lenet", seed=1)  # predicts class 3 for most inputs
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(17))
    y = torch.tensor([0, 9, 5, 3])
    mass = _batch_probability(model, x)
    assert mass[3] >= 1 and (mass[[0, 9, 5]] < 1).all()
    update = fl.client_update(model, x, y)
    _, bias_grad = analytic.last_linear_gradients(update, model)
    assert bias_grad[3] >= 0
    recovered = analytic.recover_labels(update, model).tolist()
    assert 3 not in recovered and {0, 5, 9} <= set(recovered)


def test_label_scores_and_labels_stay_on_the_gradients_device(lenet_update):
    model, update = lenet_update
    label = analytic.recover_label(update, model)
    assert label.dtype == torch.int64 and label.device == update.gradients[-1].device
    labels = analytic.recover_labels(update, model)
    assert labels.dtype == torch.int64 and labels.device == update.gradients[-1].device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_recovered_labels_are_on_cuda_for_a_cuda_update(cifar_image):
    x, y = cifar_image
    for name in ("lenet", "convnet_fc"):
        model = models.build_model(name).cuda()
        update = fl.client_update(model, x.cuda(), y.cuda())
        label = analytic.recover_label(update, model)
        assert label.device.type == "cuda" and label.dtype == torch.int64 and label.tolist() == y.tolist()
        labels = analytic.recover_labels(update, model)
        assert labels.device.type == "cuda" and labels.tolist() == y.tolist()
