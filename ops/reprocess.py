"""`paystream reprocess`: feed a range of a topic again, into the read model or a topic.

Into the sink: the range is read read_committed and written with the sink's own
batch writer (`sinks.postgres_sink.PgWriter`). Events are keyed by event_id and
balance deltas come only from newly inserted events, so re-feeding rows that are
already there changes nothing; that is what makes this safe next to a running
sink. The writer runs under its own offsets owner (`paystream-reprocess`) and is
given no offsets to store, so the live sink's position is never moved (least of
all backwards).

Into a topic: key, value and headers are copied as they are, through the project
producer (murmur2_random), so a key lands on the partition any paystream
producer would pick. Copying is at-least-once: running it twice copies twice.

`--rebuild`: drop the read model's rows and replay `ledger.events` from the start
of every partition, storing the sink's offsets as it goes, so the sink continues
where the rebuild stopped. Refused while the sink's group has members.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import typer
from confluent_kafka import Message, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ops import groups as G
from ops.hints import fail
from paystream import kafka, topics
from paystream.codec import Codec
from paystream.settings import Settings, get_settings
from paystream.stream.pg_intake import Reject, forget_offsets
from sinks.postgres_sink import PgWriter, decode_event, group_for

EVENTS = topics.EVENTS
REPROCESS_CONSUMER = "paystream-reprocess"
BATCH = 2000
READ_MODEL_TABLES = ("accounts", "payments", "ledger_events", "postings", "audit_log")


@dataclass
class Result:
    read: int = 0
    inserted: int = 0
    skipped: int = 0
    produced: int = 0
    undecodable: list[str] = field(default_factory=list)


def resolve_ranges(
    settings: Settings,
    topic: str,
    *,
    partition: int | None = None,
    from_offset: int | None = None,
    from_time: str | None = None,
    to_offset: int | None = None,
) -> dict[int, tuple[int, int]]:
    """partition -> [start, end) from the CLI's options; end defaults to the last stable offset."""
    if (from_offset is None) == (from_time is None):
        raise ValueError("give exactly one of --from-offset and --from-time")
    parts = G.partitions(settings, topic)
    if partition is not None:
        if partition not in parts:
            raise ValueError(f"{topic} has no partition {partition}")
        parts = [partition]
    ends = G.watermarks(settings, [(topic, p) for p in parts])
    if from_time is not None:
        starts = G.offsets_for_time(settings, topic, parts, G.parse_time(from_time))
    else:
        assert from_offset is not None
        starts = {p: max(from_offset, ends[(topic, p)][0]) for p in parts}
    out = {}
    for p in parts:
        end = ends[(topic, p)][1] if to_offset is None else min(to_offset, ends[(topic, p)][1])
        if end > starts[p]:
            out[p] = (starts[p], end)
    return out


def read_range(
    settings: Settings,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    handle: Callable[[list[Message]], None],
    console: Console | None = None,
) -> int:
    """Hand every committed message in the ranges to `handle`, in batches; returns the count.

    Completion is judged by the consumer's position, not by the last message seen:
    under read_committed the end of a range can be a transaction marker or an
    aborted record that is never delivered."""
    todo = {p: r for p, r in ranges.items() if r[1] > r[0]}
    if not todo:
        return 0
    c = kafka.consumer(settings, f"paystream-reprocess-{uuid.uuid4()}")
    total = sum(e - s for s, e in todo.values())
    n = 0
    progress = Progress(
        TextColumn(f"reading {topic}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=console is None, transient=False,
    )  # fmt: skip
    try:
        c.assign([TopicPartition(topic, p, s) for p, (s, _) in sorted(todo.items())])
        pos = {p: s for p, (s, _) in todo.items()}
        with progress:
            task = progress.add_task("read", total=total)
            idle = 0
            while todo:
                msgs = c.consume(1000, 0.5)
                batch = []
                for m in msgs:
                    if m.error() is not None:
                        continue
                    p, o = m.partition(), m.offset()
                    assert p is not None and o is not None
                    if p in todo and o < todo[p][1]:
                        batch.append(m)
                if batch:
                    handle(batch)
                    n += len(batch)
                idle = 0 if msgs else idle + 1
                for tp in c.position([TopicPartition(topic, p) for p in sorted(todo)]):
                    if tp.offset is not None and tp.offset >= 0:
                        pos[tp.partition] = tp.offset
                done = [p for p, (_, e) in todo.items() if pos[p] >= e]
                for p in done:
                    del todo[p]
                if done:
                    c.incremental_unassign([TopicPartition(topic, p) for p in done])
                progress.update(task, completed=sum(min(pos[p], e) - s for p, (s, e) in ranges.items()
                                                    if p in pos))  # fmt: skip
                if idle > 120:  # a minute without data below the recorded end
                    raise RuntimeError(f"stuck reading {topic}: positions {pos}, wanted {todo}")
        return n
    finally:
        c.close()


def into_sink(
    settings: Settings,
    ranges: dict[int, tuple[int, int]],
    *,
    dsn: str | None = None,
    consumer: str = REPROCESS_CONSUMER,
    store_offsets: bool = False,
    console: Console | None = None,
) -> Result:
    """Re-feed a range of ledger.events to the read model through the sink's writer.

    `store_offsets` (rebuild only) records the positions under `consumer`; the
    writer only ever moves a stored offset forward (GREATEST)."""
    codec = Codec(settings.registry_url)
    writer = PgWriter(dsn or settings.postgres_dsn, consumer)
    writer.connect()
    res = Result()

    def handle(msgs: list[Message]) -> None:
        events: list[tuple[int, int, dict[str, Any]]] = []
        nxt: dict[int, int] = {}
        for m in msgs:
            p, o = m.partition(), m.offset()
            assert p is not None and o is not None
            nxt[p] = o + 1
            ev = decode_event(codec, m)  # the sink's own input gate
            if isinstance(ev, Reject):
                res.undecodable.append(f"{EVENTS}[{p}]@{o}: {ev.reason}")
                continue
            events.append((p, o, ev))
        for i in range(0, max(len(events), 1), BATCH):
            chunk = events[i : i + BATCH]
            last = i + BATCH >= len(events)
            w = writer.write(chunk, nxt if (store_offsets and last) else {})
            res.inserted += w.inserted
            res.skipped += w.skipped
        res.read += len(msgs)

    try:
        read_range(settings, EVENTS, ranges, handle, console)
        if store_offsets:
            writer.write([], {p: e for p, (_, e) in ranges.items()})
    finally:
        writer.close()
    return res


def into_topic(
    settings: Settings, topic: str, ranges: dict[int, tuple[int, int]], target: str,
    console: Console | None = None,
) -> Result:  # fmt: skip
    """Copy key, value and headers of a range to `target` (partitioned by key)."""
    G.partitions(settings, target)  # fails early if the target does not exist
    producer = kafka.producer(settings)
    res = Result()

    def handle(msgs: list[Message]) -> None:
        for m in msgs:
            producer.produce(target, key=m.key(), value=m.value(), headers=m.headers() or None)
            producer.poll(0)
        res.read += len(msgs)
        res.produced += len(msgs)

    read_range(settings, topic, ranges, handle, console)
    if producer.flush(60) != 0:
        raise RuntimeError(f"not every copied message was acknowledged by {target}")
    return res


def read_model_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        out = {}
        for t in READ_MODEL_TABLES:
            row = conn.execute(f"SELECT count(*) FROM {t}").fetchone()
            out[t] = int(row[0]) if row else 0
        return out


def rebuild(settings: Settings, *, dsn: str | None = None, dry_run: bool, console: Console) -> Result | None:
    """Empty the read model and replay ledger.events from the beginning into it."""
    dsn = dsn or settings.postgres_dsn
    G.require_inactive(settings, group_for(settings, dsn))  # the group of sinks on this database
    ranges = resolve_ranges(settings, EVENTS, from_offset=0)
    counts = read_model_counts(dsn)
    console.print(f"read model now: {counts}")
    console.print(f"would replay {sum(e - s for s, e in ranges.values())} offsets of {EVENTS}: {ranges}")
    if dry_run:
        console.print("dry run: nothing changed")
        return None
    with psycopg.connect(dsn, connect_timeout=5) as conn, conn.transaction():
        conn.execute(f"TRUNCATE {', '.join(READ_MODEL_TABLES)}")
        forget_offsets(conn, settings.sink_group, EVENTS)
    console.print("read model emptied; replaying")
    return into_sink(settings, ranges, dsn=dsn, consumer=settings.sink_group, store_offsets=True, console=console)


def register(root: typer.Typer) -> None:
    @root.command("reprocess")
    def reprocess_cmd(
        topic: str = typer.Option(EVENTS, "--topic", help="topic to read"),
        partition: int = typer.Option(None, "--partition", help="only this partition"),
        from_offset: int = typer.Option(None, "--from-offset", help="first offset (every partition)"),
        from_time: str = typer.Option(None, "--from-time", help="ISO time: first offset at or after it"),
        to_offset: int = typer.Option(None, "--to-offset", help="stop before this offset"),
        into: str = typer.Option("sink", "--into", help="sink | topic:NAME"),
        dsn: str = typer.Option(None, "--dsn", help="read-model database (default: settings)"),
        do_rebuild: bool = typer.Option(False, "--rebuild", help="empty the read model, replay all"),
        dry_run: bool = typer.Option(False, "--dry-run", help="show the range, change nothing"),
    ) -> None:
        """Re-read a range (read_committed) into the read model (idempotent) or a topic."""
        console = Console()
        settings = get_settings()
        try:
            if do_rebuild:
                res = rebuild(settings, dsn=dsn, dry_run=dry_run, console=console)
            else:
                if into == "sink" and topic != EVENTS:
                    raise ValueError(f"only {EVENTS} feeds the sink")
                if into != "sink" and not into.startswith("topic:"):
                    raise ValueError("--into is `sink` or `topic:NAME`")
                ranges = resolve_ranges(settings, topic, partition=partition, from_offset=from_offset,
                                        from_time=from_time, to_offset=to_offset)  # fmt: skip
                console.print(f"range of {topic} (partition: [start, end)): {ranges}")
                if dry_run:
                    console.print("dry run: nothing changed")
                    return
                if into == "sink":
                    res = into_sink(settings, ranges, dsn=dsn, console=console)
                else:
                    res = into_topic(settings, topic, ranges, into.removeprefix("topic:"), console)
        except Exception as exc:
            fail("reprocess failed", exc)
        if res is None:
            return
        console.print(f"read {res.read}, inserted {res.inserted}, already present {res.skipped}, "
                      f"produced {res.produced}, undecodable {len(res.undecodable)}")  # fmt: skip
        for line in res.undecodable[:20]:
            console.print(f"  [yellow]skipped[/yellow] {line}", highlight=False)
