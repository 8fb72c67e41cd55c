"""The Flower deployment (gi_tutorial.flower): what a curious strategy receives, with and without DP.

Every test calls Flower's strategies, wrappers, mods and apps directly, with messages built by
hand or a Grid that hands them to the client app in this process: none starts Ray. The real
simulation on Ray runs in chapter 7 (book/ch07_flower.ipynb), which ``make test`` executes once
in quick mode; a second Ray instance here would compete with it for the two cores.
"""

from __future__ import annotations

import contextlib
import doctest
import math
import sys

import numpy as np
import pytest
import torch

if sys.version_info < (3, 11):  # the flower extra needs Python 3.11 (Flower 1.42): where it cannot install, skip
    pytest.importorskip("flwr", reason="the flower extra (Flower 1.42) needs Python 3.11 or later")

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from gi_tutorial import data, defenses, fl, flower, models, stats

LR = 0.1
CLIP = 0.05  # below every update norm here (about 0.1 at lr 0.1), so clipping acts


class StubGrid:
    """What a strategy's configure_train asks of Flower's Grid: the connected nodes."""

    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return self.node_ids


def context_for(node_ids, node_id):
    return Context(
        run_id=0,
        node_id=node_id,
        node_config={"partition-id": list(node_ids).index(node_id), "num-partitions": len(node_ids)},
        state=RecordDict(),
        run_config={},
    )


class InProcessGrid(StubGrid):
    """A Flower Grid that hands each message to a ClientApp in this process (no Ray), as the simulation engine would."""

    def __init__(self, app, node_ids):
        super().__init__(node_ids)
        self.app = app

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            try:
                replies.append(self.app(msg, context_for(self.node_ids, msg.metadata.dst_node_id)))
            except Exception as error:  # as Flower's engine does: the client's exception becomes an error reply
                replies.append(Message(Error(code=1, reason=f"{type(error).__name__}: {error}"), reply_to=msg))
        return replies


def in_process(server, client, num_supernodes):
    """An engine for run_deployments that runs the ServerApp and the ClientApp here, without Ray."""
    grid = InProcessGrid(client, range(101, 101 + num_supernodes))
    server(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    return 0.0


@contextlib.contextmanager
def task_identity():
    """Flower stamps every message with the running task's identity; outside a run, these tests set one."""
    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(autouse=True)
def outside_a_run():
    with task_identity():
        yield


@pytest.fixture(scope="module")
def fashion():
    images, labels = data.fashion_mnist("test", 20, allow_download=False)
    return images, labels


@pytest.fixture(scope="module")
def shards(fashion):
    images, labels = fashion
    return flower.make_shards(images[:16], labels[:16], num_clients=2, shard_size=8, seed=1)


@pytest.fixture
def victim():
    return models.build_model("convnet_fc", in_channels=1)


def run_round(strategy, app, victim, node_ids=(11, 22), server_round=1):
    """One round by hand: configure_train through ``strategy``, each client app called here, aggregate_train."""
    messages = list(
        strategy.configure_train(
            server_round, ArrayRecord(victim.state_dict()), ConfigRecord({flower.LR_KEY: LR}), StubGrid(node_ids)
        )
    )
    replies = [app(msg, context_for(node_ids, msg.metadata.dst_node_id)) for msg in messages]
    return replies, strategy.aggregate_train(server_round, replies)


def true_update(victim, shards, received, batch_size=4):
    images, labels = flower.client_batch(shards[received.client], received.server_round, batch_size)
    return fl.client_update(victim, images, labels, share_labels=True)


def max_abs_difference(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def test_shards_are_disjoint_and_exact(fashion):
    images, labels = fashion
    shards = flower.make_shards(images, labels, num_clients=3, shard_size=5, seed=0)
    seen = [tuple(x.flatten().tolist()) for s, _ in shards for x in s]
    assert len(set(seen)) == 15  # no image in two shards
    x, y = flower.client_batch(shards[0], server_round=2, batch_size=2)  # the shard's images 2 and 3
    rows = [i for i in range(20) if torch.equal((images[i] * 255).round().to(torch.uint8), shards[0][0][2])]
    assert torch.equal(x[0], images[rows[0]]) and y[0] == labels[rows[0]]  # 8-bit storage loses nothing
    with pytest.raises(ValueError, match="need 63 images"):
        flower.make_shards(images, labels, num_clients=3, shard_size=21)
    with pytest.raises(ValueError, match="multiples of 1/255"):
        flower.make_shards(images * 0.999, labels, num_clients=3, shard_size=5)


def test_recovered_gradient_equals_the_clients_gradient(shards, victim):
    curious = flower.CuriousStrategy(flower.fedsgd_strategy(2), victim)
    run_round(curious, flower.client_app(shards), victim)
    assert len(curious.received) == 2
    for r in curious.received:
        truth = true_update(victim, shards, r)
        assert max_abs_difference(r.update.gradients, truth.gradients) < 1e-5
        assert all(g.dtype == torch.float32 for g in r.update.gradients)
        assert torch.equal(r.update.labels, truth.labels) and r.update.batch_size == 4
        assert torch.equal(next(r.model().parameters()), next(victim.parameters()))  # the model sent


def test_recover_gradient_undoes_a_step(victim):
    g = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(victim.parameters())]
    sent = {k: v.numpy().copy() for k, v in victim.state_dict().items()}
    returned = {name: sent[name] - LR * gi.numpy() for (name, _), gi in zip(victim.named_parameters(), g)}
    recovered = flower.recover_gradient(victim, sent, returned, LR)
    assert max_abs_difference(recovered, g) < 1e-5
    with pytest.raises(ValueError, match="positive"):
        flower.recover_gradient(victim, sent, returned, 0.0)


def test_curious_strategy_passes_aggregation_through_bit_identically(fashion, victim):
    images, labels = fashion
    shards = flower.make_shards(images, labels, num_clients=3, shard_size=6, seed=2)
    app = flower.client_app(shards, batch_size=3)
    alone = FedAvg(fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3)
    replies, (expected_arrays, expected_metrics) = run_round(alone, app, victim, node_ids=(5, 6, 7))
    curious = flower.CuriousStrategy(FedAvg(fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3), victim)
    messages = list(
        curious.configure_train(
            1, ArrayRecord(victim.state_dict()), ConfigRecord({flower.LR_KEY: LR}), StubGrid((5, 6, 7))
        )
    )
    assert sorted(m.metadata.dst_node_id for m in messages) == [5, 6, 7]
    arrays, metrics = curious.aggregate_train(1, replies)  # the very replies FedAvg aggregated alone
    assert list(arrays.keys()) == list(expected_arrays.keys())
    for key in arrays.keys():
        assert arrays[key].numpy().tobytes() == expected_arrays[key].numpy().tobytes()
    assert dict(metrics) == dict(expected_metrics)
    assert len(curious.received) == 3


def test_client_side_clipping_hands_the_curious_strategy_the_clipped_update_unnoised(shards, victim):
    curious = flower.CuriousStrategy(flower.fedsgd_strategy(2), victim)
    dp = flower.DPConfig("client_clip", clipping_norm=CLIP, noise_multiplier=1.0)
    _, (arrays, _) = run_round(dp.wrap(curious, 2), flower.client_app(shards, mods=dp.mods()), victim)
    for r in curious.received:
        truth = true_update(victim, shards, r)
        assert LR * float(defenses.global_norm(truth.gradients)) > CLIP  # the client's update was clipped ...
        assert r.update_norm == pytest.approx(CLIP, rel=1e-5)  # ... and the strategy sees it clipped
        assert r.config["clipping_norm"] == CLIP  # the wrapper's instruction to the clients' mod
        clipped = defenses.clip(truth, CLIP / LR)
        assert max_abs_difference(r.update.gradients, clipped.gradients) < 1e-5  # and no noise on it
    assert_noise_added_after(arrays, curious.received, std=1.0 * CLIP / 2)


def test_server_side_clipping_hands_the_curious_strategy_the_clipped_update_unnoised(shards, victim):
    curious = flower.CuriousStrategy(flower.fedsgd_strategy(2), victim)
    dp = flower.DPConfig("server_clip", clipping_norm=CLIP, noise_multiplier=1.0)
    replies, (arrays, _) = run_round(dp.wrap(curious, 2), flower.client_app(shards, mods=dp.mods()), victim)
    for r in curious.received:
        truth = true_update(victim, shards, r)
        assert r.update_norm == pytest.approx(CLIP, rel=1e-5)  # clipped on the server, before the inner strategy
        assert max_abs_difference(r.update.gradients, defenses.clip(truth, CLIP / LR).gradients) < 1e-5
    assert_noise_added_after(arrays, curious.received, std=1.0 * CLIP / 2)


def test_above_the_server_side_wrapper_the_curious_strategy_sees_the_raw_update(shards, victim):
    """Server-side clipping happens on the server, after the raw update has arrived there."""
    dp = flower.DPConfig("server_clip", clipping_norm=CLIP, noise_multiplier=1.0)
    curious = flower.CuriousStrategy(dp.wrap(flower.fedsgd_strategy(2), 2), victim)
    run_round(curious, flower.client_app(shards), victim)
    for r in curious.received:
        truth = true_update(victim, shards, r)
        assert r.update_norm > 1.5 * CLIP
        assert max_abs_difference(r.update.gradients, truth.gradients) < 1e-5


def assert_noise_added_after(arrays, received, std):
    """The wrapper's aggregate is the mean of what the curious strategy saw plus N(0, std^2) per entry."""
    noise = np.concatenate(
        [(arrays[k].numpy() - np.mean([r.returned[k] for r in received], axis=0)).ravel() for k in arrays.keys()]
    )
    assert noise.std() == pytest.approx(std, rel=0.02)  # 96.7k entries: the estimate is within 0.5%
    assert abs(noise.mean()) < 5 * std / math.sqrt(noise.size)


def test_local_dp_hands_the_server_a_noised_update(shards, victim):
    curious = flower.CuriousStrategy(flower.fedsgd_strategy(2), victim)
    dp = flower.DPConfig("local", clipping_norm=CLIP, epsilon=8.0, delta=1e-5)
    assert dp.local_sigma == pytest.approx(2 * CLIP * math.sqrt(2 * math.log(1.25e5)) / 8.0)
    run_round(dp.wrap(curious, 2), flower.client_app(shards, mods=dp.mods()), victim)
    for r in curious.received:
        clipped = defenses.clip(true_update(victim, shards, r), CLIP / LR)
        noise = torch.cat([(LR * (a - b)).flatten() for a, b in zip(r.update.gradients, clipped.gradients)])
        assert float(noise.std()) == pytest.approx(dp.local_sigma, rel=0.02)  # clipped, then noised on the client
        assert r.update_norm > 100 * CLIP  # the noise, not the update, is what reaches the server


def test_a_reply_that_does_not_match_the_model_is_refused(shards, victim):
    curious = flower.CuriousStrategy(flower.fedsgd_strategy(2), victim)
    replies, _ = run_round(flower.fedsgd_strategy(2), flower.client_app(shards), victim)
    state = victim.state_dict()
    messages = list(
        curious.configure_train(1, ArrayRecord(state), ConfigRecord({flower.LR_KEY: LR}), StubGrid((11, 22)))
    )
    wrong = dict(state)
    wrong["classifier.weight"] = wrong["classifier.weight"][:, :100]
    bad = Message(
        RecordDict({"arrays": ArrayRecord(wrong), "metrics": MetricRecord({"num-examples": 4})}), reply_to=messages[0]
    )
    with pytest.raises(ValueError, match=r"'classifier.weight' has shape \(10, 100\).*does not match the model"):
        curious.aggregate_train(1, [bad])
    missing = {k: v for k, v in state.items() if k != "classifier.bias"}
    bad = Message(
        RecordDict({"arrays": ArrayRecord(missing), "metrics": MetricRecord({"num-examples": 4})}), reply_to=messages[1]
    )
    with pytest.raises(ValueError, match="does not match the model"):
        curious.aggregate_train(1, [bad])
    with pytest.raises(ValueError, match="answers no train instruction"):
        curious.aggregate_train(2, replies)  # round 2 was never configured
    stranger = Message(
        RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({})}),
        dst_node_id=33,
        message_type=MessageType.TRAIN,
    )
    with pytest.raises(ValueError, match="answers no train instruction"):
        curious.aggregate_train(1, [Message(replies[0].content, reply_to=stranger)])


def test_a_round_without_a_learning_rate_is_refused(shards, victim):
    curious = flower.CuriousStrategy(flower.fedsgd_strategy(2), victim)
    messages = list(curious.configure_train(1, ArrayRecord(victim.state_dict()), ConfigRecord({}), StubGrid((1, 2))))
    content = {"arrays": ArrayRecord(victim.state_dict()), "metrics": MetricRecord({"num-examples": 4})}
    reply = Message(RecordDict(content), reply_to=messages[0])
    with pytest.raises(ValueError, match="has no 'lr'"):
        curious.aggregate_train(1, [reply])


def test_privacy_of_each_option():
    central = flower.calibrate("client_clip", clipping_norm=CLIP, rounds=5, target_epsilon=8.0)
    got = flower.privacy(central, rounds=5)
    assert got.epsilon <= 8.0 and got.epsilon > 7.5 and got.adjacency == "add_remove"
    assert flower.privacy(central, rounds=5, adjacency="replace_one").epsilon > 2 * got.epsilon  # half the noise
    assert flower.privacy(flower.DPConfig(), rounds=5).epsilon == math.inf
    local = flower.calibrate("local", clipping_norm=CLIP, rounds=5, target_epsilon=8.0)
    got = flower.privacy(local, rounds=1)
    assert got.adjacency == "replace_one" and got.epsilon_per_round == 8.0
    assert flower.privacy(local, rounds=5).epsilon > got.epsilon  # the rounds compose
    with pytest.raises(ValueError, match="clipping_norm"):
        flower.DPConfig("server_clip", noise_multiplier=1.0)
    with pytest.raises(ValueError, match="kind must be"):
        flower.DPConfig("secure_aggregation")


def test_flowers_own_accountant_agrees_with_the_librarys():
    pytest.importorskip("dp_accounting", reason="Flower's accountant needs its dp extra: pip install 'flwr[dp]'")
    for z, rounds in ((1.0, 1), (1.43, 5), (0.8, 20)):
        dp = flower.DPConfig("server_clip", clipping_norm=CLIP, noise_multiplier=z)
        assert flower.flower_epsilon(dp, rounds, num_clients=10) == pytest.approx(
            flower.privacy(dp, rounds).epsilon, rel=1e-6
        )


def test_routes_send_each_deployment_to_its_own_mods(shards, victim):
    """One client app, several DP options: Flower routes train.<name> to the function registered under that name."""
    local = flower.DPConfig("local", clipping_norm=CLIP, epsilon=8.0)
    app = flower.client_app(shards, routes={"none": [], "local": local.mods()})
    plain = flower.CuriousStrategy(flower.fedsgd_strategy(2), victim)
    run_round(flower.Routed(plain, "none"), app, victim)
    noised = flower.CuriousStrategy(flower.fedsgd_strategy(2), victim, dp=local)
    run_round(flower.Routed(local.wrap(noised, 2), "local"), app, victim)
    for exact in plain.received:
        assert max_abs_difference(exact.update.gradients, true_update(victim, shards, exact).gradients) < 1e-5
        assert exact.update.defense == ()
    for r in noised.received:
        truth = true_update(victim, shards, r)
        noise = torch.cat(
            [(LR * (a - b)).flatten() for a, b in zip(r.update.gradients, defenses.clip(truth, CLIP / LR).gradients)]
        )
        assert float(noise.std()) == pytest.approx(local.local_sigma, rel=0.02)
        assert [d.name for d in r.update.defense] == ["local_gaussian"]
        assert r.update.defense[0].settings["sigma"] == pytest.approx(local.local_sigma / LR)
    with pytest.raises(ValueError, match="No train function registered with name 'server_clip'"):
        run_round(flower.Routed(flower.fedsgd_strategy(2), "server_clip"), app, victim)
    with pytest.raises(ValueError, match="identifier"):
        flower.Routed(flower.fedsgd_strategy(2), "server-clip")


def test_the_server_knows_the_public_settings_of_each_option():
    assert flower.DPConfig().records(LR) == ()
    (clip,) = flower.DPConfig("client_clip", clipping_norm=CLIP, noise_multiplier=1.0).records(LR)
    assert clip.name == "clip" and clip.settings["max_norm"] == pytest.approx(CLIP / LR)
    (clip,) = flower.DPConfig("server_clip", clipping_norm=CLIP, noise_multiplier=1.0).records(LR)
    assert clip.settings["by"] == "the server"


ALL_OPTIONS = [
    flower.DPConfig(),
    flower.DPConfig("server_clip", clipping_norm=CLIP, noise_multiplier=1.0),
    flower.DPConfig("client_clip", clipping_norm=CLIP, noise_multiplier=1.0),
    flower.DPConfig("local", clipping_norm=CLIP, epsilon=8.0),
]


@pytest.fixture(scope="module")
def federation(fashion):
    """Every option, two seeds, 2 clients, 2 rounds, batch 2: the whole deployment run in this process."""
    images, labels = fashion
    with task_identity():
        return flower.run_deployments(
            (images[:8], labels[:8]),
            (images[8:], labels[8:]),
            options=ALL_OPTIONS,
            seeds=(0, 1),
            num_clients=2,
            num_rounds=2,
            batch_size=2,
            lr=LR,
            engine=in_process,
        )


def test_a_federation_runs_every_option_and_seed(federation):
    assert [(d.dp.kind, d.seed) for d in federation.deployments] == [(o.kind, s) for o in ALL_OPTIONS for s in (0, 1)]
    for d in federation.deployments:
        assert sorted((r.client, r.server_round) for r in d.received) == [(0, 1), (0, 2), (1, 1), (1, 2)]
        assert set(d.accuracy) == {0, 2} and all(0 <= a <= 1 for a in d.accuracy.values())
    first = {s: federation.get("none", s).reply(0, 1).sent for s in (0, 1)}
    assert not np.array_equal(first[0]["classifier.weight"], first[1]["classifier.weight"])  # the seed's victim
    assert federation.versions["flwr"] == flwr_version()
    with pytest.raises(ValueError, match="no deployment of 'local' with seed 7"):
        federation.get("local", 7)
    with pytest.raises(ValueError, match="no reply of client 5"):
        federation.get("local", 0).reply(5)


def flwr_version():
    from importlib.metadata import version

    return version("flwr")


def test_without_dp_the_federation_takes_fedsgd_steps(federation):
    """FedAvg over the returned parameters, round after round, is FedSGD's step on the clients' true gradients."""
    d = federation.get("none", 1)
    model = models.build_model("convnet_fc", in_channels=1, seed=1)
    for server_round in (1, 2):
        updates = [fl.client_update(model, *flower.client_batch(shard, server_round, 2)) for shard in d.shards]
        fl.server_step(model, updates, LR)
    for p, q in zip(model.parameters(), d.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert all(flower.inspect(d, r).distance < 1e-5 for r in d.received)


def test_what_the_server_received_under_each_option(federation):
    for r in federation.get("client_clip", 0).received + federation.get("server_clip", 0).received:
        seen = flower.inspect(federation.get("client_clip", 0), r)
        assert seen.clipped and seen.norm == pytest.approx(CLIP / LR, rel=1e-4)
        assert seen.clipped_distance < 1e-5 and not seen.noised and seen.cosine > 0.99999
    for r in federation.get("local", 0).received:
        seen = flower.inspect(federation.get("local", 0), r)
        assert seen.noised and seen.norm > 100 * seen.bound and abs(seen.cosine) < 0.05


def test_both_central_wrappers_release_the_same_model(federation):
    """Clipping on the server or on the client, then the same noise from the same seed: the same global model."""
    for seed in (0, 1):
        server, client = federation.get("server_clip", seed), federation.get("client_clip", seed)
        for p, q in zip(server.model.parameters(), client.model.parameters()):
            assert torch.equal(p, q)
        assert not torch.equal(next(server.model.parameters()), next(federation.get("none", seed).model.parameters()))


def test_a_failing_client_is_reported_not_silently_skipped(fashion, victim, shards):
    images, labels = fashion
    bad = labels.clone()
    bad[:8] = 12  # no such class: the client's loss raises
    with pytest.raises(RuntimeError, match="client replies carried an error.*labels"):
        flower.run_deployments((images[:8], bad[:8]), options=[flower.DPConfig()], num_clients=2, engine=in_process)
    curious = flower.CuriousStrategy(flower.fedsgd_strategy(2), victim)
    messages = list(
        curious.configure_train(
            1, ArrayRecord(victim.state_dict()), ConfigRecord({flower.LR_KEY: LR}), StubGrid((11, 22))
        )
    )
    curious.aggregate_train(1, [Message(Error(code=0, reason="out of memory"), reply_to=messages[0])])
    assert curious.errors == [(1, 11, str(Error(code=0, reason="out of memory")))] and curious.received == []


def test_run_deployments_refuses_bad_plans(fashion):
    images, labels = fashion
    with pytest.raises(ValueError, match="one option of each kind"):
        flower.run_deployments((images, labels), options=[flower.DPConfig(), flower.DPConfig()], engine=in_process)
    with pytest.raises(ValueError, match="at least one seed"):
        flower.run_deployments((images, labels), seeds=(), engine=in_process)
    with pytest.raises(ValueError, match="identifier"):
        flower.client_app([], routes={"local dp": []})


def test_the_exact_gaussian_epsilon():
    for z in (0.5, 1.0, 2.0):  # Opacus's PRV accountant is tight up to its discretisation
        prv = defenses.epsilon(2 * z, 1.0, 1, 1e-5, adjacency="replace_one", accountant="prv")  # sensitivity 2S
        assert flower.gaussian_epsilon(z, 1e-5) == pytest.approx(prv, rel=0.02)
    classic = math.sqrt(2 * math.log(1.25 / 1e-5)) / 0.5  # the classic calibration, proven for epsilon < 1
    assert flower.gaussian_epsilon(classic, 1e-5) <= 0.5
    assert flower.gaussian_epsilon(0.5, 1e-5) > flower.gaussian_epsilon(1.0, 1e-5) > flower.gaussian_epsilon(2.0, 1e-6)
    for bad in ((0.0, 1e-5), (1.0, 0.0), (-1.0, 1e-5)):
        with pytest.raises(ValueError):
            flower.gaussian_epsilon(*bad)


def test_who_each_option_protects_against():
    local = flower.calibrate("local", clipping_norm=CLIP, rounds=3)
    assert flower.privacy(local, 3).against_server == flower.privacy(local, 3, adjacency="replace_one").epsilon
    assert flower.privacy(local, 3, adjacency="add_remove").against_server == flower.privacy(local, 3).against_server
    for kind in ("none", "server_clip", "client_clip"):
        assert flower.privacy(flower.calibrate(kind, clipping_norm=CLIP, rounds=3), 3).against_server == math.inf


def verdict_tally(scores):
    """A battery's rows for some options: {option: {method: [(psnr, identified) per seed]}}."""
    tally = stats.Tally(("option", "seed", "method"))
    for option, methods in scores.items():
        for method, values in methods.items():
            for seed, (psnr, identified) in enumerate(values):
                tally.add(option=option, seed=seed, method=method, psnr=psnr, identified=identified)
    return tally


def test_the_verdict_needs_both_scores():
    floors = {"label only": [(15.0, 0.0)] * 3, "prior sample": [(12.0, 0.25), (11.0, 0.0), (12.5, 0.0)]}
    tally = verdict_tally(
        {
            "open": {"GI-x": [(40.0, 1.0), (38.0, 1.0), (31.0, 0.75)], "GIAS": [(30.0, 1.0)] * 3, **floors},
            "closed": {"GI-x": [(8.0, 0.0)] * 3, "GIAS": [(13.0, 0.0), (15.5, 0.25), (12.0, 0.0)], **floors},
            "mixed": {"GI-x": [(14.0, 0.75)] * 3, "GIAS": [(15.0, 0.5)] * 3, **floors},
        }
    )
    assert flower.protection(tally, "open").verdict == "leaks"
    closed = flower.protection(tally, "closed")
    assert closed.verdict == "at the floor" and closed.paired["identified"].gap.mean == 0.0
    assert "no clear winner" in closed.sentences["psnr"]
    assert flower.protection(tally, "mixed").verdict == "unclear"  # identified above the floors, PSNR not
    with pytest.raises(ValueError, match="missing"):
        flower.protection(tally.select(method=["GI-x", "label only", "prior sample"]), "open")


def test_the_verdicts_in_words_follow_the_verdicts():
    floors = {"label only": [(15.0, 0.0)] * 3, "prior sample": [(12.0, 0.0)] * 3}
    leak = {"GI-x": [(40.0, 1.0), (38.0, 1.0), (31.0, 0.75)], "GIAS": [(30.0, 1.0)] * 3, **floors}
    tally = verdict_tally(
        {
            "none": leak,
            "server_clip": {**leak, "GIAS": [(30.0, 1.0), (29.0, 1.0), (30.0, 0.75)]},
            "local": {"GI-x": [(8.0, 0.0)] * 3, "GIAS": [(13.0, 0.0)] * 3, **floors},
        }
    )
    labels = {"none": "no DP", "server_clip": "server-side clipping", "local": "LocalDpMod"}
    verdicts = {kind: flower.protection(tally, kind) for kind in labels}
    assert flower.verdict_sentence(verdicts, labels) == (
        "against the server, only LocalDpMod brought the attacks down to the floors; "
        "under no DP and server-side clipping the client's images leaked"
    )
    lines = flower.verdict_lines(verdicts, labels).splitlines()
    assert len(lines) == 3 and lines[2].startswith("- **LocalDpMod**: " + flower.VERDICT_WORDS["at the floor"])
    assert flower.largest_gap(tally, "psnr", "none", ["server_clip"]) == 1.0  # GIAS, second seed
    assert flower.largest_gap(tally, "identified", "none", ["server_clip"]) == 0.25
    with pytest.raises(ValueError, match="rows"):
        flower.largest_gap(tally, "psnr", "none", ["missing"])


def test_without_flower_the_module_says_what_to_install(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.delitem(sys.modules, "gi_tutorial.flower")
    with pytest.raises(ImportError, match=r"missing here: ray.*gi-tutorial\[flower\].*Python 3.11 or later"):
        importlib.import_module("gi_tutorial.flower")


def test_the_docstring_examples_hold():
    result = doctest.testmod(flower, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
