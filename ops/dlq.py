"""`paystream dlq list|show|replay`: look at dead letters and send them back.

Dead letters (`paystream.dlq`, schema `dead_letter.avsc`) carry the original key,
value and headers, so once the operator fixed the cause a replay re-produces them
to the original source topic. Each replayed message carries the header
`paystream-replay-of: <dead_letter_id>`; before producing, the source topic is
scanned from the dead letter's failure time on for that header, so ids already
replayed are skipped (`--force` replays anyway). Replaying is harmless for the
ledger in any case: it de-duplicates by command id.

`--rekey` sets the key from the decoded value's `account_id`: the fix for a
command dead-lettered because its key differed from its account (KEY_MISMATCH,
or INVALID "key ... differs from account_id").

Internal topics (`ledger.events`, `ledger.legs`) are never replay targets: only
the ledger writes them. A sink dead letter is fixed with `paystream reprocess`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ops import groups as G
from ops.hints import fail
from paystream import kafka, topics
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC
from paystream.settings import Settings, get_settings

REPLAY_HEADER = "paystream-replay-of"
INTERNAL = frozenset({topics.EVENTS, topics.LEGS, DLQ_TOPIC})

app = typer.Typer(no_args_is_help=True)


@dataclass(frozen=True)
class Letter:
    record: dict[str, Any]
    partition: int
    offset: int

    @property
    def id(self) -> str:
        return str(self.record["dead_letter_id"])


def _ms(ts: int | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="seconds")


def read_letters(settings: Settings, codec: Codec, console: Console | None = None) -> list[Letter]:
    """Every dead letter up to the current end, de-duplicated by id (a component
    that re-ran after a crash may dead-letter the same message twice)."""
    from ops.reprocess import read_range

    ranges = {p: (low, high) for (_, p), (low, high) in
              G.watermarks(settings, [(DLQ_TOPIC, p) for p in G.partitions(settings, DLQ_TOPIC)]).items()}  # fmt: skip
    seen: dict[str, Letter] = {}

    def handle(msgs: list[Any]) -> None:
        for m in msgs:
            try:
                rec = codec.decode(DLQ_TOPIC, m.value())
            except Exception:
                continue
            seen.setdefault(str(rec["dead_letter_id"]), Letter(rec, m.partition(), m.offset()))

    read_range(settings, DLQ_TOPIC, ranges, handle, console)
    return list(seen.values())


def select(
    letters: list[Letter], *, component: str | None = None, reason_code: str | None = None,
    source_topic: str | None = None, since: str | None = None,
) -> list[Letter]:  # fmt: skip
    since_ms = G.parse_time(since) if since else None
    out = []
    for lt in letters:
        r = lt.record
        if component and r["component"] != component:
            continue
        if reason_code and r["reason_code"] != reason_code:
            continue
        if source_topic and r["source_topic"] != source_topic:
            continue
        if since_ms is not None and r["failed_at"] < since_ms:
            continue
        out.append(lt)
    return sorted(out, key=lambda lt: lt.record["failed_at"])


def preview(codec: Codec, record: dict[str, Any], limit: int = 256) -> str:
    """The original value decoded with the source topic's schema, else a hex dump."""
    value = record.get("value")
    if value is None:
        return "(no value)"
    try:
        decoded = codec.decode(record["source_topic"], value)
        return json.dumps(decoded, indent=2, default=lambda b: b.hex() if isinstance(b, bytes) else str(b))
    except Exception as exc:
        head = value[:limit]
        lines = [f"(not decodable as {record['source_topic']}: {str(exc)[:200]})"]
        for i in range(0, len(head), 16):
            chunk = head[i : i + 16]
            text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
            lines.append(f"{i:08x}  {chunk.hex(' '):<47}  {text}")
        if len(value) > limit:
            lines.append(f"... {len(value) - limit} more bytes")
        return "\n".join(lines)


def already_replayed(settings: Settings, letters: list[Letter], console: Console | None = None) -> set[str]:
    """Ids whose replay marker is already on their source topic (scanned from the
    earliest failure time on, headers only)."""
    from ops.reprocess import read_range

    wanted = {lt.id for lt in letters}
    found: set[str] = set()
    by_topic: dict[str, int] = {}
    for lt in letters:
        t = target_topic(settings, lt)
        by_topic[t] = min(by_topic.get(t, lt.record["failed_at"]), lt.record["failed_at"])
    for topic, since in by_topic.items():
        parts = G.partitions(settings, topic)
        starts = G.offsets_for_time(settings, topic, parts, since)
        ends = G.watermarks(settings, [(topic, p) for p in parts])
        ranges = {p: (starts[p], ends[(topic, p)][1]) for p in parts}

        def handle(msgs: list[Any]) -> None:
            for m in msgs:
                for k, v in m.headers() or []:
                    if k == REPLAY_HEADER and v is not None and v.decode() in wanted:
                        found.add(v.decode())

        read_range(settings, topic, ranges, handle, console)
    return found


def target_topic(settings: Settings, lt: Letter) -> str:
    """Where a dead letter is replayed: its source topic, in the generation the ledger now
    reads if it is a ledger input (a letter from before `paystream partitions grow` goes
    to the grown topics, docs/PARTITIONS.md)."""
    return topics.in_generation(lt.record["source_topic"], settings.ledger_topics)


def replay(
    settings: Settings, codec: Codec, letters: list[Letter], *, rekey: bool = False,
    dry_run: bool = False, force: bool = False, console: Console,
) -> list[str]:  # fmt: skip
    """Re-produce the originals to their source topics; returns the ids produced."""
    for lt in letters:
        if topics.generation_of(lt.record["source_topic"])[0] in INTERNAL:
            raise ValueError(
                f"{lt.id}: {lt.record['source_topic']} is internal (only the ledger writes it); "
                "for sink dead letters use `paystream reprocess`"
            )
    skip = set() if force else already_replayed(settings, letters, console)
    todo = [lt for lt in letters if lt.id not in skip]
    for i in sorted(skip):
        console.print(f"skip {i}: already replayed")
    plans: list[tuple[Letter, bytes | None]] = []
    for lt in todo:
        key = lt.record["key"]
        if rekey:
            decoded = codec.decode(lt.record["source_topic"], lt.record["value"])
            key = str(decoded["account_id"]).encode()
        plans.append((lt, key))
        old = lt.record["key"]
        note = f" (key {old!r} -> {key!r})" if key != old else ""
        console.print(f"{'would replay' if dry_run else 'replay'} {lt.id} -> "
                      f"{target_topic(settings, lt)}{note}", highlight=False)  # fmt: skip
    if dry_run or not plans:
        return []
    producer = kafka.producer(settings)
    with Progress(console=console) as progress:
        task = progress.add_task("replaying", total=len(plans))
        for lt, key in plans:
            headers = [(k, v) for k, v in (lt.record.get("headers") or {}).items() if k != REPLAY_HEADER]
            headers.append((REPLAY_HEADER, lt.id.encode()))
            producer.produce(target_topic(settings, lt), key=key, value=lt.record["value"], headers=headers)
            producer.poll(0)
            progress.advance(task)
    if producer.flush(30) != 0:
        raise RuntimeError("replayed messages not acknowledged within 30s")
    return [lt.id for lt, _ in plans]


def _letters(console: Console) -> tuple[Settings, Codec, list[Letter]]:
    settings = get_settings()
    codec = Codec(settings.registry_url)
    return settings, codec, read_letters(settings, codec)


@app.command("list")
def list_cmd(
    component: str = typer.Option(None, "--component"),
    reason_code: str = typer.Option(None, "--reason-code"),
    source_topic: str = typer.Option(None, "--source-topic"),
    since: str = typer.Option(None, "--since", help="ISO time: failed at or after"),
    limit: int = typer.Option(50, "--limit", help="newest N (0: all)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
) -> None:
    """Dead letters with their reason and source position, oldest first."""
    console = Console()
    try:
        _, _, letters = _letters(console)
        rows = select(letters, component=component, reason_code=reason_code,
                      source_topic=source_topic, since=since)  # fmt: skip
    except Exception as exc:
        fail(f"cannot read {DLQ_TOPIC}", exc)
    if limit:
        rows = rows[-limit:]
    if as_json:
        for lt in rows:
            r = {k: v for k, v in lt.record.items() if k not in ("key", "value", "headers")}
            print(json.dumps(r))
        return
    table = Table(title=f"{DLQ_TOPIC}: {len(rows)} of {len(letters)} dead letters")
    table.add_column("id", no_wrap=True)
    for col in ("failed at", "component", "code", "source", "reason"):
        table.add_column(col, overflow="fold")
    for lt in rows:
        r = lt.record
        table.add_row(lt.id, _ms(r["failed_at"]), r["component"], r["reason_code"],
                      f"{r['source_topic']}[{r['source_partition']}]@{r['source_offset']}",
                      r["reason"][:120])  # fmt: skip
    console.print(table)


@app.command("show")
def show_cmd(dead_letter_id: str = typer.Argument(..., help="dead_letter_id")) -> None:
    """One dead letter in full, with a decoded (or hex) preview of the original value."""
    console = Console()
    _, codec, letters = _letters(console)
    match = [lt for lt in letters if lt.id == dead_letter_id]
    if not match:
        console.print(f"[red]no dead letter {dead_letter_id}[/red]")
        raise typer.Exit(1)
    r = match[0].record
    for k in ("dead_letter_id", "component", "reason_code", "reason", "source_topic",
              "source_partition", "source_offset"):  # fmt: skip
        console.print(f"{k}: {r[k]}", highlight=False)
    console.print(f"source_timestamp: {_ms(r['source_timestamp'])}\nfailed_at: {_ms(r['failed_at'])}")
    console.print(f"dlq position: {DLQ_TOPIC}[{match[0].partition}]@{match[0].offset}")
    console.print(f"key: {r['key']!r}", highlight=False)
    console.print(f"headers: { {k: v.decode('utf-8', 'replace') for k, v in r['headers'].items()} }")
    console.print("value:")
    console.print(preview(codec, r), highlight=False, markup=False)


@app.command("replay")
def replay_cmd(
    ids: list[str] = typer.Argument(None, help="dead_letter_id(s)"),
    all_: bool = typer.Option(False, "--all", help="every dead letter matching the filters"),
    reason_code: str = typer.Option(None, "--reason-code"),
    component: str = typer.Option(None, "--component"),
    rekey: bool = typer.Option(False, "--rekey", help="key = the decoded value's account_id"),
    force: bool = typer.Option(False, "--force", help="replay ids already replayed"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show what would be produced"),
) -> None:
    """Re-produce originals to their source topics (after the cause was fixed)."""
    console = Console()
    t0 = time.monotonic()
    try:
        settings, codec, letters = _letters(console)
        if all_:
            chosen = select(letters, reason_code=reason_code, component=component)
        elif ids:
            by_id = {lt.id: lt for lt in letters}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise ValueError(f"no dead letter(s) {', '.join(missing)}")
            chosen = [by_id[i] for i in ids]
        else:
            raise ValueError("name ids, or --all (with filters)")
        done = replay(settings, codec, chosen, rekey=rekey, dry_run=dry_run, force=force, console=console)
    except Exception as exc:
        fail("replay failed", exc)
    if not dry_run:
        console.print(f"[green]replayed {len(done)} of {len(chosen)} in {time.monotonic() - t0:.1f}s[/green]")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dlq", help="dead letters: list, show, replay")
