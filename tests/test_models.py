"""gi_tutorial.models: every victim builds, is deterministic per seed, and has the documented shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gi_tutorial import models


@pytest.mark.parametrize("name", models.MODELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_model_maps_a_batch_to_10_logits(name, channels):
    model = models.build_model(name, in_channels=channels)
    model.eval()
    x = torch.rand(2, channels, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    assert models.num_parameters(model) == sum(p.numel() for p in model.parameters())


def test_num_classes_is_respected():
    with torch.no_grad():
        assert models.build_model("convnet_fc", num_classes=7)(torch.rand(1, 3, 32, 32)).shape == (1, 7)


def _params(model):
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("name", models.MODELS)
def test_build_is_deterministic_per_seed_and_differs_across_seeds(name):
    a, b, c = (models.build_model(name, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b)))
    # every weight tensor (biases of BatchNorm are constant at init, so compare weights of conv/linear)
    differing = [not torch.equal(p, q) for p, q in zip(_params(a), _params(c)) if p.ndim > 1]
    assert differing and all(differing)


def test_build_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.build_model("lenet", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_lenet_weights_are_uniform_in_half_open_unit_box():
    model = models.build_model("lenet")
    values = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert values.min() >= -0.5 and values.max() <= 0.5
    # DLG's init, not PyTorch's default (which for the last layer is within +-1/sqrt(768) ~ 0.036)
    assert values.max() > 0.45 and values.min() < -0.45
    assert model.classifier.weight.abs().max() > 0.45
    assert abs(values.mean()) < 0.05


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'vgg'") as err:
        models.build_model("vgg")
    for name in models.MODELS:
        assert name in str(err.value)


def test_convnet_rejects_mismatched_widths_and_strides():
    with pytest.raises(ValueError, match="same length"):
        models.ConvNet(widths=(32, 64), strides=(1, 2, 2))
    with pytest.raises(ValueError, match="head"):
        models.ConvNet(head="max")


def test_convnet_gap_parameter_count_by_hand():
    # convnet_gap: 3x3 convolutions with bias, widths (32, 64, 128, 128), then global
    # average pooling and a linear layer 128 -> 10. A conv layer has in*out*3*3 + out
    # parameters:
    #   conv1:    1 *  32 * 9 +  32 =    320
    #   conv2:   32 *  64 * 9 +  64 =  18,496
    #   conv3:   64 * 128 * 9 + 128 =  73,856
    #   conv4:  128 * 128 * 9 + 128 = 147,584
    #   linear: 128 * 10      +  10 =   1,290
    #   total                       = 241,546
    model = models.build_model("convnet_gap", in_channels=1)
    assert models.num_parameters(model) == 320 + 18_496 + 73_856 + 147_584 + 1_290 == 241_546


def test_lenet_parameter_count_by_hand():
    # three 5x5 convs of 12 channels (3->12, 12->12, 12->12) and a linear layer on 12*8*8:
    #   3*12*25+12 = 912, 12*12*25+12 = 3,612 (twice), 768*10+10 = 7,690 -> 15,826
    assert models.num_parameters(models.build_model("lenet")) == 912 + 2 * 3_612 + 7_690 == 15_826


def test_convnet_fc_head_sees_the_8x8_feature_map():
    model = models.build_model("convnet_fc")
    assert model.classifier.in_features == 64 * 8 * 8  # strides (1, 2, 2): 32 -> 32 -> 16 -> 8


def test_num_parameters_counts_only_trainable():
    model = models.build_model("mlp")
    total = models.num_parameters(model)
    assert total == 3072 * 256 + 256 + 256 * 10 + 10
    model.hidden.bias.requires_grad_(False)
    assert models.num_parameters(model) == total - 256


def test_resnet18_has_the_cifar_stem():
    model = models.build_model("resnet18", in_channels=1)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, nn.Identity)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", models.MODELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_models_record_what_they_accept(name, channels):
    model = models.build_model(name, in_channels=channels)
    assert model.in_channels == channels
    assert model.image_size == (None if name in ("convnet_gap", "resnet18") else 32)


@pytest.mark.parametrize(
    "kwargs", [{"in_channels": 0}, {"in_channels": -1}, {"in_channels": 1.5}, {"in_channels": True}, {"num_classes": 0}]
)
def test_build_model_rejects_bad_sizes(kwargs):
    arg = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{arg} must be a positive integer, got {kwargs[arg]!r}"):
        models.build_model("lenet", **kwargs)


def test_unknown_model_name_is_rejected_before_anything_is_built():
    with pytest.raises(ValueError, match="unknown model 'LeNet'; expected one of mlp, lenet, convnet_s, convnet_fc"):
        models.build_model("LeNet")


def test_victim_m_sits_between_s_and_a_with_its_parameter_count_by_hand():
    # convnet_m: widths (12, 24, 24), strides (1, 2, 2), a linear layer on the 24x8x8 feature map:
    #   conv1:  1 * 12 * 9 + 12 =    120
    #   conv2: 12 * 24 * 9 + 24 =  2,616
    #   conv3: 24 * 24 * 9 + 24 =  5,208
    #   linear: 24 * 64 * 10 + 10 = 15,370
    #   total                      = 23,314
    model = models.build_model("convnet_m", in_channels=1)
    assert models.VICTIMS["M"] == "convnet_m"
    assert models.num_parameters(model) == 120 + 2_616 + 5_208 + 15_370 == 23_314
    assert model.classifier.in_features == 24 * 8 * 8
    sizes = [models.num_parameters(models.build_model(models.VICTIMS[v], in_channels=1)) for v in "SMA"]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3  # three different widths, S < M < A
