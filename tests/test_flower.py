"""The Flower deployment (gi_tutorial.flower): what a curious strategy receives, with and without DP.

All but the last test call Flower's strategies, wrappers and mods directly, with messages built
by hand and the client app called in this process (no Ray); the last runs one real simulation
(2 clients, 1 round) through Flower's simulation engine on Ray.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from gi_tutorial import data, defenses, fl, flower, models

LR = 0.1
CLIP = 0.05  # below every update norm here (about 0.1 at lr 0.1), so clipping acts


class StubGrid:
    """What a strategy's configure_train asks of Flower's Grid: the connected nodes."""

    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return self.node_ids


@pytest.fixture(autouse=True)
def outside_a_run():
    """Flower stamps every message with the running task's identity; outside a run, these tests set one."""
    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


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
    messages = list(strategy.configure_train(server_round, ArrayRecord(victim.state_dict()),
                                             ConfigRecord({flower.LR_KEY: LR}), StubGrid(node_ids)))
    replies = []
    for msg in messages:
        partition = list(node_ids).index(msg.metadata.dst_node_id)
        context = Context(run_id=0, node_id=msg.metadata.dst_node_id,
                          node_config={"partition-id": partition, "num-partitions": len(node_ids)},
                          state=RecordDict(), run_config={})
        replies.append(app(msg, context))
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
    messages = list(curious.configure_train(1, ArrayRecord(victim.state_dict()), ConfigRecord({flower.LR_KEY: LR}),
                                            StubGrid((5, 6, 7))))
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
    noise = np.concatenate([(arrays[k].numpy() - np.mean([r.returned[k] for r in received], axis=0)).ravel()
                            for k in arrays.keys()])
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
    messages = list(curious.configure_train(1, ArrayRecord(state), ConfigRecord({flower.LR_KEY: LR}),
                                            StubGrid((11, 22))))
    wrong = dict(state)
    wrong["classifier.weight"] = wrong["classifier.weight"][:, :100]
    bad = Message(RecordDict({"arrays": ArrayRecord(wrong), "metrics": MetricRecord({"num-examples": 4})}),
                  reply_to=messages[0])
    with pytest.raises(ValueError, match=r"'classifier.weight' has shape \(10, 100\).*does not match the model"):
        curious.aggregate_train(1, [bad])
    missing = {k: v for k, v in state.items() if k != "classifier.bias"}
    bad = Message(RecordDict({"arrays": ArrayRecord(missing), "metrics": MetricRecord({"num-examples": 4})}),
                  reply_to=messages[1])
    with pytest.raises(ValueError, match="does not match the model"):
        curious.aggregate_train(1, [bad])
    with pytest.raises(ValueError, match="answers no train instruction"):
        curious.aggregate_train(2, replies)  # round 2 was never configured
    stranger = Message(RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({})}), dst_node_id=33,
                       message_type=MessageType.TRAIN)
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


def test_a_real_simulation_on_ray(fashion):
    """Two clients, one round, in Flower's simulation engine: what the server keeps is each client's gradient."""
    images, labels = fashion
    deployment = flower.run_deployment((images[:8], labels[:8]), (images[8:], labels[8:]), num_clients=2,
                                       num_rounds=1, lr=LR, seed=3)
    assert sorted(r.client for r in deployment.received) == [0, 1]
    victim = models.build_model("convnet_fc", in_channels=1)
    updates = []
    for r in deployment.received:
        x, y = deployment.truth(r)
        truth = fl.client_update(r.model(), x, y, share_labels=True)
        assert max_abs_difference(r.update.gradients, truth.gradients) < 1e-5
        assert torch.equal(r.update.labels, y)
        updates.append(truth)
    fl.server_step(victim, updates, LR)  # FedAvg of the returned parameters is FedSGD's step
    for p, q in zip(victim.parameters(), deployment.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert set(deployment.accuracy) == {0, 1}


def test_flowers_own_accountant_agrees_with_the_librarys():
    pytest.importorskip("dp_accounting", reason="Flower's accountant needs its dp extra: pip install 'flwr[dp]'")
    for z, rounds in ((1.0, 1), (1.43, 5), (0.8, 20)):
        dp = flower.DPConfig("server_clip", clipping_norm=CLIP, noise_multiplier=z)
        assert flower.flower_epsilon(dp, rounds, num_clients=10) == pytest.approx(flower.privacy(dp, rounds).epsilon,
                                                                                   rel=1e-6)
