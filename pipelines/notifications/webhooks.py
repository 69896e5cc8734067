"""Webhook delivery (`paystream run webhooks`): notifications to users' endpoints.

Two loops in one process:

* **intake** (a thread): each `Notification` on `notifications` becomes one
  pending row per active endpoint of its user in `webhook_deliveries`, exactly
  once (rows and offsets in one Postgres transaction; the delivery id is
  uuid5(notification id, endpoint id)).
* **delivery** (asyncio + httpx): endpoints, not deliveries, are scheduled. A
  worker leases an endpoint that has due deliveries, sends them one at a time in
  due order, records every attempt, then releases it. An endpoint is held by one
  worker slot at most, so a slow or failing endpoint delays only its own
  deliveries, never another user's. A failure reschedules the delivery with
  exponential backoff and jitter and pauses the endpoint for that delay; after
  `max_age_seconds` (default 3 days) a delivery becomes `dead` (the dead-letter
  record, kept in Postgres for an operator to replay).

Delivery is at-least-once: a crash between the receiver's 2xx and our commit
sends again, with the same `Paystream-Event-Id`, which receivers de-duplicate on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from confluent_kafka import Message
from prometheus_client import Counter, Histogram
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from paystream import ids, metrics, topics, webhooks
from paystream.codec import Codec
from paystream.errors import DecodeError
from paystream.settings import Settings, get_settings
from paystream.stream.pg_intake import IntakeHandler, Item, PgIntake, worker_spec
from pipelines.notifications.egress import PublicOnlyTransport

NOTIFICATIONS = topics.NOTIFICATIONS
INTAKE = "webhooks"  # the notification intake's offsets owner in sink_offsets; group paystream-webhooks
NAMESPACE = uuid.UUID("b3f0c2d4-8e1a-4a6f-9c7d-5e2b1f0a3c68")
log = logging.getLogger("paystream.webhooks")

ATTEMPTS = Counter("paystream_webhook_attempts_total",
                   "delivery attempts by result: delivered, retry (failed, rescheduled) or dead", ["result"])
RETRIES = Counter("paystream_webhook_retries_total", "attempts after the first one of a delivery")
ATTEMPT_SECONDS = Histogram("paystream_webhook_attempt_seconds", "time of one delivery attempt",
                            buckets=metrics.LATENCY_BUCKETS)
QUEUED = Counter("paystream_webhook_deliveries_queued_total", "deliveries created from notifications")


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """The delivery policy as plain data for the rules below; its values are the
    `webhook_*` settings (env PAYSTREAM_WEBHOOK_*), read once per worker."""

    backoff_base_seconds: float
    backoff_cap_seconds: float
    max_age_seconds: float
    concurrency: int
    timeout_seconds: float
    lease_seconds: float
    poll_interval: float
    batch_per_endpoint: int
    allow_private_urls: bool
    max_endpoints_per_user: int
    instance: str

    @classmethod
    def of(cls, settings: Settings) -> WebhookPolicy:
        return cls(
            backoff_base_seconds=settings.webhook_backoff_base_seconds,
            backoff_cap_seconds=settings.webhook_backoff_cap_seconds,
            max_age_seconds=settings.webhook_max_age_seconds,
            concurrency=settings.webhook_concurrency,
            timeout_seconds=settings.webhook_timeout_seconds,
            lease_seconds=settings.webhook_lease_seconds,
            poll_interval=settings.webhook_poll_interval,
            batch_per_endpoint=settings.webhook_batch_per_endpoint,
            allow_private_urls=settings.webhook_allow_private_urls,
            max_endpoints_per_user=settings.webhook_max_endpoints_per_user,
            instance=settings.webhook_instance,
        )


def delivery_id(notification_id: str, endpoint_id: str) -> str:
    return ids.uuid5(NAMESPACE, f"{notification_id}|{endpoint_id}")


def body_of(n: dict[str, Any]) -> str:
    """The JSON body: built once at intake and stored, so every attempt signs and
    sends the same bytes."""
    return json.dumps({"id": n["notification_id"], "type": n["kind"], "created_at": n["created_at"],
                       "data": n}, sort_keys=True, separators=(",", ":"))


def backoff_delay(attempt: int, ws: WebhookPolicy, rnd: random.Random | None = None) -> float:
    """Delay after the `attempt`-th failure: exponential, capped, with "equal jitter"
    (half fixed, half random), so retries of many deliveries spread out while the
    delay never drops below half the exponential step."""
    step = min(ws.backoff_cap_seconds, ws.backoff_base_seconds * 2 ** max(attempt - 1, 0))
    return step / 2 + (rnd or random).uniform(0, step / 2)


def after_failure(attempt: int, age_seconds: float, ws: WebhookPolicy,
                  rnd: random.Random | None = None) -> float | None:
    """Seconds until the next attempt, or None when the delivery is to be given up:
    the next try would fall outside the retry period."""
    delay = backoff_delay(attempt, ws, rnd)
    if age_seconds + delay > ws.max_age_seconds:
        return None
    return delay


# --------------------------------------------------------------------------- intake


class NotificationIntake(IntakeHandler[dict[str, Any], None]):
    """The webhooks' handler for the intake (`paystream.stream.pg_intake`): one pending
    delivery per (notification, active endpoint of its user)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def decode(self, message: Message) -> dict[str, Any] | None:
        try:
            return self.codec.decode(NOTIFICATIONS, message.value())
        except DecodeError as exc:
            # notifications are written only by our own EOS app; a bad one is logged
            # and skipped rather than stalling every user's deliveries
            log.error("skipping undecodable notification %s[%s]@%s: %s", message.topic(),
                      message.partition(), message.offset(), exc)
            return None

    def apply(self, conn: psycopg.Connection[Any], items: list[Item[dict[str, Any]]]) -> None:
        notes = [it.value for it in items]
        users = sorted({n["user_id"] for n in notes})
        endpoints: dict[str, list[str]] = {}
        for eid, uid in conn.execute(
                "SELECT endpoint_id, user_id FROM webhook_endpoints"
                " WHERE active AND user_id = ANY(%s)", (users,)).fetchall():
            endpoints.setdefault(uid, []).append(str(eid))
        rows = [
            (delivery_id(n["notification_id"], eid), eid, n["notification_id"], n["user_id"],
             n["kind"], body_of(n))
            for n in notes for eid in endpoints.get(n["user_id"], [])
        ]
        if rows:
            conn.cursor().executemany(
                "INSERT INTO webhook_deliveries (delivery_id, endpoint_id, notification_id, user_id,"
                " kind, body) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (delivery_id) DO NOTHING",
                rows)
            QUEUED.inc(len(rows))


# ------------------------------------------------------------------------- delivery

CLAIM = """
UPDATE webhook_endpoints SET lease_owner = %(me)s,
       lease_until = now() + make_interval(secs => %(lease)s)
WHERE endpoint_id IN (
    SELECT e.endpoint_id FROM webhook_endpoints e
    WHERE e.active AND (e.lease_until IS NULL OR e.lease_until < now())
      AND EXISTS (SELECT 1 FROM webhook_deliveries d
                  WHERE d.endpoint_id = e.endpoint_id AND d.status = 'pending'
                    AND d.next_attempt_at <= now())
    ORDER BY e.lease_until ASC NULLS FIRST
    LIMIT %(n)s FOR UPDATE SKIP LOCKED)
RETURNING endpoint_id, url, secret
"""

NEXT_DUE = """
SELECT delivery_id, notification_id, body, attempts, extract(epoch FROM now() - created_at) AS age
FROM webhook_deliveries
WHERE endpoint_id = %s AND status = 'pending' AND next_attempt_at <= now()
ORDER BY next_attempt_at, created_at LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: str
    url: str
    secret: str


def http_client(ws: WebhookPolicy) -> httpx.AsyncClient:
    """The client deliveries go through. It connects only to public addresses,
    checked on what the host name resolves to at connect time (DNS rebinding);
    it follows no redirects and uses no proxy from the environment, which would
    each connect somewhere other than the checked address."""
    timeout = httpx.Timeout(ws.timeout_seconds, connect=min(5.0, ws.timeout_seconds))
    limits = httpx.Limits(max_connections=ws.concurrency * 2)
    transport = PublicOnlyTransport(limits=limits, allow_private=ws.allow_private_urls)
    return httpx.AsyncClient(timeout=timeout, transport=transport, trust_env=False,
                             follow_redirects=False)


class Deliverer:
    def __init__(self, settings: Settings, ws: WebhookPolicy) -> None:
        self.settings = settings
        self.ws = ws
        self.me = f"{socket.gethostname()}-{ws.instance}"
        self.rnd = random.Random()

    async def reclaim(self, pool: AsyncConnectionPool) -> int:
        """Leases still held under our name belong to our previous incarnation, which is
        dead (`paystream chaos`: after a Postgres restart the worker exited and its
        endpoint then waited out the 60 s lease). Its in-flight attempt may have
        reached the endpoint: delivery is at-least-once, the receiver de-duplicates."""
        async with pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE webhook_endpoints SET lease_owner = NULL, lease_until = NULL"
                " WHERE lease_owner = %s", (self.me,))
            return cur.rowcount

    async def claim(self, pool: AsyncConnectionPool, n: int) -> list[Endpoint]:
        async with pool.connection() as conn:
            cur = await conn.execute(CLAIM, {"me": self.me, "lease": self.ws.lease_seconds, "n": n})
            rows = await cur.fetchall()
        return [Endpoint(str(r[0]), r[1], r[2]) for r in rows]

    async def _release(self, pool: AsyncConnectionPool, ep: Endpoint, pause: float) -> None:
        # lease_until in the future without an owner is the endpoint's pause after a failure;
        # now() puts it at the back of the line (claims go to the least recently served)
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE webhook_endpoints SET lease_owner = NULL,"
                " lease_until = now() + make_interval(secs => %s)"
                " WHERE endpoint_id = %s AND lease_owner = %s", (pause, ep.endpoint_id, self.me))

    async def serve(self, pool: AsyncConnectionPool, client: httpx.AsyncClient, ep: Endpoint) -> None:
        pause = 0.0
        try:
            for _ in range(self.ws.batch_per_endpoint):
                async with pool.connection() as conn:
                    cur = conn.cursor(row_factory=dict_row)
                    await cur.execute(NEXT_DUE, (ep.endpoint_id,))
                    d = await cur.fetchone()
                    if d is None:
                        break
                    await conn.execute(
                        "UPDATE webhook_endpoints SET lease_until = now() + make_interval(secs => %s)"
                        " WHERE endpoint_id = %s AND lease_owner = %s",
                        (self.ws.lease_seconds, ep.endpoint_id, self.me))
                delay = await self.attempt(pool, client, ep, d)
                if delay is not None:
                    pause = delay
                    break
        except Exception:
            log.exception("serving endpoint %s failed", ep.endpoint_id)
            pause = self.ws.backoff_base_seconds
        finally:
            await self._release(pool, ep, pause)

    async def attempt(self, pool: AsyncConnectionPool, client: httpx.AsyncClient, ep: Endpoint,
                      d: dict[str, Any]) -> float | None:
        """Send once; record it. None when delivered (or given up), else the retry delay."""
        n = int(d["attempts"]) + 1
        body: str = d["body"]
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "paystream-webhooks/1",
            webhooks.HEADER: webhooks.sign(ep.secret, body),
            webhooks.EVENT_ID_HEADER: str(d["notification_id"]),
            "Paystream-Delivery-Id": str(d["delivery_id"]),
            "Paystream-Attempt": str(n),
        }
        started = time.time()
        t0 = time.monotonic()
        code: int | None = None
        error: str | None = None
        try:
            resp = await client.post(ep.url, content=body.encode(), headers=headers)
            code = resp.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        duration_ms = int((time.monotonic() - t0) * 1000)
        delay = None if error is None else after_failure(n, float(d["age"]), self.ws, self.rnd)
        ATTEMPT_SECONDS.observe(time.monotonic() - t0)
        ATTEMPTS.labels("delivered" if error is None else "retry" if delay is not None else "dead").inc()
        if n > 1:
            RETRIES.inc()
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms,"
                " status_code, error) VALUES (%s, %s, to_timestamp(%s), %s, %s, %s)"
                " ON CONFLICT DO NOTHING", (d["delivery_id"], n, started, duration_ms, code, error))
            if error is None:
                await conn.execute(
                    "UPDATE webhook_deliveries SET status = 'delivered', attempts = %s,"
                    " delivered_at = now(), last_error = NULL WHERE delivery_id = %s",
                    (n, d["delivery_id"]))
            elif delay is None:
                log.warning("delivery %s to %s dead after %s attempts: %s", d["delivery_id"],
                            ep.endpoint_id, n, error)
                await conn.execute(
                    "UPDATE webhook_deliveries SET status = 'dead', attempts = %s, dead_at = now(),"
                    " last_error = %s WHERE delivery_id = %s", (n, error, d["delivery_id"]))
            else:
                await conn.execute(
                    "UPDATE webhook_deliveries SET attempts = %s, last_error = %s,"
                    " next_attempt_at = now() + make_interval(secs => %s) WHERE delivery_id = %s",
                    (n, error, delay, d["delivery_id"]))
        if error is not None and delay is None:
            return self.ws.backoff_base_seconds  # given up: still pause the failing endpoint
        return delay

    async def run(self, stop: threading.Event) -> None:
        pool = AsyncConnectionPool(self.settings.postgres_dsn, min_size=1,
                                   max_size=self.ws.concurrency + 2, open=False)
        await pool.open(wait=True, timeout=30)
        if taken := await self.reclaim(pool):
            log.info("took back %s endpoint lease(s) of this worker's previous run", taken)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async with http_client(self.ws) as client:
                while not stop.is_set():
                    free = self.ws.concurrency - len(tasks)
                    if free > 0:
                        try:
                            for ep in await self.claim(pool, free):
                                tasks.add(asyncio.create_task(self.serve(pool, client, ep)))
                        except psycopg.Error as exc:
                            log.warning("claiming endpoints failed: %s", exc)
                    if tasks:
                        done, _ = await asyncio.wait(tasks, timeout=self.ws.poll_interval,
                                                     return_when=asyncio.FIRST_COMPLETED)
                        tasks -= done
                    else:
                        await asyncio.sleep(self.ws.poll_interval)
                if tasks:
                    await asyncio.wait(tasks, timeout=self.ws.timeout_seconds + 5)
        finally:
            await pool.close()


def run(settings: Settings | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings or get_settings()
    ws = WebhookPolicy.of(settings)
    codec = Codec(settings.registry_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    intake = PgIntake(settings, worker_spec(settings, INTAKE, NOTIFICATIONS), NotificationIntake(codec), codec)
    failed: list[BaseException] = []

    def guarded() -> None:
        try:
            intake.run(stop)
        except BaseException as exc:
            failed.append(exc)
            log.exception("webhook intake died")
            stop.set()

    thread = threading.Thread(target=guarded, name="webhook-intake", daemon=True)
    thread.start()
    log.info("webhooks worker running (concurrency %s)", ws.concurrency)
    asyncio.run(Deliverer(settings, ws).run(stop))
    thread.join(30)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    run()
