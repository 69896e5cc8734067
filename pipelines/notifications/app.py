"""Notifications (`paystream run notifications`): a Quix Streams app, exactly-once.

Consumes `ledger.events` (key = account), keeps each account's owner in state
(from ACCOUNT_OPENED), and emits a `Notification` keyed by the owner to
`notifications` for payments sent, received, failed and reversed and for
freezes and unfreezes (`pipelines.notifications.domain`). The notification,
the state and the input offset commit in one transaction, so each event yields
its notifications exactly once on the topic; webhook delivery from there on is
at-least-once with the same ids (docs/NOTIFICATIONS.md).

It also consumes `fraud.decisions` and tells the sender's owner that the review
of their payment was decided (`REVIEW_DECIDED`). That stream is stateless: the
decision carries the owner (fraud put it on the alert, the review kept it),
because `fraud.decisions` has 4 partitions and `ledger.events` 8, so
the owner state kept per account could not be shared without a re-keyed topic.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from quixstreams import Application
from quixstreams.state import State

from paystream import liveness, metrics, topics, tracing
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC
from paystream.records import ACCOUNT_OPENED
from paystream.settings import Settings, get_settings
from paystream.stream.quixapp import (
    Processor,
    Raw,
    Routed,
    apply_processor,
    build_application,
    inputs,
    route,
)
from pipelines.notifications.domain import decision_notification, kind_of, notification_for

EVENTS = topics.EVENTS
DECISIONS = topics.DECISIONS
NOTIFICATIONS = topics.NOTIFICATIONS
COMPONENT = "notifications"
OWNER_KEY = "o"

log = logging.getLogger("paystream.notifications")

NOTIFIED = metrics.local_counter("paystream_notifications_total", "notifications emitted", ["kind"])


class NotificationProcessor(Processor):
    component = COMPONENT

    def __init__(self, codec: Codec) -> None:
        super().__init__(codec, log)
        self.unknown_owner = 0

    def handle(self, topic: str, skey: str, ev: dict[str, Any], state: State, raw: Raw) -> list[Routed]:
        if ev["type"] == ACCOUNT_OPENED and not ev["replay"] and ev.get("account"):
            state.set(OWNER_KEY, ev["account"]["owner_id"])
            return []
        owner = state.get(OWNER_KEY)
        n = notification_for(owner, ev)
        if n is None:
            if owner is None and kind_of(ev) is not None:
                self.unknown_owner += 1
                if self.unknown_owner % 1000 == 1:
                    log.warning("no owner known for account %s (%s so far)", ev["account_id"],
                                self.unknown_owner)
            return []
        tracing.annotate(payment_id=ev.get("payment_id"), account=ev["account_id"])
        NOTIFIED.labels(n["kind"]).inc()
        # Codec.encode takes dict[str, Any], which a TypedDict is not assignable to.
        return [self.encode(NOTIFICATIONS, n["user_id"], cast("dict[str, Any]", n))]


class DecisionProcessor(Processor):
    """Review decisions -> REVIEW_DECIDED for the sender's owner (no state)."""

    component = COMPONENT

    def __init__(self, codec: Codec) -> None:
        super().__init__(codec, log)

    def handle(self, topic: str, skey: str, decision: dict[str, Any], state: None, raw: Raw) -> list[Routed]:
        n = decision_notification(decision)
        if n is None:
            log.warning("decision %s names no owner for account %s: nobody to tell",
                        decision["decision_id"], decision["sender_id"])
            return []
        tracing.annotate(payment_id=decision["payment_id"], account=decision["sender_id"])
        NOTIFIED.labels(n["kind"]).inc()
        # Codec.encode takes dict[str, Any], which a TypedDict is not assignable to.
        return [self.encode(NOTIFICATIONS, n["user_id"], cast("dict[str, Any]", n))]


def build_app(settings: Settings | None = None) -> Application:
    settings = settings or get_settings()
    app = build_application(settings, component=COMPONENT, instance=settings.notifications_instance,
                            commit_interval=settings.downstream_commit_interval)
    codec = Codec(settings.registry_url)
    sdf = apply_processor(inputs(app, EVENTS), NotificationProcessor(codec), COMPONENT)
    dsdf = apply_processor(inputs(app, DECISIONS), DecisionProcessor(codec), COMPONENT, stateful=False)
    route(app, sdf, [NOTIFICATIONS, DLQ_TOPIC], dsdf)
    return app


def run(settings: Settings | None = None) -> None:
    liveness.run_app(build_app(settings), COMPONENT)


if __name__ == "__main__":
    run()
