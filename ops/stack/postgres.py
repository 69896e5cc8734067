"""PostgreSQL from the Debian package: its own cluster under home, scram auth, a generated password."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from rich.console import Console

from ops.stack.errors import StackError
from ops.stack.files import write_atomic
from ops.stack.service import Service
from ops.stack.tools import apt_install, require_tool, run_step

if TYPE_CHECKING:
    import psycopg


class Postgres(Service):
    name = "postgres"
    # SIGINT is Postgres' "fast" shutdown: roll back sessions, checkpoint, exit.
    # SIGTERM ("smart") would wait for every pooled client to disconnect.
    stop_signal = signal.SIGINT

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.layout.run / "postgres"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.postgres_port,)

    def bin_dir(self) -> Path | None:
        candidates = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/postgres"),
            key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
        )
        return candidates[-1].parent if candidates else None

    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def run_as(self) -> str | None:
        # Postgres refuses to run as root.
        return "postgres" if self._as_root() else None

    def _wrap(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if self._as_root() else cmd

    def _chown(self, path: Path) -> None:
        if self._as_root():
            shutil.chown(path, user="postgres", group="postgres")

    def preflight(self) -> None:
        if self.bin_dir() is None:
            apt_install("postgresql", "PostgreSQL")
            if self.bin_dir() is None:
                raise StackError("PostgreSQL installed but no /usr/lib/postgresql/*/bin/postgres")
        if self._as_root():
            require_tool("runuser", "it ships with util-linux")
            try:
                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise StackError("running as root but there is no `postgres` user") from exc

    def password(self, create: bool) -> str:
        existing = self.settings.resolved_postgres_password()
        if existing:
            return existing
        if not create:
            raise StackError(
                f"Postgres data exists in {self.data_dir} but its password file "
                f"{self.settings.postgres_password_path} is gone; set PAYSTREAM_POSTGRES_PASSWORD "
                "or run `paystream stack reset --yes`."
            )
        write_atomic(self.settings.postgres_password_path, secrets.token_urlsafe(32), mode=0o600)
        self.settings.postgres_password_path.parent.chmod(0o700)
        return self.password(create=False)

    def prepare(self, console: Console) -> None:
        bin_dir = self.bin_dir()
        assert bin_dir is not None  # preflight guarantees it
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.socket_dir)
        if (self.data_dir / "PG_VERSION").exists():
            self.password(create=False)
            return
        if self.data_dir.exists():
            # No PG_VERSION: an interrupted initdb, nothing worth keeping.
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(mode=0o700)
        self._chown(self.data_dir)
        if self._as_root():
            probe = subprocess.run(
                self._wrap(["test", "-w", str(self.data_dir)]), check=False, capture_output=True
            )
            if probe.returncode != 0:
                raise StackError(
                    f"user postgres cannot reach {self.data_dir}: every parent directory of the "
                    "stack home needs o+x. Point PAYSTREAM_HOME somewhere else."
                )
        password = self.password(create=True)
        console.print("[dim]postgres: initdb (one-off)[/dim]")
        with tempfile.NamedTemporaryFile("w", prefix="paystream-pw-", delete=True) as pwfile:
            os.chmod(pwfile.name, 0o600)
            pwfile.write(password + "\n")
            pwfile.flush()
            self._chown(Path(pwfile.name))
            run_step(
                self._wrap([
                    str(bin_dir / "initdb"),
                    "-D", str(self.data_dir),
                    "-U", self.settings.postgres_user,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile.name}",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-instructions",
                ]),
                what="postgres initdb",
                timeout=300,
            )

    def command(self) -> list[str]:
        bin_dir = self.bin_dir()
        assert bin_dir is not None
        return [
            str(bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.settings.postgres_port),
            "-k", str(self.socket_dir),
            "-c", "listen_addresses=127.0.0.1",
            # The default 100 is easy to exhaust with several services' pools plus tests.
            "-c", "max_connections=200",
        ]

    def is_ours(self, proc: psutil.Process) -> bool:
        try:
            name = proc.name()
            # The postmaster chdirs into its data directory.
            return name == "postgres" and Path(proc.cwd()).resolve() == self.data_dir.resolve()
        except (psutil.Error, OSError):
            return False

    def _connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.settings.postgres_port,
            user=self.settings.postgres_user,
            password=self.password(create=False),
            dbname=dbname,
            connect_timeout=3,
            autocommit=True,
        )

    def healthy(self) -> bool:
        import psycopg

        try:
            with self._connect() as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def after_ready(self, fresh: bool) -> None:
        from psycopg import sql

        with self._connect() as conn:
            for db in dict.fromkeys((self.settings.postgres_db, "registry")):
                found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if found.fetchone() is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
