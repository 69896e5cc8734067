"""Operator commands end an operator's mistake of order with one line saying what to
run, and exit 1: the mapping (`ops.hints.explain`), the root group that applies it to
every command, and Kafka clients that fail fast under it."""

from __future__ import annotations

import socket
import time

import psycopg
import pytest
import typer
from confluent_kafka import KafkaError, KafkaException
from typer.testing import CliRunner

from ops.cli import OperatorCommands
from ops.hints import explain
from paystream import kafka
from paystream.errors import UnknownSchemaError
from paystream.settings import Settings


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_each_cause_names_what_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def kafka_error(code: int) -> str:
        return explain(KafkaException(KafkaError(code))) or ""

    assert "`paystream topics apply`" in kafka_error(KafkaError.UNKNOWN_TOPIC_OR_PART)
    assert "`paystream acls apply`" in kafka_error(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    assert "`paystream stack up`" in (explain(kafka.KafkaUnreachable("no broker")) or "")
    assert "`paystream schemas apply`" in (explain(UnknownSchemaError("schema for x-value is not registered")) or "")
    monkeypatch.setenv("PAYSTREAM_POSTGRES_PORT", "not-a-port")
    with pytest.raises(Exception) as bad:
        Settings()
    hint = explain(bad.value) or ""
    assert "PAYSTREAM_POSTGRES_PORT='not-a-port'" in hint and "\n" not in hint


def test_an_unreachable_service_outranks_what_it_was_asked() -> None:
    import httpx

    try:
        try:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        except httpx.ConnectError as inner:
            raise UnknownSchemaError("schema for x-value is not registered (run `paystream schemas apply`)") from inner
    except UnknownSchemaError as outer:
        assert "cannot reach the schema registry" in (explain(outer) or "")


def test_an_http_error_elsewhere_is_not_blamed_on_the_registry() -> None:
    import httpx

    gateway = httpx.ReadTimeout("timed out", request=httpx.Request("POST", "http://127.0.0.1:8000/v1/accounts/x/deposits"))
    hint = explain(gateway) or ""
    assert "registry" not in hint and "http://127.0.0.1:8000" in hint and "ReadTimeout" in hint
    registry = httpx.ReadTimeout("timed out", request=httpx.Request("GET", "http://127.0.0.1:28081/schemas/ids/3"))
    assert "cannot reach the schema registry" in (explain(registry) or "")


def _cli(error: Exception) -> typer.Typer:
    app = typer.Typer(cls=OperatorCommands)

    @app.command("migrated")
    def migrated() -> None:
        raise RuntimeError("verify failed") from error

    @app.command("other")
    def other() -> None:  # two commands: typer makes a group, as paystream's is
        pass

    return app


def test_the_root_group_answers_any_command_with_one_line_and_exit_1() -> None:
    app = _cli(psycopg.errors.UndefinedTable('relation "sink_offsets" does not exist'))
    result = CliRunner().invoke(app, ["migrated"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "`paystream db migrate`" in lines[0], result.stderr
    # a bug keeps its traceback
    result = CliRunner().invoke(_cli(ValueError("a bug")), ["migrated"])
    assert isinstance(result.exception, RuntimeError)


def test_kafka_clients_fail_fast_only_when_asked() -> None:
    settings = Settings(kafka_port=_closed_port(), bootstrap_servers_override=None,
                        kafka_security_protocol="PLAINTEXT")  # fmt: skip
    before = kafka.fail_fast(True)
    try:
        started = time.monotonic()
        with pytest.raises(kafka.KafkaUnreachable):
            kafka.admin(settings)
        assert time.monotonic() - started < 1
        kafka.fail_fast(False)
        kafka.admin(settings)  # a component's client: librdkafka reconnects on its own
    finally:
        kafka.fail_fast(before)
