"""What an operator should run next, in one line, when a command fails because of
the order things were done in: the stack not started, the database not migrated,
topics or schemas not applied, a wrong setting.

`ops.cli.OperatorCommands` answers any command's exception with `explain`; commands
that report their own failures ("replay failed: ...") use `fail`, so that the cause
reads the same everywhere. A failure `explain` does not know (a bug) keeps its
traceback at the root, or the command's own message in `fail`.
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer

START = "start the stack with `paystream stack up`"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not s for s in seen):
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _setting(e: BaseException) -> str | None:
    """A `Settings` validation error as the variable to fix."""
    from pydantic import ValidationError

    if not isinstance(e, ValidationError) or e.title != "Settings":
        return None
    problems = []
    for err in e.errors():
        field = ".".join(str(part) for part in err["loc"])
        value = f"={err['input']!r}" if "input" in err and not isinstance(err["input"], dict) else ""
        problems.append(f"PAYSTREAM_{field.upper()}{value}: {err['msg']}")
    return f"a setting is invalid: {'; '.join(problems)} (fix it in the environment or .env)"


def _kafka(e: BaseException) -> str | None:
    from confluent_kafka import KafkaError, KafkaException

    from paystream.kafka import KafkaUnreachable

    if isinstance(e, KafkaUnreachable):
        return f"cannot reach Kafka ({_first_line(e)}): {START}"
    if not isinstance(e, KafkaException):
        return None
    err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
    code = err.code() if err is not None else None
    if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION):
        return f"a topic is missing ({_first_line(e)}): run `paystream topics apply`"
    if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED):  # fmt: skip
        return f"Kafka refused this principal ({_first_line(e)}): run `paystream acls apply`"
    return f"Kafka refused or is unreachable ({_first_line(e)}): is the stack up (`paystream stack status`)?"


# The schema registry's REST paths: an HTTP error elsewhere (the gateway a bench
# drives, say) is not the registry's, whatever the CLI was doing.
_REGISTRY_PATHS = ("/subjects", "/schemas", "/config", "/compatibility", "/mode")


def _url_of(e: BaseException) -> Any:
    """The URL an httpx error was raised for; None when it was raised without one."""
    try:
        return e.request.url  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError when no request is set
        return None


def explain(exc: BaseException) -> str | None:
    """One line saying what to run, for a failure anywhere in `exc`'s chain that an
    operator causes by order of operations; None for anything else. A service that
    cannot be reached outranks what it was asked (a registry that is down is not a
    schema that is missing)."""
    import httpx
    import psycopg
    from redis.exceptions import ConnectionError as RedisConnectionError

    from ops.stack import StackError
    from paystream.errors import UnknownSchemaError
    from paystream.settings import ConfigError

    chain = _chain(exc)
    for e in chain:
        if isinstance(e, psycopg.OperationalError):
            return f"cannot reach Postgres ({_first_line(e)}): {START}"
        if isinstance(e, RedisConnectionError):
            return f"cannot reach Redis ({_first_line(e)}): {START}"
        if isinstance(e, httpx.TransportError):
            url = _url_of(e)
            if url is None or url.path.startswith(_REGISTRY_PATHS):
                return f"cannot reach the schema registry ({_first_line(e)}): {START}"
            return f"no answer from {url.scheme}://{url.netloc.decode()} ({type(e).__name__}: {_first_line(e)})"
    for e in chain:
        if isinstance(e, psycopg.errors.UndefinedTable):
            return f"the database is not migrated ({_first_line(e)}): run `paystream db migrate` (or `paystream up`)"
        if isinstance(e, UnknownSchemaError):
            return f"the schemas are not registered ({_first_line(e)}): run `paystream schemas apply`"
        if (hint := _kafka(e)) is not None:
            return hint
        if isinstance(e, StackError):
            return str(e)
        if isinstance(e, ConfigError):
            return f"a setting is wrong: {_first_line(e)}"
        if (hint := _setting(e)) is not None:
            return hint
        if isinstance(e, TimeoutError):
            return f"a service did not answer in time ({_first_line(e)}): `paystream stack status` shows what runs"
    return None


def say(line: str) -> None:
    """One line on stderr, in red, never wrapped."""
    from rich.console import Console
    from rich.text import Text

    # Text, not markup (errors quote [brackets]); soft wrap keeps it one line.
    Console(stderr=True, soft_wrap=True).print(Text(line, style="red"))


def fail(what: str, exc: BaseException) -> NoReturn:
    """End a command that caught `exc`: one line on stderr (`what`, then what to run
    when `explain` knows, else the error itself) and exit 1."""
    say(f"{what}: {explain(exc) or _first_line(exc)}")
    raise typer.Exit(1) from exc
