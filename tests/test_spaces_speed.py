"""The fast path of GIAS's stage 2 computes what a plain loop over per-image generators computes.

:class:`gi_tutorial.spaces.GeneratorSpace` runs B per-image copies of a generator's weights as
batched layers (``_CopiesConvTranspose2d`` through the hand-written ``_TransposedConvolutions``,
per-copy BatchNorm, bound weights called directly). These tests hold that path to a loop of B
ordinary modules: the same images and the same weight gradients to 1e-5, on a tiny DCGAN and
on every transposed-convolution geometry the fast path accepts, and a backward that matches
the numerical derivative (gradcheck, in double precision).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gi_tutorial import fl, generators, models, objectives, spaces


def _tiny_generator(seed: int = 0) -> generators.Generator:
    """A DCGAN of width 4 (PyTorch's default initialisation, so that the ReLUs pass signal) with
    non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    generator = generators.Generator(z_dim=8, channels=1, width=4)
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_(1, 0.2)
            module.bias.data.normal_(0, 0.1)
    return generator.eval()


def _loop_images(generator, state, z):
    """The straightforward reference: one module per image, built from the space's state, run one at a time."""
    return torch.cat(
        [spaces.generator_from_state(generator, state, index=b).eval()(z[b : b + 1]) for b in range(len(z))]
    )


@pytest.mark.parametrize("batch_size", [1, 3])
def test_fast_copies_match_a_loop_of_modules_on_a_tiny_generator(batch_size):
    generator = _tiny_generator()
    z = torch.randn(batch_size, generator.z_dim, generator=torch.Generator().manual_seed(1))
    space = spaces.GeneratorSpace(generator, batch_size, z=z)
    assert space.copies is not None  # the fast path, not the vmap fallback
    weights = space.init(torch.Generator().manual_seed(0))
    with torch.no_grad():  # make the copies differ from the prior and from each other
        for w in weights:
            w.add_(0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(w.numel())))
    images = space.images()
    probe = torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad((images * probe).sum(), weights)

    state = space.state()
    torch.testing.assert_close(images, _loop_images(generator, state, z), rtol=1e-5, atol=1e-5)
    assert all(
        g.abs().amax(dim=tuple(range(1, g.ndim))).min() > 0 for g in grads
    )  # every copy of every weight gets signal
    names = [name for name, _ in generator.named_parameters()]
    for b in range(batch_size):
        single = spaces.generator_from_state(generator, state, index=b).eval()
        expected = torch.autograd.grad((single(z[b : b + 1]) * probe[b : b + 1]).sum(), list(single.parameters()))
        for name, got, want in zip(names, grads, expected):  # 1e-5 of each gradient's own scale
            scale = want.abs().max().item()
            torch.testing.assert_close(got[b], want, rtol=1e-5, atol=1e-5 * scale, msg=f"{name}, copy {b}")


def test_fast_copies_match_a_loop_through_the_gradient_matching_loss():
    """The whole stage-2 objective (victim double backprop included) gives the copies the loop's gradients."""
    generator = _tiny_generator(seed=3)
    model = models.build_model("convnet_fc", in_channels=1)
    g = torch.Generator().manual_seed(4)
    labels = torch.tensor([2, 5])
    update = fl.client_update(model, torch.rand(2, 1, 32, 32, generator=g), labels, share_labels=True)
    z = torch.randn(2, generator.z_dim, generator=g)
    space = spaces.GeneratorSpace(generator, 2, z=z)
    weights = space.init(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for w in weights:
            w.mul_(1.1)
    state = space.state()
    loops = [spaces.generator_from_state(generator, state, index=b).eval() for b in range(2)]

    def loss(images):
        grads = fl.batch_gradients(model, images, labels, create_graph=True)[0]
        return objectives.gradient_distance(grads, update.gradients, "cosine")

    fast = torch.autograd.grad(loss(space.images()), weights)
    loop_params = [list(m.parameters()) for m in loops]
    slow = torch.autograd.grad(loss(torch.cat([m(z[b : b + 1]) for b, m in enumerate(loops)])), sum(loop_params, []))
    per_copy = len(loop_params[0])
    for i, got in enumerate(fast):
        for b in range(2):
            want = slow[b * per_copy + i]
            torch.testing.assert_close(got[b], want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


_GEOMETRIES = [  # (kernel, stride, padding, dilation, output_padding, input size)
    (4, 2, 1, 1, 0, 4),  # the DCGAN's
    (4, 2, 1, 1, 0, 8),
    (3, 2, 1, 1, 1, 3),
    (3, 1, 2, 2, 0, 5),
    (5, 3, 2, 1, 2, 2),
    (2, 2, 0, 1, 0, 3),
    (3, 1, 0, 1, 0, 1),  # a 1x1 input: the single-product path
]


@pytest.mark.parametrize("kernel,stride,padding,dilation,output_padding,size", _GEOMETRIES)
def test_transposed_convolutions_match_one_conv_transpose2d_per_copy(
    kernel, stride, padding, dilation, output_padding, size
):
    layer = torch.nn.ConvTranspose2d(
        3, 2, kernel, stride, padding, output_padding=output_padding, dilation=dilation, bias=True
    )
    copies = spaces._CopiesConvTranspose2d(layer)
    g = torch.Generator().manual_seed(kernel * 100 + stride * 10 + padding)
    weight = torch.randn(4, *layer.weight.shape, generator=g, requires_grad=True)
    bias = torch.randn(4, 2, generator=g, requires_grad=True)
    x = torch.randn(4, 3, size, size, generator=g, requires_grad=True)
    copies.weight, copies.bias = weight, bias
    y = copies(x)
    probe = torch.randn(y.shape, generator=g)
    got = torch.autograd.grad((y * probe).sum(), [x, weight, bias])
    expected_y = torch.cat(
        [
            F.conv_transpose2d(x[b : b + 1], weight[b], bias[b], stride, padding, output_padding, 1, dilation)
            for b in range(4)
        ]
    )
    expected = torch.autograd.grad((expected_y * probe).sum(), [x, weight, bias])
    torch.testing.assert_close(y, expected_y, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(("input", "weight", "bias"), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item(), msg=name)


@pytest.mark.parametrize("geometry", _GEOMETRIES[:5])
def test_transposed_convolutions_backward_passes_gradcheck(geometry):
    """The hand-written backward (gathered windows, two batched products) is the derivative, and so is its own."""
    kernel, stride, padding, dilation, output_padding, size = geometry
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, size, size, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2, 3, kernel, kernel, generator=g, dtype=torch.float64, requires_grad=True)
    out = [(n - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1 for n in (size, size)]
    geometry_args = ((stride, stride), (padding, padding), (dilation, dilation))

    def apply(x, weight):
        return spaces._TransposedConvolutions.apply(x, weight, out, geometry_args)

    assert torch.autograd.gradcheck(apply, (x, weight))
    assert torch.autograd.gradgradcheck(apply, (x, weight))


def test_the_shipped_generator_through_the_fast_path_matches_the_loop():
    """The book's DCGAN (width 48), two copies moved apart: images and gradients as one module per copy."""
    generator = generators.load_generator()
    z = torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(5))
    space = spaces.GeneratorSpace(generator, 2, z=z)
    weights = space.init(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for w in weights:
            w[1].add_(0.01 * w[1].abs().mean())
    images = space.images()
    probe = torch.randn(images.shape, generator=torch.Generator().manual_seed(6))
    grads = torch.autograd.grad((images * probe).sum(), weights)
    state = space.state()
    torch.testing.assert_close(images, _loop_images(generator, state, z), rtol=1e-5, atol=1e-5)
    for b in range(2):
        single = spaces.generator_from_state(generator, state, index=b).eval()
        expected = torch.autograd.grad((single(z[b : b + 1]) * probe[b : b + 1]).sum(), list(single.parameters()))
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got[b], want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
