"""The Helm chart rendered with `helm template` (built from its Go module, as
`make test` does first): it lints, every manifest validates (Kubernetes and Strimzi
schemas, strictly), and it agrees with the code and with docker-compose.yml: every
topic, every principal with its ACLs, every component with the environment compose
gives it. No cluster is involved (docs/DEPLOY.md says what was not run)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops import k8s, kafka_auth
from paystream.codec import topic_specs
from paystream.settings import PROJECT_ROOT

pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (make install)")


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    try:
        return k8s.ensure_helm()
    except k8s.ToolError as exc:
        message = f"HELM UNAVAILABLE, THE CHART WAS NOT RENDERED OR LINTED: {exc}"
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)


@pytest.fixture(scope="module")
def default(helm_bin: Path) -> list[dict[str, Any]]:
    return k8s.render(helm_bin)


@pytest.fixture(scope="module")
def production(helm_bin: Path) -> list[dict[str, Any]]:
    return k8s.render(helm_bin, [k8s.PRODUCTION_VALUES])


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def of_kind(docs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in kinds]


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """component -> its Deployment or StatefulSet (the registry is not a component)."""
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
            for d in of_kind(docs, "Deployment", "StatefulSet")
            if d["metadata"]["labels"]["app.kubernetes.io/component"] != "registry"}


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_lint_and_every_manifest_validates(helm_bin: Path) -> None:
    results = k8s.lint()
    assert [r.values for r in results] == list(k8s.VALUE_SETS)
    for r in results:
        assert r.resources > 40, r
        assert r.problems == [], f"{r.values}:\n" + "\n".join(r.problems)


def test_validation_catches_a_typo(default: list[dict[str, Any]]) -> None:
    """The lint would not notice what the API server silently prunes, unless strict."""
    import copy

    docs = copy.deepcopy(default)
    topic = of_kind(docs, "KafkaTopic")[0]
    topic["spec"]["partition"] = topic["spec"].pop("partitions")
    ledger = workloads(docs)["ledger"]
    container(ledger)["livenesProbe"] = container(ledger).pop("livenessProbe")
    of_kind(docs, "Kafka")[0]["spec"]["kafka"]["config"]["super.users"] = "User:admin"
    problems = k8s.validate_manifests(docs)
    assert any(p.startswith("Kafka/paystream") and "super.users" in p for p in problems)
    assert any(p.startswith(f"KafkaTopic/{topic['metadata']['name']}") and "partition" in p for p in problems)
    assert any(p.startswith("StatefulSet/") and "livenesProbe" in p for p in problems)


def test_every_topic_is_a_kafka_topic(default: list[dict[str, Any]], production: list[dict[str, Any]]) -> None:
    for docs, replicas, isr in ((default, 3, "2"), (production, 3, "2")):
        topics = {t["spec"]["topicName"]: t for t in of_kind(docs, "KafkaTopic")}
        assert set(topics) == set(topic_specs())
        for name, spec in topic_specs().items():
            t = topics[name]["spec"]
            assert t["partitions"] == spec.partitions
            assert t["replicas"] == replicas
            assert t["config"]["retention.ms"] == str(spec.retention_ms)
            assert t["config"]["cleanup.policy"] == spec.cleanup_policy
            assert t["config"]["message.timestamp.type"] == spec.timestamp_type
            assert t["config"]["min.insync.replicas"] == isr
            assert topics[name]["metadata"]["labels"]["strimzi.io/cluster"] == "paystream"


def test_every_principal_is_a_kafka_user_with_its_acls(default: list[dict[str, Any]]) -> None:
    users = {u["metadata"]["name"]: u["spec"] for u in of_kind(default, "KafkaUser")}
    assert set(users) == {*kafka_auth.RIGHTS, kafka_auth.ADMIN}
    for principal, grants in kafka_auth.RIGHTS.items():
        assert users[principal]["authentication"] == {"type": "scram-sha-512"}
        assert users[principal]["authorization"]["acls"] == [k8s.strimzi_acl(g) for g in grants], principal
    assert "authorization" not in users[kafka_auth.ADMIN]  # a super user, named in the Kafka resource
    kafka = of_kind(default, "Kafka")[0]["spec"]["kafka"]
    assert kafka["authorization"] == {"type": "simple", "superUsers": [kafka_auth.ADMIN]}
    assert kafka["config"]["auto.create.topics.enable"] is False
    assert kafka["config"]["allow.everyone.if.no.acl.found"] is False
    assert [listener["authentication"]["type"] for listener in kafka["listeners"]] == ["scram-sha-512"]


def test_kraft_with_node_pools_and_the_local_stacks_kafka(default: list[dict[str, Any]]) -> None:
    from paystream.settings import Settings

    pools = {p["metadata"]["name"]: p["spec"] for p in of_kind(default, "KafkaNodePool")}
    assert {tuple(p["roles"]) for p in pools.values()} == {("controller",), ("broker",)}
    assert of_kind(default, "Kafka")[0]["spec"]["kafka"]["version"] == Settings.model_fields["kafka_version"].default


def test_components_match_docker_compose(default: list[dict[str, Any]], production: list[dict[str, Any]],
                                         compose: dict[str, Any]) -> None:
    """Each `paystream run` service of compose is a workload here, with the same command,
    and at least the environment compose gives it (tracing on, as compose has it)."""
    runs = {name: svc for name, svc in compose["services"].items()
            if svc.get("command", [])[:2] == ["paystream", "run"]}
    for docs in (default, production):
        assert set(workloads(docs)) == set(runs)
    shared = set(compose["x-paystream"]["environment"])
    for name, workload in workloads(production).items():
        c = container(workload)
        assert c["command"] == runs[name]["command"]
        missing = (shared | set(runs[name]["environment"])) - set(env_of(c))
        assert not missing, f"{name}: compose sets {sorted(missing)}, the chart does not"


def test_each_component_holds_only_its_own_kafka_password(default: list[dict[str, Any]]) -> None:
    for name, workload in workloads(default).items():
        c = container(workload)
        assert env_of(c)["PAYSTREAM_KAFKA_SECRETS_DIR"] == "/run/kafka-secrets"
        assert "PAYSTREAM_KAFKA_PRINCIPAL" not in env_of(c)  # `paystream run NAME` makes it NAME
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        secret = volumes["kafka-password"]["secret"]
        assert secret == {"secretName": f"kafka-user-{name}", "items": [{"key": "password", "path": name}]}
        secrets = [v["secret"]["secretName"] for v in volumes.values() if "secret" in v]
        assert [s for s in secrets if s.startswith("kafka-user-")] == [f"kafka-user-{name}"]


def test_no_secret_is_a_literal(default: list[dict[str, Any]], production: list[dict[str, Any]]) -> None:
    for docs in (default, production):
        for workload in of_kind(docs, "Deployment", "StatefulSet"):
            spec = workload["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                for e in c.get("env", []):
                    secret = any(w in e["name"] for w in ("PASSWORD", "SECRET", "KEY"))
                    if secret and not e["name"].endswith(("_FILE", "_DIR")):
                        assert "value" not in e, (workload["metadata"]["name"], e)
        assert not of_kind(docs, "Secret")


def test_stateful_apps_keep_their_instance_and_volume(default: list[dict[str, Any]]) -> None:
    generated = {c["name"]: c for c in yaml.safe_load(k8s.GENERATED.read_text())["components"]}
    for name, workload in workloads(default).items():
        env = env_of(container(workload))
        instance = generated[name]["instanceEnv"]
        if name in k8s.STATEFUL:
            assert workload["kind"] == "StatefulSet"
            assert env[instance] == {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
            claims = workload["spec"]["volumeClaimTemplates"]
            assert [c["metadata"]["name"] for c in claims] == ["state"]
            mounts = {m["name"]: m["mountPath"] for m in container(workload)["volumeMounts"]}
            assert mounts["state"] == env["PAYSTREAM_HOME"]  # Quix state: <home>/state/<component>-<instance>
        else:
            assert workload["kind"] == "Deployment"
            if instance:
                assert env[instance] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_probes_and_resources(default: list[dict[str, Any]]) -> None:
    for name, workload in workloads(default).items():
        c = container(workload)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in c, (name, probe)
        assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"], name
        port = c["ports"][0]["containerPort"]
        assert port == (8080 if name == "gateway" else int(workload["spec"]["template"]["metadata"]["annotations"]
                                                            ["prometheus.io/port"]))
    gateway = container(workloads(default)["gateway"])
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
