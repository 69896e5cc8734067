"""`paystream bench http`: placeholder until the benchmark lands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("http")
    def bench_http() -> None:
        """HTTP benchmark of the gateway."""
        raise typer.Exit(1)
