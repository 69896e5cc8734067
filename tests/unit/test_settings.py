"""Environment overrides of Settings, as docker-compose.yml and deployments use them.

pydantic-settings does not add ``env_prefix`` to an alias, so these tests pin the
exact variable names the compose file sets, and that the names reach the
properties every component reads (``bootstrap_servers``, ``registry_url``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from paystream.settings import Settings

OVERRIDES = {
    "PAYSTREAM_BOOTSTRAP_SERVERS": ("bootstrap_servers", "kafka:19092"),
    "PAYSTREAM_REGISTRY_URL": ("registry_url", "http://registry:8080/apis/ccompat/v7"),
    "PAYSTREAM_POSTGRES_DSN": ("postgres_dsn", "postgresql://paystream@postgres:5432/paystream"),
    "PAYSTREAM_REDIS_URL": ("redis_url", "redis://redis:6379/0"),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PAYSTREAM_* from the caller's environment and no stray .env in the cwd."""
    for name in list(os.environ):
        if name.upper().startswith("PAYSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_point_at_the_local_stack(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "home")
    assert s.bootstrap_servers == "127.0.0.1:29092"
    assert s.registry_url == "http://127.0.0.1:28081/apis/ccompat/v7"
    assert s.redis_url == "redis://127.0.0.1:26379/0"
    assert s.postgres_dsn == "postgresql://paystream@127.0.0.1:25432/paystream"


@pytest.mark.parametrize("env_name", list(OVERRIDES))
def test_each_env_override_reaches_its_property(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env_name: str
) -> None:
    prop, value = OVERRIDES[env_name]
    monkeypatch.setenv(env_name, value)
    s = Settings(home=tmp_path / "home")
    assert getattr(s, prop) == value
    # ... and only that one: the others keep their local-stack defaults.
    for other, (other_prop, other_value) in OVERRIDES.items():
        if other != env_name:
            assert getattr(s, other_prop) != other_value


def test_all_overrides_together_as_compose_sets_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (_, value) in OVERRIDES.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert {name: getattr(s, prop) for name, (prop, _) in OVERRIDES.items()} == {
        name: value for name, (_, value) in OVERRIDES.items()
    }


def test_env_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("paystream_bootstrap_servers", "lower:1")
    assert Settings().bootstrap_servers == "lower:1"


def test_overrides_from_a_dotenv_file(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "PAYSTREAM_BOOTSTRAP_SERVERS=dotenv:9092\nPAYSTREAM_REDIS_URL=redis://dotenv:1/2\n"
    )
    s = Settings()
    assert s.bootstrap_servers == "dotenv:9092"
    assert s.redis_url == "redis://dotenv:1/2"


def test_overrides_can_be_passed_by_field_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code (isolated test stacks) must be able to set or clear an override explicitly.

    Before populate_by_name this was silently ignored (extra="ignore"), so an
    environment variable would win over the caller's explicit choice.
    """
    monkeypatch.setenv("PAYSTREAM_REGISTRY_URL", "http://from-env/apis/ccompat/v7")
    monkeypatch.setenv("PAYSTREAM_BOOTSTRAP_SERVERS", "from-env:9092")
    s = Settings(registry_port=39999, registry_url_override=None,
                 bootstrap_servers_override="explicit:1")
    assert s.registry_url == "http://127.0.0.1:39999/apis/ccompat/v7"
    assert s.bootstrap_servers == "explicit:1"
    # The variable name keeps working as a keyword too (the typed __init__ doesn't show it).
    by_alias = Settings(PAYSTREAM_REDIS_URL="redis://kw:1/0")  # type: ignore[call-arg]
    assert by_alias.redis_url == "redis://kw:1/0"


def test_plain_prefixed_fields_and_password_quoting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PAYSTREAM_KAFKA_PORT", "39092")
    monkeypatch.setenv("PAYSTREAM_POSTGRES_HOST", "postgres")
    monkeypatch.setenv("PAYSTREAM_POSTGRES_PORT", "5432")
    monkeypatch.setenv("PAYSTREAM_POSTGRES_PASSWORD", "p@ss/word:1")
    s = Settings(home=tmp_path / "home")
    assert s.bootstrap_servers == "127.0.0.1:39092"
    assert s.postgres_dsn == "postgresql://paystream:p%40ss%2Fword%3A1@postgres:5432/paystream"


def test_password_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "pg.password"
    secret.write_text("from-file\n")
    monkeypatch.setenv("PAYSTREAM_POSTGRES_PASSWORD_FILE", str(secret))
    s = Settings(home=tmp_path / "home")
    assert s.postgres_dsn == "postgresql://paystream:from-file@127.0.0.1:25432/paystream"


def test_dsn_override_wins_over_parts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PAYSTREAM_POSTGRES_PASSWORD", "ignored")
    monkeypatch.setenv("PAYSTREAM_POSTGRES_DSN", "postgresql://u@db:1/x")
    assert Settings(home=tmp_path / "home").postgres_dsn == "postgresql://u@db:1/x"


def test_the_dev_profile_relaxes_registration_and_login_limits_only_outside_production() -> None:
    import pytest
    from pydantic import ValidationError

    from paystream.settings import DEV_PROFILE, Settings

    standard = Settings()
    dev = Settings(profile="dev")
    assert (standard.gateway_rate_register_per_minute, standard.gateway_rate_login_per_minute) == (3, 5)
    assert dev.gateway_rate_register_per_minute == DEV_PROFILE["gateway_rate_register_per_minute"]
    assert dev.gateway_rate_payments_per_minute == standard.gateway_rate_payments_per_minute
    assert Settings(profile="dev", gateway_rate_register_per_minute=7).gateway_rate_register_per_minute == 7
    with pytest.raises(ValidationError, match="refused in production"):
        Settings(profile="dev", environment="production", jwt_secret="x" * 64)
