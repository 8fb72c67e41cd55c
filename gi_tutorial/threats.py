"""Threat models: what the attacker knows, named and checked.

An attack is only meaningful under a stated threat model. The book's attacker is the
honest-but-curious server of federated learning; what it knows besides the model and the
update decides which attacks it can run. We use the names of the SoK by Carletti et al.
(2025), whose passive threat models A-E add knowledge step by step:

- **A, eavesdropper**: the update only.
- **B, informed eavesdropper**: the update and the model (architecture and weights).
- **C, parameter-aware eavesdropper**: B and the training details: the batch size, the
  learning rate, and here the labels (shared by the protocol, or recovered exactly from the
  last layer's bias gradient, chapter 1).
- **D, data-enhanced eavesdropper**: C and surrogate data, i.e. data from the clients'
  distribution: a generator trained on such data (GI-z, GIAS), or class means of a public
  sample (the label-only floor).
- **E, statistics-informed eavesdropper**: D and statistics of the client's own batch: the
  BatchNorm batch statistics (Yin et al., 2021).

What the update carries (batch size, labels, BatchNorm statistics) is read from the
:class:`~gi_tutorial.fl.SharedUpdate` itself; what the attacker holds on its own side
(surrogate data) comes from the threat model the caller states. Search spaces and priors
declare what they require (``requires``), and :func:`check` refuses an attack whose threat
model does not provide it, naming what is missing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Knowledge(enum.Flag):
    """What an attacker may know besides the model and the update."""

    NONE = 0
    BATCH_SIZE = enum.auto()  # how many images are behind the update
    LABELS = enum.auto()  # the client's labels (shared, or recovered from the gradient)
    SURROGATE_DATA = enum.auto()  # data from the clients' distribution (a generator trained on it, a public sample)
    BN_STATISTICS = enum.auto()  # the BatchNorm statistics of the client's batch


_DESCRIPTIONS = {
    Knowledge.BATCH_SIZE: "the batch size",
    Knowledge.LABELS: "the labels",
    Knowledge.SURROGATE_DATA: "surrogate data from the clients' distribution (e.g. a generator trained on it)",
    Knowledge.BN_STATISTICS: "the BatchNorm statistics of the client's batch",
}


def describe(knowledge: Knowledge) -> str:
    """The pieces of ``knowledge`` in words, e.g. "the batch size, the labels".

    >>> describe(Knowledge.BATCH_SIZE | Knowledge.LABELS)
    'the batch size, the labels'
    """
    parts = [text for flag, text in _DESCRIPTIONS.items() if flag in knowledge]
    return ", ".join(parts) if parts else "nothing beyond the model and the update"


@dataclass(frozen=True)
class ThreatModel:
    """A named threat model: its id in Carletti et al. (2025), its name and what the attacker knows."""

    id: str
    name: str
    knows: Knowledge

    def __str__(self) -> str:
        return f"threat model {self.id} ({self.name}): the model, the update and {describe(self.knows)}"


EAVESDROPPER = ThreatModel("B", "informed eavesdropper", Knowledge.NONE)
PARAMETER_AWARE = ThreatModel("C", "parameter-aware eavesdropper", Knowledge.BATCH_SIZE | Knowledge.LABELS)
DATA_ENHANCED = ThreatModel(
    "D", "data-enhanced eavesdropper", Knowledge.BATCH_SIZE | Knowledge.LABELS | Knowledge.SURROGATE_DATA
)
STATISTICS_INFORMED = ThreatModel(
    "E",
    "statistics-informed eavesdropper",
    Knowledge.BATCH_SIZE | Knowledge.LABELS | Knowledge.SURROGATE_DATA | Knowledge.BN_STATISTICS,
)
THREAT_MODELS = {t.id: t for t in (EAVESDROPPER, PARAMETER_AWARE, DATA_ENHANCED, STATISTICS_INFORMED)}


def generator_requires(generator) -> Knowledge:
    """What searching through ``generator`` assumes the attacker has: surrogate data, unless the generator
    was learned without data (GIML learns it from gradients; an untrained one knows nothing).

    Reads ``generator.trained_on`` (``"data"``, ``"gradients"`` or ``"nothing"``, set by
    :mod:`gi_tutorial.generators`); a generator without it is taken to be trained on data.
    """
    return Knowledge.SURROGATE_DATA if getattr(generator, "trained_on", "data") == "data" else Knowledge.NONE


def threat_model_for(generator) -> ThreatModel:
    """D (data-enhanced) for a generator trained on data like the clients'; C for one learned from
    gradients (GIML) or untrained."""
    return DATA_ENHANCED if Knowledge.SURROGATE_DATA in generator_requires(generator) else PARAMETER_AWARE


def shared_by(update) -> Knowledge:
    """What a :class:`~gi_tutorial.fl.SharedUpdate` itself tells the server."""
    knowledge = Knowledge.NONE
    if update.batch_size is not None:
        knowledge |= Knowledge.BATCH_SIZE
    if update.labels is not None:
        knowledge |= Knowledge.LABELS
    if update.bn_statistics is not None:
        knowledge |= Knowledge.BN_STATISTICS
    return knowledge


def requirements(parts: Iterable[object]) -> Knowledge:
    """The union of the ``requires`` of a search space and priors (parts without one require nothing)."""
    needed = Knowledge.NONE
    for part in parts:
        needed |= getattr(part, "requires", Knowledge.NONE)
    return needed


def check(needed: Knowledge, available: Knowledge, threat_model: ThreatModel | None) -> None:
    """Raise ValueError, naming what is missing, unless ``available`` covers ``needed``.

    Raises:
        ValueError: the attack needs knowledge that neither the update nor the stated threat model gives.
    """
    missing = needed & ~available
    if missing:
        stated = str(threat_model) if threat_model is not None else "no threat model was stated (threat_model=None)"
        hint = (
            " State a threat model that gives it, e.g. threat_model=threats.DATA_ENHANCED for a generator "
            "trained on data like the clients'."
            if Knowledge.SURROGATE_DATA in missing
            else " Share it in the update (fl.client_update(..., share_bn_statistics=True))."
            if Knowledge.BN_STATISTICS in missing
            else ""
        )
        raise ValueError(f"this attack needs {describe(missing)}, which the attacker does not have: {stated}.{hint}")
