"""The local stack: Postgres, Redis, Kafka (KRaft) and Apicurio as plain processes on 127.0.0.1.

There is no Docker on the machines this runs on, so every service is a child
process we start ourselves, in its own session so it outlives the CLI and
ignores the terminal's Ctrl-C. Pid files under ``<home>/run`` are the only
record of ownership: ``down`` stops exactly what ``up`` started and leaves
anything else alone, even if it listens on "our" port.

State lives under ``settings.home``; downloaded jars live in
``settings.cache_dir`` so ``reset`` and fresh clones don't re-download them.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psutil
from rich.console import Console

from ops import kafka_auth
from paystream.settings import Settings

if TYPE_CHECKING:
    import psycopg

SERVICES: tuple[str, ...] = ("postgres", "redis", "kafka", "registry")

Health = Literal["up", "down", "unhealthy"]

STACK_FILES = Path(__file__).resolve().parent / "stack"
KAFKA_POM = STACK_FILES / "kafka" / "pom.xml"
LOG4J2_CONFIG = STACK_FILES / "log4j2.properties"

READY_TIMEOUTS: dict[str, float] = {
    "postgres": 30.0, "redis": 15.0, "kafka": 90.0, "registry": 120.0,
}
STOP_TIMEOUT = 30.0
LOCK_TIMEOUT = 600.0
# A cold Maven download of Kafka + Apicurio (~150 MB) on a slow link; not a readiness timeout.
DOWNLOAD_TIMEOUT = 1800.0
LOG_TAIL_LINES = 30
# What `reset` deletes: everything stateful under home except secrets (the
# gateway's JWT key lives there too) and run/ (empty once `down` is done).
# "state": Quix state stores are caches of changelogs in Kafka; kept across a Kafka
# reset they no longer match it and every stateful app refuses to start
# (InvalidStoreChangelogOffset).
RESETTABLE_DIRS: tuple[str, ...] = ("postgres", "redis", "kafka", "registry", "logs", "state")

# Apicurio 3.0.9's parent POM (io.apicurio:apicurio-registry:3.0.9) is not on
# Maven Central, and maven-dependency-plugin 3.x insists on reading it even for
# a single-artifact copy. 2.8 (Maven 3.8's built-in default) copies the
# artifact without the descriptor; pinning it keeps newer Mavens working too.
APICURIO_COPY_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:2.8:copy"

_DONE_MARKER = ".paystream-complete"
MIB = 1024 * 1024
JAVA_HINT = "install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)"


class StackError(Exception):
    """Anything that stops the stack from coming up or going down; the message is for humans."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    ports: tuple[int, ...]
    pid: int | None
    health: Health
    rss_mib: float | None  # main process
    tree_pss_mib: float | None = None  # main process and children, shared pages split
    processes: int = 0
    note: str = ""

    @property
    def port(self) -> int:
        return self.ports[0]


class UpReport(dict[str, float]):
    """Seconds until each service was ready (0.0 when reused), plus what was reused.

    A plain ``dict[str, float]`` for callers that only want timings; the CLI
    and tests also need to tell a fresh start from a reuse without parsing
    console output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reused: set[str] = set()
        self.started: set[str] = set()
        self.pids: dict[str, int] = {}
        self.prepare_seconds: dict[str, float] = {}


# Popen objects of services started by this process. Kept so the children can
# be reaped if ``down`` runs in the same process (tests); otherwise they would
# linger as zombies that psutil reports as alive.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    home: Path
    cache: Path

    @classmethod
    def of(cls, settings: Settings) -> Layout:
        return cls(home=settings.home.resolve(), cache=settings.cache_dir.expanduser().resolve())

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def secrets(self) -> Path:
        return self.home / "secrets"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"


# --------------------------------------------------------------------------- helpers


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    # created with its final mode: a file holding passwords is never readable by others
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w") as fh:
        fh.write(text)
    tmp.chmod(mode)  # the umask may have narrowed it
    tmp.replace(path)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, since: int = 0) -> str:
    """Last lines of a log (only those written after byte ``since``), read from the end."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            start = max(since, size - max(lines * 400, 65536), 0)
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        return f"(no log at {path})"
    text = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _error_with_log(message: str, log: Path, since: int = 0) -> StackError:
    """The log tail is the point: it is what says why Kafka or Postgres gave up."""
    return StackError(
        f"{message}\n--- last {LOG_TAIL_LINES} lines of {log} ---\n{log_tail(log, since=since)}"
    )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a service could bind ``host:port`` right now.

    SO_REUSEADDR mirrors what the services themselves do, so sockets lingering
    in TIME_WAIT from a previous run don't count as taken; a listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str | None:
    """``pid N (name)`` of whoever listens on ``port``, if the OS tells us."""
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, PermissionError):
        return None
    for conn in connections:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            if conn.pid is None:
                return None
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.Error:
                name = "?"
            return f"pid {conn.pid} ({name})"
    return None


def _is_gone(proc: psutil.Process) -> bool:
    popen = _CHILDREN.get(proc.pid)
    if popen is not None and popen.poll() is not None:
        _CHILDREN.pop(proc.pid, None)
        return True
    try:
        if not proc.is_running():
            return True
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _is_gone(proc):
            return True
        time.sleep(0.1)
    return _is_gone(proc)


def _kill_group(pgid: int) -> None:
    """SIGKILL the whole session we started: a killed postmaster can leave forked helpers."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _memory_mib(proc: psutil.Process) -> tuple[float | None, float | None, int]:
    """(RSS of the main process, PSS summed over its process tree, number of processes).

    RSS alone misleads for Postgres: every backend maps the same shared
    buffers, so summing RSS counts them once per connection. PSS splits shared
    pages between the processes mapping them, so the tree sum is what the
    service really costs.
    """
    try:
        rss = proc.memory_info().rss / MIB
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return None, None, 0
    pss = 0
    for p in procs:
        try:
            pss += p.memory_full_info().pss
        except psutil.AccessDenied:
            return rss, None, len(procs)
        except psutil.Error:
            continue
    return rss, pss / MIB, len(procs)


def _run(
    cmd: list[str],
    *,
    what: str,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a one-off step to completion; its output only matters if it fails."""
    try:
        result = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {cmd[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what}: timed out after {timeout:.0f}s") from exc
    output = result.stdout.decode("utf-8", errors="replace")
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-LOG_TAIL_LINES:])
        raise StackError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return output


def kafka_uuid() -> str:
    """A cluster or directory id as Kafka writes them: 16 random bytes, URL-safe base64.

    Like Kafka's own `Uuid.randomUuid`, never one starting with "-": the storage
    tool would take `-t -xyz...` for an option and refuse to format (it did, in
    about one run in 64).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _apt_install(package: str, what: str) -> None:
    """Install a Debian package, but only when we are root; otherwise say exactly what to run."""
    if os.geteuid() != 0:
        raise StackError(
            f"{what} is not installed. Install it with "
            f"`sudo apt-get install -y {package}` (or run paystream as root to let it do so)."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update"], what="apt-get update", timeout=600, env=env)
    _run(["apt-get", "install", "-y", package], what=f"apt-get install {package}", timeout=1200,
         env=env)


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"`{name}` is not on PATH; {hint}")
    return path


@contextlib.contextmanager
def _stack_lock(layout: Layout) -> Iterator[None]:
    """Serialise up/down/reset on one home, so parallel test sessions never double-start."""
    layout.run.mkdir(parents=True, exist_ok=True)
    with (layout.run / "stack.lock").open("w") as fh:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"another paystream stack command has held {layout.run / 'stack.lock'} "
                        f"for {LOCK_TIMEOUT:.0f}s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- services


class _Service:
    """One managed process: how to prepare, start, recognise and health-check it."""

    name: str = ""
    stop_signal: signal.Signals = signal.SIGTERM

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = Layout.of(settings)

    # where
    @property
    def pid_file(self) -> Path:
        return self.layout.pid_file(self.name)

    @property
    def log_file(self) -> Path:
        return self.layout.log_file(self.name)

    @property
    def workdir(self) -> Path:
        return self.layout.home / self.name

    def ports(self) -> tuple[int, ...]:
        raise NotImplementedError

    # lifecycle
    def preflight(self) -> None:
        """Check (or install) the binaries; must not start anything."""

    def prepare(self, console: Console) -> None:
        """Downloads and one-off initialisation that have to happen before the first start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def run_as(self) -> str | None:
        return None

    def ready(self, log_offset: int) -> bool:
        return self.healthy()

    def after_ready(self, fresh: bool) -> None:
        """Idempotent set-up that needs the service up (databases, registry config)."""

    # identity and health
    def is_ours(self, proc: psutil.Process) -> bool:
        """Whether a live pid is still the process we started, not a recycled pid."""
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def _marker(self) -> str:
        return f"-Dpaystream.stack={self.name}@{self.layout.home}"

    def _cwd_is_workdir(self, proc: psutil.Process) -> bool:
        try:
            return Path(proc.cwd()).resolve() == self.workdir.resolve()
        except (psutil.Error, OSError):
            return False


class _Postgres(_Service):
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
            _apt_install("postgresql", "PostgreSQL")
            if self.bin_dir() is None:
                raise StackError("PostgreSQL installed but no /usr/lib/postgresql/*/bin/postgres")
        if self._as_root():
            _require_tool("runuser", "it ships with util-linux")
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
        _write_atomic(self.settings.postgres_password_path, secrets.token_urlsafe(32), mode=0o600)
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
            _run(
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


class _Redis(_Service):
    name = "redis"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.redis_port,)

    def _binary(self) -> str | None:
        return shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )

    def preflight(self) -> None:
        if self._binary() is None:
            _apt_install("redis-server", "Redis")

    def prepare(self, console: Console) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        binary = self._binary()
        assert binary is not None
        return [
            binary,
            "--port", str(self.settings.redis_port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--save", "",
        ]

    def is_ours(self, proc: psutil.Process) -> bool:
        try:
            return proc.name().startswith("redis-server") and self._cwd_is_workdir(proc)
        except psutil.Error:
            return False

    def healthy(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: redis-py's default retry turns one stuck PING into ~10 s.
        client = redis.Redis(
            host="127.0.0.1", port=self.settings.redis_port, socket_timeout=2,
            socket_connect_timeout=2, retry=Retry(NoBackoff(), 0),
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


def _maven_env() -> dict[str, str]:
    # -q hides progress but Maven still emits ANSI resets; no colours in our error messages.
    return {**os.environ, "MAVEN_OPTS": os.environ.get("MAVEN_OPTS", "") + " -Djansi.force=false",
            "TERM": "dumb"}


class _Kafka(_Service):
    name = "kafka"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def properties_file(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def dist_dir(self) -> Path:
        return self.layout.cache / f"kafka-{self.settings.kafka_version}"

    @property
    def lib_dir(self) -> Path:
        return self.dist_dir / "lib"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.settings.kafka_port}"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.kafka_port, self.settings.kafka_controller_port)

    def _downloaded(self) -> bool:
        return (self.dist_dir / _DONE_MARKER).exists()

    def preflight(self) -> None:
        _require_tool("java", JAVA_HINT)
        if not self._downloaded():
            _require_tool("mvn", "Maven fetches the Kafka jars (apt-get install maven)")

    def _download(self, console: Console) -> None:
        console.print(f"[dim]kafka: fetching Kafka {self.settings.kafka_version} jars with Maven "
                      "(one-off)[/dim]")
        self.dist_dir.mkdir(parents=True, exist_ok=True)
        partial = self.dist_dir / "lib.partial"
        shutil.rmtree(partial, ignore_errors=True)
        _run(
            [
                "mvn", "-q", "-B", "-f", str(KAFKA_POM),
                f"-Dkafka.version={self.settings.kafka_version}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={partial}",
            ],
            what=f"Maven download of Kafka {self.settings.kafka_version}",
            timeout=DOWNLOAD_TIMEOUT,
            cwd=self.dist_dir,
            env=_maven_env(),
        )
        if not any(partial.glob("kafka_2.13-*.jar")):
            raise StackError(f"Maven finished but no kafka_2.13 jar in {partial}")
        shutil.rmtree(self.lib_dir, ignore_errors=True)
        partial.rename(self.lib_dir)
        (self.dist_dir / _DONE_MARKER).write_text(f"{datetime.now(UTC).isoformat()}\n")

    def _java_base(self) -> list[str]:
        return ["java", f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", "-cp", f"{self.lib_dir}/*"]

    def _write_properties(self) -> None:
        s = self.settings
        port, cport = s.kafka_port, s.kafka_controller_port
        lines = [
            "# generated by `paystream stack up` from paystream settings; edits are overwritten",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{cport}",
            f"listeners=BROKER://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            f"advertised.listeners=BROKER://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "controller.listener.names=CONTROLLER",
            *kafka_auth.broker_security(s, "BROKER"),
            f"log.dirs={self.data_dir}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=10",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
        ]
        # it holds the brokers' own passwords
        _write_atomic(self.properties_file, "\n".join(lines) + "\n", mode=0o600)

    @property
    def _auth_marker(self) -> Path:
        return self.data_dir / ".paystream-sasl"

    def prepare(self, console: Console) -> None:
        if not self._downloaded():
            self._download(console)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_properties()
        if (self.data_dir / "meta.properties").exists():
            if self.settings.kafka_security_protocol != "PLAINTEXT" and not self._auth_marker.exists():
                raise StackError(
                    f"Kafka's data in {self.data_dir} was formatted without authentication, so its "
                    "brokers have no SCRAM users; run `paystream stack reset --yes` (it wipes the local "
                    "stack's data) and start again"
                )
            return
        console.print("[dim]kafka: formatting KRaft storage (one-off)[/dim]")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        cluster_id = kafka_uuid()
        _run(
            [
                *self._java_base(),
                "kafka.tools.StorageTool", "format", "--standalone",
                "-t", cluster_id,
                "-c", str(self.properties_file),
                # librdkafka has no KIP-890 (transactions v2); pin the v1 protocol.
                "--feature", "transaction.version=1",
                *kafka_auth.format_args(self.settings),
            ],
            what="kafka storage format",
            timeout=120,
        )
        self._auth_marker.write_text("SCRAM users created at format\n")

    def command(self) -> list[str]:
        heap = self.settings.kafka_heap
        return [
            "java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            self._marker(),
            "-cp", f"{self.lib_dir}/*",
            "kafka.Kafka", str(self.properties_file),
        ]

    def is_ours(self, proc: psutil.Process) -> bool:
        try:
            return self._marker() in proc.cmdline()
        except psutil.Error:
            return False

    def ready(self, log_offset: int) -> bool:
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(log_offset)
                started = b"Kafka Server started" in fh.read()
        except FileNotFoundError:
            started = False
        return started and self.healthy()

    def healthy(self) -> bool:
        from confluent_kafka import KafkaException

        # log_level 0: while polling a starting broker librdkafka would spam "connection refused".
        from paystream import kafka

        admin = kafka.admin(kafka_auth.as_principal(self.settings, kafka_auth.ADMIN), log_level=0)
        try:
            admin.list_topics(timeout=5)
            return True
        except KafkaException:
            return False

    def after_ready(self, fresh: bool) -> None:
        # every start: a stack formatted before a component existed still gets its user
        kafka_auth.apply(self.settings)


class _Registry(_Service):
    name = "registry"

    @property
    def dist_dir(self) -> Path:
        return self.layout.cache / f"apicurio-{self.settings.apicurio_version}"

    @property
    def runner_jar(self) -> Path:
        return self.dist_dir / f"apicurio-registry-app-{self.settings.apicurio_version}-runner.jar"

    @property
    def local_url(self) -> str:
        # Not settings.registry_url: that may be overridden to point at a remote registry.
        return f"http://127.0.0.1:{self.settings.registry_port}/apis/ccompat/v7"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.registry_port,)

    def _downloaded(self) -> bool:
        return (self.dist_dir / _DONE_MARKER).exists() and self.runner_jar.exists()

    def preflight(self) -> None:
        _require_tool("java", JAVA_HINT)
        if not self._downloaded():
            _require_tool("mvn", "Maven fetches the Apicurio distribution (apt-get install maven)")

    def _download(self, console: Console) -> None:
        version = self.settings.apicurio_version
        console.print(f"[dim]registry: fetching Apicurio Registry {version} with Maven "
                      "(one-off, ~110 MB)[/dim]")
        shutil.rmtree(self.dist_dir, ignore_errors=True)
        self.dist_dir.mkdir(parents=True)
        _run(
            [
                "mvn", "-q", "-B", APICURIO_COPY_GOAL,
                f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
                f"-DoutputDirectory={self.dist_dir}",
            ],
            what=f"Maven download of Apicurio Registry {version}",
            timeout=DOWNLOAD_TIMEOUT,
            cwd=self.dist_dir,
            env=_maven_env(),
        )
        archives = list(self.dist_dir.glob("apicurio-registry-app-*.tar.gz"))
        if not archives:
            raise StackError(f"Maven finished but no Apicurio archive in {self.dist_dir}")
        with tarfile.open(archives[0]) as tar:
            tar.extractall(self.dist_dir, filter="data")
        archives[0].unlink()  # the local Maven repository keeps a copy
        if not self.runner_jar.exists():
            raise StackError(f"{self.runner_jar} missing after unpacking {archives[0].name}")
        (self.dist_dir / _DONE_MARKER).write_text(f"{datetime.now(UTC).isoformat()}\n")

    def prepare(self, console: Console) -> None:
        if not self._downloaded():
            self._download(console)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        s = self.settings
        return [
            "java", f"-Xmx{s.registry_heap}", "-Djava.awt.headless=true",
            self._marker(),
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={s.registry_port}",
            "-Dapicurio.storage.kind=sql",
            "-Dapicurio.storage.sql.kind=postgresql",
            f"-Dapicurio.datasource.url=jdbc:postgresql://127.0.0.1:{s.postgres_port}/registry",
            f"-Dapicurio.datasource.username={s.postgres_user}",
            "-jar", str(self.runner_jar),
        ]

    def env(self) -> dict[str, str] | None:
        # Quarkus maps APICURIO_DATASOURCE_PASSWORD to apicurio.datasource.password; unlike a
        # -D flag it does not show up in `ps`.
        password = _Postgres(self.settings).password(create=False)
        return {**os.environ, "APICURIO_DATASOURCE_PASSWORD": password}

    def is_ours(self, proc: psutil.Process) -> bool:
        try:
            return self._marker() in proc.cmdline()
        except psutil.Error:
            return False

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.local_url}/subjects", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def after_ready(self, fresh: bool) -> None:
        import httpx

        if not fresh:
            return  # the level is stored in Postgres; once per start is enough
        # Project policy: consumers must be able to read data written with the previous schema.
        response = httpx.put(
            f"{self.local_url}/config",
            json={"compatibility": "BACKWARD"},
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            timeout=10,
        )
        if response.status_code != 200:
            raise StackError(
                f"registry: setting global compatibility to BACKWARD failed: "
                f"HTTP {response.status_code} {response.text[:500]}"
            )


def _services(settings: Settings) -> list[_Service]:
    return [_Postgres(settings), _Redis(settings), _Kafka(settings), _Registry(settings)]


def _owned_process(svc: _Service) -> psutil.Process | None:
    pid = _read_pid(svc.pid_file)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    if _is_gone(proc) or not svc.is_ours(proc):
        return None
    return proc


# --------------------------------------------------------------------------- start / stop


def _spawn(svc: _Service) -> tuple[subprocess.Popen[bytes], int]:
    svc.layout.logs.mkdir(parents=True, exist_ok=True)
    user = svc.run_as()
    with svc.log_file.open("ab") as log:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"\n=== paystream stack: starting {svc.name} at {stamp} ===\n".encode())
        log.flush()
        offset = log.tell()
        try:
            popen = subprocess.Popen(
                svc.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=svc.workdir,
                env=svc.env(),
                start_new_session=True,
                close_fds=True,
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
        except OSError as exc:
            raise StackError(f"{svc.name}: could not start {svc.command()[0]}: {exc}") from exc
    _CHILDREN[popen.pid] = popen
    _write_atomic(svc.pid_file, f"{popen.pid}\n")
    return popen, offset


def _wait_ready(svc: _Service, popen: subprocess.Popen[bytes], offset: int) -> None:
    timeout = READY_TIMEOUTS[svc.name]
    deadline = time.monotonic() + timeout
    while True:
        code = popen.poll()
        if code is not None:
            svc.pid_file.unlink(missing_ok=True)
            _CHILDREN.pop(popen.pid, None)
            raise _error_with_log(f"{svc.name} exited with code {code} while starting",
                                  svc.log_file, since=offset)
        if svc.ready(offset):
            return
        if time.monotonic() > deadline:
            _stop_process(svc, psutil.Process(popen.pid), timeout=5)
            svc.pid_file.unlink(missing_ok=True)
            raise _error_with_log(
                f"{svc.name} (pid {popen.pid}) was not ready within {timeout:.0f}s; stopped it",
                svc.log_file,
                since=offset,
            )
        time.sleep(0.2)


def _wait_healthy(svc: _Service, proc: psutil.Process) -> None:
    """For a process of ours that is alive but not answering yet (e.g. still starting)."""
    timeout = READY_TIMEOUTS[svc.name]
    deadline = time.monotonic() + timeout
    while not svc.healthy():
        if _is_gone(proc):
            svc.pid_file.unlink(missing_ok=True)
            raise _error_with_log(f"{svc.name} (pid {proc.pid}) died", svc.log_file)
        if time.monotonic() > deadline:
            raise _error_with_log(
                f"{svc.name} (pid {proc.pid}, started by paystream) is running but not healthy "
                f"after {timeout:.0f}s; try `paystream stack down` then `up`",
                svc.log_file,
            )
        time.sleep(0.5)


def _stop_process(svc: _Service, proc: psutil.Process, timeout: float = STOP_TIMEOUT) -> bool:
    """Graceful signal, then SIGKILL of the whole session; True if it needed the SIGKILL."""
    pid = proc.pid
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(svc.stop_signal)
    killed = False
    if not _wait_gone(proc, timeout):
        _kill_group(pid)
        killed = True
        if not _wait_gone(proc, 10):
            raise StackError(f"{svc.name} (pid {pid}) survived SIGKILL")
    # Helpers forked by the service (Postgres backends, a Redis rewrite child) share its
    # session; pid == pgid because we started it with start_new_session=True.
    _kill_group(pid)
    popen = _CHILDREN.pop(pid, None)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=1)
    return killed


# --------------------------------------------------------------------------- public API


def up(
    settings: Settings, console: Console | None = None, only: Collection[str] | None = None
) -> UpReport:
    """Start whatever is not already running; returns seconds-to-ready per service.

    All checks that can fail cheaply (ports, binaries, downloads) run before
    any process is started, so a conflict never leaves a half-started stack.
    ``only`` limits the stack to some services (the three-broker cluster brings
    its own Kafka and needs just Postgres and the registry from here).
    """
    console = console or Console(quiet=True)
    layout = Layout.of(settings)
    services = [s for s in _services(settings) if only is None or s.name in only]
    report = UpReport()

    with _stack_lock(layout):
        running: dict[str, psutil.Process] = {}
        for svc in services:
            proc = _owned_process(svc)
            if proc is None:
                svc.pid_file.unlink(missing_ok=True)
            else:
                running[svc.name] = proc

        to_start = [svc for svc in services if svc.name not in running]
        _preflight_ports(services, to_start)
        for svc in to_start:
            svc.preflight()
        for svc in to_start:
            t0 = time.monotonic()
            svc.prepare(console)
            report.prepare_seconds[svc.name] = time.monotonic() - t0

        for svc in services:
            width = max(len(s) for s in SERVICES)
            ports = "/".join(str(p) for p in svc.ports())
            proc = running.get(svc.name)
            t0 = time.monotonic()
            if proc is not None:
                if not svc.healthy():
                    console.print(f"[yellow]{svc.name:<{width}}[/yellow]  running (pid {proc.pid}) "
                                  "but not healthy yet, waiting")
                    _wait_healthy(svc, proc)
                svc.after_ready(fresh=False)
                report[svc.name] = 0.0
                report.reused.add(svc.name)
                report.pids[svc.name] = proc.pid
                console.print(f"[cyan]{svc.name:<{width}}[/cyan]  already running "
                              f"(pid {proc.pid}, port {ports})")
                continue
            popen, offset = _spawn(svc)
            _wait_ready(svc, popen, offset)
            svc.after_ready(fresh=True)
            elapsed = time.monotonic() - t0
            report[svc.name] = elapsed
            report.started.add(svc.name)
            report.pids[svc.name] = popen.pid
            prep = report.prepare_seconds.get(svc.name, 0.0)
            extra = f" [dim](+{prep:.1f}s setup)[/dim]" if prep >= 0.5 else ""
            console.print(f"[green]{svc.name:<{width}}[/green]  ready in {elapsed:.1f}s "
                          f"(pid {popen.pid}, port {ports}){extra}")
    return report


def _preflight_ports(services: list[_Service], to_start: list[_Service]) -> None:
    problems: list[str] = []
    seen: dict[int, str] = {}
    for svc in services:
        for port in svc.ports():
            if port in seen:
                problems.append(f"{svc.name} and {seen[port]} are both configured for port {port}")
            seen[port] = svc.name
    for svc in to_start:
        for port in svc.ports():
            if not port_is_free(port):
                owner = port_owner(port)
                held = f" (held by {owner})" if owner else ""
                problems.append(f"{svc.name}: port {port} on 127.0.0.1 is already in use{held}")
    if problems:
        raise StackError(
            "cannot start the stack; nothing was started:\n  "
            + "\n  ".join(problems)
            + "\nStop whatever holds the port, or choose another one "
            "(PAYSTREAM_POSTGRES_PORT, PAYSTREAM_REDIS_PORT, PAYSTREAM_KAFKA_PORT, "
            "PAYSTREAM_KAFKA_CONTROLLER_PORT, PAYSTREAM_REGISTRY_PORT)."
        )


def down(settings: Settings, console: Console | None = None) -> list[str]:
    """Stop the services ``up`` started, newest first; returns the names stopped."""
    console = console or Console(quiet=True)
    with _stack_lock(Layout.of(settings)):
        return _down(settings, console)


def _down(settings: Settings, console: Console) -> list[str]:
    stopped: list[str] = []
    width = max(len(s) for s in SERVICES)
    for svc in reversed(_services(settings)):
        proc = _owned_process(svc)
        if proc is None:
            if svc.pid_file.exists():
                console.print(f"[dim]{svc.name:<{width}}  stale pid file removed[/dim]")
            svc.pid_file.unlink(missing_ok=True)
            continue
        t0 = time.monotonic()
        killed = _stop_process(svc, proc)
        svc.pid_file.unlink(missing_ok=True)
        stopped.append(svc.name)
        how = "killed (did not stop within 30s)" if killed else "stopped"
        console.print(f"[green]{svc.name:<{width}}[/green]  {how} in {time.monotonic() - t0:.1f}s "
                      f"(pid {proc.pid})")
    return stopped


def stop_service(settings: Settings, name: str, console: Console | None = None) -> bool:
    """Stop one service of this home gracefully (its own stop signal); ``up`` starts it again.

    Fault injection restarts services one at a time on an isolated stack; it
    must never touch processes of another home, hence the pid-file ownership check.
    Returns False when the service was not running.
    """
    console = console or Console(quiet=True)
    svc = next((s for s in _services(settings) if s.name == name), None)
    if svc is None:
        raise StackError(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    with _stack_lock(Layout.of(settings)):
        proc = _owned_process(svc)
        if proc is None:
            svc.pid_file.unlink(missing_ok=True)
            return False
        t0 = time.monotonic()
        _stop_process(svc, proc)
        svc.pid_file.unlink(missing_ok=True)
        console.print(f"{name} stopped in {time.monotonic() - t0:.1f}s (pid {proc.pid})")
        return True


def status(settings: Settings) -> list[ServiceStatus]:
    """Health of what this home owns; a foreign listener on our port is noted, never adopted."""
    result: list[ServiceStatus] = []
    for svc in _services(settings):
        ports = svc.ports()
        proc = _owned_process(svc)
        if proc is None:
            notes = []
            for port in ports:
                if not port_is_free(port):
                    owner = port_owner(port)
                    notes.append(f"port {port} in use by {owner or 'another process'}")
            result.append(ServiceStatus(svc.name, ports, None, "down", None,
                                        note="; ".join(notes)))
            continue
        health: Health = "up" if svc.healthy() else "unhealthy"
        rss, pss, count = _memory_mib(proc)
        result.append(ServiceStatus(svc.name, ports, proc.pid, health, rss, pss, count))
    return result


def ensure_up(settings: Settings, console: Console | None = None) -> UpReport:
    """For tests and tools that need the stack: a no-op (a few health checks) when it is up."""
    return up(settings, console=console)


def resettable_paths(settings: Settings) -> list[Path]:
    layout = Layout.of(settings)
    return [layout.home / name for name in RESETTABLE_DIRS if (layout.home / name).exists()]


def reset(settings: Settings, console: Console | None = None) -> list[Path]:
    """Stop the stack and delete its data (not the download cache, not secrets)."""
    console = console or Console(quiet=True)
    with _stack_lock(Layout.of(settings)):
        _down(settings, console)
        paths = resettable_paths(settings)
        for path in paths:
            shutil.rmtree(path)
            console.print(f"deleted {path}")
    return paths
