"""Foundation guarantees against real services: transactions, registry, topics, schema CI.

Everything shared is left as found: throwaway topics and subjects are created
per test and deleted afterwards; the registry persistence test restarts an
isolated stack of its own (own home and ports), never the shared one.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import ConfigResource, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from ops import stack as stack_mod
from ops.lab.isolated import isolated_settings
from ops.schemas_cli import check_compatibility, register_all
from ops.topics import TopicMismatchError, apply_topics
from paystream import commands as C
from paystream import kafka
from paystream.codec import Codec, TopicSpec, load_schema_text, topic_specs
from paystream.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

PAYSTREAM = str(Path(sys.executable).parent / "paystream")
# Wide enough that rich never wraps a topic or file name in CLI output.
CLI_ENV = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}


# --------------------------------------------------------------------------- helpers


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as an unsigned int."""
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    body = len(data) // 4 * 4
    for i in range(0, body, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = data[body:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def java_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's Java DefaultPartitioner (and Quix) picks for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_murmur2_matches_kafkas_reference_values() -> None:
    # From Kafka's UtilsTest.testMurmur2 (values there are signed Java ints).
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, expected in cases.items():
        assert struct.unpack("<i", struct.pack("<I", murmur2(data)))[0] == expected, data


def _throwaway_name(suffix: str = "") -> str:
    return f"test.foundation.{uuid.uuid4().hex[:12]}{suffix}"


class Throwaway:
    """Creates topics (and their value subjects) for one test and deletes them afterwards."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin = kafka.admin(settings)
        self.registry = SchemaRegistryClient({"url": settings.registry_url})
        self.topics: list[str] = []
        self.subjects: list[str] = []

    def spec(self, name: str, partitions: int, value_schema: str = "command.avsc") -> TopicSpec:
        base = topic_specs()["payments.commands"]
        return replace(base, name=name, partitions=partitions, value_schema=value_schema)

    def create_topic(self, spec: TopicSpec, partitions: int | None = None) -> None:
        """Create with AdminClient explicitly (the broker never auto-creates)."""
        self.topics.append(spec.name)
        new = NewTopic(spec.name, partitions or spec.partitions, spec.replication_factor)
        self.admin.create_topics([new])[spec.name].result(30)
        self.wait_for(spec.name)

    def wait_for(self, topic: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            md = self.admin.list_topics(topic, timeout=10).topics.get(topic)
            if md is not None and md.error is None and md.partitions and all(
                p.leader >= 0 for p in md.partitions.values()
            ):
                return
            assert time.monotonic() < deadline, f"{topic} has no leaders after {timeout}s"
            time.sleep(0.1)

    def register(self, spec: TopicSpec) -> int:
        self.subjects.append(spec.subject)
        schema = Schema(load_schema_text(spec.value_schema), "AVRO")
        return int(self.registry.register_schema(spec.subject, schema))

    def track(self, topic: str) -> None:
        """Delete a topic created by the code under test."""
        self.topics.append(topic)

    def cleanup(self) -> None:
        errors: list[str] = []
        existing = set(self.admin.list_topics(timeout=10).topics)
        doomed = [t for t in dict.fromkeys(self.topics) if t in existing]
        if doomed:
            for topic, fut in self.admin.delete_topics(doomed, operation_timeout=30).items():
                try:
                    fut.result(30)
                except KafkaException as exc:
                    errors.append(f"delete topic {topic}: {exc}")
        for subject in dict.fromkeys(self.subjects):
            try:
                self.registry.delete_subject(subject)
                self.registry.delete_subject(subject, permanent=True)
            except Exception as exc:
                errors.append(f"delete subject {subject}: {exc}")
        assert not errors, errors


@pytest.fixture
def throwaway(stack: Settings) -> Iterator[Throwaway]:
    t = Throwaway(stack)
    yield t
    t.cleanup()


def read_all(settings: Settings, topic: str, isolation: str, timeout: float = 30) -> list[Message]:
    """Every record of ``topic`` from the beginning up to the end as ``isolation`` sees it."""
    consumer = Consumer({
        **kafka.connection(settings),
        "group.id": f"test-foundation-read-{uuid.uuid4()}",
        "isolation.level": isolation,
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    try:
        parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        at_end: set[int] = set()
        records: list[Message] = []
        deadline = time.monotonic() + timeout
        while at_end != set(parts):
            assert time.monotonic() < deadline, f"{topic}: no EOF on {set(parts) - at_end}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise KafkaException(err)
            at_end.discard(msg.partition())
            records.append(msg)
        return records
    finally:
        consumer.close()


def _ids(codec: Codec, topic: str, records: list[Message]) -> Counter[str]:
    return Counter(codec.decode(topic, m.value())["command_id"] for m in records)


def _deposits(n: int, tag: str) -> list[dict[str, Any]]:
    return [C.deposit(str(uuid.uuid4()), 100 + i, "EUR", requested_by=tag) for i in range(n)]


# --------------------------------------------------------------------------- a. transactions


def test_transactions_commit_once_abort_never_and_consume_transform_produce(
    stack: Settings, throwaway: Throwaway
) -> None:
    source = throwaway.spec(_throwaway_name(".in"), partitions=3)
    sink = throwaway.spec(_throwaway_name(".out"), partitions=3)
    for spec in (source, sink):
        throwaway.create_topic(spec)
        throwaway.register(spec)
    codec = Codec(stack.registry_url, {source.name: source, sink.name: sink})

    producer = kafka.producer(stack, **{"transactional.id": f"test-foundation-{uuid.uuid4()}"})
    producer.init_transactions(30)

    def send(cmds: list[dict[str, Any]], commit: bool) -> None:
        producer.begin_transaction()
        for c in cmds:
            producer.produce(source.name, key=c["account_id"].encode(),
                             value=codec.encode(source.name, c))
        # Make sure an aborted batch really reaches the log, so read_committed has
        # something to hide (abort_transaction alone may purge unsent messages).
        assert producer.flush(30) == 0
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    first, aborted, last = _deposits(20, "first"), _deposits(10, "aborted"), _deposits(5, "last")
    send(first, commit=True)
    send(aborted, commit=False)
    send(last, commit=True)  # behind the aborted batch: the consumer must skip over it

    committed_records = read_all(stack, source.name, "read_committed")
    sent = {c["command_id"]: c for c in first + last}
    assert _ids(codec, source.name, committed_records) == Counter(list(sent))  # each exactly once
    for m in committed_records:
        value = codec.decode(source.name, m.value())
        assert value == sent[value["command_id"]]
        assert m.key() == value["account_id"].encode()
        # murmur2_random is the Java partitioner: the ledger's partition for this key.
        assert m.partition() == java_partition(m.key(), source.partitions)

    everything = read_all(stack, source.name, "read_uncommitted")
    assert _ids(codec, source.name, everything) == Counter(list(sent)) + Counter(
        c["command_id"] for c in aborted
    ), "the aborted batch should be in the log, hidden only by read_committed"

    # Consume-transform-produce: output and input offsets commit in one transaction.
    group = f"test-foundation-ctp-{uuid.uuid4()}"
    ctp = kafka.producer(stack, **{"transactional.id": f"test-foundation-ctp-{uuid.uuid4()}"})
    ctp.init_transactions(30)

    def transform_once(commit: bool) -> int:
        consumer = kafka.consumer(stack, group)
        consumer.subscribe([source.name])
        try:
            seen: list[Message] = []
            deadline = time.monotonic() + 30
            while len(seen) < len(sent):
                assert time.monotonic() < deadline, f"consumed {len(seen)} of {len(sent)}"
                seen += [m for m in consumer.consume(100, 0.5) if m.error() is None]
            ctp.begin_transaction()
            for m in seen:
                value = codec.decode(source.name, m.value())
                value["requested_by"] = "transformed"
                ctp.produce(sink.name, key=m.key(), value=codec.encode(sink.name, value))
            assert ctp.flush(30) == 0
            ctp.send_offsets_to_transaction(
                consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30
            )
            if commit:
                ctp.commit_transaction(30)
            else:
                ctp.abort_transaction(30)
            return len(seen)
        finally:
            consumer.close()

    def group_offsets() -> dict[int, int]:
        probe = kafka.consumer(stack, group)
        try:
            parts = [TopicPartition(source.name, p) for p in range(source.partitions)]
            return {tp.partition: tp.offset for tp in probe.committed(parts, timeout=10)}
        finally:
            probe.close()

    # An aborted attempt: neither its output nor its offsets count ...
    assert transform_once(commit=False) == len(sent)
    assert all(offset < 0 for offset in group_offsets().values()), group_offsets()
    assert read_all(stack, sink.name, "read_committed") == []
    # ... so the retry (a restarted processor in the same group) sees every input again.
    assert transform_once(commit=True) == len(sent)

    last_offset: dict[int, int] = {}
    for m in committed_records:
        partition, offset = m.partition(), m.offset()
        assert partition is not None and offset is not None
        last_offset[partition] = max(last_offset.get(partition, -1), offset)
    offsets = group_offsets()
    for partition, highest in last_offset.items():
        assert offsets[partition] > highest, (partition, offsets)  # the group resumes after it

    out = read_all(stack, sink.name, "read_committed")
    assert _ids(codec, sink.name, out) == Counter(list(sent))
    assert {codec.decode(sink.name, m.value())["requested_by"] for m in out} == {"transformed"}
    assert len(read_all(stack, sink.name, "read_uncommitted")) == 2 * len(sent)


# --------------------------------------------------------------------------- b. registry


@pytest.fixture
def isolated() -> Iterator[Settings]:
    """A stack of its own on free ports; its home must be traversable by the postgres user
    (pytest's tmp dirs are 0700), so it lives in a plain temp dir opened to o+x."""
    home_root = Path(tempfile.mkdtemp(prefix="paystream-isolated-"))
    home_root.chmod(0o711)
    settings = isolated_settings(home_root / "home")  # every address override cleared
    assert str(settings.registry_port) in settings.registry_url
    try:
        yield settings
    finally:
        try:
            stack_mod.down(settings)
        finally:
            shutil.rmtree(home_root, ignore_errors=True)


@pytest.mark.slow
def test_registry_ids_survive_a_stack_restart(isolated: Settings) -> None:
    first = stack_mod.up(isolated)
    assert first.started == set(stack_mod.SERVICES)

    ids = register_all(isolated.registry_url)
    command = C.transfer(str(uuid.uuid4()), str(uuid.uuid4()), 1234, "EUR",
                         metadata={"note": "before restart"})
    data = Codec(isolated.registry_url).encode(C.COMMANDS_TOPIC, command)
    schema_id = struct.unpack(">bI", data[:5])[1]
    assert schema_id == ids[f"{C.COMMANDS_TOPIC}-value"]

    assert set(stack_mod.down(isolated)) == set(stack_mod.SERVICES)
    second = stack_mod.up(isolated)
    assert second.started == set(stack_mod.SERVICES)
    assert second.pids["registry"] != first.pids["registry"]
    print("seconds to ready, first up:", {k: round(v, 1) for k, v in first.items()},
          "after restart:", {k: round(v, 1) for k, v in second.items()})

    # A fresh codec (no cached schemas) resolves the old id from the restarted registry.
    assert Codec(isolated.registry_url).decode(C.COMMANDS_TOPIC, data) == command
    client = SchemaRegistryClient({"url": isolated.registry_url})
    schema = Schema(load_schema_text("command.avsc"), "AVRO")
    assert client.lookup_schema(f"{C.COMMANDS_TOPIC}-value", schema).schema_id == schema_id
    assert register_all(isolated.registry_url) == ids  # same schema, same id


# --------------------------------------------------------------------------- c. topics


def _write_spec(path: Path, specs: list[TopicSpec]) -> Path:
    lines = ["[defaults]", "replication_factor = 1", "min_insync_replicas = 1", ""]
    for s in specs:
        lines += [
            "[[topic]]",
            f'name = "{s.name}"',
            f"partitions = {s.partitions}",
            f'key = "{s.key}"',
            f'value_schema = "{s.value_schema}"',
            f'cleanup_policy = "{s.cleanup_policy}"',
            f"retention_ms = {s.retention_ms}",
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def test_topics_apply_twice_is_a_no_op(stack: Settings) -> None:
    apply_topics(stack)  # whatever state the shared broker is in, converge first
    second = apply_topics(stack)
    assert {a.topic for a in second} == set(topic_specs())
    assert [a for a in second if a.action != "unchanged"] == []

    result = subprocess.run([PAYSTREAM, "topics", "apply"], capture_output=True, text=True,
                            env=CLI_ENV, cwd=PROJECT_ROOT, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if any(t in line for t in topic_specs())]
    assert len(rows) == len(topic_specs())
    assert all("unchanged" in row for row in rows), result.stdout


def test_topics_apply_creates_from_a_spec_file_then_changes_nothing(
    stack: Settings, throwaway: Throwaway, tmp_path: Path
) -> None:
    spec = replace(throwaway.spec(_throwaway_name(), partitions=2), retention_ms=3_600_000)
    throwaway.track(spec.name)
    path = _write_spec(tmp_path / "topics.toml", [spec])

    first = apply_topics(stack, specs=path)
    assert [(a.topic, a.action) for a in first] == [(spec.name, "created")]
    second = apply_topics(stack, specs=path)
    assert [(a.topic, a.action) for a in second] == [(spec.name, "unchanged")]

    throwaway.wait_for(spec.name)
    md = throwaway.admin.list_topics(spec.name, timeout=10).topics[spec.name]
    assert len(md.partitions) == 2
    resource = ConfigResource(ConfigResource.Type.TOPIC, spec.name)
    config = throwaway.admin.describe_configs([resource])[resource].result(10)
    assert config["retention.ms"].value == "3600000"


def test_partition_count_mismatch_fails_naming_the_topic(
    stack: Settings, throwaway: Throwaway, tmp_path: Path
) -> None:
    existing = throwaway.spec(_throwaway_name(), partitions=2)
    throwaway.create_topic(existing, partitions=3)  # the broker disagrees with the spec
    missing = throwaway.spec(_throwaway_name(".never"), partitions=1)
    throwaway.track(missing.name)
    path = _write_spec(tmp_path / "topics.toml", [existing, missing])

    with pytest.raises(TopicMismatchError) as caught:
        apply_topics(stack, specs=path)
    message = str(caught.value)
    assert f"{existing.name}: has 3 partitions, spec says 2" in message
    assert str(path) in message

    result = subprocess.run([PAYSTREAM, "topics", "apply", "--spec", str(path)],
                            capture_output=True, text=True, env=CLI_ENV, cwd=PROJECT_ROOT,
                            timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert existing.name in result.stdout

    # Refused before doing anything: nothing created, nothing repartitioned.
    topics = throwaway.admin.list_topics(timeout=10).topics
    assert missing.name not in topics
    assert len(topics[existing.name].partitions) == 3


# --------------------------------------------------------------------------- d. schema CI


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clone of the committed project: its HEAD is the base `schemas check` compares with."""
    target = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(target)], check=True,
                   capture_output=True, timeout=60)
    # The edits below are judged against HEAD; if HEAD alone fails (say topics.toml names a
    # schema that was never committed), say so instead of blaming the edit.
    baseline = check_compatibility("HEAD", target)
    if baseline:
        pytest.fail("the committed HEAD already fails `schemas check`:\n" + "\n".join(baseline))
    return target


def _edit_command_schema(root: Path, edit: Callable[[list[dict[str, Any]]], None]) -> None:
    path = root / "schemas" / "command.avsc"
    schema = json.loads(path.read_text())
    edit(schema["fields"])
    path.write_text(json.dumps(schema, indent=2))


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PAYSTREAM, "schemas", "check", "--root", str(root)],
                          capture_output=True, text=True, env=CLI_ENV, timeout=60)


def _retype_requested_by(fields: list[dict[str, Any]]) -> None:
    next(f for f in fields if f["name"] == "requested_by")["type"] = "long"


def _add_required_field(fields: list[dict[str, Any]]) -> None:
    fields.append({"name": "tenant_id", "type": "string"})


@pytest.mark.parametrize("edit", [_retype_requested_by, _add_required_field],
                         ids=["change-a-type", "add-field-without-default"])
def test_schema_check_rejects_a_backward_incompatible_edit(
    clone: Path, edit: Callable[[list[dict[str, Any]]], None]
) -> None:
    _edit_command_schema(clone, edit)
    result = _check(clone)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "schemas/command.avsc" in result.stdout
    assert "not backward compatible with HEAD" in result.stdout


def test_schema_check_accepts_a_field_added_with_a_default(clone: Path) -> None:
    _edit_command_schema(clone, lambda fields: fields.append(
        {"name": "channel", "type": ["null", "string"], "default": None}
    ))
    result = _check(clone)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backward compatible with HEAD" in result.stdout


def test_schema_check_reports_invalid_json_by_file(clone: Path) -> None:
    (clone / "schemas" / "command.avsc").write_text('{"type": "record",')
    result = _check(clone)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "schemas/command.avsc" in result.stdout



def test_consume_ready_hands_over_a_lone_message_at_once(stack: Settings, throwaway: Throwaway) -> None:
    """librdkafka's batch consume holds what it has until the batch is full or the timeout
    passes; the outcome listeners must not (it cost every completed payment 50 ms)."""
    spec = throwaway.spec(_throwaway_name(), 1)
    throwaway.create_topic(spec)
    c = kafka.consumer(stack, f"test-ready-{uuid.uuid4()}")
    try:
        c.assign([TopicPartition(spec.name, 0, 0)])
        assert kafka.consume_ready(c, 500, 0.2) == []  # nothing there: the timeout, then nothing
        p = kafka.producer(stack)
        for i in range(3):
            p.produce(spec.name, key=b"k", value=b"v%d" % i)
        assert p.flush(10) == 0
        got: list[Message] = []
        started = time.monotonic()
        while len(got) < 3 and time.monotonic() - started < 10:
            got += [m for m in kafka.consume_ready(c, 500, 5.0) if m.error() is None]
        took = time.monotonic() - started
        assert [m.value() for m in got] == [b"v0", b"v1", b"v2"]
        assert took < 2.0, f"three messages took {took:.2f}s with a 5 s timeout and room for 500"
    finally:
        c.close()
