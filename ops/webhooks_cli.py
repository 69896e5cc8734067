"""`paystream webhooks dead|redeliver`: the webhook dead letters, and sending them again.

A delivery the worker gave up on (retry period over) stays in `webhook_deliveries`
with status `dead`, its last error and every attempt in `webhook_attempts`. Once
the user's endpoint works again, `redeliver` puts the chosen dead deliveries back
to `pending` with a fresh retry period; the worker sends the same body with the
same `Paystream-Event-Id`, so receivers that already have it de-duplicate.
"""

from __future__ import annotations

from typing import Any

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from paystream.settings import get_settings

app = typer.Typer(no_args_is_help=True)

# Filters are optional; NULL matches everything.
_WHERE = """status = 'dead'
  AND (%(user)s::text IS NULL OR user_id = %(user)s)
  AND (%(endpoint)s::uuid IS NULL OR endpoint_id = %(endpoint)s)
  AND (%(ids)s::uuid[] IS NULL OR delivery_id = ANY(%(ids)s))"""

LIST_DEAD = f"""
SELECT delivery_id, endpoint_id, user_id, kind, attempts, dead_at, last_error
FROM webhook_deliveries WHERE {_WHERE} ORDER BY dead_at DESC LIMIT %(limit)s
"""

# created_at restarts the retry period (the worker measures age from it); the
# attempt count and history stay, so numbering continues after the old attempts.
REDELIVER = f"""
UPDATE webhook_deliveries
SET status = 'pending', next_attempt_at = now(), created_at = now(), dead_at = NULL
WHERE {_WHERE}
RETURNING delivery_id
"""


def _params(user: str | None, endpoint: str | None, ids: list[str] | None,
            limit: int = 0) -> dict[str, Any]:
    return {"user": user, "endpoint": endpoint, "ids": ids or None,
            "limit": limit if limit > 0 else None}


def dead(conn: psycopg.Connection[Any], *, user: str | None = None, endpoint: str | None = None,
         ids: list[str] | None = None, limit: int = 0) -> list[tuple[Any, ...]]:
    return conn.execute(LIST_DEAD, _params(user, endpoint, ids, limit)).fetchall()


def redeliver(conn: psycopg.Connection[Any], *, user: str | None = None,
              endpoint: str | None = None, ids: list[str] | None = None) -> list[str]:
    with conn.transaction():
        rows = conn.execute(REDELIVER, _params(user, endpoint, ids)).fetchall()
    return [str(r[0]) for r in rows]


@app.command("dead")
def dead_cmd(
    user: str = typer.Option(None, "--user", help="only this user's deliveries"),
    endpoint: str = typer.Option(None, "--endpoint", help="only this endpoint's deliveries"),
    limit: int = typer.Option(50, "--limit", help="newest N (0: all)"),
) -> None:
    """List deliveries given up after the retry period."""
    with psycopg.connect(get_settings().postgres_dsn) as conn:
        rows = dead(conn, user=user, endpoint=endpoint, limit=limit)
    table = Table("delivery", "endpoint", "user", "kind", "attempts", "dead at", "last error")
    for r in rows:
        table.add_row(*(str(v) for v in r))
    Console().print(table)


@app.command("redeliver")
def redeliver_cmd(
    ids: list[str] = typer.Argument(None, help="delivery id(s)"),
    all_: bool = typer.Option(False, "--all", help="every dead delivery matching the filters"),
    user: str = typer.Option(None, "--user"),
    endpoint: str = typer.Option(None, "--endpoint"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show what would be redelivered"),
) -> None:
    """Put dead deliveries back in line, with a fresh retry period."""
    console = Console()
    if not ids and not all_:
        console.print("[red]name delivery ids, or --all (with --user/--endpoint filters)[/red]")
        raise typer.Exit(2)
    with psycopg.connect(get_settings().postgres_dsn) as conn:
        if dry_run:
            rows = dead(conn, user=user, endpoint=endpoint, ids=ids)
            console.print(f"would redeliver {len(rows)} dead deliveries")
            return
        done = redeliver(conn, user=user, endpoint=endpoint, ids=ids)
    console.print(f"[green]redelivering {len(done)} dead deliveries[/green]")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="webhooks", help="webhook dead letters: list, redeliver")
