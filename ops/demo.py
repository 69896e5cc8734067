"""`paystream demo`: make a running system move, so a newcomer sees what it does.

Seeds straight through ledger commands (the public Kafka input, as any direct
producer would): opens N user accounts, deposits into each, then streams random
payments between them at a bounded rate, and follows the outcomes on
`ledger.events`. Everything is bounded (`--payments`, `--rate`, `--timeout`) so it
never turns into an accidental load test. Needs the ledger running (`paystream up`).
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from typing import Any

import typer
from confluent_kafka import TopicPartition
from rich.console import Console
from rich.progress import Progress

from ops import groups as G
from paystream import commands as C
from paystream import kafka, topics
from paystream.codec import Codec
from paystream.settings import Settings, get_settings

EVENTS = topics.EVENTS


class Outcomes:
    """Terminal outcomes of chosen command ids, read from the end of ledger.events."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.codec = codec
        self.c = kafka.consumer(settings, f"paystream-demo-{uuid.uuid4()}")
        parts = G.partitions(settings, EVENTS)
        ends = G.watermarks(settings, [(EVENTS, p) for p in parts])
        self.c.assign([TopicPartition(EVENTS, p, ends[(EVENTS, p)][1]) for p in parts])
        self.seen: dict[str, dict[str, Any]] = {}

    def poll(self, wanted: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.seen) and time.monotonic() < deadline:
            for m in kafka.consume_ready(self.c, 1000, 0.2):
                if m.error() is not None:
                    continue
                try:
                    ev = self.codec.decode(EVENTS, m.value())
                except Exception:
                    continue
                if ev["terminal"] and not ev["replay"] and ev["command_id"] in wanted:
                    self.seen[ev["command_id"]] = ev

    def close(self) -> None:
        self.c.close()


def run_demo(
    settings: Settings, console: Console, *, users: int, payments: int, rate: float,
    deposit: int, currency: str, timeout: float, seed: int | None,
) -> bool:  # fmt: skip
    rng = random.Random(seed)
    codec = Codec(settings.registry_url)
    producer = kafka.producer(settings)
    outcomes = Outcomes(settings, codec)

    def send(cmds: list[dict[str, Any]]) -> None:
        for c in cmds:
            producer.produce(C.topic_for(c), key=c["account_id"].encode(), value=codec.encode(C.topic_for(c), c))
        producer.flush(30)

    try:
        accounts = [str(uuid.uuid4()) for _ in range(users)]
        tag = uuid.uuid4().hex[:6]
        opens = [C.open_account(a, external_number=f"DEMO-{tag}-{i:03d}", owner_id=f"demo-{tag}-{i}",
                                currency=currency) for i, a in enumerate(accounts)]  # fmt: skip
        console.print(f"opening {users} accounts (DEMO-{tag}-000..{users - 1:03d}) ...")
        send(opens)
        outcomes.poll({c["command_id"] for c in opens}, timeout)
        if len(outcomes.seen) < len(opens):
            console.print("[red]the ledger did not answer; is it running? (`paystream up`)[/red]")
            return False
        deps = [C.deposit(a, deposit, currency, metadata={"description": "demo deposit"}) for a in accounts]
        console.print(f"depositing {deposit / 100:.2f} {currency} into each ...")
        send(deps)
        outcomes.poll({c["command_id"] for c in deps}, timeout)
        sent: list[dict[str, Any]] = []
        console.print(f"streaming {payments} payments at {rate:g}/s ...")
        t0 = time.monotonic()
        with Progress(console=console) as progress:
            task = progress.add_task("payments sent", total=payments)
            for i in range(payments):
                src, dst = rng.sample(accounts, 2)
                amount = rng.choice([100, 250, 500, 1_000, 2_500, 5_000, deposit])  # some overdraw
                cmd = C.transfer(src, dst, amount, currency, metadata={"description": f"demo #{i}"})
                producer.produce(C.topic_for(cmd), key=src.encode(), value=codec.encode(C.topic_for(cmd), cmd))
                producer.poll(0)
                sent.append(cmd)
                progress.advance(task)
                outcomes.poll(set(), 0)  # keep draining while sending
                delay = t0 + (i + 1) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        producer.flush(30)
        outcomes.poll({c["command_id"] for c in sent}, timeout)
        kinds = Counter(
            outcomes.seen[c["command_id"]]["type"] + (
                f" ({outcomes.seen[c['command_id']]['reason']})"
                if outcomes.seen[c["command_id"]].get("reason") else "")
            for c in sent if c["command_id"] in outcomes.seen
        )  # fmt: skip
        for k, n in kinds.most_common():
            console.print(f"  {n:5d}  {k}")
        missing = sum(1 for c in sent if c["command_id"] not in outcomes.seen)
        if missing:
            console.print(f"[red]{missing} payment(s) without an outcome after {timeout:g}s[/red]")
        console.print("next: `paystream lag`, `paystream verify`, Grafana dashboards, "
                      f"`psql ... -c \"select * from accounts where external_number like 'DEMO-{tag}%'\"`")  # fmt: skip
        return missing == 0
    finally:
        outcomes.close()


def register(root: typer.Typer) -> None:
    @root.command("demo")
    def demo_cmd(
        users: int = typer.Option(10, "--users", min=2, max=1000),
        payments: int = typer.Option(200, "--payments", min=0, max=100_000),
        rate: float = typer.Option(20.0, "--rate", min=0.1, max=2000.0, help="payments per second"),
        deposit: int = typer.Option(100_000, "--deposit", min=1, help="minor units per account"),
        currency: str = typer.Option("USD", "--currency"),
        timeout: float = typer.Option(60.0, "--timeout", help="seconds to wait for outcomes"),
        seed: int = typer.Option(None, "--seed"),
    ) -> None:
        """Seed accounts and deposits, then stream payments and print their outcomes."""
        console = Console()
        try:
            ok = run_demo(settings=get_settings(), console=console, users=users, payments=payments,
                          rate=rate, deposit=deposit, currency=currency, timeout=timeout, seed=seed)  # fmt: skip
        except Exception as exc:
            console.print(f"[red]demo failed:[/red] {exc}")
            raise typer.Exit(1) from exc
        if not ok:
            raise typer.Exit(1)
