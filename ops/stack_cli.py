"""`paystream stack ...`: a thin typer layer over :mod:`ops.stack`.

The logic stays importable in ``ops.stack`` so tests and other tools can
bring the stack up without shelling out; this module only formats output and
turns :class:`~ops.stack.StackError` into exit code 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ops import stack
from paystream.settings import get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="local Kafka, registry, Postgres and Redis")

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")


def _guard(action: Callable[[], T]) -> T:
    """Stack errors are expected operator-facing failures: red message, exit 1, no traceback."""
    try:
        return action()
    except stack.StackError as exc:
        # Text, not markup: log tails are full of [brackets].
        err_console.print(Text(str(exc), style="red"), soft_wrap=True)
        raise typer.Exit(1) from None


@app.command("up")
def up_command() -> None:
    """Start Postgres, Redis, Kafka and the registry (reusing any already running)."""
    started = time.monotonic()
    report = _guard(lambda: stack.up(get_settings(), console=console))
    if report.started:
        console.print(f"stack up in {time.monotonic() - started:.1f}s")
    else:
        console.print("stack already up")


@app.command("down")
def down_command() -> None:
    """Stop the services `up` started (and only those)."""
    stopped = _guard(lambda: stack.down(get_settings(), console=console))
    if not stopped:
        console.print("nothing to stop")


@app.command("status")
def status_command() -> None:
    """Health and memory per service; exits 1 unless all are up."""
    statuses = stack.status(get_settings())
    table = Table(title=f"paystream stack ({get_settings().home})")
    table.add_column("service")
    table.add_column("port", justify="right")
    table.add_column("pid", justify="right")
    table.add_column("health")
    table.add_column("RSS MiB", justify="right")
    table.add_column("PSS MiB (procs)", justify="right")
    with_notes = any(st.note for st in statuses)
    if with_notes:
        table.add_column("note", style="dim")
    colours = {"up": "green", "down": "red", "unhealthy": "yellow"}
    for st in statuses:
        cells: list[str | Text] = [
            st.name,
            "/".join(str(p) for p in st.ports),
            str(st.pid) if st.pid else "-",
            Text(st.health, style=colours[st.health]),
            f"{st.rss_mib:.0f}" if st.rss_mib is not None else "-",
            f"{st.tree_pss_mib:.0f} ({st.processes})" if st.tree_pss_mib is not None else "-",
        ]
        table.add_row(*cells, *([st.note] if with_notes else []))
    console.print(table)
    console.print("[dim]RSS: main process. PSS: the whole process tree with shared memory split "
                  "between processes (Postgres runs one process per connection).[/dim]")
    down = [st.name for st in statuses if st.health != "up"]
    if down:
        err_console.print(Text(f"not up: {', '.join(down)}: start the stack with `paystream stack up` "
                               f"(`paystream stack logs NAME` says why one stopped)", style="red"), soft_wrap=True)
        raise typer.Exit(1)


@app.command("reset")
def reset_command(
    yes: Annotated[bool, typer.Option("--yes", help="really delete the stack's data")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only list what would go")] = False,
) -> None:
    """Stop the stack and delete its data under home (the download cache is kept)."""
    settings = get_settings()
    if dry_run:
        paths = stack.resettable_paths(settings)
        console.print("would stop the stack, then delete:" if paths else "nothing to delete")
        for path in paths:
            console.print(f"  {path}")
        console.print(f"[dim]kept: {settings.home / 'secrets'}, {settings.cache_dir}[/dim]")
        return
    if not yes:
        err_console.print(Text("refusing to delete stack data without --yes "
                               "(see --dry-run)", style="red"))
        raise typer.Exit(1)
    _guard(lambda: stack.reset(settings, console=console))


@app.command("logs")
def logs_command(
    name: Annotated[str, typer.Argument(help=f"one of: {', '.join(stack.SERVICES)}")],
    lines: Annotated[int, typer.Option("-n", "--lines", help="lines from the end")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
) -> None:
    """Print a service's log (stdout and stderr of the process)."""
    if name not in stack.SERVICES:
        err_console.print(Text(f"unknown service {name!r}; one of {', '.join(stack.SERVICES)}",
                               style="red"))
        raise typer.Exit(2)
    path = stack.Layout.of(get_settings()).log_file(name)
    if not path.exists() and not follow:
        err_console.print(Text(f"no log yet at {path}: {name} never ran under this home "
                               "(start the stack with `paystream stack up`)", style="red"), soft_wrap=True)
        raise typer.Exit(1)
    if path.exists():
        # Plain print: log lines are not rich markup.
        typer.echo(stack.log_tail(path, lines))
    if not follow:
        return
    position = path.stat().st_size if path.exists() else 0
    try:
        while True:
            if path.exists():
                size = path.stat().st_size
                if size < position:  # truncated or replaced by `reset`
                    position = 0
                if size > position:
                    with path.open("rb") as fh:
                        fh.seek(position)
                        chunk = fh.read()
                        position = fh.tell()
                    typer.echo(chunk.decode("utf-8", errors="replace"), nl=False)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
