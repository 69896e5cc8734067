"""`paystream bench sink`: postings/s the read-model sink sustains while catching up.

Runs the real sink loop (decode, one transaction per batch, offsets in Postgres)
in this process over the existing `ledger.events`, into a scratch database that
is created, migrated and dropped around the run. A scratch database makes every
event new, which is the expensive path; the shared read model would mostly hit
the cheap already-written path and flatter the figure.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import psycopg
import typer
from rich.console import Console

from paystream.settings import Settings, get_settings


@dataclass
class BenchResult:
    events: int
    postings: int
    seconds: float
    batches: int

    @property
    def postings_per_s(self) -> float:
        return self.postings / self.seconds if self.seconds else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def bench(
    settings: Settings, *, max_events: int | None = None, console: Console | None = None
) -> BenchResult:
    from ops.db import migrate
    from ops.verify import end_offsets
    from sinks.postgres_sink import Sink

    console = console or Console()
    name = f"paystream_bench_{uuid.uuid4().hex[:10]}"
    base = settings.postgres_dsn.rsplit("/", 1)[0]
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # name is generated here, not user input
    try:
        scratch = settings.model_copy(update={"postgres_dsn_override": f"{base}/{name}"})
        migrate(scratch)
        target = end_offsets(settings)
        total = sum(target.values())
        console.print(
            f"catching up on ledger.events (up to {total} offsets"
            + (f", stopping after {max_events} events" if max_events else "")
            + ")"
        )
        sink = Sink(
            scratch,
            consumer_name="bench",
            group=f"paystream-bench-{uuid.uuid4()}",
            instance="",
            serve_metrics=False,
            commit_to_kafka=False,
        )
        sink.start()
        t0: float | None = None
        batches = 0
        try:
            for res in sink.batches():
                if res is not None and res.inserted and t0 is None:
                    t0 = time.perf_counter()  # from the first write: excludes the group join
                batches += 1
                done = all(sink.stored.get(p, 0) >= o for p, o in target.items() if o > 0)
                if done or (max_events and sink.totals.inserted >= max_events):
                    break
            elapsed = time.perf_counter() - (t0 or time.perf_counter())
        finally:
            sink.close()
        return BenchResult(sink.totals.inserted, sink.totals.postings, elapsed, batches)
    finally:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("sink")
    def sink_cmd(
        max_events: int = typer.Option(0, "--events", help="stop after this many events (0: all)"),
    ) -> None:
        """Postings/s of the Postgres sink catching up on ledger.events (scratch database)."""
        console = Console()
        r = bench(get_settings(), max_events=max_events or None, console=console)
        console.print(
            f"sink: {r.events} events, {r.postings} postings in {r.seconds:.1f}s over {r.batches} "
            f"polls: [bold]{r.postings_per_s:,.0f} postings/s[/bold] "
            f"({r.events_per_s:,.0f} events/s)"
        )
