"""A real federated deployment: the book's victim trained with Flower, and a curious server inside it.

Flower (Beutel et al., 2020, "Flower: A Friendly Federated Learning Research Framework") runs
a federation as a ``ServerApp`` that sends messages and ``ClientApp`` s that answer them; its
simulation engine runs the clients on Ray. This module builds the book's threat model from
Flower's own pieces (its Message API, Flower >= 1.21):

- :func:`client_app`: FedSGD clients (McMahan et al., 2017). Each round a client takes one
  gradient step on one private batch at the learning rate the server configured, and returns
  the parameters, with the batch size (Flower's ``num-examples``) and, as the book's threat
  model says, the labels.
- :func:`server_app`: Flower's ``FedAvg`` driven by ``Strategy.start``, the global model's
  accuracy on held-out images after every round.
- :class:`CuriousStrategy`: a strategy wrapper that forwards every call to any Flower
  strategy unchanged and keeps what the server receives from each client in each round as a
  :class:`Received`: the model sent, the parameters returned, and the
  :class:`~gi_tutorial.fl.SharedUpdate` the library's attacks take, whose gradient is
  recovered as ``(w_sent - w_returned) / lr`` (:func:`recover_gradient`).
- :class:`DPConfig`: Flower's three DP options, and :func:`privacy`, their epsilon.
- :func:`simulate` and :func:`run_deployment`: the whole deployment in Flower's simulation
  engine, with a backend kept cheap on a 2-core machine (one Ray actor, one CPU).

What the curious strategy sees under each of Flower's DP options (from Flower 1.42's source,
``flwr/serverapp/strategy/dp_fixed_clipping.py`` and ``flwr/clientapp/mod/*``; the tests check
it, ``benchmarks/flower_probe.py`` measures it):

- ``DifferentialPrivacyServerSideFixedClipping(CuriousStrategy(...))``: the wrapper clips each
  reply's update ``w_returned - w_sent`` to norm ``S`` *on the server*, then calls the inner
  strategy, then adds ``N(0, (z S / m)^2)`` to the aggregate. The curious strategy below it
  gets each client's clipped update, unnoised; above it (or anywhere on the server) it gets
  the raw update, since clipping happens after the update has arrived.
- ``DifferentialPrivacyClientSideFixedClipping`` with ``fixedclipping_mod`` on the clients:
  the client clips before sending; the server adds the noise to the aggregate after the
  inner strategy. The curious strategy gets each client's clipped update, unnoised.
- ``LocalDpMod`` on the clients: the client clips to ``S`` and adds
  ``N(0, sigma^2)`` with ``sigma = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon`` to
  every parameter before sending: the server only ever sees a noised update.

So central DP in Flower protects the released model, not the client from the server; only
local noise reaches the server. Flower draws all DP noise from NumPy's global generator;
:func:`client_app` and :func:`server_app` seed it so that a run is reproducible.

Flower's telemetry (a report of every run to flower.ai) is switched off here:
``FLWR_TELEMETRY_ENABLED=0`` unless the environment sets it. A textbook on privacy does not
report its readers' runs.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # read once, when Flower is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import (  # noqa: E402
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)
from flwr.supercore import telemetry as _telemetry  # noqa: E402

from . import defenses, fl, models  # noqa: E402
from .config import set_threads  # noqa: E402

# Flower reads the switch once, at its import: honour it here too if Flower was imported before this module
_telemetry.FLWR_TELEMETRY_ENABLED = os.environ["FLWR_TELEMETRY_ENABLED"]

LR_KEY = "lr"  # the train config's learning rate, which the server sets and uses to recover gradients
SHARED_KEY = "shared"  # the reply's ConfigRecord with what the threat model shares besides the update
NUM_EXAMPLES_KEY = "num-examples"  # FedAvg's weight: here the batch size
DPKind = Literal["none", "server_clip", "client_clip", "local"]
Adjacency = Literal["add_remove", "replace_one"]

# One Ray actor on one CPU runs every client in turn: on a 2-core machine more actors only
# compete for the cores, and each costs a process start. No dashboard; Ray's own logs at ERROR.
CHEAP_BACKEND: dict[str, dict[str, Any]] = {
    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    "init_args": {"num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
                  "logging_level": "ERROR", "log_to_driver": False},
}


def make_shards(images: torch.Tensor, labels: torch.Tensor, num_clients: int, shard_size: int,
                seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split a dataset into ``num_clients`` disjoint random shards of ``shard_size`` images each.

    The images are kept as 8-bit integers, the datasets' own precision (:func:`client_batch`
    gives back exactly the float images), which keeps the client app small: Ray ships it to
    its actor with every message.

    Raises:
        ValueError: bad images or labels, images that are not multiples of 1/255 in [0, 1], or
            fewer images than the shards need.
    """
    fl.check_batch(images, labels)
    if num_clients < 1 or shard_size < 1:
        raise ValueError(f"need at least one client and one image per shard, got {num_clients} and {shard_size}")
    if num_clients * shard_size > images.shape[0]:
        raise ValueError(f"{num_clients} shards of {shard_size} images need {num_clients * shard_size} images, "
                         f"got {images.shape[0]}")
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    chosen = order[: num_clients * shard_size]
    as_bytes = (images[chosen] * 255).round().clamp(0, 255).to(torch.uint8)
    if not torch.equal(as_bytes.float() / 255, images[chosen]):
        raise ValueError("the shards keep images as 8-bit values: expected images in [0, 1] that are multiples of "
                         "1/255, as the data module loads them")
    rows = torch.arange(num_clients * shard_size).view(num_clients, shard_size)
    return [(as_bytes[idx], labels[chosen][idx]) for idx in rows]


def client_batch(shard: tuple[torch.Tensor, torch.Tensor], server_round: int,
                 batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch a client trains on in a round: the round's ``batch_size`` images of its shard, in
    turn (round 1 takes the first ones), as float images in [0, 1]."""
    images, labels = shard
    rows = [((server_round - 1) * batch_size + i) % images.shape[0] for i in range(batch_size)]
    return images[rows].float() / 255, labels[rows]


def _seed_numpy(*parts: int) -> None:
    # Flower's DP code (LocalDpMod, the central wrappers) draws its noise from NumPy's global generator
    np.random.seed(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _only(records: dict, what: str) -> Any:
    if len(records) != 1:
        raise ValueError(f"expected exactly one {what} in the message, found {len(records)}: {list(records)}")
    return next(iter(records.values()))


def client_app(
    shards: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    victim: str = "convnet_fc",
    in_channels: int = 1,
    batch_size: int = 4,
    share_labels: bool = True,
    mods: Sequence[Callable] = (),
    seed: int = 0,
) -> ClientApp:
    """A Flower ``ClientApp`` of FedSGD clients, each holding one private shard.

    Client ``k`` (Flower's ``partition-id``, 0 to ``len(shards) - 1``) receives the global
    model and the config, takes its round's batch (:func:`client_batch`), computes the
    gradient with :func:`gi_tutorial.fl.client_update` and returns ``w - lr * g`` under the
    keys it received. Its reply also holds ``num-examples`` (the batch size) and, under
    :data:`SHARED_KEY`, its labels (if ``share_labels``) and its partition id (the simulation's
    name for the node, which the server knows by its node id anyway).

    Args:
        shards: per client, ``(images, labels)`` as :func:`make_shards` makes them.
        victim: a name of :func:`gi_tutorial.models.build_model`.
        in_channels: the images' channels.
        batch_size: images per round and client.
        share_labels: whether the reply carries the labels (the book's threat model).
        mods: Flower mods around the client, e.g. ``[fixedclipping_mod]`` or ``[LocalDpMod(...)]``
            (:meth:`DPConfig.mods` gives them).
        seed: seeds the NumPy noise of the mods, per round and client.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        set_threads()
        sent = _only(msg.content.array_records, "ArrayRecord")
        config = _only(msg.content.config_records, "ConfigRecord")
        client = int(context.node_config["partition-id"])
        server_round, lr = int(config["server-round"]), float(config[LR_KEY])
        images, labels = client_batch(shards[client], server_round, batch_size)
        model = models.build_model(victim, in_channels=in_channels)
        model.load_state_dict(sent.to_torch_state_dict())
        update = fl.client_update(model, images, labels, share_labels=share_labels)
        state = model.state_dict()
        with torch.no_grad():
            for (name, _), g in zip(fl._named_trainable(model), update.gradients):
                state[name] = state[name] - lr * g
        shared = ConfigRecord({"client": client})
        if share_labels:
            shared["labels"] = [int(v) for v in labels]
        _seed_numpy(seed, server_round, client)  # for the mods that run after this function
        content = {"arrays": ArrayRecord(state), "metrics": MetricRecord({NUM_EXAMPLES_KEY: batch_size}),
                   SHARED_KEY: shared}
        return Message(RecordDict(content), reply_to=msg)

    return app


def recover_gradient(model: nn.Module, sent: dict[str, np.ndarray], returned: dict[str, np.ndarray],
                     lr: float) -> tuple[torch.Tensor, ...]:
    r"""The gradient behind a FedSGD reply: :math:`g = (w_\text{sent} - w_\text{returned}) / \eta`.

    One tensor per trainable parameter of ``model``, in ``model.parameters()`` order (the
    order of :attr:`SharedUpdate.gradients`), computed in float64 and returned in the
    parameters' dtype. In float32 it equals the client's gradient up to the rounding of
    ``w - lr * g`` on the client, about ``|w| * 6e-8 / lr`` per entry.

    Raises:
        ValueError: ``lr`` not positive, or ``sent`` / ``returned`` that lack a parameter of
            the model or hold it with another shape.
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"the learning rate must be a positive number to recover a gradient, got {lr!r}")
    gradients = []
    for name, p in fl._named_trainable(model):
        for which, arrays in (("sent", sent), ("returned", returned)):
            if name not in arrays:
                raise ValueError(f"the {which} parameters lack {name!r}: they do not match the model "
                                 f"(expected keys {[n for n, _ in fl._named_trainable(model)]}, got {list(arrays)})")
            if tuple(arrays[name].shape) != tuple(p.shape):
                raise ValueError(f"the {which} parameter {name!r} has shape {tuple(arrays[name].shape)} but the "
                                 f"model's has shape {tuple(p.shape)}: the update does not match the model")
        step = np.asarray(sent[name], dtype=np.float64) - np.asarray(returned[name], dtype=np.float64)
        gradients.append((torch.from_numpy(step) / lr).to(p.dtype))
    return tuple(gradients)


@dataclass(frozen=True)
class Received:
    """What the server received from one client in one round, as the curious strategy got it.

    Attributes:
        server_round: Flower's round, from 1.
        node_id: the client's node id (its identity to the server).
        client: the client's partition id in the simulation (None if the reply does not say).
        sent: the global model the server sent to this client this round (a state dict of arrays).
        returned: the parameters the client returned, as they reached the curious strategy
            (clipped by a DP wrapper or mod above it, noised by ``LocalDpMod``).
        config: the train config sent (learning rate, round, ``clipping_norm`` under client-side clipping).
        num_examples: the reply's ``num-examples`` (the batch size).
        metrics: the reply's other metrics.
        update: what the attacks take: the recovered gradient, the batch size and the labels.
    """

    server_round: int
    node_id: int
    client: int | None
    sent: dict[str, np.ndarray] = field(repr=False)
    returned: dict[str, np.ndarray] = field(repr=False)
    config: dict[str, Any]
    num_examples: int
    metrics: dict[str, Any]
    update: fl.SharedUpdate = field(repr=False)
    template: nn.Module = field(repr=False, compare=False)

    def model(self) -> nn.Module:
        """A fresh copy of the model the server sent this round: the model to attack ``update`` with."""
        model = copy.deepcopy(self.template)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.sent.items()})
        return model

    @property
    def update_norm(self) -> float:
        """The L2 norm of the parameter update the client sent, ``||w_returned - w_sent||``."""
        lr = float(self.config[LR_KEY])
        return lr * float(defenses.global_norm(self.update.gradients))


class CuriousStrategy(Strategy):
    """A Flower strategy that forwards every call to ``strategy`` unchanged and keeps what it receives.

    It is the honest-but-curious server of the book inside a real deployment: aggregation is
    ``strategy``'s, bit for bit; on the side, ``aggregate_train`` turns each client's reply into
    a :class:`Received` (kept in :attr:`received` if ``keep``, and passed to ``on_receive``,
    e.g. to attack it at once). Put it under one of Flower's DP wrappers to see what a strategy
    there receives (the module docstring says what that is for each).

    Args:
        strategy: any Flower Message-API strategy (``flwr.serverapp.strategy``).
        model: the federation's model (its architecture; the weights come from each round).
        keep: keep every :class:`Received` in :attr:`received`.
        on_receive: called with each :class:`Received`, before aggregation.
    """

    def __init__(self, strategy: Strategy, model: nn.Module, *, keep: bool = True,
                 on_receive: Callable[[Received], None] | None = None):
        self.strategy = strategy
        self.template = copy.deepcopy(model).cpu()
        self.keep = keep
        self.on_receive = on_receive
        self.received: list[Received] = []
        self._instructions: dict[tuple[int, int], tuple[dict[str, np.ndarray], dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"CuriousStrategy({self.strategy!r})"

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Forward; note what each client is sent (model and config), to recover its gradient later."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        converted: dict[int, dict[str, np.ndarray]] = {}
        for msg in messages:
            record = _only(msg.content.array_records, "ArrayRecord")
            if id(record) not in converted:
                converted[id(record)] = {k: v.numpy() for k, v in record.items()}
            sent_config = dict(_only(msg.content.config_records, "ConfigRecord"))
            self._instructions[(server_round, msg.metadata.dst_node_id)] = (converted[id(record)], sent_config)
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Keep each reply as a :class:`Received`, then forward the replies, unchanged, to ``strategy``.

        Raises:
            ValueError: a reply whose parameters do not match the model or what was sent (other
                keys or shapes, NaN or inf), or that answers no instruction this wrapper saw.
        """
        replies = list(replies)
        for reply in replies:
            if not reply.has_error():
                self._receive(server_round, reply)
        return self.strategy.aggregate_train(server_round, replies)

    def _receive(self, server_round: int, reply: Message) -> None:
        node_id = reply.metadata.src_node_id
        if (server_round, node_id) not in self._instructions:
            raise ValueError(f"a reply from node {node_id} in round {server_round} answers no train instruction "
                             "that passed through this wrapper: call configure_train through it")
        sent, config = self._instructions.pop((server_round, node_id))
        if LR_KEY not in config:
            raise ValueError(f"the train config sent in round {server_round} has no {LR_KEY!r} (keys: {list(config)}): "
                             "the gradient is recovered as (w_sent - w_returned) / lr")
        returned = {k: v.numpy() for k, v in _only(reply.content.array_records, "ArrayRecord").items()}
        expected = set(self.template.state_dict())
        if set(returned) != expected:
            raise ValueError(f"node {node_id}'s reply in round {server_round} holds parameters "
                             f"{sorted(returned)}, but the model has {sorted(expected)}: it does not match the model")
        gradients = recover_gradient(self.template, sent, returned, float(config[LR_KEY]))
        metrics = dict(_only(reply.content.metric_records, "MetricRecord"))
        shared = dict(reply.content.config_records.get(SHARED_KEY, {}))
        labels = shared.get("labels")
        update = fl.SharedUpdate(
            gradients=gradients,
            batch_size=int(metrics[NUM_EXAMPLES_KEY]) if NUM_EXAMPLES_KEY in metrics else None,
            labels=None if labels is None else torch.tensor(labels, dtype=torch.int64),
        )
        update.check_matches(self.template)  # NaN / inf
        received = Received(server_round=server_round, node_id=node_id, client=shared.get("client"), sent=sent,
                            returned=returned, config=config, num_examples=int(metrics.get(NUM_EXAMPLES_KEY, 0)),
                            metrics={k: v for k, v in metrics.items() if k != NUM_EXAMPLES_KEY}, update=update,
                            template=self.template)
        if self.keep:
            self.received.append(received)
        if self.on_receive is not None:
            self.on_receive(received)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


@dataclass(frozen=True)
class DPConfig:
    """One of Flower's DP options, with its settings.

    ``clipping_norm`` (``S``) bounds the parameter update ``w_returned - w_sent``, that is
    ``lr`` times the gradient: in gradient units the bound is ``S / lr``.

    Attributes:
        kind: ``"none"``; ``"server_clip"`` (``DifferentialPrivacyServerSideFixedClipping``);
            ``"client_clip"`` (``DifferentialPrivacyClientSideFixedClipping`` with
            ``fixedclipping_mod``); ``"local"`` (``LocalDpMod``).
        clipping_norm: ``S``.
        noise_multiplier: central options: ``z``; Flower adds ``N(0, (z S / m)^2)`` to the
            average of the ``m`` sampled clients' updates.
        epsilon, delta: ``"local"``: ``LocalDpMod``'s own, per round and update; its noise is
            ``sigma = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon``. Every kind: the
            ``delta`` of its accounting.
        sensitivity: ``"local"``: ``LocalDpMod``'s sensitivity; ``2 S`` (two clipped updates differ
            by at most that: replace-one adjacency) unless given.
    """

    kind: DPKind = "none"
    clipping_norm: float | None = None
    noise_multiplier: float = 0.0
    epsilon: float | None = None
    delta: float = 1e-5
    sensitivity: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("none", "server_clip", "client_clip", "local"):
            raise ValueError(f"kind must be 'none', 'server_clip', 'client_clip' or 'local', got {self.kind!r}")
        if self.kind != "none" and not (self.clipping_norm is not None and self.clipping_norm > 0):
            raise ValueError(f"DP option {self.kind!r} needs a positive clipping_norm, got {self.clipping_norm!r}")
        if self.kind in ("server_clip", "client_clip") and not self.noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier!r}")
        if self.kind == "local" and not (self.epsilon is not None and self.epsilon > 0):
            raise ValueError(f"LocalDpMod needs a positive epsilon, got {self.epsilon!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta!r}")

    @property
    def local_sensitivity(self) -> float:
        """``LocalDpMod``'s sensitivity: as given, else ``2 S``."""
        return self.sensitivity if self.sensitivity is not None else 2 * float(self.clipping_norm)

    @property
    def local_sigma(self) -> float:
        """The standard deviation ``LocalDpMod`` adds to every parameter (Flower's formula)."""
        return self.local_sensitivity * math.sqrt(2 * math.log(1.25 / self.delta)) / float(self.epsilon)

    def wrap(self, strategy: Strategy, num_sampled_clients: int) -> Strategy:
        """``strategy`` under this option's server-side wrapper (unchanged for ``"none"`` and ``"local"``)."""
        if self.kind == "server_clip":
            return DifferentialPrivacyServerSideFixedClipping(strategy, self.noise_multiplier, self.clipping_norm,
                                                              num_sampled_clients)
        if self.kind == "client_clip":
            return DifferentialPrivacyClientSideFixedClipping(strategy, self.noise_multiplier, self.clipping_norm,
                                                              num_sampled_clients)
        return strategy

    def mods(self) -> list[Callable]:
        """The client mods this option needs."""
        if self.kind == "client_clip":
            return [fixedclipping_mod]
        if self.kind == "local":
            return [LocalDpMod(float(self.clipping_norm), self.local_sensitivity, float(self.epsilon), self.delta)]
        return []


@dataclass(frozen=True)
class Privacy:
    """The guarantee of a DP option over a run, and whom it protects.

    Attributes:
        epsilon: over all ``rounds``, at ``delta``, for one client (Opacus's RDP accountant
            through :func:`gi_tutorial.defenses.epsilon`; ``inf`` without noise).
        delta: the ``delta`` of the guarantee.
        rounds: the rounds composed, each with every client.
        adjacency: ``"add_remove"`` (one client's update present or absent: sensitivity ``S``)
            or ``"replace_one"`` (one client's update replaced by any other: sensitivity ``2 S``).
        epsilon_per_round: ``"local"``: ``LocalDpMod``'s own per-round epsilon (the classic
            Gaussian mechanism's, for the adjacency its ``sensitivity`` stands for); None otherwise.
        sampling: how the rounds compose.
        protects: against whom.
    """

    epsilon: float
    delta: float
    rounds: int
    adjacency: Adjacency
    epsilon_per_round: float | None
    sampling: str
    protects: str


def privacy(dp: DPConfig, rounds: int, adjacency: Adjacency | None = None) -> Privacy:
    """The client-level epsilon of ``dp`` over ``rounds`` rounds, under a stated adjacency.

    Either way a client's update is released with Gaussian noise of ``z`` times the clip bound
    ``S``: central options add ``N(0, (z S)^2)`` to the sum of the ``m`` clipped updates (Flower
    divides it by ``m``, with the noise); ``LocalDpMod`` adds ``sigma = z S`` to the one update.
    That is a Gaussian mechanism of noise multiplier ``z`` under add/remove adjacency (as
    McMahan et al., 2018, with a fixed denominator ``m``) and ``z / 2`` under replace-one.
    ``rounds`` such releases compose with every client in every round: no amplification by
    sampling (Flower's ``FedAvg`` samples a fixed number of clients without replacement, which
    Opacus's accountants do not analyse; with fewer clients per round this epsilon is an
    upper bound).

    Args:
        dp: the option.
        rounds: rounds in which a client takes part.
        adjacency: default ``"add_remove"`` for the central options (the DP-FedAvg convention,
            and the one Flower's own accountant takes) and ``"replace_one"`` for ``"local"``
            (local DP compares any two inputs of the client).

    Raises:
        ValueError: fewer than one round, or an unknown adjacency.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    sampling = "every client in every round (no amplification; an upper bound when fewer are sampled)"
    if dp.kind == "none":
        return Privacy(math.inf, dp.delta, rounds, adjacency or "add_remove", None, sampling, "nothing")
    if dp.kind == "local":
        adjacency = adjacency or "replace_one"
        eps = defenses.epsilon(dp.local_sigma / dp.clipping_norm, 1.0, rounds, dp.delta, adjacency=adjacency)
        return Privacy(eps, dp.delta, rounds, adjacency, float(dp.epsilon), sampling,
                       "the client from the server, and the released model")
    adjacency = adjacency or "add_remove"
    eps = defenses.epsilon(dp.noise_multiplier, 1.0, rounds, dp.delta, adjacency=adjacency)
    return Privacy(eps, dp.delta, rounds, adjacency, None, sampling,
                   "the released model only: the server sees each clipped update unnoised")


def calibrate(kind: DPKind, *, clipping_norm: float, rounds: int, target_epsilon: float = 8.0,
              delta: float = 1e-5) -> DPConfig:
    """A DP option set to about ``target_epsilon`` at ``delta``.

    Central options: the smallest noise multiplier whose epsilon over ``rounds`` (add/remove,
    every client every round: :func:`privacy`) is at most ``target_epsilon``. ``"local"``:
    ``LocalDpMod(epsilon=target_epsilon, delta=delta)`` per round, as Flower takes it, with
    sensitivity ``2 S`` (its epsilon over the rounds is larger: :func:`privacy` gives it).
    ``"none"``: no DP.
    """
    if kind == "none":
        return DPConfig("none", delta=delta)
    if kind == "local":
        return DPConfig("local", clipping_norm=clipping_norm, epsilon=target_epsilon, delta=delta)
    z = defenses.noise_multiplier_for(target_epsilon, 1.0, rounds, delta, adjacency="add_remove")
    return DPConfig(kind, clipping_norm=clipping_norm, delta=delta, noise_multiplier=z)


def flower_epsilon(dp: DPConfig, rounds: int, num_clients: int) -> float:
    """A central option's epsilon from Flower's own accountant (``flwr.serverapp.RdpAccountant``).

    Flower's fixed-clipping wrappers account only without amplification and under add/remove
    adjacency, which is what this composes: ``rounds`` Gaussian releases of noise multiplier
    ``z``. It equals :func:`privacy`'s (Opacus) epsilon; it needs Google's ``dp-accounting``
    (``pip install "flwr[dp]"``). The wrappers take the accountant only around Flower's own
    ``FedAvg``, not around a :class:`CuriousStrategy`, so it is computed here on the side.

    Raises:
        ValueError: an option that is not central, or no noise.
        ImportError: ``dp-accounting`` is not installed.
    """
    from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    if dp.kind not in ("server_clip", "client_clip") or not dp.noise_multiplier > 0:
        raise ValueError(f"Flower accounts for its central wrappers with noise only, got {dp.kind!r} "
                         f"with noise multiplier {dp.noise_multiplier}")
    accountant = RdpAccountant(PrivacyConfig(target_delta=dp.delta, population_size=num_clients,
                                             neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                             sampling_method=SamplingMethod.NO_AMPLIFICATION))
    accountant.compose(GaussianPrivacyEvent(dp.noise_multiplier, num_clients, num_clients), count=rounds)
    return accountant.get_epsilon(dp.delta)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """The share of ``images`` the model classifies as ``labels``."""
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                      for i in range(0, images.shape[0], batch_size))
    return correct / images.shape[0]


@dataclass
class ServerOutcome:
    """What a :func:`server_app` leaves behind once it ran: the global model and its accuracy per round."""

    model: nn.Module
    accuracy: dict[int, float] = field(default_factory=dict)  # round (0: before training) -> test accuracy
    finished: bool = False


def server_app(strategy: Strategy, model: nn.Module, *, num_rounds: int, lr: float,
               test: tuple[torch.Tensor, torch.Tensor] | None = None, seed: int = 0) -> tuple[ServerApp, ServerOutcome]:
    """A Flower ``ServerApp`` that runs ``strategy`` for ``num_rounds`` FedSGD rounds at learning rate ``lr``.

    It starts from ``model``'s weights, sends ``{"lr": lr}`` as the train config, and after
    every round (and before the first) loads the global arrays into the outcome's model and
    measures its accuracy on ``test``. It seeds Python's and NumPy's global generators with
    ``seed`` first: Flower samples nodes with the one and draws central DP noise from the other.

    Returns:
        the app, and the :class:`ServerOutcome` it fills when it runs (in this process: the
        simulation engine runs the ServerApp in a thread).
    """
    outcome = ServerOutcome(model=copy.deepcopy(model).cpu())
    app = ServerApp()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        outcome.model.load_state_dict(arrays.to_torch_state_dict())
        if test is None:
            return None
        outcome.accuracy[server_round] = accuracy(outcome.model, *test)
        return MetricRecord({"accuracy": outcome.accuracy[server_round]})

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        set_threads()
        random.seed(seed)
        _seed_numpy(seed)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(outcome.model.state_dict()), num_rounds=num_rounds,
                       train_config=ConfigRecord({LR_KEY: float(lr)}), evaluate_fn=evaluate)
        outcome.finished = True

    return app, outcome


def fedsgd_strategy(num_clients: int) -> FedAvg:
    """Flower's ``FedAvg`` as FedSGD's server: every client every round, no client-side evaluation.

    With one gradient step per client and equal batch sizes, averaging the returned
    parameters takes exactly the step of the averaged gradient (:func:`gi_tutorial.fl.server_step`).
    """
    with _flower_log(logging.ERROR):  # not its warning that client-side evaluation is off: that is the point
        return FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=num_clients,
                      min_evaluate_nodes=0, min_available_nodes=num_clients)


@contextlib.contextmanager
def _flower_log(level: int) -> Iterator[None]:
    """Flower's log at ``level`` and above only, for a while."""
    logger = logging.getLogger("flwr")
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


def simulate(server: ServerApp, client: ClientApp, num_supernodes: int, *,
             backend_config: dict | None = None, quiet: bool = True) -> float:
    """Run a deployment in Flower's simulation engine (Ray); return its wall time in seconds.

    ``backend_config`` defaults to :data:`CHEAP_BACKEND` (one Ray actor on one CPU). ``quiet``
    shows only Flower's warnings and errors (its per-round log otherwise).
    """
    from flwr.simulation import run_simulation

    start = time.perf_counter()
    with _flower_log(logging.WARNING if quiet else logging.getLogger("flwr").level), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="ray")  # Ray's notice about GPU variables
        run_simulation(server_app=server, client_app=client, num_supernodes=num_supernodes,
                       backend_config=copy.deepcopy(backend_config or CHEAP_BACKEND))
    return time.perf_counter() - start


@dataclass
class Deployment:
    """A finished simulated deployment.

    Attributes:
        received: what the curious server kept, per client and round (:class:`Received`).
        accuracy: the global model's test accuracy after each round (round 0: before training).
        model: the final global model.
        dp: the DP option it ran under.
        shards: each client's private data (for scoring only: the server never saw it).
        batch_size: images per client and round.
        seconds: wall time of the simulation, Ray's start included.
    """

    received: list[Received]
    accuracy: dict[int, float]
    model: nn.Module
    dp: DPConfig
    shards: list[tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    batch_size: int
    seconds: float

    def truth(self, received: Received) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's true batch behind a :class:`Received` (for scoring an attack, never for the attack)."""
        if received.client is None:
            raise ValueError("this reply does not name its client, so its batch cannot be looked up")
        return client_batch(self.shards[received.client], received.server_round, self.batch_size)


def run_deployment(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    num_clients: int = 2,
    num_rounds: int = 1,
    dp: DPConfig | None = None,
    victim: str = "convnet_fc",
    batch_size: int = 4,
    shard_size: int | None = None,
    lr: float = 0.1,
    seed: int = 0,
    backend_config: dict | None = None,
    quiet: bool = True,
) -> Deployment:
    """Simulate the whole deployment: FedSGD clients, FedAvg under ``dp``, a curious server, Ray.

    Each of ``num_clients`` clients gets a private shard of ``train`` (``shard_size`` images,
    default ``num_rounds * batch_size``, so each round a new batch), all take part in every
    round; the curious strategy sits directly on FedAvg, under the DP wrapper if any.

    Args:
        train, test: ``(images, labels)``: the clients' data; the held-out images for accuracy.
        num_clients, num_rounds: the federation.
        dp: the DP option (:func:`calibrate`); none by default.
        victim: the model (:func:`gi_tutorial.models.build_model` name, seed 0).
        batch_size, lr: FedSGD's batch per client and round, and learning rate.
        seed: the shards, the NumPy noise of Flower's DP, the node sampling.
        backend_config, quiet: see :func:`simulate`.

    Raises:
        ValueError: too few images for the shards, or a bad DP option.
    """
    dp = dp or DPConfig()
    images, labels = train
    model = models.build_model(victim, in_channels=images.shape[1])
    shards = make_shards(images, labels, num_clients, shard_size or num_rounds * batch_size, seed=seed)
    curious = CuriousStrategy(fedsgd_strategy(num_clients), model)
    server, outcome = server_app(dp.wrap(curious, num_clients), model, num_rounds=num_rounds, lr=lr, test=test,
                                 seed=seed)
    client = client_app(shards, victim=victim, in_channels=images.shape[1], batch_size=batch_size, mods=dp.mods(),
                        seed=seed)
    seconds = simulate(server, client, num_clients, backend_config=backend_config, quiet=quiet)
    if not outcome.finished:
        raise RuntimeError("the simulation ended before the server finished its rounds: see Flower's log above")
    return Deployment(received=curious.received, accuracy=outcome.accuracy, model=outcome.model, dp=dp,
                      shards=shards, batch_size=batch_size, seconds=seconds)
