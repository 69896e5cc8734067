"""Every topic name paystream's code uses, in one place.

`ops/topics.toml` declares the topics (partitions, schemas, retention); these are
the names code refers to, and a unit test keeps the two in step. Changelog topics
are Quix's and named after the consumer group and inputs (pipelines/ledger/app.py).
"""

from __future__ import annotations

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
