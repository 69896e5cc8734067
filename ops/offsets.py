"""`paystream offsets show|reset` and `paystream lag`: where consumer groups stand.

Lag is measured against the last stable offset (what a read_committed reader can
reach), so transaction markers do not show up as phantom lag. The Kafka-to-Postgres
intakes (the sink, reviews, webhooks: `paystream.stream.pg_intake`) keep their real
positions in Postgres, in `sink_offsets` (their Kafka commits are informational), so
`lag` also reports those positions, which are the ones that matter for them.

`reset` moves a group's committed offsets. It refuses an active group: a live
member would overwrite the reset with its next commit (and the Quix apps would
keep state that no longer matches their input position; pair a reset of a
stateful app with `paystream state rebuild`).
"""

from __future__ import annotations

from dataclasses import dataclass

import typer
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from rich.console import Console
from rich.table import Table

from ops import groups as G
from ops.hints import fail
from paystream.settings import Settings, get_settings


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None
    end: int
    pending: int | None = None  # records left after `committed` (markers not counted), if known

    @property
    def lag(self) -> int | None:
        if self.committed is None:
            return None
        return self.pending if self.pending is not None else max(0, self.end - self.committed)


def group_lag(settings: Settings, group: str, topic: str | None = None) -> list[PartitionLag]:
    """Per partition of every topic the group committed on (or of `topic`)."""
    done = G.committed(settings, group)
    topics = [topic] if topic else sorted({t for t, _ in done})
    tps = [(t, p) for t in topics for p in G.partitions(settings, t)]
    ends = G.watermarks(settings, tps)
    pending = G.lags(settings, {tp: done[tp] for tp in tps if tp in done}, ends)
    return [PartitionLag(group, t, p, done.get((t, p)), ends[(t, p)][1], pending.get((t, p))) for t, p in tps]


def intake_groups(settings: Settings) -> dict[str, str]:
    """Offsets owner in `sink_offsets` -> Kafka group, for each Kafka-to-Postgres intake."""
    from paystream.stream.pg_intake import worker_group
    from pipelines.fraud.reviews import INTAKE as REVIEWS
    from pipelines.notifications.webhooks import INTAKE as WEBHOOKS

    return {settings.sink_group: settings.sink_group, REVIEWS: worker_group(REVIEWS),
            WEBHOOKS: worker_group(WEBHOOKS)}  # fmt: skip


def intake_positions(settings: Settings) -> dict[str, dict[tuple[str, int], int]]:
    """Kafka group -> (topic, partition) -> next offset, from `sink_offsets`: where each
    intake really is (a test's or a benchmark's rows there are left out)."""
    import psycopg

    from paystream.stream.pg_intake import all_positions

    try:
        with psycopg.connect(settings.postgres_dsn, connect_timeout=5) as conn:
            stored = all_positions(conn)
    except psycopg.Error:
        return {}
    return {group: stored[owner] for owner, group in intake_groups(settings).items() if owner in stored}


@dataclass(frozen=True)
class ResetPlan:
    topic: str
    partition: int
    current: int | None
    target: int


def plan_reset(
    settings: Settings, group: str, *, topic: str | None, to_offset: int | None, to_time: str | None
) -> list[ResetPlan]:
    if (to_offset is None) == (to_time is None):
        raise ValueError("give exactly one of --to-offset and --to-time")
    done = G.committed(settings, group)
    topics = [topic] if topic else sorted({t for t, _ in done})
    if not topics:
        raise ValueError(f"group {group} has no committed offsets; name the --topic to reset")
    plans = []
    for t in topics:
        parts = G.partitions(settings, t)
        ends = G.watermarks(settings, [(t, p) for p in parts])
        if to_time is not None:
            targets = G.offsets_for_time(settings, t, parts, G.parse_time(to_time))
        else:
            assert to_offset is not None
            # Clamp into [low, high]: an offset outside the log would make the group
            # fall back to auto.offset.reset, which is not what the operator asked for.
            targets = {p: min(max(to_offset, ends[(t, p)][0]), ends[(t, p)][1]) for p in parts}
        plans += [ResetPlan(t, p, done.get((t, p)), targets[p]) for p in parts]
    return plans


def apply_reset(settings: Settings, group: str, plans: list[ResetPlan]) -> None:
    G.require_inactive(settings, group)  # checked again right before writing
    client = G.admin(settings)
    tps = [TopicPartition(pl.topic, pl.partition, pl.target) for pl in plans]
    fut = client.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group]
    res = fut.result(timeout=30)
    bad = [tp for tp in (res.topic_partitions or []) if tp.error is not None]
    if bad:
        raise RuntimeError(f"offsets not changed for {bad}")


app = typer.Typer(no_args_is_help=True)


def _lag_table(rows: list[PartitionLag], title: str) -> Table:
    table = Table(title=title)
    for col in ("group", "topic", "partition", "committed", "end", "lag"):
        table.add_column(col, justify="right" if col in ("partition", "committed", "end", "lag") else "left")
    for r in rows:
        table.add_row(r.group, r.topic, str(r.partition), "-" if r.committed is None else str(r.committed),
                      str(r.end), "-" if r.lag is None else str(r.lag))  # fmt: skip
    return table


@app.command("show")
def show_cmd(
    group: str = typer.Option(None, "--group", help="consumer group (default: every paystream group)"),
    topic: str = typer.Option(None, "--topic", help="only this topic"),
) -> None:
    """Committed offsets and lag per partition of one group, or of every paystream group."""
    console = Console()
    settings = get_settings()
    try:
        groups = [group] if group else G.list_groups(settings)
    except Exception as exc:
        fail("cannot list consumer groups", exc)
    if not groups:
        console.print("no paystream consumer groups yet")
    for g in groups:
        try:
            info = G.describe(settings, g)
            rows = group_lag(settings, g, topic)
        except Exception as exc:
            fail(f"cannot read group {g}", exc)
        console.print(_lag_table(rows, f"{g} ({info.state}, {info.members} member(s))"))
        console.print(f"total lag {sum(r.lag or 0 for r in rows)}")


@app.command("reset")
def reset_cmd(
    group: str = typer.Option(..., "--group", help="consumer group (must have no members)"),
    to_time: str = typer.Option(None, "--to-time", help="ISO time; first offset at or after it"),
    to_offset: int = typer.Option(None, "--to-offset", help="this offset on every partition"),
    topic: str = typer.Option(None, "--topic", help="only this topic (default: all committed)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show the plan, change nothing"),
) -> None:
    """Move a stopped group's committed offsets; refuses a group with active members."""
    console = Console()
    settings = get_settings()
    try:
        info = G.require_inactive(settings, group)
        plans = plan_reset(settings, group, topic=topic, to_offset=to_offset, to_time=to_time)
    except Exception as exc:
        fail("refused", exc)
    table = Table(title=f"reset {group} ({info.state})" + (" [dry run]" if dry_run else ""))
    for col in ("topic", "partition", "current", "new", "change"):
        table.add_column(col)
    for pl in plans:
        delta = "" if pl.current is None else f"{pl.target - pl.current:+d}"
        table.add_row(pl.topic, str(pl.partition), "-" if pl.current is None else str(pl.current),
                      str(pl.target), delta)  # fmt: skip
    console.print(table)
    if group == settings.sink_group:
        console.print("[yellow]note: the sink resumes from Postgres sink_offsets, not from these "
                      "Kafka offsets; use `paystream reprocess` instead[/yellow]")  # fmt: skip
    elif group in intake_groups(settings).values():
        console.print(f"[yellow]note: {group} resumes from its position in Postgres sink_offsets, "
                      "not from these Kafka offsets[/yellow]")  # fmt: skip
    if dry_run:
        console.print("dry run: nothing changed")
        return
    try:
        apply_reset(settings, group, plans)
    except Exception as exc:
        fail("reset failed", exc)
    console.print(f"[green]reset {len(plans)} partition(s) of {group}[/green]")


def lag_report(settings: Settings, prefix: str = G.PREFIX) -> list[tuple[G.GroupInfo, str, int, int]]:
    """(group, topic, partitions, total lag) for every group named `prefix*`."""
    out = []
    for g in G.list_groups(settings, prefix):
        info = G.describe(settings, g)
        per_topic: dict[str, list[PartitionLag]] = {}
        for r in group_lag(settings, g):
            per_topic.setdefault(r.topic, []).append(r)
        for t, rows in sorted(per_topic.items()):
            out.append((info, t, len(rows), sum(r.lag or 0 for r in rows)))
        if not per_topic:
            out.append((info, "-", 0, 0))
    return out


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="offsets", help="committed offsets of consumer groups; reset")

    @root.command("lag")
    def lag_cmd(
        prefix: str = typer.Option(G.PREFIX, "--prefix", help="group name prefix"),
        partitions: bool = typer.Option(False, "--partitions", help="one row per partition"),
    ) -> None:
        """Consumer lag of every paystream group (and the intakes' Postgres positions)."""
        console = Console()
        settings = get_settings()
        try:
            if partitions:
                for g in G.list_groups(settings, prefix):
                    console.print(_lag_table(group_lag(settings, g), g))
                return
            rows = lag_report(settings, prefix)
        except Exception as exc:
            fail("cannot read consumer groups", exc)
        table = Table(title="consumer lag")
        for col in ("group", "state", "members", "topic", "partitions", "lag"):
            table.add_column(col, overflow="fold")  # whole group names, wrapped, never cut
        for info, t, n, lag in rows:
            table.add_row(info.group, info.state, str(info.members), t, str(n), str(lag))
        for group, pos in intake_positions(settings).items():
            tps = sorted(pos)
            lag = sum(G.lags(settings, pos).values())
            topics = ",".join(sorted({t for t, _ in tps}))
            table.add_row(f"{group} (postgres)", "-", "-", topics, str(len(tps)), str(lag))
        console.print(table)
