"""The Helm chart's generated data (deploy/helm/paystream/files/generated.yaml) is the
code's: regenerating it gives the committed file, and it carries every topic, principal
and component. The rendered chart is checked in tests/integration/test_k8s_chart.py."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from ops import k8s, kafka_auth
from paystream.codec import topic_specs
from paystream.settings import PROJECT_ROOT, Settings


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    doc = yaml.safe_load(k8s.GENERATED.read_text())
    assert isinstance(doc, dict)
    return doc


def test_committed_file_is_what_generate_writes() -> None:
    assert not k8s.stale(), "deploy/helm/paystream/files/generated.yaml is stale: run `paystream k8s generate`"


def test_generated_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own ports and versions must not leak into the committed file."""
    monkeypatch.setenv("PAYSTREAM_LEDGER_METRICS_PORT", "19101")
    monkeypatch.setenv("PAYSTREAM_GATEWAY_PORT", "18080")
    monkeypatch.setenv("PAYSTREAM_KAFKA_VERSION", "9.9.9")
    assert not k8s.stale()


def test_every_topic_with_its_contract(generated: dict[str, Any]) -> None:
    topics = {t["name"]: t for t in generated["topics"]}
    specs = topic_specs()
    assert set(topics) == set(specs)
    for name, spec in specs.items():
        t = topics[name]
        assert t["partitions"] == spec.partitions
        assert t["config"] == {
            "cleanup.policy": spec.cleanup_policy,
            "retention.ms": str(spec.retention_ms),
            "min.insync.replicas": str(spec.min_insync_replicas),
            "message.timestamp.type": spec.timestamp_type,
        }


def test_every_principal_with_its_acls(generated: dict[str, Any]) -> None:
    assert set(generated["users"]) == set(kafka_auth.RIGHTS)
    for principal, grants in kafka_auth.RIGHTS.items():
        assert len(generated["users"][principal]) == len(grants), principal
    # the ledger: the only writer of legs and events; its transactional ids by prefix
    ledger = generated["users"]["ledger"]
    assert {"resource": {"type": "topic", "name": "ledger.events", "patternType": "literal"},
            "operations": ["Write"], "host": "*"} in ledger
    assert {"resource": {"type": "transactionalId", "name": "paystream-ledger-", "patternType": "prefix"},
            "operations": ["Write", "Describe"], "host": "*"} in ledger
    writers = {p for p, acls in generated["users"].items()
               for a in acls if a["resource"].get("name") == "ledger.legs" and "Write" in a["operations"]}
    assert writers == {"ledger"}


def test_grant_maps_to_strimzi() -> None:
    rule = k8s.strimzi_acl(kafka_auth.Grant("topic", "changelog__x--", ("CREATE", "DESCRIBE_CONFIGS"), prefixed=True))
    assert rule == {"resource": {"type": "topic", "name": "changelog__x--", "patternType": "prefix"},
                    "operations": ["Create", "DescribeConfigs"], "host": "*"}
    assert k8s.strimzi_acl(kafka_auth.Grant("cluster", "", ("IDEMPOTENT_WRITE",))) == {
        "resource": {"type": "cluster"}, "operations": ["IdempotentWrite"], "host": "*"}


def test_every_component_and_its_ports(generated: dict[str, Any]) -> None:
    from ops.run_cli import COMPONENTS

    components = {c["name"]: c for c in generated["components"]}
    assert list(components) == list(COMPONENTS)
    defaults = Settings.model_fields
    for name, c in components.items():
        field = "gateway_port" if name == "gateway" else f"{name.replace('-', '_')}_metrics_port"
        assert c["port"] == defaults[field].default, name
    assert {n for n, c in components.items() if c["kind"] == "StatefulSet"} == set(k8s.STATEFUL)


def test_every_instance_setting_has_a_stable_id_in_the_chart(generated: dict[str, Any]) -> None:
    """A new `*_instance` setting names durable things (a transactional id, a state
    directory, leases): the chart must give each pod a stable one."""
    fields = {f for f in Settings.model_fields if f.endswith("_instance")}
    assert fields == set(k8s.INSTANCE_SETTINGS.values())
    envs = {c["name"]: c["instanceEnv"] for c in generated["components"]}
    for component, field in k8s.INSTANCE_SETTINGS.items():
        assert envs[component] == f"PAYSTREAM_{field.upper()}"


def test_versions_are_the_local_stacks(generated: dict[str, Any]) -> None:
    assert generated["kafkaVersion"] == Settings.model_fields["kafka_version"].default
    assert generated["apicurioVersion"] == Settings.model_fields["apicurio_version"].default


def test_strimzi_schemas_are_there_for_every_kind() -> None:
    import json

    schemas = json.loads(k8s.STRIMZI_SCHEMAS.read_text())
    assert set(schemas) == set(k8s.STRIMZI_KINDS)
    assert k8s.STRIMZI_SCHEMAS.is_relative_to(PROJECT_ROOT / "deploy" / "schemas")


def test_strict_crd_schema_refuses_unknown_fields() -> None:
    import jsonschema

    schema = k8s._strict({"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "partitions": {"type": "integer"},
        "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}})
    v = jsonschema.Draft7Validator(schema)
    assert v.is_valid({"spec": {"partitions": 8, "config": {"retention.ms": "1"}}})
    assert not v.is_valid({"spec": {"partition": 8}})
