"""`paystream state rebuild --app NAME`: throw away a stateful app's local state.

The Quix apps (ledger, fraud, compensation, notifications, reviews) keep RocksDB
state under `settings.home/state/<app>-<instance>`, backed by changelog topics.
Deleting the directory is safe only while no instance of the app runs: on its next
start the app restores every store from its changelog, so a corrupted or suspect
local copy is replaced by the committed truth. A running member would keep writing
to (or crash on) the directory, hence the refusal while the group is active.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import typer
from rich.console import Console

from ops import groups as G
from ops.hints import fail
from paystream.settings import Settings, get_settings

APPS = ("ledger", "fraud", "compensation", "notifications", "reviews", "webhooks")

app = typer.Typer(no_args_is_help=True)


def default_instance(settings: Settings, name: str) -> str:
    """The instance id `paystream run NAME` would use (PAYSTREAM_<APP>_INSTANCE, else "0")."""
    if name == "ledger":
        return settings.ledger_instance
    return os.environ.get(f"PAYSTREAM_{name.upper()}_INSTANCE", "0")


def state_dirs(settings: Settings, name: str, instance: str | None) -> list[Path]:
    """The app's state directories: one instance's, or every instance's when None
    (test and benchmark runs leave their own `<app>-<id>` directories behind)."""
    root = settings.home / "state"
    if instance is not None:
        d = root / f"{name}-{instance}"
        return [d] if d.exists() else []
    return sorted(d for d in root.glob(f"{name}-*") if d.is_dir())


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rebuild(settings: Settings, name: str, instance: str | None, dry_run: bool, console: Console) -> list[Path]:
    """Remove the state dirs (unless dry run) after checking the group is idle."""
    if name not in APPS:
        raise ValueError(f"unknown app {name!r}; one of {', '.join(APPS)}")
    group = f"paystream-{name}"
    G.require_inactive(settings, group)
    dirs = state_dirs(settings, name, instance)
    if not dirs:
        console.print(f"no state directories for {name} under {settings.home / 'state'}")
    for d in dirs:
        verb = "would remove" if dry_run else "removing"
        console.print(f"{verb} {d} ({_size(d) / 1e6:.1f} MB)")
        if not dry_run:
            shutil.rmtree(d)
    if dirs and not dry_run:
        console.print(f"[green]{name} restores its state from the changelog on its next start[/green]")
    return dirs


@app.command("rebuild")
def rebuild_cmd(
    name: str = typer.Option(..., "--app", help="stateful app: " + ", ".join(APPS)),
    instance: str = typer.Option(None, "--instance", help="instance id (default: this host's)"),
    all_instances: bool = typer.Option(False, "--all-instances", help="every <app>-* directory"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be removed"),
) -> None:
    """Discard an app's local state so it restores from its changelog; refuses a running app."""
    console = Console()
    try:
        settings = get_settings()
        if not all_instances and instance is None:
            instance = default_instance(settings, name)
        rebuild(settings, name, None if all_instances else instance, dry_run, console)
    except Exception as exc:
        fail("refused", exc)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="state", help="local state of the stateful apps")
