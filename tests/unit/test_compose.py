"""docker-compose.yml: valid for Docker Compose, and in step with the code it runs.

No Docker engine runs on the development machines, so nothing here starts a
container. `docker compose config -q` (which needs no engine) validates the file
when a Compose v2 client is installed; the structural checks below need only
PyYAML and always say why they did not run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from paystream.settings import PROJECT_ROOT, Settings

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
INFRA = {"kafka", "postgres", "redis", "registry", "otel-lgtm"}
COMPONENT_SERVICES = {"ledger", "gateway", "sink", "outbox-relay"}
# The variables a component's Settings needs to find the stack.
ADDRESS_VARS = {
    "PAYSTREAM_BOOTSTRAP_SERVERS": "bootstrap_servers",
    "PAYSTREAM_REGISTRY_URL": "registry_url",
    "PAYSTREAM_POSTGRES_DSN": "postgres_dsn",
    "PAYSTREAM_REDIS_URL": "redis_url",
}
# Compose needs it to interpolate the file; any value will do for validation.
COMPOSE_ENV = {"PAYSTREAM_POSTGRES_PASSWORD": "validation-only"}


def _compose_v2() -> list[str] | None:
    """The command of a Compose v2 client, or None.

    Compose 1.x (Debian's `docker-compose` package) is not enough: it predates the
    Compose Specification and rejects valid files (a top-level `name`, for one).
    """
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cmd in candidates:
        try:
            out = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = out.stdout.strip().lstrip("v")
        if out.returncode == 0 and version and not version.startswith("1."):
            return cmd
    return None


def _reason_no_compose() -> str:
    if not shutil.which("docker") and not shutil.which("docker-compose"):
        return "no docker client on PATH"
    return ("a docker client is installed but no Compose v2 (`docker compose` plugin or a "
            "v2 `docker-compose`); Compose 1.x cannot read the Compose Specification")


def test_docker_compose_config_is_valid() -> None:
    cmd = _compose_v2()
    if cmd is None:
        pytest.skip(_reason_no_compose())
    env = {**os.environ, **COMPOSE_ENV}
    result = subprocess.run([*cmd, "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, env=env, cwd=PROJECT_ROOT,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    # The password is required, never defaulted into the file.
    env.pop("PAYSTREAM_POSTGRES_PASSWORD")
    result = subprocess.run([*cmd, "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, env=env, cwd=PROJECT_ROOT,
                            timeout=60)
    assert result.returncode != 0
    assert "PAYSTREAM_POSTGRES_PASSWORD" in result.stderr


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


def test_every_service_is_there(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    missing = (INFRA | COMPONENT_SERVICES | {"bootstrap"}) - services
    assert not missing, f"docker-compose.yml lacks {sorted(missing)}"


def test_images_match_the_local_stack_versions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    settings = Settings()
    assert services["kafka"]["image"] == f"apache/kafka:{settings.kafka_version}"
    assert services["registry"]["image"] == (
        f"apicurio/apicurio-registry:{settings.apicurio_version}"
    )
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"
    assert services["otel-lgtm"]["image"].startswith("grafana/otel-lgtm:")


def test_kafka_pins_transactions_v1(compose: dict[str, Any]) -> None:
    script = "\n".join(compose["services"]["kafka"]["command"])
    assert "--feature transaction.version=1" in script
    assert "auto.create.topics.enable=false" in script


def test_registry_stores_in_postgres(compose: dict[str, Any]) -> None:
    env = compose["services"]["registry"]["environment"]
    assert env["APICURIO_STORAGE_KIND"] == "sql"
    assert env["APICURIO_DATASOURCE_URL"].startswith("jdbc:postgresql://postgres:5432/registry")
    init = PROJECT_ROOT / "ops" / "docker" / "postgres-init"
    mounts = compose["services"]["postgres"]["volumes"]
    assert any(m.startswith("./ops/docker/postgres-init:") for m in mounts)
    assert "CREATE DATABASE registry" in "".join(p.read_text() for p in init.glob("*.sql"))


def test_components_run_registered_paystream_commands(compose: dict[str, Any]) -> None:
    from ops.run_cli import COMPONENTS

    for name in COMPONENT_SERVICES:
        assert compose["services"][name]["command"] == ["paystream", "run", name]
    runs = {
        svc["command"][2]
        for svc in compose["services"].values()
        if svc.get("command", [])[:2] == ["paystream", "run"]
    }
    unknown = runs - set(COMPONENTS)
    assert not unknown, f"`paystream run` has no component {sorted(unknown)}"
    # `paystream up` runs every component; so does the compose file.
    absent = set(COMPONENTS) - runs
    assert not absent, (
        f"docker-compose.yml runs no `paystream run {' | '.join(sorted(absent))}`: "
        "add a service like `ledger` for each"
    )
    bootstrap = compose["services"]["bootstrap"]
    assert bootstrap["command"][-1] == (
        "paystream acls apply && paystream topics apply && paystream schemas apply && paystream db migrate"
    )
    assert bootstrap["restart"] == "no"
    for name in runs:
        deps = compose["services"][name]["depends_on"]
        assert deps["bootstrap"]["condition"] == "service_completed_successfully"


def test_component_env_reaches_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The variables compose sets are the ones Settings reads, with the expected effect."""
    for name in list(os.environ):
        if name.upper().startswith("PAYSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in [*COMPONENT_SERVICES, "bootstrap"]:
        env = compose["services"][name]["environment"]
        assert set(ADDRESS_VARS) <= set(env), name
        for var in ADDRESS_VARS:
            monkeypatch.setenv(var, env[var])
        settings = Settings()
        for var, prop in ADDRESS_VARS.items():
            assert getattr(settings, prop) == env[var], (name, var)
    assert Settings().bootstrap_servers == "kafka:19092"
    # The gateway must listen beyond the container's loopback.
    gateway_env = compose["services"]["gateway"]["environment"]
    monkeypatch.setenv("PAYSTREAM_GATEWAY_HOST", gateway_env["PAYSTREAM_GATEWAY_HOST"])
    assert Settings().gateway_host == "0.0.0.0"


def test_kafka_authenticates_and_each_component_holds_only_its_own_password(compose: dict[str, Any]) -> None:
    from ops import kafka_auth
    from ops.run_cli import COMPONENTS

    def mounted(service: str) -> dict[str, str]:
        return {m["target"].rsplit("/", 1)[1]: m["source"] for m in compose["services"][service].get("secrets", [])}

    assert set(kafka_auth.RIGHTS) == set(COMPONENTS)  # one principal per `paystream run` component
    for name in COMPONENTS:
        assert mounted(name) == {name: f"kafka_{name}"}, name
        env = compose["services"][name]["environment"]
        assert env["PAYSTREAM_KAFKA_SECRETS_DIR"] == "/run/kafka-secrets"
        assert "PAYSTREAM_KAFKA_PRINCIPAL" not in env  # `paystream run NAME` makes it NAME
    # bootstrap creates every component's user, so it holds every password; the broker two
    assert set(mounted("bootstrap")) == {*COMPONENTS, "admin"}
    assert set(mounted("kafka")) == {"admin", "controller"}
    script = (PROJECT_ROOT / "ops" / "docker" / "kafka-secrets.sh").read_text()
    for principal in {*COMPONENTS, "admin", "controller"}:
        assert compose["secrets"][f"kafka_{principal}"]["file"] == f"./.secrets/kafka/{principal}"
        assert f" {principal}" in script.split("for p in", 1)[1].split(";", 1)[0]
    server = compose["services"]["kafka"]["command"][-1]
    assert "allow.everyone.if.no.acl.found=false" in server
    assert "PLAINTEXT:PLAINTEXT" not in server and ":PLAINTEXT," not in server
