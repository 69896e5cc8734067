"""`paystream topics apply`: make the broker's topics match ops/topics.toml.

Idempotent. A topic whose partition count differs from the spec is an error,
because repartitioning a keyed topic moves accounts between partitions and
breaks the single-writer-per-account rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import typer
from confluent_kafka.admin import ConfigResource, NewTopic
from rich.console import Console
from rich.table import Table

from paystream import kafka
from paystream.codec import TOPICS_FILE, TopicSpec, load_topic_specs, topic_specs
from paystream.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True)


class TopicMismatchError(Exception):
    pass


@dataclass
class TopicAction:
    topic: str
    action: str  # created | unchanged | altered
    detail: str = ""


def topic_configs(spec: TopicSpec) -> dict[str, str]:
    return {
        "cleanup.policy": spec.cleanup_policy,
        "retention.ms": str(spec.retention_ms),
        "min.insync.replicas": str(spec.min_insync_replicas),
        "message.timestamp.type": spec.timestamp_type,
    }


def apply_topics(
    settings: Settings,
    dry_run: bool = False,
    specs: Mapping[str, TopicSpec] | Path | None = None,
) -> list[TopicAction]:
    """Make the broker match ``specs``: ops/topics.toml by default, or another file or dict."""
    if specs is None:
        specs, source = topic_specs(), TOPICS_FILE.name
    elif isinstance(specs, Path):
        specs, source = load_topic_specs(specs), str(specs)
    else:
        source = "the given spec"
    admin = kafka.admin(settings)
    metadata = admin.list_topics(timeout=15)
    mismatched = [
        f"{name}: has {len(metadata.topics[name].partitions)} partitions, spec says {s.partitions}"
        for name, s in specs.items()
        if name in metadata.topics and len(metadata.topics[name].partitions) != s.partitions
    ]
    if mismatched:
        raise TopicMismatchError(
            f"partition count differs from {source} (refusing to continue): "
            + "; ".join(mismatched)
        )
    actions: list[TopicAction] = []
    missing = [s for s in specs.values() if s.name not in metadata.topics]
    if missing and not dry_run:
        futures = admin.create_topics([
            NewTopic(s.name, s.partitions, s.replication_factor, config=topic_configs(s))
            for s in missing
        ])
        for name, fut in futures.items():
            fut.result()
            actions.append(TopicAction(name, "created", f"{specs[name].partitions} partitions"))
    elif missing:
        actions += [
            TopicAction(s.name, "would create", f"{s.partitions} partitions") for s in missing
        ]
    existing = [s for s in specs.values() if s.name in metadata.topics]
    if existing:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in existing]
        described = admin.describe_configs(resources)
        for res, fut in described.items():
            spec = specs[res.name]
            current = fut.result()
            drift = {
                k: v for k, v in topic_configs(spec).items() if current[k].value != v
            }
            if not drift:
                actions.append(TopicAction(spec.name, "unchanged"))
                continue
            detail = ", ".join(f"{k}={current[k].value}->{v}" for k, v in drift.items())
            if not dry_run:
                resource = ConfigResource(
                    ConfigResource.Type.TOPIC, spec.name, set_config=topic_configs(spec)
                )
                for alter in admin.alter_configs([resource]).values():
                    alter.result()
            action = "altered" if not dry_run else "would alter"
            actions.append(TopicAction(spec.name, action, detail))
    return sorted(actions, key=lambda a: a.topic)


@app.command("apply")
def apply_cmd(
    dry_run: bool = typer.Option(False, "--dry-run"),
    spec: Path | None = typer.Option(
        None, "--spec", help="topic spec file (default ops/topics.toml)"
    ),
) -> None:
    """Create missing topics and fix drifted configs; refuse partition-count changes."""
    console = Console()
    try:
        actions = apply_topics(get_settings(), dry_run=dry_run, specs=spec)
    except TopicMismatchError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    table = Table("topic", "action", "detail")
    for a in actions:
        table.add_row(a.topic, a.action, a.detail)
    console.print(table)


@app.command("list")
def list_cmd() -> None:
    """Show the spec."""
    table = Table("topic", "partitions", "key", "schema", "retention.ms", "cleanup")
    for s in topic_specs().values():
        table.add_row(s.name, str(s.partitions), s.key, s.value_schema, str(s.retention_ms),
                      s.cleanup_policy)
    Console().print(table)
