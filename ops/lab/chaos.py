"""`paystream chaos`: faults under load on a stack of its own, then Jepsen-style checks.

Everything runs on an isolated stack (own home under /tmp, own ports), because
the faults restart Kafka, Postgres and Redis: the shared development stack is
never touched. The components run as child processes, as `paystream up` runs
them, and a watchdog restarts one that exits (as the supervisor would).

Load: HTTP clients pay through the gateway (each logical payment has its own
Idempotency-Key and is retried with the same key and body until the gateway
acknowledges it: 201, 202 or 402), and a producer sends transfers straight to
`payments.commands` (acks=all, re-sent with the same command id until
acknowledged). Faults are injected one at a time, each followed by recovery:

    kill-ledger, kill-sink, kill-gateway,
    kill-fraud                             kill -9, restarted 1 s later
    kill-ledger-1of3                       kill -9 of one of three ledger instances,
                                           restarted 1 s later
    add-ledger                             one more ledger instance joins the group
                                           (it holds partitions once it is done)
    remove-ledger                          the newest running ledger instance is
                                           stopped gracefully (SIGTERM) for good
    kafka-restart, postgres-restart        graceful stop and start via ops.stack
    redis-restart                          stop, delete its data (every idempotency
                                           key is lost), start; then payments that
                                           were already answered are sent again with
                                           their keys: the ledger must apply each once
    webhook-outage                         the webhook receiver of one user answers
                                           500 for 15 s, then recovers

Then the history is checked, as Jepsen would: every acknowledged request has
exactly one terminal outcome and its answer agrees with the ledger; no payment
has two debits or two credits; no acknowledged command is lost; a read_committed
reader of `ledger.events` sees every event exactly once (a read_uncommitted one
also sees the aborted attempts, which shows the faults did abort transactions);
and `ops.verify` passes on the isolated stack (sums per currency zero, the read
model equals a replay). With the downstream pipelines running (`--fraud`, or a
downstream fault chosen): fraud consumed the whole journal, no alert is on
`fraud.alerts` twice and each is about a real debit; every notification of the
user with a webhook reached the receiver with a valid signature. Fraud runs with
HIGH out of reach (only MEDIUM alerts): the random load would otherwise freeze
accounts, which tests the rules, not faults. Anomalies are attributed to the
fault during whose window the request started.

The ledger-instance faults run the ledger as LEDGERS instances (distinct instance
ids, so each has its own state directory, transactional id and group membership)
from the start of the run: the partitions are spread over them, and a fault moves
partitions between live instances and their state with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import TopicPartition
from rich.console import Console
from rich.table import Table

from ops import stack
from ops.lab.isolated import isolated_stack, settings_env
from paystream import commands as C
from paystream import kafka, topics
from paystream.codec import Codec, topic_specs
from paystream.settings import PROJECT_ROOT, Settings

EVENTS = topics.EVENTS
LEDGER_GROUP = "paystream-ledger"
ACKED = (201, 202, 402)
RETRY = (0, 409, 429, 500, 502, 503, 504)
ALL_FAULTS = ("kill-ledger", "kill-ledger-1of3", "add-ledger", "remove-ledger", "kill-sink",
              "kill-gateway", "kill-fraud", "kafka-restart", "postgres-restart",
              "redis-restart", "webhook-outage")
# Faults that need the downstream pipelines (fraud, notifications, webhooks) running.
DOWNSTREAM_FAULTS = ("kill-fraud", "webhook-outage")
# Faults that need several ledger instances; the run then starts LEDGERS of them.
LEDGER_FAULTS = ("kill-ledger-1of3", "add-ledger", "remove-ledger")
LEDGERS = 3
WEBHOOK_OUTAGE_SECONDS = 15.0
# How long a re-sent payment is retried while it is answered 409 or 5xx: past the
# gateway's in-flight lock (gateway_inflight_lock_seconds) with room to spare.
REPLAY_SECONDS = 45.0
# CI's selection. Of the ledger-instance faults, kill -9 of one of three (a crash
# while others hold the rest of the partitions: a rebalance, a restart, state
# restored where partitions land) and add-ledger (partitions leave live instances
# for a new one, whose state is restored from the changelogs) move state between
# instances in ways no other fault does; remove-ledger's graceful leave goes through
# the same revoke-and-commit path add-ledger already takes on every other instance,
# so it runs in the full suite only. Each costs some 10-20 s (docs/SCALING.md).
SHORT_FAULTS = ("kill-ledger", "kill-ledger-1of3", "add-ledger", "kill-gateway", "kill-fraud", "kafka-restart",
                "redis-restart", "webhook-outage")
# Not a fault: the load alone for STEADY_SECONDS, then the same end-to-end check as
# after a fault. Whether the whole stack keeps up with an offered load (its "recovery"
# stays a few seconds instead of growing) is how `--fault steady` measures what this
# machine sustains with every component running, the figure faults under load are
# sized against (docs/PROOF.md).
STEADY = "steady"
STEADY_SECONDS = 30.0
CURRENCY = "USD"


# ----------------------------------------------------------------------------- components


class Proc:
    """One component (`paystream run COMPONENT`) as a child process with its own log;
    `name` tells instances of one component apart (`ledger-1`)."""

    def __init__(self, name: str, env: dict[str, str], logs: Path, component: str | None = None) -> None:
        self.name = name
        self.component = component or name
        self.env = env
        self.log_path = logs / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.crashes = 0
        self.held = False  # down on purpose: the watchdog leaves it alone

    def start(self) -> None:
        log = self.log_path.open("ab")
        log.write(f"\n=== chaos: starting {self.name} at {time.strftime('%H:%M:%S')} ===\n".encode())
        log.flush()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "run", self.component],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=PROJECT_ROOT, start_new_session=True,
        )
        log.close()
        self.starts += 1

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


class Components:
    """The components plus a watchdog: a component that exits is started again after a
    short pause, unless it is held down on purpose by a fault."""

    def __init__(self, names: list[str], env: dict[str, str], logs: Path) -> None:
        self.procs = {n: Proc(n, env, logs) for n in names}
        self.logs = logs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chaos-watchdog", daemon=True)

    def __getitem__(self, name: str) -> Proc:
        return self.procs[name]

    def start(self) -> None:
        for p in self.procs.values():
            p.start()
        self._thread.start()

    def add(self, name: str, component: str, env: dict[str, str]) -> Proc:
        """One more process (another instance of `component`), watched like the rest
        once started."""
        proc = self.procs[name] = Proc(name, env, self.logs, component)
        return proc

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for p in list(self.procs.values()):
                if not p.held and p.popen is not None and p.popen.poll() is not None:
                    p.crashes += 1
                    time.sleep(1.0)
                    if not self._stop.is_set() and not p.held:
                        p.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for p in reversed(list(self.procs.values())):
            p.held = True
            p.stop()


# ----------------------------------------------------------------------------- history


@dataclass
class Attempt:
    start: float
    end: float
    status: int  # 0: no HTTP answer (connection refused/reset, timeout)
    code: str | None = None


@dataclass
class Payment:
    """One logical payment over HTTP: one key, retried until acknowledged."""

    key: str
    user: str
    payment_id: str
    body: dict[str, Any]
    attempts: list[Attempt] = field(default_factory=list)
    acked: int | None = None  # the acknowledging status
    acked_at: float = 0.0
    replayed: list[int] = field(default_factory=list)  # statuses of deliberate re-sends

    @property
    def started(self) -> float:
        return self.attempts[0].start if self.attempts else 0.0


@dataclass
class Direct:
    """A transfer produced straight to Kafka; re-sent with the same id until acked."""

    command: dict[str, Any]
    created: float
    acked_at: float = 0.0
    sends: int = 0


@dataclass
class FaultRecord:
    name: str
    injected: float
    restored: float = 0.0  # the fault's own action finished (process or service back)
    recovered: float = 0.0  # end to end again (see `_wait_recovered`)
    window_end: float = 0.0
    note: str = ""  # why the fault did not recover (a failure)
    detail: str = ""  # what the fault left behind, e.g. the ledger group's assignment
    replays: int = 0


# ----------------------------------------------------------------------------- load


@dataclass
class User:
    user_id: str
    number: str
    account_id: str
    headers: dict[str, str]


class HttpLoad:
    """`clients` asyncio clients in a thread of their own, each paying `rate` per second."""

    def __init__(self, base: str, users: list[User], clients: int, rate: float, wait: float = 2.0,
                 deadline: float = 120.0) -> None:
        self.base = base
        self.users = users
        self.clients = clients
        self.rate = rate
        self.wait = wait
        self.deadline = deadline
        self.payments: list[Payment] = []
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="chaos-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        self._thread.join(timeout)

    async def _main(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.clients)))

    async def attempt(self, client: httpx.AsyncClient, pay: Payment) -> Attempt:
        headers = {**self._user(pay.user).headers, "Idempotency-Key": pay.key, "Prefer": f"wait={self.wait:g}"}
        t0 = time.monotonic()
        code = None
        try:
            r = await client.post("/v1/payments", json=pay.body, headers=headers)
            status = r.status_code
            if status >= 400:
                with contextlib.suppress(ValueError):
                    code = r.json().get("code")
        except httpx.HTTPError:
            status = 0
        return Attempt(t0, time.monotonic(), status, code)

    def _user(self, user_id: str) -> User:
        return next(u for u in self.users if u.user_id == user_id)

    async def send(self, client: httpx.AsyncClient, pay: Payment) -> None:
        """Until acknowledged, or the deadline passes (then the payment is indeterminate)."""
        backoff = 0.25
        while True:
            a = await self.attempt(client, pay)
            pay.attempts.append(a)
            if a.status in ACKED:
                pay.acked, pay.acked_at = a.status, a.end
                return
            if a.status not in RETRY or a.end - pay.started > self.deadline:
                return
            await asyncio.sleep(backoff)
            backoff = min(2.0, backoff * 2)

    async def _client(self, i: int) -> None:
        me = self.users[i % len(self.users)]
        rnd = random.Random(i)
        timeout = httpx.Timeout(self.wait + 10.0, connect=2.0)
        async with httpx.AsyncClient(base_url=self.base, timeout=timeout) as client:
            next_at = time.monotonic() + rnd.random() / self.rate
            while not self.stopping.is_set():
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at = max(next_at + 1 / self.rate, time.monotonic() - 1)
                to = rnd.choice([u for u in self.users if u is not me])
                # one in 25 asks for more than anyone has: exercises the 402 path
                amount = "5000000000.00" if rnd.random() < 0.04 else f"{rnd.randint(1, 500) / 100:.2f}"
                key = uuid.uuid4().hex
                body = {"from_account": me.number, "to_account": to.number, "amount": amount, "currency": CURRENCY}
                pay = Payment(key, me.user_id, C.payment_id_for(me.user_id, key), body)
                self.payments.append(pay)
                await self.send(client, pay)

    def replay(self, pays: list[Payment]) -> None:
        """Send answered payments again with their keys (from the caller's thread)."""
        async def go() -> None:
            async with httpx.AsyncClient(base_url=self.base, timeout=httpx.Timeout(20.0, connect=2.0)) as client:
                for pay in pays:
                    # 409 and 5xx say "not yet", never "no": a client retries them, so the
                    # replay does too, for longer than a held key's lock (30 s by default)
                    # can last. What it ends with is the answer that is checked.
                    give_up = time.monotonic() + REPLAY_SECONDS
                    while True:
                        a = await self.attempt(client, pay)
                        if a.status not in RETRY or time.monotonic() > give_up:
                            break
                        await asyncio.sleep(0.5)
                    pay.replayed.append(a.status)

        asyncio.run(go())


# Direct load: of every ten commands one is an authorization (a hold that lapses after
# HOLD_MS unless captured or voided) and one a capture or void of an earlier one, so
# holds are in flight at every fault and some expire during it.
HOLD_MS = 5_000


class KafkaLoad:
    """Transfers between the direct accounts, produced straight to payments.commands,
    with holds among them (authorized, captured in part, voided, left to expire)."""

    def __init__(self, settings: Settings, codec: Codec, accounts: list[str], rate: float) -> None:
        self.codec = codec
        self.accounts = accounts
        self.rate = rate
        self.settings = settings
        self.producer = kafka.producer(settings, **{"message.timeout.ms": 15000})
        self.watch = kafka.StuckProducerWatch(stuck_after=30.0)  # librdkafka #5430, see there
        self.commands: list[Direct] = []
        self.holds: list[dict[str, Any]] = []  # authorizations sent, for captures and voids to pick from
        self.retry: list[Direct] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="chaos-kafka", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _send(self, d: Direct) -> None:
        def delivered(err: Any, _msg: Any) -> None:
            self.watch.delivered(err)
            if err is None:
                d.acked_at = time.monotonic()
            else:
                with self._lock:
                    self.retry.append(d)

        d.sends += 1
        topic = C.topic_for(d.command)
        value = self.codec.encode(topic, d.command)
        while True:
            try:
                self.producer.produce(topic, key=d.command["account_id"].encode(), value=value,
                                      on_delivery=delivered)
                return
            except BufferError:
                self.producer.poll(0.1)

    def _run(self) -> None:
        rnd = random.Random(99)
        next_at = time.monotonic()
        while not self.stopping.is_set():
            self.producer.poll(0)
            self._heal()
            with self._lock:
                again, self.retry = self.retry, []
            for d in again:
                if time.monotonic() - d.created < 180:
                    self._send(d)
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 0.05))
                continue
            next_at += 1 / self.rate
            d = Direct(self._next_command(rnd), time.monotonic())
            self.commands.append(d)
            self._send(d)
        # drain: whatever is still unacknowledged is re-sent until acked or too old
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.producer.flush(1)
            self._heal()
            with self._lock:
                again, self.retry = self.retry, []
            for d in again:
                self._send(d)
            if not again and all(d.acked_at for d in self.commands):
                break

    def _next_command(self, rnd: random.Random) -> dict[str, Any]:
        src, dst = rnd.sample(self.accounts, 2)
        roll = rnd.randrange(10)
        if roll == 0:
            h = C.authorize(src, dst, rnd.randint(1, 1000), CURRENCY, hold_timeout_ms=HOLD_MS, requested_by="chaos")
            self.holds.append(h)
            return h
        if roll == 1 and self.holds:
            h = self.holds[rnd.randrange(len(self.holds))]
            kind = "CAPTURE" if rnd.random() < 0.5 else "VOID"
            amount = max(1, h["movement"]["amount"] // 2) if kind == "CAPTURE" else None
            return C.hold_action(kind, h["account_id"], h["command_id"], amount=amount, requested_by="chaos")
        return C.transfer(src, dst, rnd.randint(1, 1000), CURRENCY, requested_by="chaos")

    def _heal(self) -> None:
        """A producer librdkafka left stuck is replaced; what it held is re-sent (same ids)."""
        if self.watch.stuck():
            old, self.producer = self.producer, kafka.producer(self.settings, **{"message.timeout.ms": 15000})
            self.watch.reset()
            old.purge()
            old.poll(0)  # their delivery reports put them on the retry list

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        self._thread.join(timeout)


# ----------------------------------------------------------------------------- events


class EventLog:
    """Every committed ledger event from offset 0, followed for the whole run."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.codec = codec
        self.consumer = kafka.consumer(settings, f"chaos-{uuid.uuid4()}", **{"fetch.wait.max.ms": 50})
        parts = self.consumer.list_topics(EVENTS, timeout=10).topics[EVENTS].partitions
        self.consumer.assign([TopicPartition(EVENTS, p, 0) for p in parts])
        self.terminal: dict[str, float] = {}  # command id -> when its outcome was first seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for m in kafka.consume_ready(self.consumer, 1000, 0.2):
                if m.error() is not None:
                    continue
                e = self.codec.decode(EVENTS, m.value())
                if e["terminal"] and not e["replay"]:
                    self.terminal.setdefault(e["command_id"], time.monotonic())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.consumer.close()


def read_all(settings: Settings, codec: Codec, isolation: str,
             topic: str = EVENTS) -> list[tuple[int, int, dict[str, Any]]]:
    """The whole topic as one reader with `isolation` sees it, up to the high watermark."""
    c = kafka.consumer(settings, f"chaos-audit-{uuid.uuid4()}", **{"isolation.level": isolation,
                                                                    "fetch.wait.max.ms": 50})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        todo = {p for p, e in ends.items() if e > 0}
        out: list[tuple[int, int, dict[str, Any]]] = []
        deadline = time.monotonic() + 180
        while todo and time.monotonic() < deadline:
            for m in c.consume(2000, 0.5):
                if m.error() is None:
                    out.append((m.partition() or 0, m.offset() or 0, codec.decode(topic, m.value())))
            for tp in c.position([TopicPartition(topic, p) for p in list(todo)]):
                if tp.offset >= ends[tp.partition]:
                    todo.discard(tp.partition)
        if todo:
            raise TimeoutError(f"{isolation} reader stopped short of the end on partitions {sorted(todo)}")
        return out
    finally:
        c.close()


# ----------------------------------------------------------------------------- the run


@dataclass
class Anomaly:
    kind: str
    ident: str
    detail: str
    fault: str = "end state"


@dataclass
class ChaosReport:
    faults: list[FaultRecord] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    http: Counter[str] = field(default_factory=Counter)
    direct: Counter[str] = field(default_factory=Counter)
    committed_events: int = 0
    uncommitted_records: int = 0
    aborted_records: int = 0
    verify_ok: bool = False
    verify_checks: list[tuple[str, bool, str]] = field(default_factory=list)
    crashes: dict[str, int] = field(default_factory=dict)
    rates: dict[str, tuple[float, float]] = field(default_factory=dict)  # fault -> during/after
    direct_rates: dict[str, tuple[float, float]] = field(default_factory=dict)
    steady: tuple[float, float] = (0.0, 0.0)  # HTTP acks/s and Kafka acks/s in the warm-up, no fault
    seconds: float = 0.0
    alerts: tuple[int, int] | None = None  # distinct alerts, records on the topic
    webhooks: tuple[int, int, int] | None = None  # expected, delivered, failed attempts

    @property
    def ok(self) -> bool:
        return not self.anomalies and self.verify_ok


class Chaos:
    def __init__(self, settings: Settings, console: Console, *, faults: list[str], clients: int, rate: float,
                 direct_rate: float, warmup: float, after: float, fraud: bool, ledgers: int | None = None) -> None:
        self.s = settings
        self.console = console
        self.fault_names = faults
        self.after = after
        self.warmup = warmup
        self.env = {
            **os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1",
            "PAYSTREAM_LEDGER_INSTANCE": "chaos",
            "PAYSTREAM_SINK_INSTANCE": "chaos",
            "PAYSTREAM_GATEWAY_RATE_PAYMENTS_PER_MINUTE": "1000000",
            # a gateway killed mid-request leaves its claim locked this long; retries wait it out
            "PAYSTREAM_GATEWAY_INFLIGHT_LOCK_SECONDS": "5",
            "PAYSTREAM_JWT_TTL_SECONDS": "7200",
            "PAYSTREAM_OUTBOX_POLL_INTERVAL": "0.2",
        }
        self.downstream = fraud or any(f in DOWNSTREAM_FAULTS for f in faults)
        names = ["ledger", "sink", "outbox-relay", "gateway"]
        if self.downstream:
            names += ["fraud", "notifications", "webhooks"]
            cfg = settings.home / "fraud-chaos.toml"
            cfg.write_text("[risk]\nmedium = 40\nhigh = 1000\n")  # scores sum to < 400: never HIGH
            self.env |= {
                "PAYSTREAM_FRAUD_CONFIG": str(cfg),
                "PAYSTREAM_FRAUD_INSTANCE": "chaos",
                "PAYSTREAM_NOTIFICATIONS_INSTANCE": "chaos",
                "PAYSTREAM_WEBHOOK_BACKOFF_BASE_SECONDS": "0.5",
                "PAYSTREAM_WEBHOOK_BACKOFF_CAP_SECONDS": "4",
                "PAYSTREAM_WEBHOOK_ALLOW_PRIVATE_URLS": "true",
                "PAYSTREAM_WEBHOOK_INSTANCE": "chaos",
            }
        self.receiver: Any = None
        self.hook_user: User | None = None
        self.hook_secret = ""
        logs = settings.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.comps = Components(names, self.env, logs)
        self.ledgers = 1  # instances started so far ("ledger", then "ledger-1", "ledger-2", ...)
        wanted = ledgers if ledgers is not None else (LEDGERS if any(f in LEDGER_FAULTS for f in faults) else 1)
        for _ in range(wanted - 1):
            self._add_ledger()
        self.codec = Codec(settings.registry_url)
        self.base = f"http://127.0.0.1:{settings.gateway_port}"
        self.clients, self.rate, self.direct_rate = clients, rate, direct_rate
        self.report = ChaosReport()
        self.partitions = topic_specs()[topics.COMMANDS].partitions
        self.current = FaultRecord("warm-up", 0.0)

    # -------------------------------------------------------------- setup

    def _wait_gateway(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.base}/healthz", timeout=2)
                if r.status_code == 200 and r.json().get("ok"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"gateway not ready after {timeout:.0f}s:\n{self.comps['gateway'].tail()}")

    def _setup(self, users: int, direct_accounts: int) -> tuple[list[User], list[str]]:
        from gateway.security import hash_password, issue_token

        async def create() -> list[tuple[str, str, str]]:
            from psycopg_pool import AsyncConnectionPool

            from gateway import store

            pw = hash_password(uuid.uuid4().hex + "A1")
            out = []
            async with AsyncConnectionPool(self.s.postgres_dsn, min_size=1, max_size=2) as pool:
                for i in range(users):
                    u, ref = await store.create_user(pool, email=f"chaos-{i}@chaos.invalid", password_hash=pw,
                                                     name=f"chaos {i}", role="user", currency=CURRENCY)
                    assert ref is not None
                    out.append((u.user_id, ref.account_number, ref.account_id))
            return out

        rows = asyncio.run(create())  # the relay publishes their OpenAccount commands
        ttl = self.s.model_copy(update={"jwt_ttl_seconds": 7200})
        people = [User(uid, num, aid, {"Authorization": f"Bearer {issue_token(ttl, uid, 'user')}"})
                  for uid, num, aid in rows]
        direct = [str(uuid.uuid4()) for _ in range(direct_accounts)]
        p = kafka.producer(self.s)
        cmds = [C.open_account(a, external_number=f"D{a[:10]}", owner_id="chaos", currency=CURRENCY) for a in direct]
        deposits = [C.deposit(u.account_id, 10**11, CURRENCY) for u in people]
        deposits += [C.deposit(a, 10**11, CURRENCY) for a in direct]
        for c in cmds + deposits:
            p.produce(C.topic_for(c), key=c["account_id"].encode(), value=self.codec.encode(C.topic_for(c), c))
        if p.flush(30):
            raise RuntimeError("setup commands were not acknowledged")
        want = {d["command_id"] for d in deposits}
        deadline = time.monotonic() + 180
        while not want <= set(self.events.terminal):
            if time.monotonic() > deadline:
                raise RuntimeError("accounts were not opened and funded within 180 s:\n"
                                   + self.comps["ledger"].tail())
            time.sleep(0.3)
        return people, direct

    # -------------------------------------------------------------- faults

    def _add_ledger(self) -> Proc:
        """Another ledger instance: its own instance id (state directory, transactional
        id, group membership), in the same consumer group as the others."""
        i = self.ledgers
        self.ledgers += 1
        env = {**self.env, "PAYSTREAM_LEDGER_INSTANCE": f"chaos-{i}",
               "PAYSTREAM_LEDGER_METRICS_PORT": "0"}  # the first instance serves them
        return self.comps.add(f"ledger-{i}", "ledger", env)

    def _ledger_procs(self) -> list[Proc]:
        return [p for p in self.comps.procs.values() if p.component == "ledger" and not p.held]

    def _ledger_assignment(self) -> dict[str, set[int]]:
        """client id -> the payments.commands partitions it holds, as the group says."""
        client = kafka.admin(self.s)
        desc = client.describe_consumer_groups([LEDGER_GROUP])[LEDGER_GROUP].result(timeout=15)
        return {m.client_id: {tp.partition for tp in (m.assignment.topic_partitions or [])
                              if tp.topic == topics.COMMANDS}
                for m in desc.members or []}

    def _wait_assigned(self, holders: int, timeout: float = 120.0) -> str:
        """Until exactly `holders` ledger instances hold partitions and every partition
        is held; a description of the assignment, for the report."""
        deadline = time.monotonic() + timeout
        last: dict[str, set[int]] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the coordinator may be between generations
                last = self._ledger_assignment()
                held = [ps for ps in last.values() if ps]
                if len(held) == holders and sorted(p for ps in held for p in ps) == list(range(self.partitions)):
                    return ", ".join(f"{c.removeprefix('paystream-ledger-')}: {sorted(ps)}"
                                     for c, ps in sorted(last.items()))
            time.sleep(0.25)
        raise RuntimeError(f"the ledger group did not settle on {holders} instances within {timeout:.0f}s: {last}")

    def _add_ledger_fault(self) -> None:
        before = len(self._ledger_procs())
        self._add_ledger().start()
        self.current.detail = self._wait_assigned(before + 1)

    def _remove_ledger(self) -> None:
        """The newest running instance leaves for good, gracefully: SIGTERM, so it
        commits what it processed and closes its stores (its partitions move once the
        group sees it gone)."""
        procs = self._ledger_procs()
        if len(procs) < 2:
            raise RuntimeError("remove-ledger needs at least two ledger instances running")
        gone = procs[-1]
        gone.held = True
        gone.stop()
        self.current.detail = self._wait_assigned(len(procs) - 1)

    def _kill(self, name: str) -> Callable[[], None]:
        def go() -> None:
            proc = self.comps[name]
            proc.held = True
            proc.kill9()
            time.sleep(1.0)
            proc.start()
            proc.held = False
            if name == "gateway":
                self._wait_gateway()

        return go

    def _webhook_outage(self) -> None:
        self.receiver.down = True
        time.sleep(WEBHOOK_OUTAGE_SECONDS)
        self.receiver.down = False

    def _register_webhook(self, user: User) -> None:
        from ops.lab.webhook_receiver import Receiver

        self.receiver = Receiver()
        r = httpx.post(f"{self.base}/v1/webhooks", json={"url": self.receiver.url},
                       headers={**user.headers, "X-Forwarded-For": "10.9.9.9"}, timeout=30)
        if r.status_code != 201:
            raise RuntimeError(f"webhook registration failed: {r.status_code} {r.text}")
        self.hook_user, self.hook_secret = user, r.json()["secret"]

    def _restart(self, service: str, wipe: bool = False) -> Callable[[], None]:
        def go() -> None:
            stack.stop_service(self.s, service)
            if wipe:  # Redis loses everything it had: every idempotency key and payment record
                for child in (self.s.home / "redis").iterdir():
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            time.sleep(1.0)
            stack.up(self.s)

        return go

    def _actions(self) -> dict[str, Callable[[], None]]:
        return {
            "kill-ledger": self._kill("ledger"),
            "kill-ledger-1of3": self._kill("ledger-1"),
            "add-ledger": self._add_ledger_fault,
            "remove-ledger": self._remove_ledger,
            STEADY: lambda: time.sleep(STEADY_SECONDS),
            "kill-sink": self._kill("sink"),
            "kill-gateway": self._kill("gateway"),
            "kill-fraud": self._kill("fraud"),
            "webhook-outage": self._webhook_outage,
            "kafka-restart": self._restart("kafka"),
            "postgres-restart": self._restart("postgres"),
            "redis-restart": self._restart("redis", wipe=True),
        }

    def _end_offsets(self, timeout: float = 90.0) -> dict[int, int]:
        """ops.verify.end_offsets, patient while a restarted broker elects its leaders."""
        from confluent_kafka import KafkaException

        from ops.verify import end_offsets

        deadline = time.monotonic() + timeout
        while True:
            try:
                return end_offsets(self.s)
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _sink_caught_up(self, target: dict[int, int]) -> bool:
        import psycopg

        from ops.verify import sink_offsets

        try:
            with psycopg.connect(self.s.postgres_dsn, connect_timeout=2) as conn:
                stored = sink_offsets(conn, self.s.sink_group)
        except psycopg.Error:
            return False
        return all(stored.get(p, 0) >= o for p, o in target.items() if o > 0)

    def _wait_recovered(self, f: FaultRecord, timeout: float = 180.0) -> None:
        """End to end again: a payment first sent after the fault was answered with the
        ledger's outcome (201/402), a direct command sent after it has its outcome, and the
        sink has stored everything that was in ledger.events when the fault was over."""
        target = self._end_offsets()
        inputs = self._ledger_inputs_end() if f.name in ("kill-ledger", *LEDGER_FAULTS) else {}
        deadline = time.monotonic() + timeout
        http_ok = kafka_ok = sink_ok = own_ok = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if not http_ok:
                http_ok = min((a.end for p in list(self.http.payments) for a in p.attempts
                               if a.start >= f.injected and a.status in (201, 402)), default=0.0)
            if not kafka_ok:
                kafka_ok = min((self.events.terminal[d.command["command_id"]] for d in list(self.direct.commands)
                                if d.created >= f.injected and d.command["command_id"] in self.events.terminal),
                               default=0.0)
            if not sink_ok and self._sink_caught_up(target):
                sink_ok = now
            if not own_ok:
                own_ok = self._downstream_recovered(f, target) if not inputs else self._ledger_caught_up(inputs)
            if http_ok and kafka_ok and sink_ok and own_ok:
                f.recovered = max(http_ok, kafka_ok, sink_ok, own_ok, f.restored)
                return
            time.sleep(0.25)
        f.recovered = time.monotonic()
        f.note = (f"not recovered within {timeout:.0f}s (http {bool(http_ok)}, kafka {bool(kafka_ok)}, "
                  f"sink {bool(sink_ok)}, {f.name} {bool(own_ok)})")

    def _ledger_inputs_end(self) -> dict[tuple[str, int], int]:
        """Where the ledger's inputs end now (payments.commands is not transactional and
        ledger.legs ends with a marker no consumer commits beyond, hence the - 1)."""
        from ops import groups as G

        tps = [(t, p) for t in (topics.COMMANDS, topics.LEGS) for p in range(self.partitions)]
        return {tp: high - (tp[0] == topics.LEGS) for tp, (_, high) in G.watermarks(self.s, tps).items()}

    def _ledger_caught_up(self, ends: dict[tuple[str, int], int]) -> float:
        """When the ledger group has committed past `ends` on every partition (0.0: not yet):
        a ledger-instance fault is over only when every partition is processed again,
        not when one of the survivors answers."""
        from ops import groups as G

        with contextlib.suppress(Exception):  # between generations the coordinator may refuse
            done = G.committed(self.s, LEDGER_GROUP)
            if all(done.get(tp, 0) >= end for tp, end in ends.items() if end > 0):
                return time.monotonic()
        return 0.0

    def _downstream_recovered(self, f: FaultRecord, target: dict[int, int]) -> float:
        """When the faulted downstream part works again (0.0: not yet): fraud has consumed
        what the journal held when the fault was over; the receiver got a 2xx after it."""
        now = time.monotonic()
        if f.name == "kill-fraud":
            from ops import groups as G

            done = G.committed(self.s, "paystream-fraud")
            # `target` are high watermarks, one past the transaction marker
            ok = all(done.get((EVENTS, p), 0) >= o - 1 for p, o in target.items() if o > 0)
            return now if ok else 0.0
        if f.name == "webhook-outage":
            oks = [q["done"] for q in self.receiver.requests if q["status"] == 200 and q["at"] >= f.restored]
            return min(oks) if oks else 0.0
        return now

    # -------------------------------------------------------------- run

    def run(self, users: int = 8, direct_accounts: int = 20) -> ChaosReport:
        t_start = time.monotonic()
        c = self.console
        self.comps.start()
        self.events = EventLog(self.s, self.codec)
        try:
            self._wait_gateway()
            people, direct = self._setup(users, direct_accounts)
            if self.downstream:
                self._register_webhook(people[0])
            c.print(f"components up; {len(people)} HTTP users and {len(direct)} direct accounts funded "
                    f"({time.monotonic() - t_start:.0f}s)")
            self.http = HttpLoad(self.base, people, self.clients, self.rate)
            self.direct = KafkaLoad(self.s, self.codec, direct, self.direct_rate)
            self.http.start()
            self.direct.start()
            load_start = time.monotonic()
            time.sleep(self.warmup)
            actions = self._actions()
            for name in self.fault_names:
                f = self.current = FaultRecord(name, time.monotonic())
                self.report.faults.append(f)
                c.print(f"[bold]{name}[/bold] at +{f.injected - load_start:.0f}s")
                actions[name]()
                f.restored = time.monotonic()
                self._wait_recovered(f)
                if name == "redis-restart":
                    self._replay_answered(f)
                time.sleep(self.after)
                f.window_end = time.monotonic()
                c.print(f"  restored in {f.restored - f.injected:.1f}s, end to end again after "
                        f"{f.recovered - f.injected:.1f}s {f.note}" + (f"; ledger partitions {f.detail}"
                                                                       if f.detail else ""))
            c.print("stopping the load; waiting for every acknowledged command's outcome")
            self.http.stop(timeout=180)
            self.direct.stop(timeout=120)
            self._settle()
            self._check()
        finally:
            self.report.crashes = {n: p.crashes for n, p in self.comps.procs.items()}
            self.events.close()
            self.comps.stop()
            if self.receiver is not None:
                self.receiver.close()
        self.report.seconds = time.monotonic() - t_start
        return self.report

    def _replay_answered(self, f: FaultRecord, n: int = 20) -> None:
        """Keys are gone from Redis: answered payments sent again must not apply twice."""
        answered = [p for p in self.http.payments if p.acked in (201, 402) and p.acked_at < f.injected]
        pick = random.Random(3).sample(answered, min(n, len(answered)))
        self.http.replay(pick)
        f.replays = len(pick)

    def _acked_ids(self) -> set[str]:
        ids = {p.payment_id for p in self.http.payments if p.acked}
        return ids | {d.command["command_id"] for d in self.direct.commands if d.acked_at}

    def _settle(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        want = self._acked_ids()
        while not want <= set(self.events.terminal) and time.monotonic() < deadline:
            time.sleep(0.5)
        from ops.verify import wait_for_sink

        wait_for_sink(self.s, self.s.sink_group, self._end_offsets(), max(10.0, deadline - time.monotonic()))

    # -------------------------------------------------------------- checks

    def _fault_of(self, t: float) -> str:
        name = "warm-up"
        for f in self.report.faults:
            if t >= f.injected:
                name = f.name
        return name

    def _check(self) -> None:
        from ops.verify import verify

        r = self.report
        # the last holds sent lapse HOLD_MS later (and a tick or two after that)
        last_sent = max((d.created for d in self.direct.commands), default=0.0)
        time.sleep(max(0.0, last_sent + HOLD_MS / 1000 + 3 - time.monotonic()))
        committed = read_all(self.s, self.codec, "read_committed")
        uncommitted = read_all(self.s, self.codec, "read_uncommitted")
        r.committed_events, r.uncommitted_records = len(committed), len(uncommitted)
        seen_at = {(p, o) for p, o, _ in committed}
        r.aborted_records = sum(1 for p, o, _ in uncommitted if (p, o) not in seen_at)
        ids = Counter(e["event_id"] for _, _, e in committed)
        for eid, n in ids.items():
            if n > 1:
                r.anomalies.append(Anomaly("committed reader saw an event twice", eid, f"{n} times"))
        events = [e for _, _, e in committed]
        terminals: dict[str, list[dict[str, Any]]] = defaultdict(list)
        legs: Counter[tuple[str, str]] = Counter()
        for e in events:
            if e["terminal"] and not e["replay"]:
                terminals[e["command_id"]].append(e)
            if e["postings"] and e["type"] in ("TRANSFER_DEBITED", "TRANSFER_COMPLETED", "TRANSFER_FAILED",
                                               "HOLD_CAPTURED"):
                legs[(e["payment_id"], e["type"])] += 1
        for (pay, etype), n in legs.items():
            if n > 1:
                r.anomalies.append(Anomaly("payment applied twice", pay, f"{etype} x{n}"))
        for cid, ts in terminals.items():
            if len(ts) > 1:
                r.anomalies.append(Anomaly("two terminal outcomes", cid, ", ".join(t["status"] for t in ts)))
        self._check_http(terminals)
        self._check_direct(terminals)
        self._check_holds(events)
        if self.downstream:
            last: dict[int, int] = {}
            for p, o, _ in committed:
                last[p] = max(last.get(p, 0), o + 1)
            self._check_alerts(events, last)
            self._check_webhooks(events)
        # attribute what can be attributed
        started = {p.payment_id: p.started for p in self.http.payments}
        started |= {d.command["command_id"]: d.created for d in self.direct.commands}
        for a in r.anomalies:
            if a.ident in started:
                a.fault = self._fault_of(started[a.ident])
        rep = verify(self.s, wait=120, codec=self.codec)
        r.verify_ok = rep.ok
        r.verify_checks = [(ch.name, ch.ok, ch.summary) for ch in rep.checks]
        for ch in rep.checks:
            for off in ch.offenders[:20]:
                r.anomalies.append(Anomaly(f"verify: {ch.name}", off, ""))
        self._rates()

    def _check_http(self, terminals: dict[str, list[dict[str, Any]]]) -> None:
        r = self.report
        for p in self.http.payments:
            r.http["requests"] += 1
            r.http["attempts"] += len(p.attempts)
            outs = terminals.get(p.payment_id, [])
            if p.acked is None:
                r.http["unacknowledged (indeterminate)"] += 1
                r.http["  of which applied"] += bool(outs)
                last = p.attempts[-1] if p.attempts else None
                if last is not None and last.status not in RETRY:
                    r.http[f"  refused {last.status} {last.code}"] += 1
                continue
            r.http[f"acknowledged {p.acked}" + (f" {p.attempts[-1].code}" if p.acked == 402 else "")] += 1
            if not outs:
                r.anomalies.append(Anomaly("acknowledged payment lost", p.payment_id, f"HTTP {p.acked}"))
                continue
            status = outs[0]["status"]
            if (p.acked == 201 and status != "COMPLETED") or (p.acked == 402 and status == "COMPLETED"):
                r.anomalies.append(Anomaly("answer disagrees with the ledger", p.payment_id,
                                           f"HTTP {p.acked}, ledger {status}"))
            for code in p.replayed:
                r.http[f"re-sent after key loss: {code}"] += 1
                if code not in ACKED or (p.acked == 201 and code == 402) or (p.acked == 402 and code == 201):
                    r.anomalies.append(Anomaly("re-send after key loss answered differently", p.payment_id,
                                               f"first {p.acked}, re-send {code}"))

    def _check_alerts(self, events: list[dict[str, Any]], ends: dict[int, int],
                      timeout: float = 180.0) -> None:
        """Fraud after its kill -9: it consumed the whole journal (its committed offsets, which
        under exactly-once commit with its outputs, reach the end of ledger.events), no alert
        is on fraud.alerts twice, and every alert is about a debit (or an authorization)
        the journal holds.

        Which alerts fire cannot be recomputed exactly here: the round-trip rule reads
        flows from other accounts' partitions, whose arrival order relative to the
        sender's own debits is not fixed (tests/integration/test_notifications.py
        checks the exact set on traffic without round trips)."""
        from ops import groups as G

        # `ends`: one past each partition's last committed event (the high watermark is
        # one further, past the transaction marker no consumer ever commits beyond)
        deadline = time.monotonic() + timeout
        while True:  # fraud may still be catching up after its last restart
            done = G.committed(self.s, "paystream-fraud")
            lag = {p: e - done.get((EVENTS, p), 0) for p, e in ends.items()
                   if e > done.get((EVENTS, p), 0)}
            if not lag or time.monotonic() > deadline:
                break
            time.sleep(1)
        for p, n in lag.items():
            self.report.anomalies.append(Anomaly("fraud did not consume the journal", f"partition {p}",
                                                 f"{n} events short"))
        got: Counter[str] = Counter()
        # what fraud scores: debits, and authorizations when placed
        debits = {e["payment_id"] for e in events if e["type"] in ("TRANSFER_DEBITED", "HOLD_PLACED")}
        for _, _, a in read_all(self.s, self.codec, "read_committed", topic=topics.ALERTS):
            got[a["alert_id"]] += 1
            if a["payment_id"] not in debits:
                self.report.anomalies.append(Anomaly("alert about a payment the journal lacks",
                                                     a["alert_id"], a["payment_id"]))
        self.report.alerts = (len(got), sum(got.values()))
        for aid, n in got.items():
            if n > 1:
                self.report.anomalies.append(Anomaly("alert emitted twice", aid, f"{n} times"))

    def _check_webhooks(self, events: list[dict[str, Any]], timeout: float = 120.0) -> None:
        """Every notification of the user with a webhook arrived, signed, despite the outage."""
        from paystream import webhooks
        from pipelines.notifications.domain import notification_for

        user = self.hook_user
        assert user is not None and self.receiver is not None
        want = set()
        for ev in events:
            if ev["account_id"] == user.account_id:
                n = notification_for(user.user_id, ev)
                if n is not None:
                    want.add(n["notification_id"])
        deadline = time.monotonic() + timeout
        while not want <= self.receiver.delivered() and time.monotonic() < deadline:
            time.sleep(0.5)
        got = self.receiver.delivered()
        failed = sum(1 for q in self.receiver.requests if q["status"] != 200)
        self.report.webhooks = (len(want), len(got & want), failed)
        for nid in want - got:
            self.report.anomalies.append(Anomaly("notification not delivered", nid, f"user {user.user_id}"))
        for q in self.receiver.requests:
            if not webhooks.verify(q["body"], q["headers"].get(webhooks.HEADER, ""), self.hook_secret,
                                   now=q["received"]):
                self.report.anomalies.append(Anomaly("bad webhook signature",
                                                     q["headers"].get("Paystream-Event-Id", "?"), ""))

    def _check_direct(self, terminals: dict[str, list[dict[str, Any]]]) -> None:
        r = self.report
        for d in self.direct.commands:
            cid = d.command["command_id"]
            r.direct["commands"] += 1
            r.direct["sends"] += d.sends
            if not d.acked_at:
                r.direct["unacknowledged (indeterminate)"] += 1
                continue
            r.direct["acknowledged"] += 1
            if not terminals.get(cid):
                r.anomalies.append(Anomaly("acknowledged command lost", cid, "direct to Kafka"))

    def _check_holds(self, events: list[dict[str, Any]]) -> None:
        """Each hold ends once (captured, voided or expired), and every hold placed has
        ended: they all lapse after HOLD_MS, faults or not (verify, run after this,
        checks the held totals)."""
        placed = {e["payment_id"] for e in events if e["type"] == "HOLD_PLACED" and not e["replay"]}
        ends = ("HOLD_CAPTURED", "HOLD_VOIDED", "HOLD_EXPIRED")
        ended = Counter(e["payment_id"] for e in events if e["type"] in ends)
        self.report.direct["holds placed"] = len(placed)
        for pid, n in ended.items():
            if n > 1:
                self.report.anomalies.append(Anomaly("hold ended twice", pid, f"{n} ends"))
        for pid in placed - set(ended):
            self.report.anomalies.append(Anomaly("hold never ended (expiry lost)", pid, f"held past {HOLD_MS} ms"))

    def _rates(self) -> None:
        acks = sorted(p.acked_at for p in self.http.payments if p.acked)
        dacks = sorted(d.acked_at for d in self.direct.commands if d.acked_at)

        def rate(ts: list[float], a: float, b: float) -> float:
            return sum(1 for t in ts if a <= t < b) / (b - a) if b > a else 0.0

        if self.report.faults:
            a, b = self.report.faults[0].injected - self.warmup + 1, self.report.faults[0].injected
            self.report.steady = (rate(acks, a, b), rate(dacks, a, b))
        for f in self.report.faults:
            during = rate(acks, f.injected, max(f.recovered, f.injected + 1))
            after = rate(acks, f.recovered, f.window_end)
            self.report.rates[f.name] = (during, after)
            self.report.direct_rates[f.name] = (rate(dacks, f.injected, max(f.recovered, f.injected + 1)),
                                                rate(dacks, f.recovered, f.window_end))


def render(report: ChaosReport, console: Console) -> None:
    t = Table("fault", "HTTP acks/s during", "after", "Kafka acks/s during", "after", "recovery s",
              "anomalies", title=f"paystream chaos (steady load before the first fault: {report.steady[0]:.1f} "
              f"HTTP + {report.steady[1]:.1f} Kafka acks/s)")
    per: Counter[str] = Counter(a.fault for a in report.anomalies)
    for f in report.faults:
        during, after = report.rates.get(f.name, (0.0, 0.0))
        kd, ka = report.direct_rates.get(f.name, (0.0, 0.0))
        n = per[f.name]
        note = f" ({f.replays} answered payments re-sent)" if f.replays else ""
        t.add_row(f.name + note, f"{during:.1f}", f"{after:.1f}", f"{kd:.1f}", f"{ka:.1f}",
                  f"{f.recovered - f.injected:.1f}" + (" !" if f.note else ""),
                  f"[green]{n}[/green]" if n == 0 else f"[red]{n}[/red]")
    rest = sum(n for k, n in per.items() if k not in {f.name for f in report.faults})
    t.add_row("end state (verify, readers)", "", "", "", "", "", f"[green]{rest}[/green]" if rest == 0
              else f"[red]{rest}[/red]")
    console.print(t)
    console.print(f"HTTP: {dict(report.http)}")
    console.print(f"direct to Kafka: {dict(report.direct)}")
    console.print(f"ledger.events: {report.committed_events} events seen by read_committed (each once), "
                  f"{report.uncommitted_records} records by read_uncommitted, of which "
                  f"{report.aborted_records} aborted (skipped by read_committed)")
    if report.alerts is not None:
        console.print(f"fraud.alerts: {report.alerts[0]} alerts in {report.alerts[1]} committed records, "
                      f"fraud's offsets at the end of the journal")
    if report.webhooks is not None:
        console.print(f"webhooks: {report.webhooks[1]}/{report.webhooks[0]} notifications delivered "
                      f"({report.webhooks[2]} attempts answered 500 during the outage)")
    console.print("verify: " + ", ".join(f"{n} {'ok' if ok else 'FAIL'}" for n, ok, _ in report.verify_checks))
    console.print(f"component restarts by the watchdog (exits, not the injected kills): {report.crashes}")
    for a in report.anomalies[:30]:
        console.print(f"[red]{a.fault}: {a.kind}: {a.ident} {a.detail}[/red]", highlight=False)
    verdict = "[green]0 anomalies[/green]" if report.ok else f"[red]{len(report.anomalies)} anomalies[/red]"
    console.print(f"{verdict} in {report.seconds:.0f}s")


def chaos(*, short: bool = False, faults: list[str] | None = None, clients: int = 12, rate: float = 1.5,
          direct_rate: float = 20.0, warmup: float | None = None, after: float | None = None, fraud: bool = False,
          keep: bool = False, ledgers: int | None = None, console: Console | None = None) -> ChaosReport:
    """Run the chaos test on a fresh isolated stack; returns the report (`.ok` is the verdict)."""
    console = console or Console()
    chosen = list(faults or (SHORT_FAULTS if short else ALL_FAULTS))
    unknown = [f for f in chosen if f not in (*ALL_FAULTS, STEADY)]
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(ALL_FAULTS)}, {STEADY}")
    t0 = time.monotonic()
    with isolated_stack("paystream-chaos-", keep=keep, console=console) as iso:
        console.print(f"isolated stack under {iso.home} up in {time.monotonic() - t0:.0f}s "
                      f"(kafka {iso.bootstrap_servers}, postgres {iso.postgres_port}, redis {iso.redis_port})")
        run = Chaos(iso, console, faults=chosen, clients=clients, rate=rate, direct_rate=direct_rate,
                    warmup=warmup if warmup is not None else (5.0 if short else 10.0),
                    after=after if after is not None else (4.0 if short else 8.0), fraud=fraud, ledgers=ledgers)
        report = run.run()
    report.seconds = time.monotonic() - t0
    render(report, console)
    return report
