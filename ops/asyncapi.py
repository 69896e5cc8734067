"""`paystream asyncapi`: the AsyncAPI 3.0 document of paystream's public topics.

Generated, never written by hand, from the two sources of truth the code itself
uses: `ops/topics.toml` (names, keys, partitions, retention, timestamps, which
record types a topic carries) and `schemas/*.avsc` (payloads, referenced, not
copied, so the document cannot drift from the Avro the registry holds). The
committed `docs/asyncapi.json` must equal what this module generates
(tests/unit/test_asyncapi.py), and CI validates it with the AsyncAPI CLI from npm
(tests/integration/test_asyncapi.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from paystream import topics
from paystream.codec import SCHEMA_DIR, TopicSpec, full_name, topic_specs
from paystream.settings import PROJECT_ROOT, get_settings

DOC = PROJECT_ROOT / "docs" / "asyncapi.json"
AVRO = "application/vnd.apache.avro;version=1.11.0"
KAFKA_BINDING = "0.5.0"
# The AsyncAPI CLI that validates the document, from npm (pinned: a new release may
# change its rules), installed once under the cache directory beside Kafka's jars.
CLI_PACKAGE = "@asyncapi/cli@6.2.0"

# What each public topic is for, who writes it and what a reader may rely on. The
# internal topics (ledger.legs, fraud.flows) are the ledger's and the fraud app's own
# and are left out: nobody else may read or write them.
ROLES: dict[str, tuple[str, str]] = {
    topics.COMMANDS: ("receive", "Transfers and holds (TRANSFER, AUTHORIZE, CAPTURE, VOID) from any producer "
                      "principal, keyed by the account they touch first; one writer per account applies them in "
                      "log order. A command of another type here is dead-lettered UNPRIVILEGED."),
    topics.PRIVILEGED: ("receive", "Commands that create or destroy money or override an owner (OPEN_ACCOUNT, "
                        "DEPOSIT, WITHDRAW, FREEZE, UNFREEZE, REVERSE_TRANSFER); only privileged principals may "
                        "write it (broker ACLs)."),
    topics.EVENTS: ("send", "The journal: what the ledger did, one event per step, written exactly once in "
                    "Kafka transactions (read it with isolation.level=read_committed). Per account key the "
                    "events are in order, with a gapless sequence and a hash chain. Kept forever."),
    topics.ALERTS: ("send", "Fraud alerts (MEDIUM and HIGH risk), one per payment, keyed by the sender."),
    topics.DECISIONS: ("send", "Review decisions on fraud alerts (APPROVED or REJECTED), keyed by the sender."),
    topics.NOTIFICATIONS: ("send", "What each user is told, keyed by user id; the webhooks worker delivers them."),
    topics.DLQ: ("send", "Records no component could use, with the reason, the original key and bytes, and "
                 "where they came from; `paystream dlq replay` sends them again."),
}


def _message_name(schema_file: str) -> str:
    return full_name(schema_file).rsplit(".", 1)[1]


def _doc_of(schema_file: str) -> str:
    return str(json.loads((SCHEMA_DIR / schema_file).read_text()).get("doc", ""))


def _channel_id(topic: str) -> str:
    head, *rest = topic.replace("-", ".").split(".")
    return head + "".join(p.capitalize() for p in rest)


def _message(spec: TopicSpec, schema_file: str) -> dict[str, Any]:
    record_type = schema_file != spec.value_schema
    return {
        "name": _message_name(schema_file),
        "title": full_name(schema_file),
        "summary": _doc_of(schema_file)[:300],
        "contentType": "application/octet-stream",
        "payload": {"schemaFormat": AVRO, "schema": {"$ref": f"../schemas/{schema_file}"}},
        "bindings": {"kafka": {
            "key": {"type": "string", "description": f"UTF-8 bytes of the {spec.key}, not Avro-encoded"},
            "schemaIdLocation": "payload",
            "schemaIdPayloadEncoding": "confluent",
            "schemaLookupStrategy": "TopicRecordNameStrategy" if record_type else "TopicIdStrategy",
            "bindingVersion": KAFKA_BINDING,
        }},
    }  # fmt: skip


def generate(specs: dict[str, TopicSpec] | None = None) -> dict[str, Any]:
    specs = specs or topic_specs()
    version = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic, (action, description) in ROLES.items():
        spec = specs[topic]
        cid = _channel_id(topic)
        refs = {}
        for schema_file in (spec.value_schema, *spec.record_schemas):
            name = _message_name(schema_file)
            messages[name] = _message(spec, schema_file)
            refs[name] = {"$ref": f"#/components/messages/{name}"}
        config: dict[str, Any] = {"cleanup.policy": [spec.cleanup_policy], "retention.ms": spec.retention_ms}
        channels[cid] = {
            "address": topic,
            "title": topic,
            "description": f"{description} Key: {spec.key}. Timestamps: {spec.timestamp_type}.",
            "messages": refs,
            "bindings": {"kafka": {
                "topic": topic, "partitions": spec.partitions, "replicas": spec.replication_factor,
                "topicConfiguration": config, "bindingVersion": KAFKA_BINDING,
            }},
        }  # fmt: skip
        verb = "Receive" if action == "receive" else "Send"
        operations[f"{verb.lower()}{cid[0].upper()}{cid[1:]}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{cid}"},
            "summary": f"paystream {'reads' if action == 'receive' else 'writes'} {topic}",
            "messages": [{"$ref": f"#/channels/{cid}/messages/{n}"} for n in refs],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "paystream",
            "version": version,
            "description": (
                "The Kafka contract of paystream, an exactly-once payment engine: commands in, the ledger's "
                "journal and the downstream topics out. Values are Avro in Confluent wire format (magic byte, "
                "4-byte schema id, body) with schemas in the registry (subject <topic>-value, or "
                "<topic>-<record full name> for the further record types a topic carries); keys are plain "
                "UTF-8. Generated from ops/topics.toml and schemas/ by `paystream asyncapi`; docs/CONTRACTS.md "
                "has the prose."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/octet-stream",
        "servers": {
            "local": {
                "host": "127.0.0.1:29092",
                "protocol": "kafka",
                "description": "The local stack (`paystream up`): SASL/SCRAM-SHA-512, one principal per client.",
                "security": [{"$ref": "#/components/securitySchemes/scram"}],
                "bindings": {"kafka": {"schemaRegistryUrl": "http://127.0.0.1:28081",
                                       "schemaRegistryVendor": "apicurio", "bindingVersion": KAFKA_BINDING}},
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "securitySchemes": {"scram": {"type": "scramSha512", "description": "docs/SECURITY.md"}},
        },
    }


def cli_path() -> Path:
    """The AsyncAPI CLI, installed from npm into the cache on first use."""
    home = get_settings().cache_dir.expanduser() / "asyncapi-cli"
    exe = home / "node_modules" / ".bin" / "asyncapi"
    if not exe.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed: the AsyncAPI CLI comes from npm (Node 20)")
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(home), "--no-audit", "--no-fund", "--loglevel=error",
                        CLI_PACKAGE], check=True, capture_output=True, timeout=900)  # fmt: skip
    return exe


def validate(doc: Path = DOC) -> tuple[bool, str]:
    """Run `asyncapi validate` on `doc`: whether it is valid, and what the CLI said."""
    env = {**os.environ, "SUPPRESS_NO_CONFIG_WARNING": "1", "NODE_ENV": "development"}
    done = subprocess.run([str(cli_path()), "validate", str(doc)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=doc.parent)  # fmt: skip
    said = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                     if line.strip() and "metrics" not in line and "analytics" not in line)  # fmt: skip
    return done.returncode == 0 and "is valid" in said, said


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def register(app: typer.Typer) -> None:
    @app.command("asyncapi")
    def asyncapi_cmd(
        check: bool = typer.Option(False, "--check", help="exit 1 if docs/asyncapi.json is not what would be written"),
        out: Path = typer.Option(DOC, "--out", help="where to write the document"),
        lint: bool = typer.Option(False, "--validate", help="then validate it with the AsyncAPI CLI (npm)"),
    ) -> None:
        """Write the AsyncAPI 3.0 document of the public topics (from ops/topics.toml and schemas/)."""
        console = Console()
        text = render(generate())
        if lint:
            ok, said = validate(out)
            console.print(said)
            if not ok:
                raise typer.Exit(1)
        if check:
            if not out.exists() or out.read_text() != text:
                console.print(f"{out} is out of date: run `paystream asyncapi`")
                raise typer.Exit(1)
            console.print(f"{out} is current")
            return
        out.write_text(text)
        console.print(f"wrote {out}")
