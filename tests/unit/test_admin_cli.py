"""`paystream admin create-user` never takes the password as a command-line value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway import admin_cli, store
from ops.cli import _register
from ops.cli import app as cli

_register()  # mounts `admin` as `paystream admin`, as the console script does

GOOD = "correct-horse-battery-9"


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    class _User:
        user_id = "u1"

    def fake_create(dsn: str, **kw: Any) -> Any:
        calls.append(kw)
        return _User()

    monkeypatch.setattr(store, "create_user_sync", fake_create)
    monkeypatch.setattr(admin_cli, "hash_password", lambda p: f"hash:{p}")
    monkeypatch.delenv("PAYSTREAM_ADMIN_PASSWORD", raising=False)
    return calls


def test_password_on_the_command_line_is_refused(created: list[dict[str, Any]]) -> None:
    r = CliRunner().invoke(cli, ["admin", "create-user", "--email", "a@example.com", "--password", GOOD])
    assert r.exit_code != 0
    assert created == []


def test_password_from_stdin_file_or_env(created: list[dict[str, Any]], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["admin", "create-user", "--email", "a@example.com", "--password-stdin"],
                      input=GOOD + "\n")
    assert r.exit_code == 0, r.output
    secret = tmp_path / "pw"
    secret.write_text(GOOD + "\n")
    r = runner.invoke(cli, ["admin", "create-user", "--email", "b@example.com", "--password-file", str(secret)])
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("PAYSTREAM_ADMIN_PASSWORD", GOOD)
    r = runner.invoke(cli, ["admin", "create-user", "--email", "c@example.com"])
    assert r.exit_code == 0, r.output
    assert [c["password_hash"] for c in created] == [f"hash:{GOOD}"] * 3


def test_operator_errors_get_one_line_saying_what_to_run() -> None:
    import psycopg
    from confluent_kafka import KafkaError, KafkaException

    from ops.hints import explain

    try:
        try:
            raise psycopg.errors.UndefinedTable('relation "sink_offsets" does not exist')
        except psycopg.Error as inner:
            raise RuntimeError("verify failed") from inner
    except RuntimeError as outer:
        hint = explain(outer)
    assert hint is not None and "paystream db migrate" in hint
    assert "paystream stack up" in (explain(psycopg.OperationalError("connection refused")) or "")
    assert "stack status" in (explain(KafkaException(KafkaError(KafkaError._TRANSPORT))) or "")
    assert explain(ValueError("a bug")) is None  # a bug keeps its traceback
