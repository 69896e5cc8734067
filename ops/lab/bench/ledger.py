"""`paystream bench ledger`: throughput and latency of one ledger process.

Produces transfers straight to Kafka and times each one from produce to its
terminal event becoming visible to a `read_committed` consumer, the latency a
client of the ledger actually sees. Runs each workload at full speed
(sustained throughput) and paced (latency at a fixed rate), for several commit
intervals, and samples the ledger's CPU and peak memory.

It starts and owns the ledger process, so it refuses to run while another
ledger instance is in the consumer group: their numbers would mix.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psutil
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from rich.console import Console
from rich.table import Table

from paystream import commands as C
from paystream import kafka, topics
from paystream.batching import COMMAND_BATCH, CommandBatcher
from paystream.codec import Codec
from paystream.settings import PROJECT_ROOT, Settings

EVENTS = topics.EVENTS


@dataclass
class RunResult:
    workload: str
    commit_interval: float
    mode: str
    sent: int
    completed: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    cpu_percent: float = 0.0
    peak_rss_mib: float = 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        s = sorted(self.latencies_ms)
        return s[min(len(s) - 1, int(q * len(s)))]

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


class PeakRss:
    """Samples a process's RSS every 0.2 s in a thread and keeps the peak, for every
    design's process the benches start (the ledger here, the Kafka Streams peer)."""

    def __init__(self, ps: psutil.Process) -> None:
        self.ps = ps
        self.peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.ps.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()


class LedgerProcess:
    def __init__(self, settings: Settings, commit_interval: float,
                 env_extra: dict[str, str] | None = None, instance: str = "bench") -> None:
        # env_extra points the child at another stack (ops.lab.isolated.settings_env).
        env = {**os.environ, **(env_extra or {}),
               "PAYSTREAM_LEDGER_COMMIT_INTERVAL": str(commit_interval),
               "PAYSTREAM_LEDGER_INSTANCE": instance, "PYTHONUNBUFFERED": "1"}
        log = open(settings.home / "logs" / f"{instance}-ledger.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "run", "ledger"],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)
        self.ps = psutil.Process(self.proc.pid)
        self.rss = PeakRss(self.ps)

    @property
    def peak_rss(self) -> int:
        return self.rss.peak

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.rss.stop()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_NOT_READY = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION)


_HEAD_FIELDS = ("event_id", "command_id", "payment_id", "account_id", "sequence", "type", "command_type",
                "status", "terminal", "replay")


def _status_symbols() -> list[str] | None:
    """OutcomeStatus's symbols, if the event schema still starts with the fields
    `event_head` reads (else None, and the reader decodes whole events)."""
    from paystream.codec import SCHEMA_DIR

    fields = json.loads((SCHEMA_DIR / "ledger_event.avsc").read_text())["fields"]
    if tuple(f["name"] for f in fields[: len(_HEAD_FIELDS)]) != _HEAD_FIELDS:
        return None
    return list(fields[7]["type"]["symbols"])


_STATUS = _status_symbols()


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def event_head(data: bytes) -> tuple[str, str, bool, bool]:
    """(command_id, status, terminal, replay) read from the first fields of a ledger
    event's Avro body, without decoding the rest: the load client reads two events per
    transfer, and a whole decode made it the machine's third-largest CPU user
    (60-110 us per transfer), taking cores from the designs it measures. Checked
    against full decoding in tests/unit/test_bench_reader.py."""
    assert _STATUS is not None
    pos = 5
    command_id = ""
    for i in range(4):
        n, pos = _varint(data, pos)
        if i == 1:
            command_id = data[pos:pos + n].decode()
        pos += n
    _, pos = _varint(data, pos)  # sequence
    _, pos = _varint(data, pos)  # type
    _, pos = _varint(data, pos)  # command_type
    status, pos = _varint(data, pos)
    return command_id, _STATUS[status], data[pos] == 1, data[pos + 1] == 1


class Outcomes:
    """Follows ledger.events (or `topic`, a peer's copy of it with the same schema) from
    the current end and timestamps terminal outcomes. Only each event's first fields
    are read while the clock runs (`event_head`); with `keep=True` the raw values are
    kept, and `events()` decodes them afterwards (bench compare replays its own)."""

    def __init__(self, settings: Settings, codec: Codec, keep: bool = False, topic: str = EVENTS) -> None:
        self.codec = codec
        self.keep = keep
        self.raw: list[bytes] = []
        self.own_id = codec.schema_id(EVENTS)
        self.consumer = kafka.consumer(settings, f"bench-{uuid.uuid4()}", **{"fetch.wait.max.ms": 10})
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, self._end(topic, p)) for p in parts])
        self.seen: dict[str, tuple[float, str]] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _end(self, topic: str, partition: int) -> int:
        """The partition's end offset; a topic created a moment ago (a peer's) may not
        have its leader in place yet, which is worth a few retries."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return int(self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
            except KafkaException as exc:
                err = exc.args[0]
                if not (err.retriable() or err.code() in _NOT_READY) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _run(self) -> None:
        while not self._stop.is_set():
            for m in kafka.consume_ready(self.consumer, 2000, 0.05):
                if m.error():
                    continue
                now = time.monotonic()
                value = m.value()
                if self.keep:
                    self.raw.append(value)
                if _STATUS is not None and int.from_bytes(value[1:5], "big") == self.own_id and value[0] == 0:
                    command_id, status, terminal, replay = event_head(value)
                else:
                    e = self.codec.decode(EVENTS, value)
                    command_id, status, terminal, replay = e["command_id"], e["status"], e["terminal"], e["replay"]
                if terminal and not replay:
                    self.seen.setdefault(command_id, (now, status))

    def events(self) -> list[dict[str, Any]]:
        """Every kept event, decoded (after the measurement)."""
        return [self.codec.decode(EVENTS, v) for v in list(self.raw)]

    def wait_for(self, ids: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(i in self.seen for i in ids):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.consumer.close()


def _group_is_busy(settings: Settings) -> bool:
    """Whether another ledger is in the group. A fresh broker has no group coordinator
    until __consumer_offsets exists (NOT_COORDINATOR for a moment after `stack up`),
    and then no group can have members either."""
    admin = kafka.admin(settings)
    for _ in range(5):
        try:
            desc = admin.describe_consumer_groups(["paystream-ledger"])["paystream-ledger"].result()
            return bool(desc.members)
        except KafkaException as exc:
            if exc.args[0].code() not in (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                                          KafkaError.COORDINATOR_LOAD_IN_PROGRESS):
                raise
            time.sleep(1)
    return False


def _setup_accounts(settings: Settings, codec: Codec, outcomes: Outcomes, n: int) -> list[str]:
    accounts = [str(uuid.uuid4()) for _ in range(n)]
    cmds: list[dict[str, Any]] = [C.open_account(a, external_number=a[:12], owner_id="bench", currency="USD")
                                  for a in accounts]
    deposits = [C.deposit(a, 10**12, "USD") for a in accounts]
    _produce(settings, codec, cmds)
    _produce(settings, codec, deposits)
    if not outcomes.wait_for([d["command_id"] for d in deposits], 300):
        raise RuntimeError("accounts were not opened and funded in time")
    return accounts


_PRODUCERS: dict[str, Producer] = {}
_BATCHERS: dict[str, CommandBatcher] = {}

# Offered load is independent single-command submissions; paystream's own client
# library (`paystream.batching.CommandBatcher`) coalesces them per partition, as a
# gateway or a direct producer using the library does. `--no-batch` sends each
# command as its own record (what a producer without the library does).
BATCH = {"enabled": True, "max_items": 128, "linger_ms": 5.0}


@dataclass(frozen=True, slots=True)
class Encoded:
    """A command as the load client holds it: encoded before the clock starts, for
    every design, so encoding costs every design the same and the time measured is
    the system's, not the encoder's."""

    command_id: str
    account_id: str
    value: bytes
    # paystream's command topic for it (deposits are privileged); a peer's topic is one
    topic: str = C.COMMANDS_TOPIC

    @property
    def key(self) -> bytes:
        return self.account_id.encode()


def encode_all(codec: Codec, cmds: list[dict[str, Any]]) -> list[Encoded]:
    # Both command topics' subjects hold the same schema, so the registry gives them
    # one id and the peer (one command topic) reads these bytes as they are.
    return [Encoded(c["command_id"], c["account_id"], codec.encode(t := C.topic_for(c), c), t) for c in cmds]



def _producer(settings: Settings) -> Producer:
    """One long-lived producer per cluster, as a gateway keeps one. A fresh
    idempotent producer's first acknowledgement sometimes took 500 ms (its producer
    id arrives after a retry), and every paced run used to start with one: those
    first 50 commands were the whole p99 of a 10 s run at 500/s, the bench's cost,
    not the ledger's. The setup traffic warms this one up before anything is timed."""
    key = settings.bootstrap_servers
    if key not in _PRODUCERS:
        # Records to another design's topic (one per command) linger as long as
        # paystream's client library lets a command wait for its batch: the same window.
        _PRODUCERS[key] = kafka.producer(settings, **{"linger.ms": float(BATCH["linger_ms"])})
    return _PRODUCERS[key]


def _batcher(settings: Settings, codec: Codec) -> CommandBatcher:
    key = settings.bootstrap_servers
    if key not in _BATCHERS:
        # Its own producer, lingering 1 ms as the gateway's does: the batcher has already
        # waited its window, and a second 5 ms linger in librdkafka was added latency the
        # peer's single records do not pay (they linger 5 ms once).
        producer = kafka.producer(settings, **{"linger.ms": 1})
        partitions = len(producer.list_topics(C.COMMANDS_TOPIC, timeout=10).topics[C.COMMANDS_TOPIC].partitions)
        _BATCHERS[key] = CommandBatcher(
            producer, header=codec.header(C.COMMANDS_TOPIC, COMMAND_BATCH),
            command_schema_id=codec.schema_id(C.COMMANDS_TOPIC), partitions=partitions,
            max_items=int(BATCH["max_items"]), linger_ms=float(BATCH["linger_ms"]),
        )  # fmt: skip
    return _BATCHERS[key]


def _produce(settings: Settings, codec: Codec, cmds: list[dict[str, Any]] | list[Encoded],
             rate: float = 0.0, sent_at: dict[str, float] | None = None) -> None:
    items: list[Encoded] = (
        cmds if cmds and isinstance(cmds[0], Encoded) else encode_all(codec, cmds)  # type: ignore[assignment,arg-type]
    )
    produce_encoded(settings, items, rate=rate, sent_at=sent_at, codec=codec)


def produce_encoded(settings: Settings, cmds: list[Encoded], *, topic: str | None = None,
                    rate: float = 0.0, sent_at: dict[str, float] | None = None, codec: Codec | None = None) -> None:
    """Independent single-command submissions, open loop at `rate` if given. To
    paystream's topic they go through paystream's client library (`CommandBatcher`,
    when `BATCH` is enabled and a codec is given), which coalesces them per partition
    as a gateway or a direct producer using the library does; to any other design's
    topic, one produce per command (the producer's own linger is the same for all).
    Without `topic`, each command goes to its own paystream command topic."""
    p = _producer(settings)
    batcher = (_batcher(settings, codec) if BATCH["enabled"] and codec is not None and topic is None
               else None)  # fmt: skip
    start = time.monotonic()
    for i, c in enumerate(cmds):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if sent_at is not None:
            sent_at[c.command_id] = time.monotonic()
        if batcher is not None and c.topic == C.COMMANDS_TOPIC:
            batcher.send(c.account_id, c.value)
        else:
            p.produce(topic or c.topic, key=c.key, value=c.value)
        p.poll(0)
        if batcher is not None:
            batcher.producer.poll(0)
    if batcher is not None:
        batcher.flush()
        batcher.producer.flush(60)
    p.flush(60)


def _transfers(accounts: list[str], n: int, workload: str, rnd: random.Random) -> list[dict[str, Any]]:
    hot = accounts[0]
    out = []
    for _ in range(n):
        if workload == "hot" and rnd.random() < 0.5:
            src, dst = hot, rnd.choice(accounts[1:])
        else:
            src, dst = rnd.sample(accounts, 2)
        out.append(C.transfer(src, dst, rnd.randint(1, 10_000), "USD"))
    return out


def run_one(settings: Settings, codec: Codec, outcomes: Outcomes, ledger: LedgerProcess,
            accounts: list[str], workload: str, ci: float, mode: str, n: int, rate: float) -> RunResult:
    rnd = random.Random(f"{workload}{ci}{mode}")
    cmds = encode_all(codec, _transfers(accounts, n, workload, rnd))
    sent_at: dict[str, float] = {}
    cpu0, t0 = ledger.cpu_seconds(), time.monotonic()
    _produce(settings, codec, cmds, rate=rate, sent_at=sent_at)
    ids = [c.command_id for c in cmds]
    outcomes.wait_for(ids, timeout=max(120.0, n / 200))
    done = [i for i in ids if i in outcomes.seen]
    end = max(outcomes.seen[i][0] for i in done) if done else time.monotonic()
    cpu = ledger.cpu_seconds() - cpu0
    res = RunResult(workload, ci, mode, n, len(done), end - t0,
                    [(outcomes.seen[i][0] - sent_at[i]) * 1000 for i in done])
    res.cpu_percent = 100 * cpu / max(end - t0, 1e-9)
    res.peak_rss_mib = ledger.peak_rss / 2**20
    return res


def bench(settings: Settings, *, transfers: int, accounts: int, paced_rate: float,
          paced_seconds: float, commit_intervals: list[float], workloads: list[str],
          console: Console | None = None) -> list[RunResult]:
    console = console or Console()
    if _group_is_busy(settings):
        raise RuntimeError("a ledger is running in group paystream-ledger; stop it first (the bench runs its own)")
    codec = Codec(settings.registry_url)
    outcomes = Outcomes(settings, codec)
    results: list[RunResult] = []
    try:
        for ci in commit_intervals:
            ledger = LedgerProcess(settings, ci)
            try:
                console.print(f"commit_interval={ci}s: opening {accounts} accounts")
                accts = _setup_accounts(settings, codec, outcomes, accounts)
                for wl in workloads:
                    for mode, n, rate in (("max", transfers, 0.0),
                                          ("paced", int(paced_rate * paced_seconds), paced_rate)):
                        r = run_one(settings, codec, outcomes, ledger, accts, wl, ci, mode, n, rate)
                        console.print(f"  {wl:8} {mode:6} {r.rate:8.0f}/s p50={r.pct(.5):.0f}ms "
                                      f"p99={r.pct(.99):.0f}ms cpu={r.cpu_percent:.0f}% rss={r.peak_rss_mib:.0f}MiB")
                        results.append(r)
            finally:
                ledger.stop()
    finally:
        outcomes.close()
    table = Table("workload", "commit s", "mode", "sent", "done", "transfers/s", "p50 ms", "p95 ms",
                  "p99 ms", "ledger CPU %", "peak RSS MiB", title="ledger benchmark")
    for r in results:
        table.add_row(r.workload, f"{r.commit_interval}", r.mode, str(r.sent), str(r.completed),
                      f"{r.rate:.0f}", f"{r.pct(.5):.0f}", f"{r.pct(.95):.0f}", f"{r.pct(.99):.0f}",
                      f"{r.cpu_percent:.0f}", f"{r.peak_rss_mib:.0f}")
    console.print(table)
    return results
