"""Every operator command against a fresh stack that was never migrated, against a
stopped service and with a wrong setting (issue 17): each either does its job or
says in one line what to run, and exits non-zero; never a Python traceback.

The commands are found by walking the `paystream` typer app, so a new command is
covered (or must be listed in `EXEMPT` with its reason, or given its arguments in
`ARGS`) without anyone remembering this test. They run in process through typer's
CliRunner, which goes through the same root group (`ops.cli.OperatorCommands`) as
the console script.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from ops.cli import _register
from ops.cli import app as cli
from paystream.settings import Settings, get_settings

pytestmark = pytest.mark.integration

_register()

# Commands this test does not run, and why. A prefix ending in " *" covers a group.
EXEMPT: dict[str, str] = {
    "run": "runs one component until it is stopped (its start-up is tested with the components)",
    "up": "starts the stack and supervises every component until Ctrl-C (tests/integration/test_up.py)",
    "stack up": "what the other commands' hints say to run: starts the services",
    "stack down": "stops services; this test's stack is stopped by its fixture",
    "stack reset": "deletes a stack's data (test_stack.py runs it on a stack of its own)",
    "chaos": "fault injection under load on an isolated stack of its own, minutes long",
    "bench *": "benchmarks: minutes long, on their own processes and stacks",
    "demo": "a load generator that runs components and traffic for as long as asked",
    "k8s *": "the Helm chart: local files and the helm binary, no stack",
    "asyncapi": "generates a document from local files, no stack",
    "schemas check": "compares schemas/ with a git revision, no stack",
    "audit check": "checks a signed file with a public key, no stack",
    "audit public-key": "prints the audit key kept under PAYSTREAM_HOME, no stack",
}

# Arguments for commands that need some; destructive ones only ever as --dry-run.
ARGS: dict[str, list[str]] = {
    "stack logs": ["postgres", "--lines", "3"],
    "producers add": ["test-producer"],
    "producers remove": ["test-producer"],
    "consumers add": ["test-reader"],
    "consumers remove": ["test-reader"],
    "topics apply": ["--dry-run"],
    "admin create-user": ["--email", "ops-test@example.com", "--role", "admin"],
    "audit export": ["--account", "PS0780311395"],
    "dlq show": ["00000000-0000-4000-8000-000000000000"],
    "dlq replay": ["--all", "--dry-run"],
    "offsets reset": ["--group", "paystream-sink", "--topic", "ledger.events", "--to-offset", "0", "--dry-run"],
    "state rebuild": ["--app", "ledger", "--dry-run"],
    "reprocess": ["--from-offset", "0", "--dry-run"],
    "webhooks redeliver": ["--all", "--dry-run"],
    "verify": ["--pending-grace", "0"],
    "partitions grow": ["--to", "16", "--dry-run"],
    "partitions status": ["--to", "16"],
}

# What each command may do on a fresh stack (stack up, nothing else) besides failing
# with a hint: the commands that set the stack up, and those that need only what
# `stack up` starts. Run last, so that every other command sees the stack unmigrated.
FRESH_OK: dict[str, str] = {
    "stack status": "reports the services",
    "stack logs": "prints a service's log file",
    "topics list": "lists what Kafka has (nothing yet)",
    "topics apply": "creates the topics (here --dry-run)",
    "schemas apply": "registers the schemas",
    "acls apply": "sets the components' Kafka ACLs",
    "producers add": "creates a Kafka principal",
    "producers list": "lists the principals",
    "producers remove": "removes one",
    "consumers add": "creates a Kafka principal",
    "consumers list": "lists the principals",
    "consumers remove": "removes one",
    "lag": "reports consumer groups (none yet)",
    "offsets show": "reports consumer groups (none yet)",
    "state rebuild": "no state directories: nothing to remove (here --dry-run)",
    "db migrate": "the migration itself, last",
}

# Commands that read no setting, so that a wrong one does not stop them.
NO_SETTINGS: dict[str, str] = {"topics list": "prints the spec, ops/topics.toml"}

# Names what to run (`paystream db migrate`), or the setting to fix (PAYSTREAM_POSTGRES_PORT).
HINT = re.compile(r"`paystream [a-z -]+`|PAYSTREAM_[A-Z_]+")


def commands() -> Iterator[tuple[str, Any]]:
    """Every leaf command of the CLI, as its name (`db migrate`) and click command."""

    def walk(cmd: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
        subs = getattr(cmd, "commands", None)
        if subs is None:
            yield " ".join(path), cmd
            return
        for name, sub in subs.items():
            yield from walk(sub, [*path, name])

    yield from walk(get_command(cli), [])


def exempt(name: str) -> bool:
    return name in EXEMPT or any(k.endswith(" *") and name.startswith(k[:-1]) for k in EXEMPT)


def to_run() -> list[str]:
    """The commands to run, setting-up ones last; fails for one that needs arguments
    this test does not know."""
    names = []
    for name, cmd in commands():
        if exempt(name):
            continue
        required = [p.name for p in cmd.params if p.required]
        assert not required or name in ARGS, f"`paystream {name}` needs {required}: add it to ARGS or EXEMPT"
        names.append(name)
    return sorted(names, key=lambda n: (n == "db migrate", n in FRESH_OK, n))


@dataclass
class Ran:
    name: str
    code: int
    out: str
    seconds: float

    def problem(self, may_succeed: bool) -> str | None:
        """What is wrong with this answer, or None."""
        if "Traceback" in self.out:
            return "a traceback"
        if self.code == 0:
            return None if may_succeed else "exit 0 although it cannot have done its job"
        hints = [line for line in self.out.splitlines() if HINT.search(line)]
        if len(hints) != 1:
            return f"{len(hints)} lines naming what to run, not one"
        return None


def run(name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Ran:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PAYSTREAM_ADMIN_PASSWORD", "correct-horse-battery-9")
    get_settings.cache_clear()
    started = time.monotonic()
    result = CliRunner().invoke(cli, [*name.split(), *ARGS.get(name, [])])
    out = result.stdout + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        out += "".join(traceback.format_exception(result.exception))
    return Ran(name, result.exit_code, out, time.monotonic() - started)


def check_all(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
              may_succeed: set[str] | None) -> list[Ran]:
    """Run every command; each fails with one line saying what to run, or succeeds if
    it is one of `may_succeed` (None: any may, when which need the service is not
    this test's to say). librdkafka and logging write past typer's streams: their
    output is read too, and holds no traceback either."""
    capfd.readouterr()
    ran = [run(name, env, monkeypatch) for name in to_run()]
    bad = [f"paystream {r.name}: {p} (exit {r.code})\n{r.out[-1500:]}"
           for r in ran if (p := r.problem(may_succeed is None or r.name in may_succeed))]  # fmt: skip
    assert not bad, "\n\n".join(bad)
    around = capfd.readouterr()
    assert "Traceback" not in around.out + around.err, around.err[-3000:]
    return ran


@pytest.fixture(scope="module")
def fresh() -> Iterator[Settings]:
    """A stack of its own, as `paystream stack up` leaves it: services running, no
    topics, schemas, ACLs or migrations."""
    from ops.lab.isolated import isolated_stack

    with isolated_stack("paystream-fresh-", bare=True) as settings:
        yield settings


def test_the_walk_finds_every_command() -> None:
    names = {n for n, _ in commands()}
    assert {"db migrate", "dlq list", "stack status", "bench ledger", "run"} <= names
    assert set(EXEMPT) - {k for k in EXEMPT if k.endswith(" *")} <= names
    assert set(ARGS) <= names and set(FRESH_OK) <= names


def test_each_command_on_a_fresh_unmigrated_stack(fresh: Settings, monkeypatch: pytest.MonkeyPatch,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    from ops.lab.isolated import settings_env

    ran = check_all(settings_env(fresh), monkeypatch, capfd, set(FRESH_OK))
    migrate = ran[-1]
    assert migrate.name == "db migrate" and migrate.code == 0, migrate.out
    # the hints said what to run: the database ones now pass that point
    unmigrated = [r.name for r in ran if "paystream db migrate" in r.out and r.name != "db migrate"]
    assert unmigrated, "no command needed the migration?"


def test_each_command_with_postgres_stopped(fresh: Settings, monkeypatch: pytest.MonkeyPatch,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    from ops.lab.isolated import free_ports, settings_env

    (closed,) = free_ports(1)
    ran = check_all(settings_env(fresh.model_copy(update={"postgres_port": closed})), monkeypatch, capfd, None)
    said = {r.name for r in ran if "cannot reach Postgres" in r.out}
    assert {"db migrate", "verify", "webhooks dead", "admin create-user"} <= said, said


def test_each_command_with_kafka_stopped(fresh: Settings, monkeypatch: pytest.MonkeyPatch,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    from ops.lab.isolated import free_ports, settings_env

    (closed,) = free_ports(1)
    ran = check_all(settings_env(fresh.model_copy(update={"kafka_port": closed})), monkeypatch, capfd, None)
    said = {r.name for r in ran if "cannot reach Kafka" in r.out}
    assert {"lag", "topics apply", "dlq list", "acls apply", "producers list"} <= said, said
    assert sum(r.seconds for r in ran) < 30, [(r.name, round(r.seconds, 1)) for r in ran]


def test_each_command_with_a_wrong_setting(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    ran = check_all({"PAYSTREAM_POSTGRES_PORT": "not-a-port"}, monkeypatch, capfd, set(NO_SETTINGS))
    assert all("a setting is invalid" in r.out for r in ran if r.code)
