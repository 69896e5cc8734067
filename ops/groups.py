"""Consumer-group helpers shared by the operator commands (offsets, lag, state, reprocess).

Kept apart from the commands so each command module stays about its own task, and
so every destructive command asks the same question the same way: "is anyone in
this group right now?" (a reset or a state wipe under a running member is undone
or corrupted by that member at its next commit).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from paystream import kafka
from paystream.settings import Settings

PREFIX = "paystream"


def admin(settings: Settings) -> AdminClient:
    return kafka.admin(settings)


@dataclass(frozen=True)
class GroupInfo:
    group: str
    state: str
    members: int


def describe(settings: Settings, group: str, timeout: float = 10.0) -> GroupInfo:
    """State and member count of a group; a group that never existed reads as DEAD with 0."""
    client = admin(settings)  # must outlive the future: a collected client never answers
    fut = client.describe_consumer_groups([group], request_timeout=timeout)[group]
    desc = fut.result(timeout=timeout + 5)
    state = getattr(desc.state, "name", str(desc.state))
    return GroupInfo(group, state, len(desc.members or []))


def require_inactive(settings: Settings, group: str) -> GroupInfo:
    """Raise RuntimeError when the group has members: changing its offsets or its
    state under a live member is undone (or corrupted) by that member's next commit."""
    info = describe(settings, group)
    if info.members:
        raise RuntimeError(
            f"consumer group {group} is active ({info.members} member(s), state {info.state}); stop its processes first"
        )
    return info


def list_groups(settings: Settings, prefix: str = PREFIX, timeout: float = 10.0) -> list[str]:
    client = admin(settings)
    res = client.list_consumer_groups(request_timeout=timeout).result(timeout=timeout + 5)
    return sorted(g.group_id for g in res.valid if g.group_id.startswith(prefix))


def committed(settings: Settings, group: str, timeout: float = 10.0) -> dict[tuple[str, int], int]:
    """Committed offsets of a group, (topic, partition) -> offset (negative ones dropped)."""
    client = admin(settings)
    fut = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout)[group]
    res = fut.result(timeout=timeout + 5)
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in (res.topic_partitions or [])
        if tp.offset is not None and tp.offset >= 0
    }


def partitions(settings: Settings, topic: str) -> list[int]:
    client = admin(settings)
    md = client.list_topics(topic, timeout=10)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        # Kafka's own error, so that operator commands say to run `paystream topics apply`.
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic} does not exist"))
    return sorted(t.partitions)


def watermarks(settings: Settings, tps: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
    """(low, high) per partition; high is the last stable offset a read_committed reader sees."""
    c = kafka.consumer(settings, f"paystream-tool-{uuid.uuid4()}")
    try:
        out = {}
        for topic, p in tps:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            out[(topic, p)] = (int(low), int(high))
        return out
    finally:
        c.close()


# A gap of at most this many offsets between a committed position and the end is
# read to count its records: under exactly-once every transaction leaves a commit
# marker, an offset no consumer ever receives or commits past, so a group that has
# consumed everything still sits one offset (or a few) short of the end.
MARKER_PROBE = 64


def records_between(settings: Settings, spans: dict[tuple[str, int], tuple[int, int]],
                    timeout: float = 5.0) -> dict[tuple[str, int], int]:
    """How many records a read_committed reader gets in [start, end) of each partition:
    transaction markers and aborted records do not count. Partitions not read to their
    end within `timeout` are left out (the caller keeps its estimate)."""
    todo = {tp: se for tp, se in spans.items() if se[1] > se[0]}
    counts = dict.fromkeys(todo, 0)
    if not todo:
        return {tp: 0 for tp in spans}
    c = kafka.consumer(settings, f"paystream-tool-{uuid.uuid4()}")
    try:
        c.assign([TopicPartition(t, p, start) for (t, p), (start, _) in todo.items()])
        deadline = time.monotonic() + timeout
        open_ = set(todo)
        while open_ and time.monotonic() < deadline:
            for m in c.consume(500, 0.1):
                tp = (m.topic(), m.partition())
                if m.error() is None and tp in open_ and m.offset() < todo[tp][1]:
                    counts[tp] += 1
            for pos in c.position([TopicPartition(t, p) for t, p in open_]):
                if pos.offset >= 0 and pos.offset >= todo[(pos.topic, pos.partition)][1]:
                    open_.discard((pos.topic, pos.partition))
        return {tp: n for tp, n in counts.items() if tp not in open_} | {tp: 0 for tp in spans if tp not in todo}
    finally:
        c.close()


def lags(settings: Settings, positions: dict[tuple[str, int], int],
         ends: dict[tuple[str, int], tuple[int, int]] | None = None) -> dict[tuple[str, int], int]:
    """Records left to read after each position: the end offset minus the position,
    made exact (markers not counted) where the gap is small enough to read. `ends`:
    the partitions' watermarks, when the caller has them already."""
    ends = ends or watermarks(settings, list(positions))
    raw = {tp: max(0, ends[tp][1] - pos) for tp, pos in positions.items()}
    small = {tp: (positions[tp], ends[tp][1]) for tp, n in raw.items() if 0 < n <= MARKER_PROBE}
    return raw | records_between(settings, small)


def parse_time(text: str) -> int:
    """ISO-8601 to epoch milliseconds; a time without zone is UTC (operators paste log times)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def offsets_for_time(settings: Settings, topic: str, parts: list[int], ts_ms: int) -> dict[int, int]:
    """First offset at or after `ts_ms` per partition; the end offset when none is."""
    c = kafka.consumer(settings, f"paystream-tool-{uuid.uuid4()}")
    try:
        found = c.offsets_for_times([TopicPartition(topic, p, ts_ms) for p in parts], timeout=10)
        out = {}
        for tp in found:
            if tp.offset is None or tp.offset < 0:
                out[tp.partition] = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1]
            else:
                out[tp.partition] = tp.offset
        return out
    finally:
        c.close()
