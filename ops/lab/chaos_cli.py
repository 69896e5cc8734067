"""`paystream chaos`: the single-node fault suite (ops.lab.chaos) and, with `--cluster`,
the three-broker one (ops.lab.cluster, which builds on ops.lab.chaos). The command lives
apart from both so neither imports the other back."""

from __future__ import annotations

import signal
from typing import Any

from rich.console import Console

from ops.lab.chaos import ALL_FAULTS, SHORT_FAULTS, STEADY, chaos
from ops.lab.cluster import cluster_chaos, render_cluster


def register(app: Any) -> None:
    import typer

    @app.command("chaos")
    def chaos_cmd(
        short: bool = typer.Option(False, "--short", help=f"CI mode: {', '.join(SHORT_FAULTS)}"),
        fault: list[str] = typer.Option(
            None, "--fault",
            help=f"only these (repeat): {', '.join(ALL_FAULTS)}; {STEADY}: no fault, the load alone for a while, "
            "then the end-to-end check (does the stack keep up?)",
        ),
        clients: int = typer.Option(12, help="concurrent HTTP clients"),
        rate: float = typer.Option(1.5, help="payments/s per HTTP client"),
        direct_rate: float = typer.Option(20.0, help="transfers/s straight to Kafka"),
        fraud: bool = typer.Option(False, help="run the fraud component too"),
        ledgers: int = typer.Option(0, help="ledger instances from the start (0: three when a ledger-instance "
                                    "fault is chosen, else one)"),
        keep: bool = typer.Option(False, help="keep the isolated stack's home (logs) afterwards"),
        cluster: bool = typer.Option(False, "--cluster", help="three-broker cluster: kill -9 a partition leader"),
    ) -> None:
        """Faults under load on an isolated stack, then Jepsen-style checks; exit 1 on any anomaly."""
        # SIGTERM (`timeout`, a CI runner) unwinds like Ctrl-C, so the isolated stack
        # and its components are stopped instead of left running.
        signal.signal(signal.SIGTERM, _exit_on_term)
        console = Console()
        if cluster:
            creport = cluster_chaos(console=console, keep=keep)
            render_cluster(creport, console)
            raise typer.Exit(0 if creport.ok else 1)
        report = chaos(short=short, faults=fault or None, clients=clients, rate=rate, direct_rate=direct_rate,
                       fraud=fraud, keep=keep, ledgers=ledgers or None, console=console)
        raise typer.Exit(0 if report.ok else 1)


def _exit_on_term(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)
