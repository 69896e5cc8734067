"""`paystream bench ...`: programs that print figures (never timed tests)."""

from __future__ import annotations

import typer
from rich.console import Console

from paystream.settings import get_settings

app = typer.Typer(no_args_is_help=True)


@app.command("ledger")
def ledger_cmd(
    transfers: int = typer.Option(20_000, help="transfers per full-speed run"),
    accounts: int = typer.Option(1_000),
    paced_rate: float = typer.Option(500.0, help="transfers/s for the latency run"),
    paced_seconds: float = typer.Option(10.0),
    commit_interval: list[float] = typer.Option([0.05, 0.2], help="repeat for several values"),
    workload: list[str] = typer.Option(["uniform", "hot"], help="uniform | hot (one account sends 50%)"),
) -> None:
    """Sustained transfers/s and produce->outcome latency of one ledger process."""
    from ops.bench.ledger import bench

    try:
        bench(get_settings(), transfers=transfers, accounts=accounts, paced_rate=paced_rate,
              paced_seconds=paced_seconds, commit_intervals=commit_interval, workloads=workload,
              console=Console())
    except RuntimeError as exc:
        Console().print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
