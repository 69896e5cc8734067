"""Every topic name paystream's code uses, in one place.

`ops/topics.toml` declares the topics (partitions, schemas, retention); these are
the names code refers to, and a unit test keeps the two in step. Changelog topics
are Quix's and named after the consumer group and inputs (pipelines/ledger/app.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

COMMANDS: Final = "payments.commands"  # transfers: the gateway and direct producers
PRIVILEGED: Final = "payments.privileged"  # money in/out and account status (docs/SECURITY.md)
LEGS: Final = "ledger.legs"  # the ledger to itself: credits, refunds, reversal checks
EVENTS: Final = "ledger.events"  # the journal everything downstream reads
FLOWS: Final = "fraud.flows"
ALERTS: Final = "fraud.alerts"
DECISIONS: Final = "fraud.decisions"
NOTIFICATIONS: Final = "notifications"
DLQ: Final = "paystream.dlq"

ALL: Final = (COMMANDS, PRIVILEGED, LEGS, EVENTS, FLOWS, ALERTS, DECISIONS, NOTIFICATIONS, DLQ)

# The ledger's inputs: one writer per account reads all three, so they always share one
# partition count. Growing that count starts a new *generation* of them (docs/PARTITIONS.md).
LEDGER_INPUTS: Final = (COMMANDS, PRIVILEGED, LEGS)
_GENERATION = re.compile(r"^(?P<base>.+)\.p(?P<partitions>[1-9][0-9]*)$")


def generation_name(base: str, partitions: int | None) -> str:
    """The name of `base` in the generation of `partitions` partitions: the original
    name for the first generation (None), else `<base>.p<partitions>`.

    The count is in the name so that a producer can never compute an account's
    partition with one count and write to a topic of another: a producer left on a
    stale count writes to a topic that does not exist (nothing is auto-created) or to
    the old generation, whose stragglers `paystream partitions grow` forwards."""
    if partitions is None:
        return base
    if partitions <= 0:
        raise ValueError(f"a generation needs a positive partition count, not {partitions}")
    return f"{base}.p{partitions}"


def generation_of(name: str) -> tuple[str, int | None]:
    """(base name, partition count) of a ledger input's name; (name, None) for the first generation."""
    m = _GENERATION.match(name)
    if m is None or m["base"] not in LEDGER_INPUTS:
        return name, None
    return m["base"], int(m["partitions"])


@dataclass(frozen=True, slots=True)
class LedgerTopics:
    """The ledger's input topics of one generation (`Settings.ledger_topics`)."""

    partitions: int | None
    commands: str
    privileged: str
    legs: str

    @property
    def command_topics(self) -> tuple[str, str]:
        return (self.commands, self.privileged)

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.commands, self.privileged, self.legs)


def ledger_topics(partitions: int | None) -> LedgerTopics:
    """The input topics of the generation of `partitions` (None: the first, ops/topics.toml's)."""
    return LedgerTopics(partitions, *(generation_name(t, partitions) for t in LEDGER_INPUTS))


def successors(existing: Iterable[str], current: LedgerTopics) -> list[str]:
    """Ledger input topics on the broker of a generation other than `current`'s and
    larger than it: a ledger or producer that finds one is running on a generation that
    was grown past, and must not write (a ledger would be a second writer)."""
    mine = current.partitions or 0
    out = []
    for name in existing:
        base, n = generation_of(name)
        if n is not None and base == COMMANDS and n > mine and name not in current.inputs:
            out.append(name)
    return sorted(out)


def in_generation(name: str, ledger: LedgerTopics) -> str:
    """`name` moved to `ledger`'s generation if it is a ledger input of any generation
    (an outbox row written before a switch goes to the generation its relay runs on);
    any other topic unchanged."""
    base, _ = generation_of(name)
    if base not in LEDGER_INPUTS:
        return name
    return generation_name(base, ledger.partitions)


def predecessors(existing: Iterable[str], current: LedgerTopics) -> list[LedgerTopics]:
    """Generations of the ledger's inputs on the broker before `current` (fewer
    partitions; the first generation has none in its name), newest first."""
    if current.partitions is None:
        return []
    counts: set[int | None] = set()
    for name in existing:
        base, n = generation_of(name)
        if base == COMMANDS and (n is None or n < current.partitions):
            counts.add(n)
    return [ledger_topics(n) for n in sorted(counts, key=lambda n: n or 0, reverse=True)]


def sealed_marker(current: LedgerTopics) -> str:
    """The metadata `paystream partitions grow` commits with the ledger group's offsets
    on the previous generation once that generation's state has moved to `current`: the
    new ledger starts only when it finds it (docs/PARTITIONS.md)."""
    return f"paystream-partitions-grow: state moved to {current.commands}"
