"""gi_tutorial.conditioning: the singular spectrum of the Jacobian of the shared gradient w.r.t. the images."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from gi_tutorial import analytic, conditioning, data, fl, models


def _tiny_convnet(seed: int = 0, **kwargs) -> models.ConvNet:
    torch.manual_seed(seed)
    return models.ConvNet(1, 4, widths=(2, 3), strides=(1, 2), head="flatten", image_size=6, **kwargs)


def _batch(b: int, shape=(1, 6, 6), seed: int = 0, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, *shape, generator=g), torch.randint(0, classes, (b,), generator=g)


def _dense_reference(model, x, y):
    """The Jacobian by torch.autograd.functional.jacobian through fl.batch_gradients (the client's own code)."""
    model = copy.deepcopy(model).double()

    def g(images):
        return torch.cat([t.flatten() for t in fl.batch_gradients(model, images, y, create_graph=True)[0]])

    return torch.autograd.functional.jacobian(g, x.double()).reshape(models.num_parameters(model), -1)


def _rank(matrix: torch.Tensor) -> int:
    singular = torch.linalg.svdvals(matrix)
    return int((singular > 1e-10 * singular[0]).sum())


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_jacobian_matches_a_dense_autograd_jacobian(batch_norm, dtype, tol):
    model = _tiny_convnet(batch_norm=batch_norm)  # train mode: with BatchNorm the images are coupled
    x, y = _batch(3)
    got = conditioning.jacobian(model, x, y, dtype=dtype)
    reference = _dense_reference(model, x, y)
    assert got.shape == (models.num_parameters(model), 3 * 36) and got.dtype == dtype
    assert (got.double() - reference).abs().max() <= tol * reference.abs().max()


def test_gram_matches_the_dense_jacobian_with_and_without_coupling():
    x, y = _batch(3)
    for batch_norm in (False, True):
        model = _tiny_convnet(batch_norm=batch_norm)
        assert conditioning.couples_batch(model) == batch_norm
        dense = conditioning.jacobian(model, x, y)
        torch.testing.assert_close(conditioning.gram(model, x, y), dense.T @ dense, rtol=1e-12, atol=1e-15)
    # through a scratch file on disk, in float32 Jacobians: the same matrix up to float32 rounding
    model = _tiny_convnet()
    dense = conditioning.jacobian(model, x, y)
    on_disk = conditioning.gram(model, x, y, dtype=torch.float32, memory_limit=0)
    assert (on_disk - dense.T @ dense).abs().max() < 1e-5 * (dense.T @ dense).abs().max()


def test_image_gram_refuses_a_coupled_batch():
    x, y = _batch(2)
    with pytest.raises(ValueError, match="couples the images"):
        conditioning.image_gram(_tiny_convnet(batch_norm=True), x, y)


def test_gram_leaves_the_model_alone():
    model = _tiny_convnet(batch_norm=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch(3)
    conditioning.gram(model, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running statistics untouched
    assert next(model.parameters()).dtype == torch.float32 and model.training


def test_nested_spectra_equal_separate_ones():
    model = _tiny_convnet()
    x, y = _batch(4)
    nested = conditioning.nested_spectra(model, x, y, (1, 2, 4))
    for b in (1, 2, 4):
        alone = conditioning.spectrum(model, x[:b], y[:b])
        np.testing.assert_allclose(nested[b].singular_values, alone.singular_values, rtol=1e-9, atol=1e-14)
        exact = torch.linalg.svdvals(conditioning.jacobian(model, x[:b], y[:b])).numpy()
        # the Gram matrix resolves singular values down to about sqrt(eps64) * s_1, not below
        np.testing.assert_allclose(alone.singular_values[: len(exact)], exact, rtol=1e-6, atol=1e-7 * exact[0])
        g = torch.cat(
            [t.flatten() for t in fl.client_update(copy.deepcopy(model).double(), x[:b].double(), y[:b]).gradients]
        )
        assert alone.gradient_norm == pytest.approx(g.norm().item(), rel=1e-10)
        assert alone.image_norm == pytest.approx(x[:b].double().norm().item(), rel=1e-12)
    with pytest.raises(ValueError, match=r"batch sizes must lie in \[1, 4\]"):
        conditioning.nested_spectra(model, x, y, (1, 5))


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 6])
def test_a_linear_model_has_exactly_the_rank_the_count_says(batch_size):
    """Softmax regression, 9 pixels and 4 classes: 40 gradient entries, of which 30 independent.

    At batch 1 the rank is forced to the 9 unknowns (a fully connected layer with bias gives its
    input back: x = dW_i / db_i); once the unknowns exceed the 30 independent entries the rank is
    forced to 30, not to the 40 entries of the raw count.
    """
    torch.manual_seed(batch_size)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 4))
    x, y = _batch(batch_size, (1, 3, 3), seed=batch_size)
    count = analytic.count(model, (1, 3, 3), batch_size)
    assert (count.entries, count.equations) == (40, 30)
    spectrum = conditioning.spectrum(model, x, y)
    assert spectrum.numerical_rank == _rank(conditioning.jacobian(model, x, y)) == min(count.unknowns, count.equations)


def test_a_fully_connected_first_layer_forces_full_rank_at_batch_1():
    """The MLP's first layer with bias returns its input exactly, so one image is locally identifiable: rank = unknowns."""
    for seed in range(3):
        torch.manual_seed(seed)
        model = models.MLP(1, 10, hidden=64, image_size=8)
        x, y = _batch(1, (1, 8, 8), seed=seed, classes=10)
        spectrum = conditioning.spectrum(model, x, y)
        assert spectrum.numerical_rank == spectrum.unknowns == analytic.count(model, (1, 8, 8), 1).unknowns == 64
        assert spectrum.rank_deficit == 0


@pytest.mark.parametrize("batch_size", [3, 4, 5, 6, 8])
def test_the_count_bounds_the_rank_of_a_small_convnet(batch_size):
    """rank(J) <= min(unknowns, independent entries); it can be lower (counting is necessary, not sufficient)."""
    model = _tiny_convnet()
    x, y = _batch(batch_size, seed=batch_size)
    count = analytic.count(model, (1, 6, 6), batch_size)
    rank = _rank(conditioning.jacobian(model, x, y))
    assert rank <= min(count.unknowns, count.equations) < count.entries
    # the float32 numerical rank can only be lower: a direction between 1e-10 and 1e-6 of s_1 is seen in exact arithmetic only
    assert conditioning.spectrum(model, x, y).numerical_rank <= rank


def test_spectrum_summaries_on_a_known_spectrum():
    values = np.array([4.0, 2.0, 2.0, 1.0, 1e-3, 1e-9])
    s = conditioning.Spectrum(values, equations=10, entries=12, gradient_norm=2.0, image_norm=5.0)
    assert s.unknowns == 6 and s.largest == 4.0
    assert s.rank() == 5 and s.numerical_rank == 5 and s.rank_deficit == 1  # 1e-9 / 4 is below RTOL_FLOAT32
    assert s.rank(1e-3) == 4 and s.below(1e-3) == 2
    assert s.condition_number == pytest.approx(4.0 / 1e-3)
    assert s.relative_condition_number == pytest.approx(2.0 / (5.0 * 1e-3))
    np.testing.assert_array_equal(s.smallest(2), [1e-9, 1e-3])
    flat = conditioning.Spectrum(np.array([3.0, 3.0, 3.0, 0.0]), 4, 4, 1.0, 1.0)
    assert flat.effective_rank == pytest.approx(3.0)  # k equal singular values: effective rank k
    blind = conditioning.Spectrum(np.zeros(3), 4, 4, 1.0, 1.0)
    assert blind.numerical_rank == 0 and blind.condition_number == blind.relative_condition_number == math.inf
    p = values / values.sum()
    assert s.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    summary = s.summary(num_smallest=3, num_quantiles=6)
    assert summary["ratio"] == pytest.approx(0.6) and summary["rank_deficit"] == 1
    assert summary["smallest_relative"] == pytest.approx([2.5e-10, 2.5e-4, 0.25])
    assert summary["spectrum_index"] == [0, 1, 2, 3, 4, 5] and summary["below"]["0.001"] == 2


def test_largest_singular_values_by_lanczos_match_the_exact_spectrum():
    model = _tiny_convnet(seed=2)
    x, y = _batch(3, seed=2)
    exact = torch.linalg.svdvals(conditioning.jacobian(model, x, y)).numpy()
    np.testing.assert_allclose(conditioning.largest_singular_values(model, x, y, k=3), exact[:3], rtol=1e-8)
    with pytest.raises(ValueError, match="k must lie"):
        conditioning.largest_singular_values(model, x, y, k=108)


@pytest.mark.parametrize("call", [conditioning.jacobian, conditioning.gram, conditioning.spectrum])
def test_bad_batches_are_refused(call):
    model = _tiny_convnet()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        call(model, torch.rand(1, 6, 6), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must be an integer tensor of shape"):
        call(model, torch.rand(2, 1, 6, 6), torch.tensor([0]))


def test_only_float32_and_float64_jacobians():
    x, y = _batch(1)
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        conditioning.gram(_tiny_convnet(), x, y, dtype=torch.float16)


def _victim_s_images(n: int):
    try:
        images, labels = data.fashion_mnist("test", 9000 + n, allow_download=False)
    except data.DataNotFoundError:
        pytest.skip("needs Fashion-MNIST test images 9000+ (make data)")
    return images[9000:], labels[9000:]


def test_float32_error_of_victim_s_is_below_the_tolerance():
    """What justifies RTOL_FLOAT32: the float32 Jacobian is within RTOL_FLOAT32 * s_1 of the exact one."""
    model = models.build_model("convnet_s", in_channels=1, seed=0)
    x, y = _victim_s_images(1)
    error = conditioning.float32_error(model, x, y)
    assert 0 < error < conditioning.RTOL_FLOAT32


def test_shipped_results_reproduce_live():
    """The shipped row of victim S, seed 0, batch 1 (test image 9000) is recomputed here (about 2 s)."""
    rows, provenance = conditioning.load_shipped()
    assert {"command", "seeds", "data", "seconds", "sha256", "rtol"} <= set(provenance)
    assert provenance["rtol"] == conditioning.RTOL_FLOAT32
    victims = {r["victim"] for r in rows}
    assert (
        victims == {"S", "A", "B"}
        and {r["batch"] for r in rows} == {1, 4, 8}
        and {r["seed"] for r in rows} == {0, 1, 2}
    )
    for r in rows:
        assert r["unknowns"] == r["batch"] * 1024
        assert r["equations"] == analytic.count(models.build_model(r["model"], in_channels=1), (1, 32, 32), 1).equations
        assert r["numerical_rank"] + r["rank_deficit"] == r["unknowns"]
    shipped = next(r for r in rows if (r["victim"], r["seed"], r["batch"]) == ("S", 0, 1))
    x, y = _victim_s_images(1)
    assert shipped["images"] == [9000] and shipped["labels"] == y.tolist()
    live = conditioning.spectrum(
        models.build_model("convnet_s", in_channels=1, seed=0), x, y, dtype=getattr(torch, provenance["jacobian_dtype"])
    ).summary()
    for key in ("numerical_rank", "rank_deficit", "equations"):
        assert live[key] == shipped[key]
    # float32 Jacobians: another CPU may round differently, by up to float32_error * s_1 (2e-7 s_1 here), which moves
    # the smallest singular value (1.7e-2 s_1) by about 1e-5 of itself; the gradient norm is computed in float64
    assert live["gradient_norm"] == pytest.approx(shipped["gradient_norm"], rel=1e-9)
    assert live["image_norm"] == pytest.approx(shipped["image_norm"], rel=1e-12)
    for key in ("largest", "effective_rank"):
        assert live[key] == pytest.approx(shipped[key], rel=1e-5)
    for key in ("condition_number", "relative_condition_number"):
        assert live[key] == pytest.approx(shipped[key], rel=1e-4)
    np.testing.assert_allclose(live["smallest"], shipped["smallest"], rtol=1e-4)


def test_load_shipped_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        conditioning.load_shipped(tmp_path / "nothing.json")
