"""Webhook delivery against the real stack and real HTTP receivers: a slow endpoint
delays only its own deliveries, and a failing one is given up after the retry period
(the dead-letter record in Postgres), with every attempt recorded.

Notifications are produced straight to the `notifications` topic (Avro), as the
notifications pipeline would, so the worker is tested on its own."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from ops.lab.webhook_receiver import Receiver
from paystream import kafka
from paystream.codec import Codec
from paystream.settings import Settings
from tests.conftest import Component

pytestmark = pytest.mark.integration

MAX_AGE = 6.0  # the retry period, shortened from 3 days
WORKER = {"PAYSTREAM_WEBHOOK_BACKOFF_BASE_SECONDS": "0.2",
          "PAYSTREAM_WEBHOOK_BACKOFF_CAP_SECONDS": "1",
          "PAYSTREAM_WEBHOOK_MAX_AGE_SECONDS": str(MAX_AGE),
          "PAYSTREAM_WEBHOOK_ALLOW_PRIVATE_URLS": "true",
          "PAYSTREAM_WEBHOOK_INSTANCE": f"test-{os.getpid()}"}
SLOW_DELAY = 1.5
PER_USER = 8


@pytest.fixture(scope="module")
def webhooks(db: Settings, log_dir: Path) -> Iterator[Component]:
    comp = Component("webhooks", log_dir, env=WORKER).start()
    yield comp
    comp.stop()



def register(api: TestClient, settings: Settings, user: str, url: str) -> str:
    from gateway.security import issue_token

    headers = {"Authorization": f"Bearer {issue_token(settings, user, 'user')}"}
    r = api.post("/v1/webhooks", json={"url": url}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["endpoint_id"])


def notification(user: str) -> dict[str, Any]:
    return {"notification_id": str(uuid.uuid4()), "user_id": user, "kind": "PAYMENT_RECEIVED",
            "payment_id": str(uuid.uuid4()), "account_id": str(uuid.uuid4()), "amount": 1_234,
            "currency": "EUR", "reason": None, "source_event_id": str(uuid.uuid4()),
            "created_at": int(time.time() * 1000)}


def produce(settings: Settings, codec: Codec, notes: list[dict[str, Any]]) -> None:
    p = kafka.producer(settings)
    for n in notes:
        p.produce("notifications", key=n["user_id"].encode(),
                  value=codec.encode("notifications", n))
    assert p.flush(30) == 0


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_slow_endpoint_delays_only_itself_and_failing_one_is_given_up(stack, db, codec,
                                                                       webhooks, api):
    slow, failing = Receiver(delay=SLOW_DELAY), Receiver(failing_seconds=math.inf)
    fast = [Receiver() for _ in range(6)]
    users = {r: str(uuid.uuid4()) for r in [slow, failing, *fast]}
    for r, user in users.items():
        register(api, stack, user, r.url)
    notes = {r: [notification(user) for _ in range(PER_USER)] for r, user in users.items()}
    # the slow and the failing user's notifications first: they are not to hold the others up
    produce(stack, codec, notes[slow] + notes[failing] + [n for r in fast for n in notes[r]])

    want = {r: {n["notification_id"] for n in notes[r]} for r in users}
    wait_for(lambda: all(want[r] <= r.delivered() for r in fast), 120,
             "fast endpoints not all served")
    fast_done = max(q["done"] for r in fast for q in r.requests)
    slow_by_then = sum(1 for q in slow.requests if q["done"] <= fast_done)
    # one worker, 16 slots: the slow endpoint keeps one busy, the others go on
    assert slow_by_then < PER_USER // 2, (slow_by_then, "the slow endpoint held the others up")
    wait_for(lambda: want[slow] <= slow.delivered(), PER_USER * SLOW_DELAY + 60,
             "slow endpoint not fully served")
    assert slow.requests[-1]["done"] - fast_done > SLOW_DELAY * 2

    # the failing endpoint: retried with backoff for MAX_AGE, then given up (dead)
    failing_ids = [n["notification_id"] for n in notes[failing]]

    def dead_rows() -> list[tuple[Any, ...]]:
        with psycopg.connect(db.postgres_dsn) as conn:
            return conn.execute(
                "SELECT status, attempts, extract(epoch FROM dead_at - created_at), last_error,"
                " (SELECT count(*) FROM webhook_attempts a WHERE a.delivery_id = d.delivery_id)"
                " FROM webhook_deliveries d WHERE notification_id = ANY(%s::uuid[])",
                (failing_ids,)).fetchall()

    wait_for(lambda: (rows := dead_rows()) and len(rows) == PER_USER
             and all(r[0] == "dead" for r in rows), MAX_AGE + 60, "failing deliveries not dead")
    for status, attempts, age, last_error, recorded in dead_rows():
        assert status == "dead" and last_error == "HTTP 500"
        assert attempts >= 3 and recorded == attempts  # every attempt is on record
        assert age <= MAX_AGE + 2  # given up within the retry period (plus one attempt)
    assert failing.delivered() == set()
    seen = len(failing.requests)
    time.sleep(2)
    assert len(failing.requests) == seen, "a given-up delivery was tried again"

    # the endpoint is fixed; the operator redelivers its dead letters
    failing.failing_seconds = 0
    cli = subprocess.run([sys.executable, "-m", "ops.cli", "webhooks", "redeliver", "--all",
                          "--user", users[failing]], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and f"redelivering {PER_USER}" in cli.stdout, cli.stdout + cli.stderr
    wait_for(lambda: want[failing] <= failing.delivered(), 60, "redelivered letters not delivered")
    assert [r[0] for r in dead_rows()] == ["delivered"] * PER_USER
    for r in users:
        r.close()
