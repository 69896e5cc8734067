"""`paystream k8s`: the Helm chart in deploy/helm/paystream, its generated data and its checks.

The chart runs paystream on Kubernetes with the Strimzi operator (docs/DEPLOY.md).
What the chart must agree with the code on is not copied by hand: `paystream k8s
generate` writes `files/generated.yaml` from ops/topics.toml (one `KafkaTopic` each),
ops/kafka_auth.py (one `KafkaUser` per component principal, with the same ACLs
`paystream acls apply` gives it) and ops/run_cli.py (one workload per `paystream run`
component), and `--check` fails while the committed file is stale (a unit test runs it).

`paystream k8s lint` renders the chart with `helm` (built from its Go module into the
tools cache the first time: `paystream k8s helm`) and validates every manifest: core
kinds against the Kubernetes JSON schemas the PyPI package `kubernetes-validate` ships,
strict (an unknown field is an error); Strimzi kinds against the openAPIV3 schemas of
Strimzi's own CRDs, kept in deploy/schemas/ (Maven Central carries Strimzi's API
classes but not its CRDs; `paystream k8s strimzi-schemas` refreshes the file from a
Strimzi release's install files), made strict the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ops import kafka_auth
from ops.topics import topic_configs
from paystream.codec import TopicSpec, topic_specs
from paystream.settings import PROJECT_ROOT, Settings, get_settings

app = typer.Typer(no_args_is_help=True)

CHART = PROJECT_ROOT / "deploy" / "helm" / "paystream"
GENERATED = CHART / "files" / "generated.yaml"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
STRIMZI_VERSION = "1.0.1"  # the last Strimzi release that runs Kafka 4.1 (1.1.0 dropped it)
STRIMZI_SCHEMAS = PROJECT_ROOT / "deploy" / "schemas" / f"strimzi-{STRIMZI_VERSION}.json"
STRIMZI_KINDS = ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser")
STRIMZI_API = "kafka.strimzi.io/v1"
# Kubernetes versions the core manifests are validated for: the chart's floor
# (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.30", "latest")

# Broker settings Strimzi manages itself and refuses in `Kafka.spec.kafka.config`
# (KafkaClusterSpec.FORBIDDEN_PREFIXES of Strimzi 1.0.1; a few exceptions aside, none of
# which paystream sets). The CRD schema cannot say this; the operator would reject it.
STRIMZI_FORBIDDEN_CONFIG = (
    "listeners", "advertised.", "broker.", "listener.", "host.name", "port", "inter.broker.listener.name",
    "sasl.", "ssl.", "security.", "password.", "log.dir", "zookeeper.", "authorizer.", "super.user",
    "cruise.control.metrics.topic", "cruise.control.metrics.reporter.bootstrap.servers", "node.id",
    "process.roles", "controller.", "metadata.log.dir", "client.quota.callback.static.", "prometheus.metrics.reporter.",
)

HELM_MODULE = "helm.sh/helm/v4"
HELM_VERSION = "v4.3.2"

# Components whose instance id names durable things (a transactional id, a Quix state
# directory, webhook leases, a static group member): setting -> the components.
INSTANCE_SETTINGS = {
    "ledger": "ledger_instance",
    "fraud": "fraud_instance",
    "compensation": "compensation_instance",
    "notifications": "notifications_instance",
    "webhooks": "webhook_instance",
    "sink": "sink_instance",
}
# Quix apps with RocksDB state under <home>/state/<component>-<instance>: a StatefulSet
# each, so a pod keeps its instance id (its ordinal) and its volume across restarts.
STATEFUL = ("ledger", "fraud", "compensation", "notifications")


# ---------------------------------------------------------------- generated data


def strimzi_acl(grant: kafka_auth.Grant) -> dict[str, Any]:
    """One `kafka_auth.Grant` as a Strimzi `KafkaUser` ACL rule (simple authorization)."""
    kinds = {"topic": "topic", "group": "group", "transactional_id": "transactionalId", "cluster": "cluster"}
    resource: dict[str, Any] = {"type": kinds[grant.resource]}
    if grant.resource != "cluster":
        resource["name"] = grant.name
        resource["patternType"] = "prefix" if grant.prefixed else "literal"
    operations = ["".join(part.title() for part in op.split("_")) for op in grant.operations]
    return {"resource": resource, "operations": operations, "host": "*"}


def topic_entry(spec: TopicSpec) -> dict[str, Any]:
    """A topic of ops/topics.toml as the chart's `KafkaTopic` template reads it. Config
    values are strings, as `paystream topics apply` sets them on the broker."""
    return {
        "name": spec.name,
        "partitions": spec.partitions,
        "replicas": spec.replication_factor,
        "config": topic_configs(spec),
    }


def _default(field: str) -> Any:
    """A setting's default: a developer's PAYSTREAM_* ports must not leak into the
    committed file, and a cluster uses the defaults (each pod has its own ports)."""
    info = Settings.model_fields.get(field)
    return info.default if info is not None else None


def component_entry(name: str) -> dict[str, Any]:
    instance = INSTANCE_SETTINGS.get(name)
    return {
        "name": name,
        "kind": "StatefulSet" if name in STATEFUL else "Deployment",
        # the gateway serves /metrics and /healthz on its HTTP port
        "port": _default("gateway_port") if name == "gateway" else _default(f"{name.replace('-', '_')}_metrics_port"),
        "instanceEnv": f"PAYSTREAM_{instance.upper()}" if instance else None,
    }


def generated_data() -> dict[str, Any]:
    """Everything the chart takes from the code, as plain data."""
    from ops.run_cli import COMPONENTS

    return {
        "kafkaVersion": _default("kafka_version"),
        "apicurioVersion": _default("apicurio_version"),
        "saslMechanism": _default("kafka_sasl_mechanism"),
        "admin": kafka_auth.ADMIN,
        "topics": [topic_entry(s) for s in topic_specs().values()],
        "users": {principal: [strimzi_acl(g) for g in grants] for principal, grants in kafka_auth.RIGHTS.items()},
        "components": [component_entry(name) for name in COMPONENTS],
    }


HEADER = (
    "# Generated by `paystream k8s generate` from ops/topics.toml, ops/kafka_auth.py and\n"
    "# ops/run_cli.py: do not edit (a unit test fails while it is stale). docs/DEPLOY.md.\n"
)


def _yaml() -> Any:
    """PyYAML, a development dependency (like the rest of `paystream k8s`): imported when
    used, so the CLI in the image, which lacks it, still starts."""
    import yaml  # type: ignore[import-untyped,unused-ignore]  # typed from PyYAML 6.0.4 on

    return yaml


def render_generated() -> str:
    yaml = _yaml()
    return HEADER + yaml.safe_dump(generated_data(), sort_keys=False, width=120)


def stale(path: Path = GENERATED) -> bool:
    return not path.exists() or path.read_text() != render_generated()


# ---------------------------------------------------------------- helm


def helm_path(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).cache_dir / "tools" / "bin" / "helm"


def _go() -> str | None:
    return shutil.which("go") or next((p for p in ("/usr/local/go/bin/go",) if Path(p).exists()), None)


class ToolError(Exception):
    """A tool the checks need cannot be had; says why."""


def ensure_helm(settings: Settings | None = None, console: Console | None = None) -> Path:
    """helm, built once from its Go module into the tools cache (about 2 minutes and
    1.7 GB of Go caches on a 2-core machine; the binary is 115 MiB)."""
    path = helm_path(settings)
    if path.exists():
        return path
    go = _go()
    if go is None:
        raise ToolError("no Go toolchain (go on PATH or /usr/local/go/bin/go): cannot build helm")
    path.parent.mkdir(parents=True, exist_ok=True)
    if console:
        console.print(f"building helm {HELM_VERSION} from {HELM_MODULE} into {path.parent} (once)")
    t0 = time.monotonic()
    env = {**os.environ, "GOBIN": str(path.parent), "GOFLAGS": os.environ.get("GOFLAGS", "-mod=mod")}
    done = subprocess.run([go, "install", f"{HELM_MODULE}/cmd/helm@{HELM_VERSION}"], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0 or not path.exists():
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise ToolError(f"`go install {HELM_MODULE}/cmd/helm@{HELM_VERSION}` failed:\n{tail}")
    if console:
        console.print(f"helm built in {time.monotonic() - t0:.0f}s")
    return path


def helm(helm_bin: Path, *args: str) -> str:
    done = subprocess.run([str(helm_bin), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolError(f"helm {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def render(helm_bin: Path, values: Iterable[Path] = (), release: str = "paystream",
           namespace: str = "payments") -> list[dict[str, Any]]:
    """`helm template` of the chart: the manifests as dicts."""
    yaml = _yaml()
    args = ["template", release, str(CHART), "--namespace", namespace]
    for v in values:
        args += ["-f", str(v)]
    return [d for d in yaml.safe_load_all(helm(helm_bin, *args)) if d]


# ---------------------------------------------------------------- validation


def _strict(schema: Any) -> Any:
    """A CRD schema that rejects unknown fields (the API server would prune them
    silently, which hides a typo such as `partition:`)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _drop_descriptions(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _drop_descriptions(v) for k, v in schema.items() if k != "description"}
    if isinstance(schema, list):
        return [_drop_descriptions(v) for v in schema]
    return schema


def strimzi_schemas_from_crds(crd_files: Iterable[Path], version: str = "v1") -> dict[str, Any]:
    """kind -> openAPIV3Schema of `version`, from Strimzi's CRD files (descriptions dropped)."""
    yaml = _yaml()
    out: dict[str, Any] = {}
    for path in crd_files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            kind = doc["spec"]["names"]["kind"]
            if kind not in STRIMZI_KINDS:
                continue
            for v in doc["spec"]["versions"]:
                if v["name"] == version:
                    out[kind] = _drop_descriptions(v["schema"]["openAPIV3Schema"])
    return dict(sorted(out.items()))


def _errors(validator: Any, doc: Mapping[str, Any]) -> Iterator[str]:
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        yield f"{where}: {err.message}"


def validate_manifests(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Problems in rendered manifests, one line each naming the resource; [] when valid."""
    import jsonschema
    import kubernetes_validate

    strimzi = json.loads(STRIMZI_SCHEMAS.read_text())
    validators = {kind: jsonschema.Draft7Validator(_strict(schema)) for kind, schema in strimzi.items()}
    versions = [kubernetes_validate.latest_version() if v == "latest" else v for v in KUBE_VERSIONS]
    problems: list[str] = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if str(doc.get("apiVersion", "")).startswith("kafka.strimzi.io/"):
            if doc["apiVersion"] != STRIMZI_API or doc["kind"] not in validators:
                problems.append(f"{name}: no schema for {doc['apiVersion']} {doc['kind']}")
                continue
            problems += [f"{name}: {e}" for e in _errors(validators[doc["kind"]], doc)]
            if doc["kind"] == "Kafka":
                config = doc.get("spec", {}).get("kafka", {}).get("config", {})
                problems += [f"{name}: spec.kafka.config.{key}: Strimzi manages it and refuses it here"
                             for key in config if key.startswith(STRIMZI_FORBIDDEN_CONFIG)]
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(dict(doc), version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                caught = getattr(exc, "caught", None)  # the jsonschema error, with its path
                where = "/".join(str(p) for p in getattr(caught, "absolute_path", ())) or "(root)"
                message = getattr(caught, "message", str(exc).splitlines()[0])
                problems.append(f"{name} (Kubernetes {version}): {where}: {message}")
    return problems


@dataclass
class LintResult:
    values: str
    resources: int
    problems: list[str]


VALUE_SETS: dict[str, tuple[Path, ...]] = {"default values": (), "production values": (PRODUCTION_VALUES,)}


def lint(console: Console | None = None) -> list[LintResult]:
    """`helm lint --strict` and `helm template` with each value set, and every manifest
    validated. Raises ToolError when helm cannot be had or lint fails."""
    helm_bin = ensure_helm(console=console)
    results = []
    for label, values in VALUE_SETS.items():
        args = ["lint", "--strict", str(CHART)]
        for v in values:
            args += ["-f", str(v)]
        helm(helm_bin, *args)
        docs = render(helm_bin, values)
        results.append(LintResult(label, len(docs), validate_manifests(docs)))
    return results


# ---------------------------------------------------------------- CLI


@app.command("generate")
def generate_cmd(check: bool = typer.Option(False, "--check", help="fail if the committed file is stale")) -> None:
    """Write the chart's files/generated.yaml from topics.toml, the ACLs and the components."""
    console = Console()
    rel = GENERATED.relative_to(PROJECT_ROOT)
    if check:
        if stale():
            console.print(f"[red]{rel} is stale:[/red] run `paystream k8s generate`")
            raise typer.Exit(1)
        console.print(f"{rel} is up to date")
        return
    GENERATED.parent.mkdir(parents=True, exist_ok=True)
    GENERATED.write_text(render_generated())
    console.print(f"wrote {rel}")


@app.command("helm")
def helm_cmd() -> None:
    """Build helm from its Go module into the tools cache unless it is there; print its path."""
    console = Console()
    try:
        console.print(str(ensure_helm(console=console)))
    except ToolError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


@app.command("lint")
def lint_cmd() -> None:
    """helm lint and template (default and production values); validate every manifest."""
    console = Console()
    if stale():
        console.print("[red]files/generated.yaml is stale:[/red] run `paystream k8s generate`")
        raise typer.Exit(1)
    try:
        results = lint(console)
    except ToolError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    failed = False
    for r in results:
        console.print(f"{r.values}: {r.resources} manifests, {len(r.problems)} problems")
        for p in r.problems:
            console.print(f"  [red]{p}[/red]", soft_wrap=True)
        failed |= bool(r.problems)
    if failed:
        raise typer.Exit(1)


@app.command("strimzi-schemas")
def strimzi_schemas_cmd(
    crd_dir: Path = typer.Argument(..., exists=True, file_okay=False,
                                   help="a Strimzi release's packaging/install/cluster-operator"),
) -> None:
    """Refresh deploy/schemas/strimzi-<version>.json from Strimzi's CRD files."""
    schemas = strimzi_schemas_from_crds(sorted(crd_dir.glob("*-Crd-*.yaml")))
    missing = set(STRIMZI_KINDS) - set(schemas)
    if missing:
        raise typer.BadParameter(f"no v1 schema for {sorted(missing)} in {crd_dir}")
    STRIMZI_SCHEMAS.parent.mkdir(parents=True, exist_ok=True)
    STRIMZI_SCHEMAS.write_text(json.dumps(schemas, indent=1, sort_keys=True) + "\n")
    Console().print(f"wrote {STRIMZI_SCHEMAS.relative_to(PROJECT_ROOT)} ({', '.join(schemas)})")
