"""`paystream partitions grow --to N`: more partitions for the ledger, one writer per account throughout.

Adding partitions to `payments.commands` would move accounts to other partitions, and
so to other writers, while their state stayed behind. Instead the ledger's inputs get
a new *generation* of topics with N partitions (`payments.commands.pN`,
`payments.privileged.pN`, `ledger.legs.pN`: `paystream.topics.generation_name`), which
every component finds through one setting, `PAYSTREAM_LEDGER_PARTITIONS`. The steps
(docs/PARTITIONS.md says why each is safe, and what pauses):

1. `prepare`: create the new generation's topics and its state changelog, register
   their schemas. Nothing reads or writes them yet.
2. (operator) restart every producer with PAYSTREAM_LEDGER_PARTITIONS=N: the gateway,
   outbox relay, fraud, compensation and Kafka-direct producers. New commands wait in
   the new generation; the old ledger goes on with what the old one holds.
3. `drain`: wait until the old ledger has applied everything on the old inputs, legs
   in flight included (ticks, which only carry time, aside).
4. (operator) stop the old ledger.
5. `cutover`: refuse while any process consumes the old inputs; forward whatever
   reached the old inputs after all (a producer restarted late, an outbox row) into the
   new generation; copy the state to the new changelog, each account to its new
   partition (`pipelines.ledger.repartition`); last, seal the old ledger's offsets
   (`paystream.topics.sealed_marker`), which the new ledger waits for.
6. (operator) start the ledger with PAYSTREAM_LEDGER_PARTITIONS=N. It restores the
   copied state and applies what waited. `forward` may be run again while late
   producers are found (`status` shows them).

`ledger.events` does not change: the journal keeps its topic, its offsets and every
account's hash chain, so its consumers (sink, fraud, notifications, other teams) see
the switch only as a short pause.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import typer
from confluent_kafka import ConsumerGroupTopicPartitions, Message, TopicPartition
from confluent_kafka.admin import ConfigResource, ConfigSource, NewTopic
from rich.console import Console

from ops import groups as G
from ops.hints import fail
from ops.reprocess import read_range
from ops.schemas_cli import register_all
from ops.topics import apply_topics
from paystream import kafka, topics
from paystream.batching import COMMAND_BATCH, LEG_BATCH
from paystream.codec import Codec, generation_specs
from paystream.errors import DecodeError, UnknownSchemaError
from paystream.settings import Settings, get_settings
from paystream.topics import LedgerTopics
from pipelines.ledger.app import COMMAND, GROUP, LEG, changelog_name
from pipelines.ledger.repartition import Repartition, StateRecord

FORWARD_GROUP = "paystream-partitions-forward"
"""Where `forward` keeps its position on the old inputs: the old ledger's group is left
as `cutover` sealed it, and committing to it would need it empty, which it is not once
the new ledger (same group, other topics) runs."""
TICK = "TICK"

app = typer.Typer(no_args_is_help=True)


@dataclass(frozen=True)
class Plan:
    """From one generation of the ledger's inputs to the next."""

    old: LedgerTopics
    new: LedgerTopics
    old_partitions: int
    new_partitions: int

    @property
    def old_changelog(self) -> str:
        return changelog_name(self.old)

    @property
    def new_changelog(self) -> str:
        return changelog_name(self.new)


def plan(settings: Settings, to: int, from_partitions: int | None = None) -> Plan:
    """The move from the settings' generation (or `from_partitions`'s) to `to` partitions."""
    old = topics.ledger_topics(from_partitions if from_partitions is not None else settings.ledger_partitions)
    have = len(G.partitions(settings, old.commands))
    if to <= have:
        raise ValueError(f"{old.commands} has {have} partitions; growing needs more than that, not {to}")
    return Plan(old, topics.ledger_topics(to), have, to)


# -- 1. prepare ---------------------------------------------------------------------------
def prepare(settings: Settings, p: Plan) -> list[str]:
    """Create the new generation's topics and changelog and register their schemas
    (idempotent). Returns what was created."""
    specs = generation_specs(p.new)
    made = [a.topic for a in apply_topics(settings, specs=specs) if a.action == "created"]
    register_all(settings.registry_url, specs)
    admin = kafka.admin(settings)
    existing = admin.list_topics(timeout=15).topics
    if p.old_changelog not in existing:
        raise RuntimeError(f"{p.old_changelog} does not exist: has the ledger of {p.old.commands} ever run?")
    if p.new_changelog not in existing:
        for fut in admin.create_topics([NewTopic(p.new_changelog, p.new_partitions, _replication(existing, p),
                                                 config=_changelog_config(admin, p.old_changelog))]).values():
            fut.result()
        made.append(p.new_changelog)
    elif len(existing[p.new_changelog].partitions) != p.new_partitions:
        raise RuntimeError(f"{p.new_changelog} exists with {len(existing[p.new_changelog].partitions)} partitions, "
                           f"not {p.new_partitions}")
    _wait_for_leaders(admin, [*p.new.inputs, p.new_changelog], p.new_partitions)
    return made


def _wait_for_leaders(admin: Any, names: list[str], partitions: int, timeout: float = 30.0) -> None:
    """Until every partition of `names` has a leader: a producer restarted on a topic
    created a moment ago must not find it missing."""
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=10).topics
        missing = [n for n in names if n not in md or md[n].error is not None or len(md[n].partitions) != partitions
                   or any(pm.leader < 0 for pm in md[n].partitions.values())]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics without a leader for every partition after {timeout:.0f}s: {missing}")
        time.sleep(0.2)


def _replication(existing: Any, p: Plan) -> int:
    return len(existing[p.old_changelog].partitions[0].replicas)


def _changelog_config(admin: Any, name: str) -> dict[str, str]:
    """The old changelog's own settings (compaction and the like), for the new one."""
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = admin.describe_configs([res])[res].result()
    return {k: v.value for k, v in configs.items()
            if v.source in (ConfigSource.DYNAMIC_TOPIC_CONFIG, ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
            and v.value is not None}


# -- 3. drain -----------------------------------------------------------------------------
def carried(name: str | None, record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The commands and legs a record of the ledger's inputs carries, one per item, ticks
    (which carry only time) left out; None for a record of no type the ledger takes."""
    if name in (COMMAND, LEG):
        items = [record]
    elif name in (COMMAND_BATCH, LEG_BATCH):
        items = list(record["items"])
    else:
        return None
    return [i for i in items if i.get("kind") != TICK]


def _decode_items(codec: Codec, topic: str, m: Message) -> list[dict[str, Any]] | None:
    try:
        name, record = codec.decode_typed(topic, m.value())
    except (DecodeError, UnknownSchemaError):
        return None
    return carried(name, record)


@dataclass
class Pending:
    """What `pending` found: commands and legs, and the end offsets it read up to."""

    count: int = 0
    ends: dict[tuple[str, int], int] = field(default_factory=dict)


def pending(settings: Settings, p: Plan, codec: Codec, start: dict[tuple[str, int], int] | None = None,
            handle: Callable[[str, Message, list[dict[str, Any]] | None], None] | None = None) -> Pending:
    """Commands and legs (ticks aside) on the old inputs from `start` (default: the old
    ledger's committed offsets) to the ends as of the call; each record goes to `handle`
    when given. The ends are where a reader that handled them all may continue."""
    start = G.committed(settings, GROUP) if start is None else start
    out = Pending()
    for topic in p.old.inputs:
        parts = G.partitions(settings, topic)
        ends = G.watermarks(settings, [(topic, q) for q in parts])
        out.ends |= {tp: high for tp, (_, high) in ends.items()}
        ranges = {q: (start.get((topic, q), ends[(topic, q)][0]), ends[(topic, q)][1]) for q in parts}

        def each(msgs: list[Message], topic: str = topic) -> None:
            for m in msgs:
                items = _decode_items(codec, topic, m)
                out.count += 1 if items is None else len(items)
                if handle is not None:
                    handle(topic, m, items)

        read_range(settings, topic, ranges, each)
    return out


def drain(settings: Settings, p: Plan, codec: Codec, timeout: float = 600.0, poll: float = 0.5,
          say: Callable[[str], None] = lambda _s: None) -> float:
    """Wait until the old ledger has applied every command and leg on the old inputs.
    Returns the seconds waited. A leg is produced in the same transaction that commits
    the input it came from, so nothing left and nothing pending means no leg in flight."""
    t0 = time.monotonic()
    while (left := pending(settings, p, codec).count) > 0:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{left} commands and legs still wait on {p.old.commands} and its siblings after "
                               f"{timeout:.0f}s: are producers still writing to the old generation?")
        say(f"{left} commands and legs to go")
        time.sleep(poll)
    return time.monotonic() - t0


# -- 5. cutover ---------------------------------------------------------------------------
def old_readers(settings: Settings, p: Plan) -> list[str]:
    """Members of the ledger's group assigned a partition of an old input: an old ledger
    still running. (The new ledger shares the group, on its own topics.)"""
    client = G.admin(settings)
    desc = client.describe_consumer_groups([GROUP], request_timeout=10)[GROUP].result(timeout=15)
    old = set(p.old.inputs)
    out = []
    for member in desc.members or []:
        assigned = {tp.topic for tp in (member.assignment.topic_partitions if member.assignment else [])}
        subscribed_old = assigned & old
        if subscribed_old or not assigned:  # a member without an assignment yet may get old partitions
            out.append(f"{member.client_id or member.member_id} ({', '.join(sorted(subscribed_old)) or 'joining'})")
    return out


def _require_no_old_ledger(settings: Settings, p: Plan, wait: float = 15.0) -> None:
    """Refuse while an old ledger is a member; a member that died without leaving (kill
    -9) stays for the group's session timeout (10 s), so that long is waited out first."""
    deadline = time.monotonic() + wait
    while (readers := old_readers(settings, p)) and time.monotonic() < deadline:
        time.sleep(1.0)
    if readers:
        raise RuntimeError(f"the old ledger still runs ({'; '.join(readers)}): stop every instance of the ledger "
                           f"on {p.old.commands} first")


@dataclass
class Forwarded:
    commands: int = 0
    legs: int = 0
    undecodable: int = 0
    positions: dict[tuple[str, int], int] = field(default_factory=dict)


def forward(settings: Settings, p: Plan, codec: Codec, start: dict[tuple[str, int], int] | None = None, *,
            commit: bool = True) -> Forwarded:
    """Move what reached the old inputs after the old ledger stopped into the new
    generation, one record per command or leg, keyed by its account, so each lands on
    the partition that owns the account now. Batches are split (a batch's partition
    means nothing under the new count), ticks dropped (the new ledger ticks its own).

    At least once: a forward interrupted and run again sends some records twice, which
    the new ledger dedupes like any retry (command ids, leg ids), with the state that
    `cutover` moved. Positions are kept under FORWARD_GROUP."""
    _require_no_old_ledger(settings, p)
    start = start if start is not None else (G.committed(settings, FORWARD_GROUP) or G.committed(settings, GROUP))
    producer = kafka.producer(settings, **{"linger.ms": 5})
    out = Forwarded()

    def handle(topic: str, m: Message, items: list[dict[str, Any]] | None) -> None:
        target = topics.in_generation(topic, p.new)
        headers = m.headers() or None
        if items is None:  # the new ledger dead-letters it, as the old one would have
            out.undecodable += 1
            producer.produce(target, key=m.key(), value=m.value(), headers=headers)
        else:
            for item in items:
                producer.produce(target, key=str(item["account_id"]).encode(), value=codec.encode(target, item),
                                 headers=headers)
                if topic == p.old.legs:
                    out.legs += 1
                else:
                    out.commands += 1
        producer.poll(0)

    read = pending(settings, p, codec, start, handle)
    if producer.flush(60) != 0:
        raise RuntimeError("not every forwarded record was acknowledged")
    out.positions = read.ends  # what was read to, not the ends now: a record since is forwarded next time
    if commit:
        _commit(settings, FORWARD_GROUP, out.positions)
    return out


def _commit(settings: Settings, group: str, positions: dict[tuple[str, int], int], metadata: str = "") -> None:
    tps = [TopicPartition(t, q, o, metadata=metadata) for (t, q), o in sorted(positions.items())]
    client = G.admin(settings)  # must outlive the future: a collected client never answers
    fut = client.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group]
    res = fut.result(timeout=30)
    if bad := [tp for tp in (res.topic_partitions or []) if tp.error is not None]:
        raise RuntimeError(f"offsets of {group} not stored for {bad}")


@dataclass
class Copied:
    read: int = 0
    moved: int = 0
    dropped: int = 0
    timers: int = 0
    open_holds: int = 0


def sealed(settings: Settings, p: Plan) -> bool:
    """Whether cutover finished: the old ledger's offsets carry `topics.sealed_marker`,
    and from then on the new ledger may have run."""
    client = G.admin(settings)  # must outlive the future
    res = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(GROUP)])[GROUP].result(timeout=30)
    marker = topics.sealed_marker(p.new)
    return any(tp.topic in p.old.inputs and tp.metadata == marker for tp in res.topic_partitions or [])


def copy_state(settings: Settings, p: Plan, now_ms: int | None = None) -> Copied:
    """The old ledger's state, every account to its partition of the new changelog
    (`pipelines.ledger.repartition`). Refused once cutover finished: the new ledger may
    have written state since, which old state copied over it would roll back. Before
    that, a copy interrupted may run again: the same records again in the same order
    restore the same state."""
    if sealed(settings, p):
        raise RuntimeError(f"the state was moved to {p.new.commands} already (and its ledger may have run)")
    r = Repartition(p.old_partitions, p.new_partitions)
    producer = kafka.producer(settings, **{"linger.ms": 20})
    out = Copied()

    def handle(msgs: list[Message]) -> None:
        for m in msgs:
            key = m.key()
            assert isinstance(key, bytes)
            routed = r.route(StateRecord(key, m.value(), tuple(m.headers() or ())))
            if routed is not None:
                q, rec = routed
                producer.produce(p.new_changelog, key=rec.key, value=rec.value, headers=list(rec.headers),
                                 partition=q)
            producer.poll(0)
        out.read += len(msgs)

    parts = G.partitions(settings, p.old_changelog)
    marks = G.watermarks(settings, [(p.old_changelog, q) for q in parts])
    read_range(settings, p.old_changelog, {q: marks[(p.old_changelog, q)] for q in parts}, handle)
    timers = r.timers(int(time.time() * 1000) if now_ms is None else now_ms)
    for q, rec in timers:
        producer.produce(p.new_changelog, key=rec.key, value=rec.value, headers=list(rec.headers), partition=q)
    if producer.flush(120) != 0:
        raise RuntimeError(f"not every state record was acknowledged by {p.new_changelog}")
    out.moved, out.dropped, out.timers, out.open_holds = r.moved, r.dropped, len(timers), r.open_holds
    return out


@dataclass
class Cutover:
    forwarded: Forwarded
    copied: Copied
    seconds: float


def cutover(settings: Settings, p: Plan, codec: Codec) -> Cutover:
    """Step 5: with the old ledger stopped, forward its stragglers, move the state, then
    seal the old ledger's offsets at the end of what was forwarded. The seal is last:
    it is what the new ledger waits for (`pipelines.ledger.app`), so it never starts on
    a partial copy; and an old ledger started again (it refuses anyway: a later
    generation exists) would find nothing left to apply."""
    t0 = time.monotonic()
    _require_no_old_ledger(settings, p)
    if sealed(settings, p):
        raise RuntimeError(f"cutover to {p.new.commands} is done already: run `--step forward` for stragglers")
    fwd = forward(settings, p, codec, start=G.committed(settings, GROUP), commit=False)
    copied = copy_state(settings, p)
    _commit(settings, FORWARD_GROUP, fwd.positions)
    _commit(settings, GROUP, fwd.positions, metadata=topics.sealed_marker(p.new))
    return Cutover(fwd, copied, time.monotonic() - t0)


# -- CLI ----------------------------------------------------------------------------------
STEPS = ("prepare", "drain", "cutover", "forward")


@app.command("grow")
def grow_cmd(
    to: int = typer.Option(..., "--to", help="partition count of the new generation"),
    step: str = typer.Option("prepare", "--step", help=" | ".join(STEPS) + " (docs/PARTITIONS.md)"),
    from_partitions: int = typer.Option(None, "--from", help="the old generation's count (default: settings')"),
    timeout: float = typer.Option(600.0, "--timeout", help="drain: seconds to wait at most"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show the generations and the steps, change nothing"),
) -> None:
    """Grow the ledger's partitions through a new generation of its input topics, step by step."""
    console = Console()
    settings = get_settings()
    try:
        if step not in STEPS:
            raise ValueError(f"--step is one of {', '.join(STEPS)}")
        p = plan(settings, to, from_partitions)
        codec = Codec(settings.registry_url)
        env = f"PAYSTREAM_LEDGER_PARTITIONS={to}"
        if dry_run:
            console.print(f"from {', '.join(p.old.inputs)} ({p.old_partitions} partitions, state in "
                          f"{p.old_changelog})\nto   {', '.join(p.new.inputs)} ({p.new_partitions} partitions, "
                          f"state in {p.new_changelog})\nsteps: {' -> '.join(STEPS)} (docs/PARTITIONS.md); "
                          "dry run: nothing changed")
            return
        if step == "prepare":
            made = prepare(settings, p)
            console.print(f"created: {', '.join(made) or 'nothing (all there)'}")
            console.print(f"next: restart every producer with {env} (gateway, outbox-relay, fraud, "
                          "compensation, Kafka-direct producers), then `--step drain`")
        elif step == "drain":
            waited = drain(settings, p, codec, timeout, say=console.print)
            console.print(f"drained in {waited:.1f}s. next: stop the ledger, then `--step cutover`")
        elif step == "cutover":
            c = cutover(settings, p, codec)
            console.print(f"forwarded {c.forwarded.commands} commands and {c.forwarded.legs} legs; state: "
                          f"{c.copied.moved} records moved, {c.copied.open_holds} open holds re-timed, in "
                          f"{c.seconds:.1f}s")
            console.print(f"next: start the ledger with {env}; run `--step forward` while `partitions status` "
                          "shows records left on the old generation")
        else:
            f = forward(settings, p, codec)
            console.print(f"forwarded {f.commands} commands and {f.legs} legs ({f.undecodable} undecodable)")
    except Exception as exc:
        fail(f"partitions grow --step {step} failed", exc)


@app.command("status")
def status_cmd(
    to: int = typer.Option(..., "--to", help="partition count of the new generation"),
    from_partitions: int = typer.Option(None, "--from", help="the old generation's count (default: settings')"),
) -> None:
    """What is left on the old generation, and who still reads it."""
    console = Console()
    settings = get_settings()
    try:
        p = plan(settings, to, from_partitions)
        codec = Codec(settings.registry_url)
        start = G.committed(settings, FORWARD_GROUP) or G.committed(settings, GROUP)
        console.print(f"old generation {', '.join(p.old.inputs)} ({p.old_partitions} partitions): "
                      f"{pending(settings, p, codec, start).count} commands and legs not applied or forwarded")
        console.print(f"old ledger members: {', '.join(old_readers(settings, p)) or 'none'}")
    except Exception as exc:
        fail("partitions status failed", exc)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="partitions", help="grow the ledger's partition count (docs/PARTITIONS.md)")

