"""gi_tutorial.fl: what a client shares, checks on its inputs, and the FedSGD server."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gi_tutorial import fl, models


def _manual_gradients(model, images, labels):
    loss = F.cross_entropy(model(images), labels)  # mean over the batch
    return torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


def test_client_update_is_the_gradient_of_the_mean_loss(lenet, random_batch):
    x, y = random_batch(3)
    update = fl.client_update(lenet, x, y)
    params = list(lenet.parameters())
    assert len(update.gradients) == len(params)
    for g, p in zip(update.gradients, params):
        assert g.shape == p.shape
        assert not g.requires_grad
    expected = _manual_gradients(lenet, x, y)
    for g, e in zip(update.gradients, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-7)
    assert update.num_values == models.num_parameters(lenet)


def test_client_update_skips_frozen_parameters(random_batch):
    model = models.build_model("mlp")
    model.hidden.weight.requires_grad_(False)
    x, y = random_batch(2)
    update = fl.client_update(model, x, y)
    assert [g.shape for g in update.gradients] == [(256,), (10, 256), (10,)]
    update.check_matches(model)


def test_shared_fields_only_when_shared(lenet, random_batch):
    x, y = random_batch(2)
    default = fl.client_update(lenet, x, y)
    assert default.batch_size == 2 and default.labels is None and default.bn_statistics is None
    hidden = fl.client_update(lenet, x, y, share_batch_size=False)
    assert hidden.batch_size is None
    shared = fl.client_update(lenet, x, y, share_labels=True, share_bn_statistics=True)
    assert torch.equal(shared.labels, y)
    assert shared.labels.data_ptr() != y.data_ptr()  # a copy, not the client's tensor
    assert shared.bn_statistics == ()  # LeNet has no BatchNorm layer


@pytest.fixture
def resnet():
    model = models.build_model("resnet18")
    model.train()
    return model


def test_bn_statistics_match_a_hook_on_the_first_bn_layer(resnet, random_batch):
    x, y = random_batch(2)
    seen = []
    handle = resnet.bn1.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].detach().clone()))
    try:
        update = fl.client_update(resnet, x, y, share_bn_statistics=True)
        # the hook is on the caller's model: the client runs a copy, so the hook of the copy fires
    finally:
        handle.remove()
    assert len(seen) == 1, "client_update should run the batch once, on a (deep) copy with the same hooks"
    (first_input,) = seen
    num_bn = sum(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    assert len(update.bn_statistics) == num_bn == 20
    mean, var = update.bn_statistics[0]
    assert mean.shape == var.shape == (64,)
    torch.testing.assert_close(mean, first_input.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, first_input.var(dim=(0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(var, first_input.var(dim=(0, 2, 3), unbiased=True))  # biased, not unbiased
    for m, v in update.bn_statistics:
        assert not m.requires_grad and not v.requires_grad and (v >= 0).all()


def test_bn_statistics_equal_the_running_stat_update_of_bn_in_train_mode(resnet, random_batch):
    """Independent of hooks: one train-mode step moves BN's running mean by momentum*(batch mean - old)."""
    x, y = random_batch(2)
    update = fl.client_update(resnet, x, y, share_bn_statistics=True)
    probe = models.build_model("resnet18")
    probe.train()
    with torch.no_grad():
        probe(x)
    momentum = probe.bn1.momentum
    torch.testing.assert_close(probe.bn1.running_mean, momentum * update.bn_statistics[0][0], rtol=1e-5, atol=1e-6)


def test_client_update_leaves_the_callers_model_unchanged(resnet, random_batch, same_state):
    state_copy, assert_same_state = same_state
    before = state_copy(resnet)
    x, y = random_batch(2)
    fl.client_update(resnet, x, y, share_bn_statistics=True)
    assert_same_state(resnet, before)  # including BatchNorm running stats and num_batches_tracked
    assert all(p.grad is None for p in resnet.parameters())
    assert resnet.training  # mode untouched


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (torch.rand(3, 32, 32), torch.tensor([1, 2, 3]), r"\(B, C, H, W\)"),
        (torch.randint(0, 255, (2, 3, 32, 32)), torch.tensor([1, 2]), r"\(B, C, H, W\)"),
        (torch.rand(2, 3, 32, 32), torch.tensor([1, 2, 3]), r"shape \(2,\)"),
        (torch.rand(2, 3, 32, 32), torch.tensor([[1, 2]]), r"shape \(2,\)"),
        (torch.rand(2, 3, 32, 32), torch.tensor([1.0, 2.0]), r"integer tensor of shape \(2,\)"),
        (torch.rand(0, 3, 32, 32), torch.zeros(0, dtype=torch.int64), "the batch is empty"),
    ],
)
def test_bad_batches_raise_value_error(lenet, images, labels, match):
    with pytest.raises(ValueError, match=match):
        fl.client_update(lenet, images, labels)


def test_check_batch_on_a_non_tensor():
    with pytest.raises(ValueError, match="ndarray|list"):
        fl.check_batch([[0.0]])


def test_check_matches(lenet, random_batch):
    x, y = random_batch(1)
    update = fl.client_update(lenet, x, y)
    update.check_matches(lenet)  # the right model: no error
    short = update.replace(gradients=update.gradients[:-1])
    with pytest.raises(ValueError, match=r"holds 7 gradient tensors but the model has 8"):
        short.check_matches(lenet)
    grads = list(update.gradients)
    grads[2] = grads[2].reshape(12, 12, 25)
    with pytest.raises(ValueError, match=r"gradient 2 has shape \(12, 12, 25\).*'features.2.weight'.*\(12, 12, 5, 5\)"):
        update.replace(gradients=tuple(grads)).check_matches(lenet)
    with pytest.raises(ValueError):
        update.check_matches(models.build_model("convnet_fc"))


def test_replace_returns_a_copy(lenet, random_batch):
    x, y = random_batch(1)
    update = fl.client_update(lenet, x, y)
    other = update.replace(batch_size=None)
    assert other.batch_size is None and update.batch_size == 1
    for g, h in zip(other.gradients, update.gradients):  # equal values, no shared storage
        assert torch.equal(g, h) and g.data_ptr() != h.data_ptr()
    with torch.no_grad():
        other.gradients[0].add_(1.0)  # an in-place change of the copy leaves the original alone
    assert not torch.equal(other.gradients[0], update.gradients[0])


def test_replace_copies_labels_and_bn_statistics(random_batch):
    model = models.build_model("convnet_bn")
    x, y = random_batch(2)
    update = fl.client_update(model, x, y, share_labels=True, share_bn_statistics=True)
    other = update.replace(batch_size=None)
    assert other.labels.data_ptr() != update.labels.data_ptr()
    assert other.bn_statistics[0][0].data_ptr() != update.bn_statistics[0][0].data_ptr()
    assert torch.equal(other.bn_statistics[0][1], update.bn_statistics[0][1])


def test_server_step_equals_sgd_on_the_pooled_batch(random_batch):
    model = models.build_model("lenet", seed=3)
    reference = models.build_model("lenet", seed=3)
    x1, y1 = random_batch(2, seed=1)
    x2, y2 = random_batch(3, seed=2)
    updates = [fl.client_update(model, x1, y1), fl.client_update(model, x2, y2)]
    lr = 0.5
    initial = [p.detach().clone() for p in model.parameters()]
    fl.server_step(model, updates, lr=lr)
    pooled = _manual_gradients(reference, torch.cat([x1, x2]), torch.cat([y1, y2]))  # mean over all 5 images
    with torch.no_grad():
        for p, g in zip(reference.parameters(), pooled):
            p -= lr * g
    for p, q, p0 in zip(model.parameters(), reference.parameters(), initial):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
        assert not torch.equal(p, p0)  # the step really moved every parameter
    # an unweighted mean of the two updates would differ: batch sizes 2 and 3
    unweighted = [(a + b) / 2 for a, b in zip(updates[0].gradients, updates[1].gradients)]
    assert any(not torch.allclose(u, g, atol=1e-6) for u, g in zip(unweighted, pooled))


def test_server_step_errors(lenet, random_batch):
    x, y = random_batch(2)
    with pytest.raises(ValueError, match="at least one"):
        fl.server_step(lenet, [], lr=0.1)
    with pytest.raises(ValueError, match="batch size"):
        fl.server_step(lenet, [fl.client_update(lenet, x, y, share_batch_size=False)], lr=0.1)
    wrong = fl.client_update(models.build_model("mlp"), x, y)
    with pytest.raises(ValueError, match="different model"):
        fl.server_step(lenet, [wrong], lr=0.1)


def test_batch_order_is_lost(lenet, random_batch):
    x, y = random_batch(4, seed=5)
    perm = torch.tensor([2, 0, 3, 1])
    a = fl.client_update(lenet, x, y)
    b = fl.client_update(lenet, x[perm], y[perm])
    for g, h in zip(a.gradients, b.gradients):
        torch.testing.assert_close(g, h, rtol=0, atol=1e-6)


def test_defense_is_applied(lenet, random_batch):
    x, y = random_batch(2)
    plain = fl.client_update(lenet, x, y)
    received = []

    def clip_to_zero(update: fl.SharedUpdate) -> fl.SharedUpdate:
        received.append(update)
        return update.replace(gradients=tuple(torch.zeros_like(g) for g in update.gradients), batch_size=None)

    defended = fl.client_update(lenet, x, y, defense=clip_to_zero)
    assert len(received) == 1
    for g, h in zip(received[0].gradients, plain.gradients):
        assert torch.equal(g, h)  # the defense saw the real update
    assert defended.batch_size is None
    assert all((g == 0).all() for g in defended.gradients)


def test_average_gradients_weights_by_batch_size():
    a = fl.SharedUpdate(gradients=(torch.tensor([1.0, 0.0]),), batch_size=1)
    b = fl.SharedUpdate(gradients=(torch.tensor([0.0, 4.0]),), batch_size=3)
    (avg,) = fl.average_gradients([a, b])
    torch.testing.assert_close(avg, torch.tensor([0.25, 3.0]))


def test_average_gradients_rejects_updates_of_different_models(random_batch):
    x, y = random_batch(2)
    a = fl.client_update(models.build_model("lenet"), x, y)
    b = fl.client_update(models.build_model("mlp"), x, y)
    with pytest.raises(ValueError, match="update 1 holds 4 gradient tensors but update 0 holds 8"):
        fl.average_gradients([a, b])
    c = fl.SharedUpdate(gradients=(torch.zeros(2), torch.zeros(3)), batch_size=1)
    d = fl.SharedUpdate(gradients=(torch.zeros(2), torch.zeros(4)), batch_size=1)
    with pytest.raises(ValueError, match=r"gradient 1 of update 1 has shape \(4,\) but update 0's has shape \(3,\)"):
        fl.average_gradients([c, d])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_updates_are_rejected(lenet, random_batch, bad):
    x, y = random_batch(1)
    update = fl.client_update(lenet, x, y)
    grads = list(update.gradients)
    grads[3] = grads[3].clone()
    grads[3].view(-1)[0] = bad
    broken = update.replace(gradients=tuple(grads))
    with pytest.raises(ValueError, match=r"gradient 3 \(parameter 'features.2.bias'\) holds NaN or inf"):
        broken.check_matches(lenet)
    with pytest.raises(ValueError, match="NaN or inf"):
        fl.average_gradients([update, broken])
    from gi_tutorial import invert, spaces

    with pytest.raises(ValueError, match="NaN or inf"):  # the attack refuses it before running
        invert.reconstruct(broken, lenet, spaces.PixelSpace((1, 3, 32, 32)), num_iters=1)


def test_batch_with_the_wrong_channel_count_is_a_value_error(random_batch):
    model = models.build_model("convnet_fc", in_channels=3)
    x, y = random_batch(2, c=1)
    with pytest.raises(ValueError, match=r"expects 3-channel images, got a batch of shape \(2, 1, 32, 32\)"):
        fl.client_update(model, x, y)


def test_batch_of_the_wrong_size_is_a_value_error():
    model = models.build_model("convnet_fc", in_channels=1)
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"cannot take a batch of shape \(2, 1, 28, 28\)"):
        fl.client_update(model, x, y)


@pytest.mark.parametrize("labels", [torch.tensor([0, 10]), torch.tensor([-1, 3])])
def test_labels_outside_the_class_range_are_a_value_error(lenet, random_batch, labels):
    x, _ = random_batch(2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        fl.client_update(lenet, x, labels)
