"""A real federated deployment: the book's victim trained with Flower, and a curious server inside it.

Flower (Beutel et al., 2020, "Flower: A Friendly Federated Learning Research Framework") runs
a federation as a ``ServerApp`` that sends messages and ``ClientApp`` s that answer them; its
simulation engine runs the clients on Ray. This module builds the book's threat model from
Flower's own pieces (its Message API, Flower >= 1.21):

- :func:`client_app`: FedSGD clients (McMahan et al., 2017). Each round a client takes one
  gradient step on one private batch at the learning rate the server configured, and returns
  the parameters, with the batch size (Flower's ``num-examples``) and, as the book's threat
  model says, the labels.
- :func:`server_app`: deployments one after another, each Flower's ``FedAvg`` (or any
  strategy) driven by ``Strategy.start``, with the global model's accuracy on held-out images
  before the first round and after the last.
- :class:`CuriousStrategy`: a strategy wrapper that forwards every call to any Flower
  strategy unchanged and keeps what the server receives from each client in each round as a
  :class:`Received`: the model sent, the parameters returned, and the
  :class:`~gi_tutorial.fl.SharedUpdate` the library's attacks take, whose gradient is
  recovered as ``(w_sent - w_returned) / lr`` (:func:`recover_gradient`).
- :class:`DPConfig`: Flower's three DP options; :func:`privacy`, their epsilon for the
  released model and against the server; :func:`gaussian_epsilon`, the exact epsilon of
  ``LocalDpMod``'s noise (Balle and Wang, 2018).
- :func:`run_deployments`: every DP option and seed in **one** run of Flower's simulation
  engine (Ray starts once; :class:`Routed` sends each deployment's instructions under its
  option's name, which Flower routes to the client function registered with that option's
  mods), with a backend kept cheap on a 2-core machine (one Ray actor, one CPU).
- :func:`inspect`: what the server received, against the client's true gradient (scoring
  only); :func:`protection`: whether the server's attacks beat the no-gradient floors, on
  both scores (chapter 7's verdicts, :data:`CLAIMS`).

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

This module imports no attack code: the simulation's Ray worker imports it (the client app's
function lives here) before its first client can answer, and every import there is paid for
in the time to the first reply.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # read once, when Flower is imported

import importlib.util  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

# Without Flower and Ray, fail here with what to install, not deep inside Flower (or, worse, at the
# simulation's start): the flower extra needs Python 3.11 or later (Flower 1.42 does).
_MISSING = [name for name in ("flwr", "ray") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(
        f"gi_tutorial.flower needs Flower with its simulation engine (missing here: {', '.join(_MISSING)}); "
        "install the flower extra, pip install 'gi-tutorial[flower]', which needs Python 3.11 or later "
        f"(this is Python {sys.version_info.major}.{sys.version_info.minor})"
    )

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
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

from . import claims, defenses, fl, models, stats  # noqa: E402
from .config import set_threads  # noqa: E402

# Flower reads the switch once, at its import: honour it here too if Flower was imported before this module
_telemetry.FLWR_TELEMETRY_ENABLED = os.environ["FLWR_TELEMETRY_ENABLED"]

LR_KEY = "lr"  # the train config's learning rate, which the server sets and uses to recover gradients
SEED_KEY = "seed"  # the train config's seed of a deployment (the clients' mods draw their noise from it)
SHARED_KEY = "shared"  # the reply's ConfigRecord with what the threat model shares besides the update
NUM_EXAMPLES_KEY = "num-examples"  # FedAvg's weight: here the batch size
DPKind = Literal["none", "server_clip", "client_clip", "local"]
Adjacency = Literal["add_remove", "replace_one"]

# One Ray actor on one CPU runs every client in turn: on a 2-core machine more actors only
# compete for the cores, and each costs a process start. No dashboard; Ray's own logs at ERROR.
CHEAP_BACKEND: dict[str, dict[str, Any]] = {
    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    "init_args": {
        "num_cpus": 1,
        "num_gpus": 0,
        "include_dashboard": False,
        "logging_level": "ERROR",
        "log_to_driver": False,
    },
}


def make_shards(
    images: torch.Tensor, labels: torch.Tensor, num_clients: int, shard_size: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
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
        raise ValueError(
            f"{num_clients} shards of {shard_size} images need {num_clients * shard_size} images, got {images.shape[0]}"
        )
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    chosen = order[: num_clients * shard_size]
    as_bytes = (images[chosen] * 255).round().clamp(0, 255).to(torch.uint8)
    if not torch.equal(as_bytes.float() / 255, images[chosen]):
        raise ValueError(
            "the shards keep images as 8-bit values: expected images in [0, 1] that are multiples of "
            "1/255, as the data module loads them"
        )
    rows = torch.arange(num_clients * shard_size).view(num_clients, shard_size)
    return [(as_bytes[idx], labels[chosen][idx]) for idx in rows]


def client_batch(
    shard: tuple[torch.Tensor, torch.Tensor], server_round: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
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
    routes: Mapping[str, Sequence[Callable]] | None = None,
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
        mods: Flower mods around the client's train function, e.g. ``[fixedclipping_mod]`` or
            ``[LocalDpMod(...)]`` (:meth:`DPConfig.mods` gives them).
        routes: more names for the same train function, each with its own mods, as Flower
            routes messages: a message of type ``"train.<name>"`` reaches the function registered
            as ``@app.train("<name>", mods=...)`` (:class:`Routed` sends them). One simulation can
            so run several DP options (:func:`run_deployments`).
        seed: seeds the NumPy noise of the mods, per round and client, unless the train config
            carries its own ``"seed"``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for name in routes or {}:
        if not name.isidentifier():
            raise ValueError(f"a route's name must be a Python identifier (Flower's rule for actions), got {name!r}")
    app = ClientApp()

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
        _seed_numpy(int(config.get(SEED_KEY, seed)), server_round, client)  # for the mods that run after this function
        content = {
            "arrays": ArrayRecord(state),
            "metrics": MetricRecord({NUM_EXAMPLES_KEY: batch_size}),
            SHARED_KEY: shared,
        }
        return Message(RecordDict(content), reply_to=msg)

    app.train(mods=list(mods))(train)
    for name, route_mods in (routes or {}).items():
        app.train(name, mods=list(route_mods))(train)
    return app


def recover_gradient(
    model: nn.Module, sent: dict[str, np.ndarray], returned: dict[str, np.ndarray], lr: float
) -> tuple[torch.Tensor, ...]:
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
                raise ValueError(
                    f"the {which} parameters lack {name!r}: they do not match the model "
                    f"(expected keys {[n for n, _ in fl._named_trainable(model)]}, got {list(arrays)})"
                )
            if tuple(arrays[name].shape) != tuple(p.shape):
                raise ValueError(
                    f"the {which} parameter {name!r} has shape {tuple(arrays[name].shape)} but the "
                    f"model's has shape {tuple(p.shape)}: the update does not match the model"
                )
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
        dp: the DP option the deployment runs, if the server knows it (the protocol is public):
            its records (:meth:`DPConfig.records`) go into each update's ``defense``, so that an
            attack can adapt to them.
        keep: keep every :class:`Received` in :attr:`received`.
        on_receive: called with each :class:`Received`, before aggregation.

    Replies that carry an error (a client that failed) are not kept; they are listed in
    :attr:`errors`, as ``(round, node id, error)``.
    """

    def __init__(
        self,
        strategy: Strategy,
        model: nn.Module,
        *,
        dp: DPConfig | None = None,
        keep: bool = True,
        on_receive: Callable[[Received], None] | None = None,
    ):
        self.strategy = strategy
        self.template = copy.deepcopy(model).cpu()
        self.dp = dp
        self.keep = keep
        self.on_receive = on_receive
        self.received: list[Received] = []
        self.errors: list[tuple[int, int, str]] = []
        self._instructions: dict[tuple[int, int], tuple[dict[str, np.ndarray], dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"CuriousStrategy({self.strategy!r})"

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
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

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Keep each reply as a :class:`Received`, then forward the replies, unchanged, to ``strategy``.

        Raises:
            ValueError: a reply whose parameters do not match the model or what was sent (other
                keys or shapes, NaN or inf), or that answers no instruction this wrapper saw.
        """
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                self.errors.append((server_round, reply.metadata.src_node_id, str(reply.error)))
            else:
                self._receive(server_round, reply)
        return self.strategy.aggregate_train(server_round, replies)

    def _receive(self, server_round: int, reply: Message) -> None:
        node_id = reply.metadata.src_node_id
        if (server_round, node_id) not in self._instructions:
            raise ValueError(
                f"a reply from node {node_id} in round {server_round} answers no train instruction "
                "that passed through this wrapper: call configure_train through it"
            )
        sent, config = self._instructions.pop((server_round, node_id))
        if LR_KEY not in config:
            raise ValueError(
                f"the train config sent in round {server_round} has no {LR_KEY!r} (keys: {list(config)}): "
                "the gradient is recovered as (w_sent - w_returned) / lr"
            )
        returned = {k: v.numpy() for k, v in _only(reply.content.array_records, "ArrayRecord").items()}
        expected = set(self.template.state_dict())
        if set(returned) != expected:
            raise ValueError(
                f"node {node_id}'s reply in round {server_round} holds parameters "
                f"{sorted(returned)}, but the model has {sorted(expected)}: it does not match the model"
            )
        lr = float(config[LR_KEY])
        gradients = recover_gradient(self.template, sent, returned, lr)
        metrics = dict(_only(reply.content.metric_records, "MetricRecord"))
        shared = dict(reply.content.config_records.get(SHARED_KEY, {}))
        labels = shared.get("labels")
        update = fl.SharedUpdate(
            gradients=gradients,
            batch_size=int(metrics[NUM_EXAMPLES_KEY]) if NUM_EXAMPLES_KEY in metrics else None,
            labels=None if labels is None else torch.tensor(labels, dtype=torch.int64),
            defense=self.dp.records(lr) if self.dp is not None else (),
        )
        update.check_matches(self.template)  # NaN / inf
        received = Received(
            server_round=server_round,
            node_id=node_id,
            client=shared.get("client"),
            sent=sent,
            returned=returned,
            config=config,
            num_examples=int(metrics.get(NUM_EXAMPLES_KEY, 0)),
            metrics={k: v for k, v in metrics.items() if k != NUM_EXAMPLES_KEY},
            update=update,
            template=self.template,
        )
        if self.keep:
            self.received.append(received)
        if self.on_receive is not None:
            self.on_receive(received)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


class Routed(Strategy):
    """A strategy wrapper that sends ``strategy``'s train instructions as Flower message type ``train.<action>``.

    Flower routes a message of that type to the client function registered as
    ``@app.train("<action>", mods=...)`` (:func:`client_app`'s ``routes``), so one federation
    can run several deployments with different client mods, one after another, in one
    simulation. Everything else is forwarded unchanged.
    """

    def __init__(self, strategy: Strategy, action: str):
        if not action.isidentifier():
            raise ValueError(f"an action must be a Python identifier (Flower's rule), got {action!r}")
        self.strategy = strategy
        self.action = action

    def __repr__(self) -> str:
        return f"Routed({self.strategy!r}, {self.action!r})"

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        for msg in messages:
            msg.metadata.message_type = f"{MessageType.TRAIN}.{self.action}"
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
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
            return DifferentialPrivacyServerSideFixedClipping(
                strategy, self.noise_multiplier, self.clipping_norm, num_sampled_clients
            )
        if self.kind == "client_clip":
            return DifferentialPrivacyClientSideFixedClipping(
                strategy, self.noise_multiplier, self.clipping_norm, num_sampled_clients
            )
        return strategy

    def records(self, lr: float) -> tuple[fl.DefenseRecord, ...]:
        """What this option does to an update before the curious strategy gets it, in gradient units
        (the bound ``S / lr``, the noise ``sigma / lr``): the public settings, as
        :class:`~gi_tutorial.fl.DefenseRecord` s. The central noise is added after the strategy
        aggregated, so it is not among them."""
        if self.kind in ("server_clip", "client_clip"):
            by = "the server" if self.kind == "server_clip" else "the client (fixedclipping_mod)"
            return (fl.DefenseRecord("clip", {"max_norm": float(self.clipping_norm) / lr, "by": by}),)
        if self.kind == "local":
            return (
                fl.DefenseRecord(
                    "local_gaussian",
                    {
                        "clip": float(self.clipping_norm) / lr,
                        "sigma": self.local_sigma / lr,
                        "noise_multiplier": self.local_sigma / float(self.clipping_norm),
                        "by": "the client (LocalDpMod)",
                    },
                ),
            )
        return ()

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
        against_server: the epsilon that binds the server, which receives each client's update
            and knows who sent it: for ``"local"`` the replace-one epsilon over the rounds,
            unamplified; ``inf`` for the central options (the server holds each clipped update
            before it adds any noise) and without DP.
    """

    epsilon: float
    delta: float
    rounds: int
    adjacency: Adjacency
    epsilon_per_round: float | None
    sampling: str
    protects: str
    against_server: float


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
        return Privacy(math.inf, dp.delta, rounds, adjacency or "add_remove", None, sampling, "nothing", math.inf)
    if dp.kind == "local":
        z = dp.local_sigma / dp.clipping_norm
        eps = defenses.epsilon(z, 1.0, rounds, dp.delta, adjacency=adjacency or "replace_one")
        server = defenses.epsilon(z, 1.0, rounds, dp.delta, adjacency="replace_one")
        return Privacy(
            eps,
            dp.delta,
            rounds,
            adjacency or "replace_one",
            float(dp.epsilon),
            sampling,
            "the client against the server, and the released model",
            server,
        )
    adjacency = adjacency or "add_remove"
    eps = defenses.epsilon(dp.noise_multiplier, 1.0, rounds, dp.delta, adjacency=adjacency)
    return Privacy(
        eps,
        dp.delta,
        rounds,
        adjacency,
        None,
        sampling,
        "the released model only: the server holds each clipped update before it adds the noise",
        math.inf,
    )


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    r"""The exact epsilon of one Gaussian mechanism at ``delta``: the analytic Gaussian mechanism.

    Noise of standard deviation ``sigma`` on a value of sensitivity ``Delta`` is
    :math:`(\varepsilon, \delta)`-DP exactly when (Balle and Wang, 2018, "Improving the Gaussian
    Mechanism for Differential Privacy", Theorem 8), with :math:`r = \Delta / \sigma` = ``1 / noise_multiplier``,

    .. math::

        \Phi\big(\tfrac{r}{2} - \tfrac{\varepsilon}{r}\big)
        - e^{\varepsilon}\,\Phi\big(-\tfrac{r}{2} - \tfrac{\varepsilon}{r}\big) \le \delta .

    This returns the smallest such epsilon (by bisection, to 1e-9). The classic calibration
    :math:`\sigma = \Delta \sqrt{2 \ln(1.25/\delta)} / \varepsilon` that ``LocalDpMod`` uses
    is proven only for :math:`\varepsilon < 1` (Dwork and Roth, 2014, Theorem A.1): this says
    what its noise gives at any epsilon.

    >>> round(gaussian_epsilon(1.0, 1e-5), 3)
    4.377

    Raises:
        ValueError: a noise multiplier that is not positive, or ``delta`` outside (0, 1).
    """
    if not (isinstance(noise_multiplier, (int, float)) and noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise ValueError(f"the noise multiplier must be a positive number, got {noise_multiplier!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    r = 1.0 / noise_multiplier

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def excess(eps: float) -> float:  # the mechanism's delta at eps, minus the target; falls as eps grows
        tail = math.exp(eps + math.log(phi(-r / 2 - eps / r))) if phi(-r / 2 - eps / r) > 0 else 0.0
        return phi(r / 2 - eps / r) - tail - delta

    if excess(0.0) <= 0:
        return 0.0
    low, high = 0.0, 1.0
    while excess(high) > 0:
        low, high = high, 2 * high
    while high - low > 1e-9:
        mid = (low + high) / 2
        low, high = (mid, high) if excess(mid) > 0 else (low, mid)
    return high


def calibrate(
    kind: DPKind, *, clipping_norm: float, rounds: int, target_epsilon: float = 8.0, delta: float = 1e-5
) -> DPConfig:
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
        raise ValueError(
            f"Flower accounts for its central wrappers with noise only, got {dp.kind!r} "
            f"with noise multiplier {dp.noise_multiplier}"
        )
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=dp.delta,
            population_size=num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    accountant.compose(GaussianPrivacyEvent(dp.noise_multiplier, num_clients, num_clients), count=rounds)
    return accountant.get_epsilon(dp.delta)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """The share of ``images`` the model classifies as ``labels``."""
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
            for i in range(0, images.shape[0], batch_size)
        )
    return correct / images.shape[0]


@dataclass
class ServerOutcome:
    """What one deployment of a :func:`server_app` leaves behind once it ran."""

    model: nn.Module  # the global model: the initial one, then the final one
    accuracy: dict[int, float] = field(default_factory=dict)  # round (0: before training) -> test accuracy
    seconds: float = math.nan  # the server's time for this deployment's rounds (the clients' included)
    finished: bool = False


def server_app(
    runs: Sequence[tuple[Strategy, nn.Module, int]],
    *,
    num_rounds: int,
    lr: float,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[ServerApp, list[ServerOutcome]]:
    """A Flower ``ServerApp`` that runs deployments one after another, each ``num_rounds`` FedSGD rounds at ``lr``.

    Each run is ``(strategy, initial model, seed)``: the app seeds Python's and NumPy's global
    generators with ``seed`` (Flower samples nodes with the one and draws central DP noise
    from the other), starts ``strategy`` from the model's weights with the train config
    ``{"lr": lr, "seed": seed}``, and measures the global model's accuracy on ``test`` before
    the first round and after the last.

    Returns:
        the app, and one :class:`ServerOutcome` per run, filled when the app runs (in this
        process: the simulation engine runs the ServerApp in a thread).
    """
    outcomes = [ServerOutcome(model=copy.deepcopy(model).cpu()) for _, model, _ in runs]
    app = ServerApp()

    def evaluator(outcome: ServerOutcome) -> Callable[[int, ArrayRecord], MetricRecord | None]:
        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            outcome.model.load_state_dict(arrays.to_torch_state_dict())
            if test is None or server_round not in (0, num_rounds):  # the rounds between: not needed here
                return None
            outcome.accuracy[server_round] = accuracy(outcome.model, *test)
            return MetricRecord({"accuracy": outcome.accuracy[server_round]})

        return evaluate

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        set_threads()
        for (strategy, _, seed), outcome in zip(runs, outcomes):
            random.seed(seed)
            _seed_numpy(seed)
            start = time.perf_counter()
            strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(outcome.model.state_dict()),
                num_rounds=num_rounds,
                train_config=ConfigRecord({LR_KEY: float(lr), SEED_KEY: int(seed)}),
                evaluate_fn=evaluator(outcome),
            )
            outcome.seconds, outcome.finished = time.perf_counter() - start, True

    return app, outcomes


def fedsgd_strategy(num_clients: int) -> FedAvg:
    """Flower's ``FedAvg`` as FedSGD's server: every client every round, no client-side evaluation.

    With one gradient step per client and equal batch sizes, averaging the returned
    parameters takes exactly the step of the averaged gradient (:func:`gi_tutorial.fl.server_step`).
    """
    with _flower_log(logging.ERROR):  # not its warning that client-side evaluation is off: that is the point
        return FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=num_clients,
            min_evaluate_nodes=0,
            min_available_nodes=num_clients,
        )


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


def simulate(
    server: ServerApp, client: ClientApp, num_supernodes: int, *, backend_config: dict | None = None, quiet: bool = True
) -> float:
    """Run a federation in Flower's simulation engine (Ray); return its wall time in seconds.

    ``backend_config`` defaults to :data:`CHEAP_BACKEND` (one Ray actor on one CPU). ``quiet``
    shows only Flower's warnings and errors (its per-round log otherwise), and not its notice
    that ``run_simulation`` is deprecated in favour of the ``flwr run`` command: that command
    runs the apps in other processes, and the book needs what the server kept back in this one.
    """
    from flwr.simulation import run_simulation

    start = time.perf_counter()
    with _flower_log(logging.ERROR if quiet else logging.getLogger("flwr").level), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="ray")  # Ray's notice about GPU variables
        run_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=num_supernodes,
            backend_config=copy.deepcopy(backend_config or CHEAP_BACKEND),
        )
    return time.perf_counter() - start


@dataclass
class Deployment:
    """One finished deployment: a DP option and a seed, simulated.

    Attributes:
        dp: the DP option it ran under.
        seed: the victim's initialisation (:func:`gi_tutorial.models.build_model`), the DP noise
            and Flower's node sampling.
        received: what the curious server kept, per client and round (:class:`Received`).
        accuracy: the global model's test accuracy before the first round (0) and after the last.
        model: the final global model.
        shards: each client's private data (for scoring only: the server never saw it).
        batch_size: images per client and round.
        seconds: the server's time for its rounds, clients included (Ray's start is not in it:
            see :attr:`Simulation.seconds`).
    """

    dp: DPConfig
    seed: int
    received: list[Received]
    accuracy: dict[int, float]
    model: nn.Module
    shards: list[tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    batch_size: int
    seconds: float

    def truth(self, received: Received) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's true batch behind a :class:`Received` (for scoring an attack, never for the attack)."""
        if received.client is None:
            raise ValueError("this reply does not name its client, so its batch cannot be looked up")
        return client_batch(self.shards[received.client], received.server_round, self.batch_size)

    def reply(self, client: int, server_round: int = 1) -> Received:
        """What the server received from ``client`` in ``server_round``.

        Raises:
            ValueError: no such reply was kept.
        """
        for r in self.received:
            if r.client == client and r.server_round == server_round:
                return r
        raise ValueError(
            f"no reply of client {client} in round {server_round} was kept "
            f"(kept: {sorted((r.client, r.server_round) for r in self.received)})"
        )


@dataclass
class Simulation:
    """Several deployments run in one simulation (:func:`run_deployments`).

    Attributes:
        deployments: in the order they ran.
        seconds: the whole simulation's wall time, Ray's start and stop included.
        first_reply: seconds from the simulation's start to the first reply the server received:
            Ray's start, its actor's (a Python process that imports torch), and one client's step.
        versions: of Flower and Ray.
    """

    deployments: list[Deployment]
    seconds: float
    first_reply: float
    versions: dict[str, str]

    def get(self, kind: DPKind, seed: int) -> Deployment:
        """The deployment of a DP option (by kind) and a seed.

        Raises:
            ValueError: none ran.
        """
        for d in self.deployments:
            if d.dp.kind == kind and d.seed == seed:
                return d
        raise ValueError(
            f"no deployment of {kind!r} with seed {seed} ran; ran {[(d.dp.kind, d.seed) for d in self.deployments]}"
        )


def versions() -> dict[str, str]:
    """The versions of Flower and Ray installed here."""
    from importlib.metadata import version

    return {"flwr": version("flwr"), "ray": version("ray")}


def run_deployments(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    options: Sequence[DPConfig] = (),
    seeds: Sequence[int] = (0,),
    num_clients: int = 2,
    num_rounds: int = 1,
    victim: str = "convnet_fc",
    batch_size: int = 4,
    shard_size: int | None = None,
    lr: float = 0.1,
    shard_seed: int = 0,
    backend_config: dict | None = None,
    quiet: bool = True,
    engine: Callable[[ServerApp, ClientApp, int], float] | None = None,
) -> Simulation:
    """Simulate one federation under each DP option and seed, all in one run of Flower's simulation engine.

    The federation: ``num_clients`` FedSGD clients, each with a private shard of ``train``
    (``shard_size`` images, default ``num_rounds * batch_size``, so a new batch every round;
    the shards are drawn once, with ``shard_seed``), every client in every round, Flower's
    ``FedAvg`` on the server with a :class:`CuriousStrategy` directly on it, under the
    option's DP wrapper. The deployments run one after another, option by option and seed by
    seed, each from the victim initialised with its seed; each sends its train instructions
    under the option's name (:class:`Routed`), and the clients answer with that option's mods.
    Ray starts once, for all of them: it costs seconds each time (:attr:`Simulation.first_reply`).

    Args:
        train, test: ``(images, labels)``: the clients' data; held-out images for accuracy.
        options: the DP options (:func:`calibrate`), one of each kind at most; default: no DP.
        seeds: each option runs once per seed.
        num_clients, num_rounds: the federation.
        victim: the model (:func:`gi_tutorial.models.build_model` name).
        batch_size, lr: FedSGD's batch per client and round, and learning rate.
        shard_seed: which images each client holds.
        backend_config, quiet: see :func:`simulate`.
        engine: what runs the apps, ``engine(server_app, client_app, num_supernodes) -> seconds``;
            default :func:`simulate` (Flower's simulation engine on Ray) with ``backend_config``
            and ``quiet``. (The tests pass one that calls the apps in this process.)

    Raises:
        ValueError: too few images for the shards, two options of one kind, or no seeds.
        RuntimeError: a client failed, or the server did not finish (Flower's error is in the message).
    """
    options = list(options) or [DPConfig()]
    kinds = [dp.kind for dp in options]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"one option of each kind at most (the kind names the clients' route), got {kinds}")
    if not seeds:
        raise ValueError("run_deployments needs at least one seed")
    images, labels = train
    shards = make_shards(images, labels, num_clients, shard_size or num_rounds * batch_size, seed=shard_seed)
    replies: list[float] = []  # when each reply reached the server

    def note(_: Received) -> None:
        replies.append(time.perf_counter())

    keys = [(dp, seed) for dp in options for seed in seeds]
    spies, plans = [], []
    for dp, seed in keys:
        model = models.build_model(victim, in_channels=images.shape[1], seed=seed)
        spies.append(CuriousStrategy(fedsgd_strategy(num_clients), model, dp=dp, on_receive=note))
        plans.append((Routed(dp.wrap(spies[-1], num_clients), dp.kind), model, seed))
    server, outcomes = server_app(plans, num_rounds=num_rounds, lr=lr, test=test)
    client = client_app(
        shards,
        victim=victim,
        in_channels=images.shape[1],
        batch_size=batch_size,
        routes={dp.kind: dp.mods() for dp in options},
    )
    start = time.perf_counter()
    if engine is None:
        seconds = simulate(server, client, num_clients, backend_config=backend_config, quiet=quiet)
    else:
        seconds = engine(server, client, num_clients)
    errors = [(dp.kind, seed, error) for (dp, seed), spy in zip(keys, spies) for error in spy.errors]
    if errors:
        raise RuntimeError(
            f"{len(errors)} client replies carried an error; the first (option, seed, "
            f"(round, node, error)): {errors[0]}"
        )
    if not all(o.finished for o in outcomes):
        raise RuntimeError("the simulation ended before the server finished its rounds: see Flower's log above")
    deployments = [
        Deployment(
            dp=dp,
            seed=seed,
            received=spy.received,
            accuracy=o.accuracy,
            model=o.model,
            shards=shards,
            batch_size=batch_size,
            seconds=o.seconds,
        )
        for (dp, seed), spy, o in zip(keys, spies, outcomes)
    ]
    return Simulation(deployments, seconds, replies[0] - start if replies else math.nan, versions())


def run_deployment(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    dp: DPConfig | None = None,
    seed: int = 0,
    **federation: Any,
) -> Deployment:
    """One deployment (one DP option, one seed) in its own simulation: :func:`run_deployments` for one."""
    return run_deployments(train, test, options=[dp or DPConfig()], seeds=[seed], **federation).deployments[0]


@dataclass(frozen=True)
class Inspection:
    """What the server received from one client, against the client's true gradient (for scoring only).

    Attributes:
        norm: the received update's norm, in gradient units (``||w_sent - w_returned|| / lr``).
        true_norm: the norm of the client's true gradient on its batch.
        bound: the option's clip bound in gradient units (``S / lr``; None without clipping).
        clipped: the true gradient was longer than the bound, so the protocol scaled it down.
        distance: ``||received - true|| / ||true||``.
        clipped_distance: the same against the true gradient clipped to the bound: 0 (up to
            float32 rounding) when the server got the clipped update unnoised.
        cosine: between the received and the true gradient (what cosine-distance attacks match).
    """

    norm: float
    true_norm: float
    bound: float | None
    clipped: bool
    distance: float
    clipped_distance: float
    cosine: float

    @property
    def noised(self) -> bool:
        """The received update differs from the (clipped) true one by more than rounding: noise was added."""
        return self.clipped_distance > 1e-3


def inspect(deployment: Deployment, received: Received) -> Inspection:
    """Compare what the server received with the gradient the client computed (recomputed from its data)."""
    x, y = deployment.truth(received)
    true = torch.cat([g.flatten() for g in fl.client_update(received.model(), x, y).gradients]).double()
    got = torch.cat([g.flatten() for g in received.update.gradients]).double()
    lr = float(received.config[LR_KEY])
    bound = float(deployment.dp.clipping_norm) / lr if deployment.dp.clipping_norm else None
    true_norm = float(true.norm())
    clipped = bound is not None and true_norm > bound
    reference = true * (bound / true_norm) if clipped else true
    return Inspection(
        norm=float(got.norm()),
        true_norm=true_norm,
        bound=bound,
        clipped=clipped,
        distance=float((got - true).norm() / true.norm()),
        clipped_distance=float((got - reference).norm() / reference.norm()),
        cosine=float(torch.nn.functional.cosine_similarity(got, true, dim=0)),
    )


def attack_budget() -> Any:
    """Chapter 7's attack budgets (those of chapter 6, the defenses chapter), an :class:`gi_tutorial.attacks.Budget`.

    A function, so that importing this module does not import the attacks (and torchmetrics):
    the simulation's Ray worker imports this module before its first client can answer.
    """
    from .attacks import Budget

    return Budget(x_iters=300, z_iters=100, z_restarts=2, w_iters=150)


ATTACKS = ("GI-x", "GIAS")  # the attacks a verdict takes the strongest of, per update
FLOORS = ("label only", "prior sample")  # the no-gradient guesses (gi_tutorial.attacks.floors("dcgan"))
MARGINS = {"identified": 0.05, "psnr": 1.0}  # "ahead" means ahead by more than this (5 points, 1 dB)
UNITS = {"identified": ("", "{:.0%}"), "psnr": (" dB", "{:.1f}")}
Verdict = Literal["leaks", "at the floor", "unclear"]
# Chapter 7's verdicts (benchmarks/verify_ch7.py checks them on held-out clients and seeds): against the server,
# the central options protect nothing, local noise brings the attack down to what no gradient gives.
CLAIMS: dict[str, Verdict] = {"none": "leaks", "server_clip": "leaks", "client_clip": "leaks", "local": "at the floor"}


LABELS: dict[str, str] = {  # how chapter 7 names the options
    "none": "no DP",
    "server_clip": "server-side clipping",
    "client_clip": "client-side clipping",
    "local": "LocalDpMod",
}


def received_tally(simulation: Simulation, labels: Mapping[str, str] = LABELS) -> stats.Tally:
    """What the server received, reply by reply (:func:`inspect`): keyed by option (its label), seed, client and
    round, with ``clipped`` and ``noised`` (0 or 1), ``distance``, ``clipped_distance`` and ``cosine``."""
    received = stats.Tally(("option", "seed", "client", "round"))
    for d in simulation.deployments:
        for r in d.received:
            seen = inspect(d, r)
            received.add(
                option=labels[d.dp.kind],
                seed=d.seed,
                client=r.client,
                round=r.server_round,
                clipped=float(seen.clipped),
                noised=float(seen.noised),
                distance=seen.distance,
                clipped_distance=seen.clipped_distance,
                cosine=seen.cosine,
            )
    return received


def privacy_rows(guarantees: Mapping[str, Privacy], labels: Mapping[str, str] = LABELS) -> list[dict[str, str]]:
    """Per option, its guarantee as text: ε over the rounds, the adjacency, ε against the server, whom it protects."""

    def eps(value: float) -> str:
        return "∞ (none)" if math.isinf(value) else f"{value:.2f}"

    adjacency = {"add_remove": "add/remove", "replace_one": "replace-one"}
    return [
        {
            "option": labels[kind],
            "eps": eps(g.epsilon),
            "adjacency": adjacency[g.adjacency] if kind != "none" else "–",
            "server": eps(g.against_server),
            "protects": g.protects,
        }
        for kind, g in guarantees.items()
    ]


@dataclass(frozen=True)
class Protection:
    """Whether the server's attack got more than the floors, under one DP option, on both scores.

    Attributes:
        option: the DP option's kind.
        verdict: ``"leaks"``: the strongest attack beats the best floor by more than the margin
            (:data:`MARGINS`) on average and in every update, on both identification and PSNR;
            ``"at the floor"``: on neither score is it ahead of the best floor by more than the
            margin on average; ``"unclear"``: anything between.
        paired: per score, the strongest attack against the best floor, update by update.
        sentences: per score, the comparison in words (:func:`gi_tutorial.stats.compare`).
    """

    option: str
    verdict: Verdict
    paired: dict[str, stats.Paired]
    sentences: dict[str, str]


def protection(
    tally: stats.Tally,
    option: str,
    *,
    attack_names: Sequence[str] = ATTACKS,
    floor_names: Sequence[str] = FLOORS,
    **where: Any,
) -> Protection:
    """The verdict on one DP option from a tally of battery rows keyed by ``option``, ``method`` and the update.

    Per update (the tally's other keys), the strongest of ``attack_names`` (the defender's view:
    judge a defense by the best attack) against the best of ``floor_names``, on each score.

    Raises:
        ValueError: a method is missing for some update.
    """
    paired, sentences = {}, {}
    for metric, margin in MARGINS.items():
        mine = tally.select(option=option, **where)
        others = [k for k in tally.keys if k not in ("method", "option")]
        updates: dict[tuple, dict[str, float]] = {}
        for row in mine.rows:
            updates.setdefault(tuple(row[k] for k in others), {})[row["method"]] = row[metric]
        missing = [u for u, scores in updates.items() if not set(attack_names) | set(floor_names) <= set(scores)]
        if not updates or missing:
            raise ValueError(
                f"option {option!r}: every update needs rows of {list(attack_names) + list(floor_names)}; "
                f"{'no updates' if not updates else f'missing for {missing[:3]}'}"
            )
        best = stats.Tally(("update", "method"))  # per update, the best of each side: a claim on them
        for update, scores in updates.items():
            best.add(update=update, method="the strongest attack", **{metric: max(scores[m] for m in attack_names)})
            best.add(update=update, method="the best floor", **{metric: max(scores[m] for m in floor_names)})
        claim = claims.Claim("the strongest attack", "the best floor", metric, margin)
        paired[metric], sentences[metric] = claim.paired(best), claim.sentence(best)
    if all(claims.outcome(p) == "ahead" for p in paired.values()):
        verdict: Verdict = "leaks"
    elif all(p.gap.mean <= p.margin for p in paired.values()):
        verdict = "at the floor"
    else:
        verdict = "unclear"
    return Protection(option, verdict, paired, sentences)


VERDICT_WORDS: dict[str, str] = {
    "leaks": "the attacks beat the floors on both scores: the client's images leak to the server",
    "at the floor": "the attacks get no more than the floors on either score: the server learns nothing "
    "the labels did not tell it",
    "unclear": "the two scores disagree: no verdict",
}


def _listing(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def verdict_lines(verdicts: Mapping[str, Protection], labels: Mapping[str, str]) -> str:
    """One Markdown bullet per option: its verdict in words, with both scores' comparisons."""
    return "\n".join(
        f"- **{labels[kind]}**: {VERDICT_WORDS[v.verdict]} (identification: {v.sentences['identified']}; "
        f"PSNR: {v.sentences['psnr']})."
        for kind, v in verdicts.items()
    )


def verdict_sentence(verdicts: Mapping[str, Protection], labels: Mapping[str, str]) -> str:
    """Which options brought the server's attacks down to the floors, and under which the images leaked."""
    found = {v: [labels[k] for k, p in verdicts.items() if p.verdict == v] for v in VERDICT_WORDS}
    floor = found["at the floor"]
    parts = [
        f"{'only ' if len(floor) < len(verdicts) else ''}{_listing(floor)} brought the attacks down to the floors"
        if floor
        else "no option brought the attacks down to the floors"
    ]
    parts += [f"under {_listing(found['leaks'])} the client's images leaked"] if found["leaks"] else []
    parts += [f"{_listing(found['unclear'])} gave no verdict"] if found["unclear"] else []
    return "against the server, " + "; ".join(parts)


def largest_gap(
    tally: stats.Tally, metric: str, baseline: str, options: Sequence[str], methods: Sequence[str] = ATTACKS
) -> float:
    """The largest difference in ``metric`` between an attack under ``baseline`` and under any of ``options``.

    Paired row by row (the tally's rows of one option and method, in the order they were added:
    the same seeds and updates under every option).

    Raises:
        ValueError: an option has another number of rows than the baseline.
    """
    gaps = []
    for option in options:
        for method in methods:
            a = tally.values(metric, option=baseline, method=method)
            b = tally.values(metric, option=option, method=method)
            if len(a) != len(b) or not a:
                raise ValueError(f"{method}: {len(a)} rows under {baseline!r} but {len(b)} under {option!r}")
            gaps += [abs(x - y) for x, y in zip(a, b)]
    return max(gaps)
