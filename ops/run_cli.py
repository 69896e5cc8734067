"""`paystream run NAME` (one component in the foreground) and `paystream up` (everything)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from paystream.settings import get_settings

# Components `paystream up` supervises; later issues add theirs here.
COMPONENTS: dict[str, Callable[[], None]] = {}


def _ledger() -> None:
    from pipelines.ledger.app import run

    run()


COMPONENTS["ledger"] = _ledger


def _sink() -> None:
    from sinks.postgres_sink import run

    run()


COMPONENTS["sink"] = _sink


def _fraud() -> None:
    from pipelines.fraud.app import run

    run()


COMPONENTS["fraud"] = _fraud


def _compensation() -> None:
    from pipelines.compensation.app import run

    run()


COMPONENTS["compensation"] = _compensation


def _reviews() -> None:
    from pipelines.fraud.reviews import run

    run()


COMPONENTS["reviews"] = _reviews


def _notifications() -> None:
    from pipelines.notifications.app import run

    run()


COMPONENTS["notifications"] = _notifications


def _webhooks() -> None:
    from pipelines.notifications.webhooks import run

    run()


COMPONENTS["webhooks"] = _webhooks


def _gateway() -> None:
    from gateway.server import run

    run()


def _outbox_relay() -> None:
    from gateway.outbox import run

    run()


COMPONENTS["gateway"] = _gateway
COMPONENTS["outbox-relay"] = _outbox_relay


def bootstrap(console: Console) -> None:
    """Stack, topics, schemas: everything a component needs before it starts."""
    from ops import stack
    from ops.db import migrate
    from ops.schemas_cli import register_all
    from ops.topics import apply_topics

    settings = get_settings()
    stack.up(settings, console=console)
    t0 = time.monotonic()
    actions = apply_topics(settings)
    created = [a.topic for a in actions if a.action == "created"]
    note = f" (created {', '.join(created)})" if created else ""
    console.print(f"topics applied in {time.monotonic() - t0:.1f}s{note}")
    t0 = time.monotonic()
    register_all(settings.registry_url)
    console.print(f"schemas registered in {time.monotonic() - t0:.1f}s")
    t0 = time.monotonic()
    applied = migrate(settings)
    console.print(f"database migrated in {time.monotonic() - t0:.1f}s ({len(applied)} new)")


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(name: str = typer.Argument(..., help="component: " + ", ".join(COMPONENTS))) -> None:
        """Run one component in the foreground."""
        if name not in COMPONENTS:
            raise typer.BadParameter(f"unknown component {name!r}; one of {', '.join(COMPONENTS)}")
        from paystream.observability import setup_process
        from paystream.settings import use_component_principal

        use_component_principal(name)  # its own Kafka user: the ACLs bound what it can write
        setup_process(name)  # JSON logs, traces, metrics port (docs/OBSERVABILITY.md)
        COMPONENTS[name]()

    @app.command("up")
    def up_cmd(
        only: list[str] = typer.Option(None, "--only", help="run only these components"),
        no_components: bool = typer.Option(False, "--stack-only", help="bootstrap, then exit"),
    ) -> None:
        """Bring up the stack, apply topics and schemas, then supervise every component."""
        from ops.supervisor import Supervisor, component_argv

        console = Console()
        try:
            bootstrap(console)
        except Exception as exc:
            console.print(f"[red]bootstrap failed:[/red] {exc}")
            raise typer.Exit(1) from exc
        if no_components:
            return
        names = only or list(COMPONENTS)
        settings = get_settings()
        if "gateway" in names:
            threading.Thread(target=_say_ready, args=(console, settings), daemon=True).start()
        raise typer.Exit(Supervisor({n: component_argv(n) for n in names}, console).run())


def _say_ready(console: Console, settings: Any, timeout: float = 180.0) -> None:
    """One line once the gateway answers its health check: where to go, how to make
    an admin, how to stop (a newcomer otherwise sees only component logs scroll by)."""
    import httpx

    host = "127.0.0.1" if settings.gateway_host in ("0.0.0.0", "::") else settings.gateway_host
    base = f"http://{host}:{settings.gateway_port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                console.print(
                    f"[bold green]ready:[/bold green] gateway {base}/v1, admin console {base}/admin/\n"
                    "  create an admin: .venv/bin/paystream admin create-user --email you@example.com "
                    "--password-stdin\n"
                    "  stop: Ctrl-C here (the stack keeps running: .venv/bin/paystream stack down)"
                )
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)

