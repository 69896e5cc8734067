"""`paystream bench framework`: what a message costs before paystream's own logic runs.

The ledger's throughput on this machine is bounded by CPU per transfer (docs/PROOF.md).
This benchmark splits that cost into a ladder of Quix Streams applications that do
less and less than the ledger, on the same broker, the same records (real Avro
transfer commands, 1,000 account keys over the 8 partitions) and the same settings
as the ledger (commit interval 0.1 s, linger 20 ms):

* `alo-pass`   at-least-once, stateless: consume, produce the value unchanged;
* `eos-pass`   the same inside Kafka transactions (exactly-once);
* `eos-state`  plus one state read and one state write per message (changelogged);
* `eos-avro`   plus decoding the command and encoding a record with the registry codec;
* `eos-shape`  the ledger's shape without its rules: commands and credit legs joined
               with concat (as the ledger), two state reads and two writes per
               message, an event out per message and a leg out per command, all
               Avro with the real schemas. Its CPU per message x 2 is what a
               transfer costs on this stack before any rule runs.

Each stage runs in a process of its own and reports its CPU per message (every
thread, librdkafka's included) between its 10th percentile message and its last;
the broker's CPU is sampled over the same window. A transfer is one command and one
leg, so `eos-shape` x 2 is a floor for the ledger's CPU per transfer that no change
to paystream's own code (its rules, ids, metrics) can go below while it runs on
Quix Streams with Avro.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import NewTopic
from rich.console import Console
from rich.table import Table

from ops.lab.bench.compare import listener
from paystream import commands as C
from paystream import kafka, topics
from paystream.codec import Codec
from paystream.settings import PROJECT_ROOT, Settings, get_settings
from paystream.stream import quix_compat

STAGES = ("alo-pass", "eos-pass", "eos-state", "eos-avro", "eos-shape")
EVENTS, LEGS = topics.EVENTS, topics.LEGS
PARTITIONS = 8


@dataclass
class StageResult:
    stage: str
    messages: int
    seconds: float
    cpu_seconds: float
    broker_cpu_seconds: float
    outputs: int = 0  # records the stage committed to its sink topic (read back, read_committed)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_seconds / self.messages if self.messages else 0.0

    @property
    def broker_us(self) -> float:
        return 1e6 * self.broker_cpu_seconds / self.messages if self.messages else 0.0


# ----------------------------------------------------------------------------- child


def _posting(account: str, amount: int, currency: str) -> dict[str, Any]:
    return {"account_id": account, "account_kind": "USER", "amount": amount, "currency": currency}


def _event(key: str, rec: dict[str, Any], amount: int, currency: str, seq: int) -> dict[str, Any]:
    """An event as large as the ledger's (two postings), without computing anything."""
    pid = rec.get("payment_id") or rec["command_id"]
    return {
        "event_id": rec["command_id"], "command_id": rec["command_id"], "payment_id": pid,
        "account_id": key, "sequence": seq, "type": "TRANSFER_DEBITED", "command_type": "TRANSFER",
        "status": "PENDING", "terminal": False, "replay": False, "reason": None,
        "counterparty_id": key, "amount": amount, "currency": currency, "balance_after": 0,
        "postings": [_posting(key, -amount, currency), _posting(key, amount, currency)],
        "account": None, "requested_by": rec["requested_by"], "note": None, "metadata": {},
        "occurred_at": 0,
    }  # fmt: skip


def _leg(key: str, cmd: dict[str, Any]) -> dict[str, Any]:
    mv = cmd["movement"]
    return {
        "leg_id": cmd["command_id"], "kind": "CREDIT", "command_id": cmd["command_id"],
        "payment_id": cmd["command_id"], "account_id": mv["counterparty_id"], "counterparty_id": key,
        "amount": mv["amount"], "currency": mv["currency"], "reason": None,
        "requested_by": cmd["requested_by"], "issued_at": 0,
    }  # fmt: skip


def _child(stage: str, source: str, sink: str, n: int, result: str, group: str) -> None:
    """One stage as its own Quix application; exits after `n` messages."""
    from quixstreams import Application, message_context
    from quixstreams.state import State

    from paystream import kafka

    settings = get_settings()
    eos = stage != "alo-pass"
    state_dir = tempfile.mkdtemp(prefix="bench-framework-")
    app = Application(
        broker_address=kafka.quix_connection(settings),
        consumer_group=group,
        processing_guarantee="exactly-once" if eos else "at-least-once",
        commit_interval=0.1,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        producer_extra_config={"linger.ms": 20, **kafka.QUIX_PRODUCER},
        consumer_extra_config={"fetch.wait.max.ms": 20, **kafka.QUIX_CONSUMER},
        consumer_poll_timeout=0.05,
        loglevel="WARNING",
    )
    codec = Codec(settings.registry_url)
    src = app.topic(source, key_deserializer="bytes", value_deserializer="bytes")
    dst = app.topic(sink, key_serializer="bytes", value_serializer="bytes")
    warm = max(1, n // 10)
    marks: dict[str, float] = {}
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count == warm:
            marks["t0"], marks["c0"] = time.time(), time.process_time()
        elif count == n:
            marks["t1"], marks["c1"] = time.time(), time.process_time()
            Path(result).write_text(json.dumps({**marks, "messages": n - warm}))
            app.stop()

    def passthrough(value: bytes) -> bytes:
        tick()
        return value

    def stateful(value: bytes, state: State) -> bytes:
        acct = state.get("a") or {"balance": 0, "seq": 0}
        acct["balance"] += 1
        acct["seq"] += 1
        state.set("a", acct)
        tick()
        return value

    def avro(value: bytes, state: State) -> bytes:
        cmd = codec.decode(C.COMMANDS_TOPIC, value)
        acct = state.get("a") or {"balance": 0, "seq": 0}
        acct["balance"] += 1
        acct["seq"] += 1
        state.set("a", acct)
        tick()
        return codec.encode(C.COMMANDS_TOPIC, cmd)

    def shape(value: bytes, key: bytes, timestamp: int, headers: Any, state: State) -> list[bytes]:
        skey = key.decode()
        if message_context().topic == source:
            rec = codec.decode(C.COMMANDS_TOPIC, value)
            mv = rec["movement"]
            amount, currency, memo = mv["amount"], mv["currency"], f"c:{rec['command_id']}"
        else:
            rec = codec.decode(LEGS, value)
            amount, currency, memo = rec["amount"], rec["currency"], f"p:{rec['payment_id']}"
        acct = state.get("a") or {"balance": 0, "seq": 0}
        state.get(memo)
        acct["balance"] += amount
        acct["seq"] += 1
        state.set("a", acct)
        state.set(memo, {"st": "DONE"})
        out = [codec.encode(EVENTS, _event(skey, rec, amount, currency, acct["seq"]))]
        if message_context().topic == source:
            out.append(codec.encode(LEGS, _leg(skey, rec)))
        tick()
        return out

    sdf = app.dataframe(src)
    if stage == "eos-shape":
        legs = app.topic(f"{source}.legs", key_deserializer="bytes", value_deserializer="bytes")
        sdf = sdf.concat(app.dataframe(legs))
        quix_compat.disable_time_alignment(app)  # as the ledger does
        sdf = sdf.apply(shape, stateful=True, expand=True, metadata=True)
    elif stage in ("alo-pass", "eos-pass"):
        sdf = sdf.apply(passthrough)
    elif stage == "eos-state":
        sdf = sdf.apply(stateful, stateful=True)
    else:
        sdf = sdf.apply(avro, stateful=True)
    sdf.to_topic(dst)
    try:
        app.run()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- parent


class _BrokerClock:
    """Samples the broker's CPU with wall-clock stamps so a child's window can be priced."""

    def __init__(self, port: int) -> None:
        self.proc = listener(port)
        if self.proc is None:
            raise RuntimeError(f"no local process listens on port {port}: the broker's CPU cannot be "
                               "priced (is the stack up on this machine?)")
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.proc is not None
        while not self._stop.wait(0.1):
            t = self.proc.cpu_times()
            self.samples.append((time.time(), t.user + t.system))

    def at(self, when: float) -> float:
        """CPU seconds at `when`, interpolated between the samples around it."""
        if not self.samples:
            return 0.0
        i = bisect_right(self.samples, when, key=lambda s: s[0])
        if i == 0:
            return self.samples[0][1]
        if i == len(self.samples):
            return self.samples[-1][1]
        (ta, ca), (tb, cb) = self.samples[i - 1], self.samples[i]
        return ca + (cb - ca) * (when - ta) / (tb - ta)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)


def _fill(settings: Settings, codec: Codec, topic: str, n: int, legs: bool) -> None:
    """`n` transfer commands; with `legs`, their n credit legs too (for `eos-shape`)."""
    from paystream import kafka

    rnd = random.Random(7)
    accounts = [str(uuid.uuid4()) for _ in range(1_000)]
    p = kafka.producer(settings)
    for _ in range(n):
        src, dst = rnd.sample(accounts, 2)
        c = C.transfer(src, dst, rnd.randint(1, 10_000), "USD")
        p.produce(topic, key=src.encode(), value=codec.encode(C.COMMANDS_TOPIC, c))
        if legs:
            p.produce(f"{topic}.legs", key=dst.encode(), value=codec.encode(LEGS, _leg(src, c)))
        p.poll(0)
    p.flush(60)


def _committed_records(settings: Settings, topic: str) -> int:
    """Records a read_committed consumer sees in `topic`, read to its end."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**kafka.connection(settings), "group.id": f"bench-count-{uuid.uuid4()}",
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p, 0) for p in range(PARTITIONS)]
        ends = {p.partition: c.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        c.assign(parts)
        count, deadline = 0, time.monotonic() + 60
        while time.monotonic() < deadline:
            count += sum(1 for m in c.consume(5_000, 0.5) if not m.error())
            positions = {tp.partition: tp.offset for tp in c.position(parts)}
            # a position past the last record can still sit before a trailing commit marker
            if all(positions[p] >= ends[p] - 1 or ends[p] == 0 for p in ends):
                count += sum(1 for m in c.consume(5_000, 0.5) if not m.error())
                return count
        raise RuntimeError(f"could not read {topic} to its end")
    finally:
        c.close()


def bench(settings: Settings, *, messages: int, stages: list[str], console: Console | None = None,
          env_extra: dict[str, str] | None = None) -> list[StageResult]:
    console = console or Console()
    if messages < 100:
        raise ValueError("at least 100 messages: the window starts at the 10th percentile message")
    admin = kafka.admin(settings)
    run = uuid.uuid4().hex[:8]
    source = f"bench.framework.{run}.in"
    sinks = {s: f"bench.framework.{run}.{s}" for s in stages}
    groups = {s: f"bench-framework-{run}-{s}" for s in stages}
    topics = [source, f"{source}.legs", *sinks.values()]
    broker = _BrokerClock(settings.kafka_port)
    for f in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics]).values():
        f.result()
    codec = Codec(settings.registry_url)
    results: list[StageResult] = []
    try:
        t = time.monotonic()
        _fill(settings, codec, source, messages, legs="eos-shape" in stages)
        console.print(f"{messages} transfer commands in {source} ({time.monotonic() - t:.1f}s)")
        for stage in stages:
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
                out = fh.name
            env = {**os.environ, **(env_extra or {}), "PYTHONUNBUFFERED": "1"}
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "ops.lab.bench.framework", stage, source, sinks[stage],
                     str(messages * 2 if stage == "eos-shape" else messages), out, groups[stage]],
                    env=env, cwd=PROJECT_ROOT, timeout=max(300.0, messages / 200), check=False,
                )
                data = json.loads(Path(out).read_text() or "{}")
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"stage {stage} did not finish in {exc.timeout:.0f}s") from exc
            finally:
                os.unlink(out)
            if proc.returncode != 0 or "t1" not in data:
                raise RuntimeError(f"stage {stage} failed (exit {proc.returncode})")
            time.sleep(0.3)  # one more broker sample after the window
            r = StageResult(stage, data["messages"], data["t1"] - data["t0"], data["c1"] - data["c0"],
                            broker.at(data["t1"]) - broker.at(data["t0"]),
                            _committed_records(settings, sinks[stage]))
            results.append(r)
            console.print(f"  {stage:10} {r.rate:8.0f} msg/s  process {r.cpu_us:6.0f} us/msg  "
                          f"broker {r.broker_us:6.0f} us/msg")
    finally:
        broker.close()
        # Quix made a changelog topic per stateful stage, named after its group.
        scratch = topics + [t for t in admin.list_topics(timeout=10).topics
                            if any(t.startswith(f"changelog__{g}") for g in groups.values())]
        for f in admin.delete_topics(scratch).values():
            with contextlib.suppress(Exception):  # best-effort clean-up of scratch topics
                f.result()
        for f in admin.delete_consumer_groups(list(groups.values())).values():
            with contextlib.suppress(Exception):  # a stage that never started has no group
                f.result()
    table = Table("stage", "messages", "msg/s", "process CPU us/msg", "broker CPU us/msg",
                  title="Quix Streams cost ladder (one process, 8 partitions)")
    for r in results:
        table.add_row(r.stage, str(r.messages), f"{r.rate:.0f}", f"{r.cpu_us:.0f}", f"{r.broker_us:.0f}")
    console.print(table)
    return results


def _main(argv: list[str]) -> Any:
    stage, source, sink, n, result, group = argv
    return _child(stage, source, sink, int(n), result, group)


if __name__ == "__main__":
    _main(sys.argv[1:])
