"""gi_tutorial.metrics (PSNR, SSIM, matching, summaries, LPIPS) and the table helpers of gi_tutorial.viz."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from scipy.ndimage import correlate1d

from gi_tutorial import metrics, viz


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def noisy_pair():
    x = _rand(3, 3, 32, 32)
    y = (x + 0.2 * torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    return y, x


def test_psnr_of_a_uniform_error_of_0_1_is_20_db():
    x = _rand(2, 3, 32, 32) * 0.8
    torch.testing.assert_close(metrics.psnr(x + 0.1, x), torch.tensor([20.0, 20.0]), atol=1e-3, rtol=0)
    assert metrics.psnr(x, x).isinf().all()


def test_psnr_is_per_image(noisy_pair):
    y, x = noisy_pair
    mse = (y - x).pow(2).flatten(1).mean(1).double()
    torch.testing.assert_close(metrics.psnr(y, x).double(), 10 * torch.log10(1 / mse), atol=1e-4, rtol=0)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        metrics.ssim(torch.zeros(3, 32, 32), torch.zeros(3, 32, 32))


def test_ssim_known_values():
    x = _rand(2, 3, 32, 32)
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(2), atol=1e-5, rtol=0)
    # two constant images a, b: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = 0.01^2
    # (to float32 accuracy of the windowed variances, ~1e-4 here)
    for a, b in [(0.2, 0.6), (0.05, 0.1)]:
        expected = (2 * a * b + 1e-4) / (a**2 + b**2 + 1e-4)  # 0.60010, 0.80159 (0.8 without C1)
        got = metrics.ssim(torch.full((1, 1, 32, 32), a), torch.full((1, 1, 32, 32), b)).item()
        assert got == pytest.approx(expected, abs=2e-4)


def test_ssim_orders_by_noise_and_is_symmetric():
    x = _rand(1, 3, 32, 32)
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    scores = [metrics.ssim((x + s * noise).clamp(0, 1), x).item() for s in (0.01, 0.05, 0.2)]
    assert 1 > scores[0] > scores[1] > scores[2]
    y = (x + 0.1 * noise).clamp(0, 1)
    assert metrics.ssim(x, y).item() == pytest.approx(metrics.ssim(y, x).item(), abs=1e-6)


def _reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of Wang et al. (2004) as scikit-image computes it with gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1: an 11x11 Gaussian window (truncate 3.5), the mean of
    the SSIM map over the pixels whose window lies inside the image, then over channels.

    Checked against scikit-image 0.26's structural_similarity: equal to 1e-12.
    """
    r = np.arange(11) - 5
    k = np.exp(-(r**2) / (2 * 1.5**2))
    k /= k.sum()

    def filt(z):
        z = correlate1d(correlate1d(z, k, axis=0, mode="constant"), k, axis=1, mode="constant")
        return z[5:-5, 5:-5]  # 'valid' region only

    c1, c2 = 0.01**2, 0.03**2
    maps = []
    for x, y in zip(a, b):
        mx, my = filt(x), filt(y)
        sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
        maps.append(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2)))
    return float(np.mean(maps))


_SSIM_BORDER_BUG = (
    "library issue: torchmetrics 1.9.0's structural_similarity_index_measure averages the SSIM map over the "
    "whole image, including the 5-pixel border computed on reflect-padded input; scikit-image and Wang et al. "
    "average over the valid region only (22x22 of 32x32 pixels). Differences reach ~0.006 (noisy images) "
    "to ~0.02 (unrelated images)"
)


@pytest.mark.xfail(strict=True, reason=_SSIM_BORDER_BUG)
def test_ssim_agrees_with_the_reference_definition(noisy_pair):
    y, x = noisy_pair
    got = metrics.ssim(y, x)
    expected = torch.tensor([_reference_ssim(y[i].double().numpy(), x[i].double().numpy()) for i in range(len(x))])
    torch.testing.assert_close(got.double(), expected.double(), atol=1e-3, rtol=0)


def test_psnr_agrees_with_skimage(noisy_pair):
    skm = pytest.importorskip("skimage.metrics")
    y, x = noisy_pair
    expected = [skm.peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=1) for i in range(len(x))]
    torch.testing.assert_close(metrics.psnr(y, x).double(), torch.tensor(expected).double(), atol=1e-3, rtol=0)


@pytest.mark.xfail(strict=True, reason=_SSIM_BORDER_BUG)
def test_ssim_agrees_with_skimage(noisy_pair):
    skm = pytest.importorskip("skimage.metrics")
    y, x = noisy_pair
    expected = [
        skm.structural_similarity(
            y[i].double().numpy(),
            x[i].double().numpy(),
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
        )
        for i in range(len(x))
    ]
    torch.testing.assert_close(metrics.ssim(y, x).double(), torch.tensor(expected).double(), atol=1e-3, rtol=0)


def test_match_batch_undoes_a_permutation():
    truth = _rand(6, 3, 8, 8)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = truth[perm] + 0.01 * torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    order = metrics.match_batch(shuffled, truth)
    assert order.dtype == torch.int64
    assert torch.equal(perm[order], torch.arange(6))
    assert torch.allclose(shuffled[order], truth, atol=0.05)


def test_evaluate_matches_the_batch():
    truth = _rand(4, 3, 32, 32)
    perm = torch.tensor([2, 3, 1, 0])
    scores = metrics.evaluate(truth[perm], truth, match=True)
    assert torch.isinf(scores.psnr).all() and scores.psnr.shape == (4,)
    torch.testing.assert_close(scores.ssim, torch.ones(4), atol=1e-5, rtol=0)
    assert scores.lpips is None
    assert torch.equal(truth[perm][scores.order], truth)
    unmatched = metrics.evaluate(truth[perm], truth, match=False)
    assert torch.equal(unmatched.order, torch.arange(4))
    assert torch.isfinite(unmatched.psnr).all() and (unmatched.psnr < 15).all()


def test_evaluate_clamps_the_reconstruction():
    truth = _rand(1, 1, 16, 16)
    wild = truth.clone()
    wild[..., 0, 0] = 5.0  # an unclamped reconstruction outside [0, 1]
    clamped = wild.clamp(0, 1)
    assert metrics.evaluate(wild, truth).psnr.item() == pytest.approx(metrics.psnr(clamped, truth).item())


def test_summarize_caps_and_counts():
    scores = metrics.Scores(
        psnr=torch.tensor([math.inf, 50.0, 35.0, 20.0]),
        ssim=torch.tensor([1.0, 0.9, 0.8, 0.5]),
        lpips=None,
        order=torch.arange(4),
    )
    summary = metrics.summarize(scores)
    assert summary["psnr"] == pytest.approx((100 + 50 + 35 + 20) / 4)  # an exact copy counts as 100 dB
    assert summary["psnr_capped"] == pytest.approx((40 + 40 + 35 + 20) / 4)
    assert summary["share_above"] == pytest.approx(0.75)
    assert summary["ssim"] == pytest.approx(0.8)
    assert summary["lpips"] is None
    assert metrics.summarize(scores, cap=30, threshold=40)["psnr_capped"] == pytest.approx((30 + 30 + 30 + 20) / 4)
    assert metrics.summarize(scores, threshold=40)["share_above"] == pytest.approx(0.5)
    with_lpips = metrics.Scores(psnr=scores.psnr, ssim=scores.ssim, lpips=torch.tensor([0.1, 0.3]), order=scores.order)
    assert metrics.summarize(with_lpips)["lpips"] == pytest.approx(0.2)


def test_lpips_without_weights_is_not_computed(tmp_path):
    metric = metrics.load_lpips(allow_download=False, checkpoint_dir=tmp_path)
    assert not metric.available
    assert "not computed" in metric.reason
    assert str(metrics.alexnet_checkpoint_path(tmp_path)) in metric.reason
    x = _rand(2, 3, 32, 32)
    assert metric(x, x) is None
    scores = metrics.evaluate(x, x, lpips_metric=metric)
    assert scores.lpips is None and metrics.summarize(scores)["lpips"] is None
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_lpips_download_failure_is_reported(tmp_path, monkeypatch):
    asked = []

    def offline(url, path, sha256_prefix=""):
        asked.append((url, path, sha256_prefix))
        raise TimeoutError("gave up after 300 s with 12.0 MB of 244.4 MB received")

    monkeypatch.setattr(metrics, "download", offline)  # storage.download: the deadline is tested in test_storage
    metric = metrics.load_lpips(allow_download=True, checkpoint_dir=tmp_path / "sub")
    assert not metric.available
    assert "not computed" in metric.reason and "gave up after 300 s" in metric.reason
    assert asked == [(metrics.ALEXNET_URL, metrics.alexnet_checkpoint_path(tmp_path / "sub"), "7be5be79")]


def test_alexnet_checkpoint_path(tmp_path):
    assert metrics.alexnet_checkpoint_path(tmp_path) == tmp_path / "alexnet-owt-7be5be79.pth"


@pytest.fixture(scope="module")
def stand_in_alexnet(tmp_path_factory):
    """A randomly initialised AlexNet saved under the real file name (233 MB): the right format, the wrong hash."""
    folder = tmp_path_factory.mktemp("alexnet")
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), metrics.alexnet_checkpoint_path(folder))
    yield folder
    metrics.alexnet_checkpoint_path(folder).unlink()


def test_lpips_rejects_a_file_with_the_wrong_hash(stand_in_alexnet):
    with pytest.raises(ValueError, match="sha256") as err:
        metrics.load_lpips(allow_download=False, checkpoint_dir=stand_in_alexnet, verify_hash=True)
    assert "7be5be79" in str(err.value)


def test_lpips_with_a_stand_in_backbone(stand_in_alexnet):
    metric = metrics.load_lpips(allow_download=False, checkpoint_dir=stand_in_alexnet, verify_hash=False)
    assert metric.available and metric.reason == ""
    x = _rand(2, 3, 32, 32)
    y = _rand(2, 3, 32, 32, seed=1)
    same = metric(x, x)
    assert same.shape == (2,)
    torch.testing.assert_close(same, torch.zeros(2), atol=1e-6, rtol=0)
    different = metric(y, x)
    assert (different > 0).all()
    gray = metric(x[:, :1], y[:, :1])  # 1-channel images are repeated to RGB
    assert gray.shape == (2,) and (gray > 0).all()
    torch.testing.assert_close(metric(x[:, :1], x[:, :1]), torch.zeros(2), atol=1e-6, rtol=0)
    scores = metrics.evaluate(y, x, lpips_metric=metric, match=False)
    torch.testing.assert_close(scores.lpips, different)


def test_markdown_table_renders_none_as_not_computed():
    rows = [
        {"method": "DLG", "psnr": 31.234, "lpips": None, "iters": 7},
        {"method": "IG", "psnr": math.inf, "lpips": 0.25},
    ]
    table = viz.markdown_table(
        rows, {"method": "Method", "psnr": "PSNR", "lpips": "LPIPS", "iters": "Iterations"}, formats={"iters": "{:d}"}
    )
    lines = table.data.splitlines()
    assert lines[0] == "| Method | PSNR | LPIPS | Iterations |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| DLG | 31.23 | not computed | 7 |"
    assert lines[3] == "| IG | inf | 0.25 | not computed |"


def test_format_value():
    assert viz.format_value(None) == "not computed"
    assert viz.format_value(float("inf")) == "inf"
    assert viz.format_value(float("-inf")) == "-inf"
    assert viz.format_value(3) == "3"  # integers stay integers unless a format is given
    assert viz.format_value(3, "{:.1f}") == "3.0"
    assert viz.format_value(3.0) == "3.00"
    assert viz.format_value(True) == "True"
    assert viz.format_value(0.123456, "{:.3f}") == "0.123"
    assert viz.format_value("text") == "text"


def test_evaluate_rejects_batches_of_different_sizes_even_unmatched():
    truth = _rand(3, 3, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        metrics.evaluate(truth[:2], truth, match=False)


def test_scores_are_cpu_tensors():
    truth = _rand(2, 3, 16, 16)
    scores = metrics.evaluate(truth.flip(0), truth)
    for value in (scores.psnr, scores.ssim, scores.order, metrics.match_batch(truth, truth)):
        assert value.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_accept_cuda_tensors():
    truth = _rand(4, 3, 32, 32)
    perm = torch.tensor([2, 3, 1, 0])
    noisy = (truth[perm] + 0.05 * torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    on_cpu = metrics.evaluate(noisy, truth)
    for r, t in [(noisy.cuda(), truth.cuda()), (noisy.cuda(), truth), (noisy, truth.cuda())]:
        order = metrics.match_batch(r, t)
        assert order.device.type == "cpu" and torch.equal(perm[order], torch.arange(4))
        scores = metrics.evaluate(r, t)
        for value in (scores.psnr, scores.ssim, scores.order):
            assert value.device.type == "cpu"
        torch.testing.assert_close(scores.psnr, on_cpu.psnr)
        torch.testing.assert_close(scores.ssim, on_cpu.ssim)
        assert metrics.psnr(r, t).device.type == "cpu" and metrics.ssim(r, t).device.type == "cpu"
        summary = metrics.summarize(scores)
        assert isinstance(summary["psnr"], float) and summary["share_above"] == 0.0
