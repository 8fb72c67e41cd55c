"""gi_tutorial.private_training: DP-SGD (Opacus) and DP-FedAvg training, their accounting and their sampling."""

from __future__ import annotations

import math

import pytest
import torch

from gi_tutorial import defenses, fl, models
from gi_tutorial import private_training as pt


def _easy_task(n: int, seed: int):
    """Two classes a CNN separates at once: a bright upper or lower half, under noise. Chance is 50%."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 32, 32, generator=g)
    for i in range(n):
        rows = slice(2, 16) if y[i] == 0 else slice(16, 30)
        x[i, :, rows, 2:30] += 0.5
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def easy():
    return _easy_task(600, seed=0), _easy_task(200, seed=1)


SGD = pt.SGDSettings(epochs=4, batch_size=60, lr=2.0, momentum=0.9, clip_norm=0.5)
FED = pt.FedSettings(rounds=20, shard_size=5, server_lr=0.5, server_momentum=0.9, clip_norm=1.0)


def test_the_cnn_takes_padded_images_and_ignores_the_padding():
    model = pt.build_cnn(seed=0)
    assert models.num_parameters(model) == 26_010  # Papernot et al.'s CNN: 1,040 + 8,224 + 16,416 + 330
    defenses.check_dp_compatible(model)  # no BatchNorm
    x = torch.rand(3, 1, 32, 32)
    framed = x.clone()
    framed[..., :2, :] = framed[..., -2:, :] = framed[..., :, :2] = framed[..., :, -2:] = 1.0
    torch.testing.assert_close(model(framed), model(x), rtol=0, atol=0)  # only the central 28x28 is seen
    assert model(x).shape == (3, 10)
    assert torch.equal(pt.build_cnn(seed=0).features[0].weight, model.features[0].weight)
    assert not torch.equal(pt.build_cnn(seed=1).features[0].weight, model.features[0].weight)


def test_dp_sgd_learns_an_easy_task_and_spends_what_the_accountant_says(easy):
    train, test = easy
    result = pt.train_dp_sgd(train, test, target_epsilon=4.0, delta=1e-4, settings=SGD, seed=0)
    assert result.accuracy > 0.9  # chance: 0.5
    assert result.mechanism == "dp_sgd" and result.unit == "example" and result.adjacency == "add_remove"
    q = SGD.batch_size / 600
    assert result.sample_rate == pytest.approx(q) and result.steps == round(SGD.epochs / q)
    # the Opacus accountant that followed the optimizer agrees with the library's accounting of the steps taken
    expected = defenses.epsilon(result.noise_multiplier, q, result.steps, 1e-4, adjacency="add_remove")
    assert result.epsilon == pytest.approx(expected, rel=1e-9)
    assert 4.0 - 0.05 < result.epsilon <= 4.0 and result.noise_multiplier > 0.5
    # the batches were Poisson-sampled at the accounted rate: Binomial(600, q) sizes, not a fixed 60
    counts = torch.tensor(result.sampled, dtype=torch.float64)
    assert len(counts) == result.steps
    assert abs(counts.mean().item() - 600 * q) < 4 * math.sqrt(600 * q * (1 - q) / len(counts))
    assert 0.4 * 600 * q * (1 - q) < counts.var().item() < 2.0 * 600 * q * (1 - q)


def test_dp_sgd_is_reproducible_and_noise_costs_accuracy(easy):
    train, test = easy
    short = pt.SGDSettings(epochs=2, batch_size=60, lr=2.0, momentum=0.9, clip_norm=0.5)  # 20 steps
    a = pt.train_dp_sgd(train, test, target_epsilon=4.0, delta=1e-4, settings=short, seed=3)
    b = pt.train_dp_sgd(train, test, target_epsilon=4.0, delta=1e-4, settings=short, seed=3)
    assert a.accuracy == b.accuracy and a.sampled == b.sampled
    tiny = pt.train_dp_sgd(train, test, target_epsilon=0.3, delta=1e-4, settings=short, seed=3)
    assert tiny.noise_multiplier > 5 * a.noise_multiplier and tiny.accuracy < a.accuracy


def test_training_without_privacy(easy):
    train, test = easy
    result = pt.train_dp_sgd(train, test, target_epsilon=math.inf, settings=SGD, seed=0)
    assert result.mechanism == "none" and result.epsilon == math.inf and result.noise_multiplier == 0.0
    assert result.accuracy > 0.95


def test_client_gradients_equal_each_clients_update():
    model = pt.build_cnn(seed=2)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(4, 3, 1, 32, 32, generator=g), torch.randint(0, 10, (4, 3), generator=g)
    stacked = pt.client_gradients(model, images, labels, chunk=3)  # two chunks
    for k in range(4):
        update = fl.client_update(model, images[k], labels[k])
        for a, b in zip(stacked, update.gradients):
            torch.testing.assert_close(a[k], b, rtol=1e-4, atol=1e-6)


def test_dp_fedavg_learns_and_spends_what_the_accountant_says(easy):
    train, test = easy
    result = pt.train_dp_fedavg(train, test, clients_per_round=30, target_epsilon=8.0, delta=1e-4, settings=FED, seed=0)
    assert result.mechanism == "dp_fedavg" and result.unit == "client"
    assert result.accuracy > 0.8  # chance: 0.5
    q = 30 / 120  # 600 images in shards of 5: 120 clients
    assert result.sample_rate == pytest.approx(q) and result.steps == FED.rounds
    expected = defenses.epsilon(result.noise_multiplier, q, FED.rounds, 1e-4, adjacency="add_remove")
    assert result.epsilon == pytest.approx(expected, rel=1e-9) and result.epsilon <= 8.0
    counts = torch.tensor(result.sampled, dtype=torch.float64)  # Poisson-sampled clients, not 30 every round
    assert abs(counts.mean().item() - 30) < 4 * math.sqrt(120 * q * (1 - q) / FED.rounds)
    assert counts.var().item() > 0
    plain = pt.train_dp_fedavg(train, test, clients_per_round=30, target_epsilon=math.inf, settings=FED, seed=0)
    assert plain.mechanism == "none" and plain.epsilon == math.inf and plain.accuracy > 0.9


def test_live_run_in_quick_mode():
    result = pt.live_run(seed=0)  # quick mode (the root conftest.py): 12 shipped images
    assert result.mechanism == "dp_sgd" and 2.9 < result.epsilon <= 3.0
    assert 0.0 <= result.accuracy <= 1.0 and result.steps >= 1
    record = result.to_dict()
    assert record["sampled"]["n"] == result.steps and record["epsilon"] == result.epsilon


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda tr, te: pt.train_dp_sgd(
                tr, te, target_epsilon=3.0, settings=SGD, model=models.build_model("convnet_bn", in_channels=1)
            ),
            r"features\.1 \(BatchNorm2d\): BatchNorm cannot support",
        ),
        (
            lambda tr, te: pt.train_dp_fedavg(
                tr,
                te,
                clients_per_round=10,
                target_epsilon=3.0,
                settings=FED,
                model=models.build_model("convnet_bn", in_channels=1),
            ),
            "BatchNorm",
        ),
        (lambda tr, te: pt.train_dp_sgd(tr, te, target_epsilon=0.0, settings=SGD), "target_epsilon must be positive"),
        (lambda tr, te: pt.train_dp_sgd(tr, te, target_epsilon=-1.0, settings=SGD), "target_epsilon must be positive"),
        (
            lambda tr, te: pt.train_dp_sgd(tr, te, target_epsilon=3.0, delta=1.0, settings=SGD),
            r"delta must lie in \(0, 1\)",
        ),
        (
            lambda tr, te: pt.train_dp_sgd(tr, te, target_epsilon=3.0, settings=pt.SGDSettings(4, 601, 1.0)),
            r"batch_size must lie in \[1, 600\]",
        ),
        (
            lambda tr, te: pt.train_dp_sgd(
                tr, te, target_epsilon=3.0, settings=pt.SGDSettings(4, 60, 1.0, clip_norm=0.0)
            ),
            "clip bound must be a finite number > 0",
        ),
        (
            lambda tr, te: pt.train_dp_sgd(tr, te, target_epsilon=3.0, settings=SGD, accountant="moments"),
            "accountant must be",
        ),
        (
            lambda tr, te: pt.train_dp_fedavg(tr, te, clients_per_round=121, target_epsilon=3.0, settings=FED),
            r"clients_per_round must lie in \(0, 120\]",
        ),
        (
            lambda tr, te: pt.train_dp_fedavg(tr, te, clients_per_round=0, target_epsilon=3.0, settings=FED),
            "clients_per_round must lie in",
        ),
        (
            lambda tr, te: pt.train_dp_sgd((tr[0], tr[1][:5]), te, target_epsilon=3.0, settings=SGD),
            "600 images but 5 labels",
        ),
    ],
)
def test_bad_inputs_raise_value_error(easy, call, match):
    train, test = easy
    with pytest.raises(ValueError, match=match):
        call(train, test)


@pytest.fixture(scope="module")
def benchmark(benchmark_script):
    """benchmarks/dp_utility.py as a module."""
    return benchmark_script("dp_utility")


@pytest.fixture(scope="module")
def quick_run(benchmark, tmp_path_factory):
    """The benchmark's every path in quick mode, once for the tests below (seed 0).

    One private epsilon (3, as the live run, whose noise search it then shares) and no privacy;
    DP-FedAvg with one client and all 6 per round: each experiment, private and not, sampled
    and not (the other settings only repeat these paths, at 1-2 s of the noise search each).
    """
    out = tmp_path_factory.mktemp("dp_utility") / "dp_utility.json"
    argv = ["--seeds", "0", "--epsilons", "3", "inf", "--clients-per-round", "1", "6", "--out", str(out)]
    assert benchmark.main(argv) == 0
    return out


def test_the_benchmark_runs_every_path_in_quick_mode_and_ships_provenance(quick_run):
    out = quick_run
    results, provenance = pt.load_shipped(out)
    assert provenance["quick"] is True and provenance["seeds"] == [0] and "dp_utility.py" in provenance["command"]
    experiments = {(r["experiment"], r["target_epsilon"], r.get("clients_per_round")) for r in results["runs"]}
    assert len(experiments) == len(results["runs"]) == 2 + 1 + 2 * 2  # both epsilons, the live run, 2 m x (DP, none)
    rows = pt.summarize(results)
    assert [row["label"] for row in rows] == [
        "DP-SGD, ε = 3",
        "no privacy (same network)",
        "DP-SGD (live settings), ε = 3",
        "DP-FedAvg, 1 clients per round, ε = 3",
        "FedSGD, 1 clients per round, no privacy",
        "DP-FedAvg, 6 clients per round, ε = 3",
        "FedSGD, 6 clients per round, no privacy",
    ]


SHIPPED_EXISTS = pt.SHIPPED.exists()


@pytest.mark.skipif(not SHIPPED_EXISTS, reason="no shipped results yet (make dp-utility)")
def test_shipped_results_are_consistent_with_the_library():
    results, provenance = pt.load_shipped()  # hash-checked
    assert provenance["quick"] is False and len(provenance["seeds"]) >= 3
    for run in results["runs"]:
        if math.isfinite(run["target_epsilon"]):  # the epsilon spent is the library's accounting of what was run
            expected = defenses.epsilon(
                run["noise_multiplier"], run["sample_rate"], run["steps"], run["delta"], adjacency="add_remove"
            )
            assert run["epsilon"] == pytest.approx(expected, rel=1e-6) and run["epsilon"] <= run["target_epsilon"]
        population = 60_000 if run["experiment"] != "dp_fedavg" else run["num_clients"]
        n, q, sampled = population, run["sample_rate"], run["sampled"]
        assert abs(sampled["mean"] - n * q) < 5 * math.sqrt(n * q * (1 - q) / sampled["n"])  # Poisson, at rate q
        assert sampled["var"] == pytest.approx(n * q * (1 - q), rel=0.5)
    rows = {(r["experiment"], r["target_epsilon"], r["clients_per_round"]): r for r in pt.summarize(results)}
    dp = [rows[("dp_sgd", eps, None)]["accuracy"].mean for eps in (1.0, 3.0, 8.0, math.inf)]
    assert dp == sorted(dp)  # more privacy, less accuracy
    # issue 17's targets (at least 84% at epsilon = 3, Tramer & Boneh: 86.0%; 89% without privacy) are research
    # goals, not properties of the code: the chapter states from these numbers whether they are met
    fed = sorted((m, r["accuracy"].mean) for (e, eps, m), r in rows.items() if e == "dp_fedavg" and math.isfinite(eps))
    assert [a for _, a in fed] == sorted(a for _, a in fed)  # accuracy recovers as more clients join each round


def test_an_empty_poisson_batch_still_releases_noise_and_is_accounted(easy):
    # 12 images at an expected batch of 1: about a third of the Poisson draws are empty; DP-SGD must
    # still take (and account) a noised step there, as the accountant assumes every step happened
    (x, y), test = easy
    settings = pt.SGDSettings(epochs=3, batch_size=1, lr=0.1, momentum=0.0, clip_norm=1.0)
    model = pt.build_cnn(seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    result = pt.train_dp_sgd((x[:12], y[:12]), test, target_epsilon=50.0, settings=settings, seed=1, model=model)
    assert 0 in result.sampled and result.steps == len(result.sampled) == 36
    expected = defenses.epsilon(result.noise_multiplier, 1 / 12, 36, 1e-5, adjacency="add_remove")
    assert result.epsilon == pytest.approx(expected, rel=1e-9)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_cosine_decay_takes_the_learning_rate_to_zero_and_bad_decay_is_refused(easy):
    (x, y), test = easy
    model = pt.build_cnn(seed=0)
    settings = pt.SGDSettings(epochs=2, batch_size=60, lr=1.0, momentum=0.0, clip_norm=0.5, decay="cosine")
    seen = []
    original = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    torch.optim.SGD.step = spy
    try:
        result = pt.train_dp_sgd((x, y), test, target_epsilon=8.0, settings=settings, seed=0, model=model)
    finally:
        torch.optim.SGD.step = original
    assert len(seen) == result.steps and seen[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(seen, seen[1:])) and seen[-1] < 0.1  # cosine: falls every step, near 0 at the end
    with pytest.raises(ValueError, match="decay must be"):
        pt.train_dp_sgd((x, y), test, target_epsilon=8.0, settings=pt.SGDSettings(2, 60, 1.0, decay="step"))


def test_the_benchmark_merges_a_rerun_with_the_experiments_it_keeps(benchmark, quick_run, tmp_path):
    import shutil

    out = tmp_path / "dp_utility.json"
    shutil.copy(quick_run, out)
    before, first = pt.load_shipped(out)
    assert benchmark.main(["--seeds", "0", "--only", "live", "--merge", "--out", str(out)]) == 0
    results, provenance = pt.load_shipped(out)
    assert [r["experiment"] for r in results["runs"]] == [r["experiment"] for r in before["runs"]]  # same order
    kept = [r for r in before["runs"] if r["experiment"] != "live"]
    assert [r for r in results["runs"] if r["experiment"] != "live"] == kept  # kept as they were
    assert "--only live --merge" in provenance["commands"]["live"]
    assert provenance["commands"]["dp_sgd"] == provenance["commands"]["dp_fedavg"] == first["command"]
    assert provenance["merged"]["command"] == first["command"]
    assert provenance["merged"]["experiments"] == ["dp_sgd", "dp_fedavg"] and "sha256" in provenance["merged"]


def test_row_of_names_the_settings_there_are():
    results = {"runs": [{"experiment": "dp_sgd", "target_epsilon": 3.0, "accuracy": 0.8, "epsilon": 2.9,
                         "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10, "cpu_seconds": 1.0, "seed": 0}]}  # fmt: skip
    utility = pt.summarize(results)
    assert pt.row_of(utility, "dp_sgd", 3.0)["accuracy"].mean == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no utility row"):
        pt.row_of(utility, "dp_sgd", 8.0)
