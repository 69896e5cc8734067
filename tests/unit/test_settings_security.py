"""Settings that must not let an insecure deployment start."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from paystream.settings import Settings


def _settings(tmp_path: Path, **over: object) -> Settings:
    return Settings(home=tmp_path, **over)  # type: ignore[arg-type]


def test_production_refuses_to_start_without_a_jwt_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.app import create_app

    monkeypatch.delenv("PAYSTREAM_JWT_SECRET", raising=False)
    monkeypatch.delenv("PAYSTREAM_JWT_SECRET_FILE", raising=False)
    with pytest.raises(RuntimeError, match="PAYSTREAM_JWT_SECRET"):
        create_app(_settings(tmp_path, environment="production"))
    assert not (tmp_path / "secrets" / "jwt.key").exists()  # nothing generated in production


@pytest.mark.parametrize("environment", ["production", "development"])
def test_a_short_jwt_secret_is_refused(tmp_path: Path, environment: str) -> None:
    with pytest.raises(RuntimeError, match="at least 32"):
        _settings(tmp_path, environment=environment, jwt_secret="x" * 31).jwt_key()
    assert _settings(tmp_path, environment=environment, jwt_secret="x" * 32).jwt_key() == "x" * 32


def test_production_accepts_a_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "jwt"
    secret.write_text("s" * 48 + "\n")
    monkeypatch.setenv("PAYSTREAM_JWT_SECRET_FILE", str(secret))
    assert _settings(tmp_path, environment="production").jwt_key() == "s" * 48


def test_development_generates_a_private_key_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYSTREAM_JWT_SECRET", raising=False)
    monkeypatch.delenv("PAYSTREAM_JWT_SECRET_FILE", raising=False)
    old = os.umask(0)  # a permissive umask must not make the key readable, even briefly
    try:
        keys: list[str] = []
        threads = [threading.Thread(target=lambda: keys.append(_settings(tmp_path).jwt_key()))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.umask(old)
    path = tmp_path / "secrets" / "jwt.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(set(keys)) == 1 and len(keys[0].encode()) >= 32  # racing processes agree on one key
    assert sorted(p.name for p in path.parent.iterdir()) == ["jwt.key"]  # no temporary files left
