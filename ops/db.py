"""Versioned schema migrations for the Postgres read model: `paystream db migrate`.

Migrations are plain SQL files in `sinks/migrations/`, named `NNNN_description.sql`,
applied in order, each in its own transaction together with its row in
`schema_migrations`. Applying is idempotent, and an advisory lock makes two
concurrent `migrate` runs safe. An applied file whose checksum changed is an
error: history is append-only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import psycopg
import typer
from rich.console import Console

from paystream.settings import PROJECT_ROOT, Settings, get_settings

MIGRATIONS_DIR = PROJECT_ROOT / "sinks" / "migrations"
_LOCK_KEY = 0x7061797374726561  # "paystrea"

app = typer.Typer(no_args_is_help=True)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        found.append(Migration(int(version), name, path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {directory}")
    return found


def migrate(settings: Settings, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply pending migrations; return the ones applied now."""
    applied_now: list[Migration] = []
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {v: c for v, c in conn.execute("SELECT version, checksum FROM schema_migrations")}
            for m in discover(directory):
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise RuntimeError(f"migration {m.path.name} changed after it was applied")
                    continue
                with conn.transaction():
                    conn.execute(m.path.read_text())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (m.version, m.name, m.checksum),
                    )
                applied_now.append(m)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


@app.command("migrate")
def migrate_cmd() -> None:
    """Apply pending migrations (idempotent)."""
    applied = migrate(get_settings())
    console = Console()
    for m in applied:
        console.print(f"applied {m.path.name}")
    console.print(f"{len(applied)} migration(s) applied; schema is current")
