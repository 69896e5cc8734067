"""`paystream schemas apply | check`.

`apply` registers each topic's value schema under ``<topic>-value`` (and its
further record types under ``<topic>-<full name>``) and pins each subject to
BACKWARD compatibility, so the registry itself refuses a breaking
change. `check` registers nothing: it compares the working tree's schemas with
those of a git revision (the previous commit by default) using Apache Avro's
reader/writer compatibility checker, so CI catches a breaking edit before any
registry sees it. ``--root`` points it at another checkout (a clone in tests).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path

import typer
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import parse as avro_parse
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from rich.console import Console

from paystream.codec import REGISTRY_TIMEOUT_SECONDS, TopicSpec, load_schema_text, load_topic_specs, topic_specs
from paystream.settings import PROJECT_ROOT, get_settings

app = typer.Typer(no_args_is_help=True)


def register_all(registry_url: str, specs: Mapping[str, TopicSpec] | None = None) -> dict[str, int]:
    """Register every topic's schemas (ops/topics.toml's, or `specs`: a new generation's)."""
    client = SchemaRegistryClient({"url": registry_url, "timeout": REGISTRY_TIMEOUT_SECONDS})
    ids: dict[str, int] = {}
    for spec in (topic_specs() if specs is None else specs).values():
        schema = Schema(load_schema_text(spec.value_schema), "AVRO")
        client.set_compatibility(subject_name=spec.subject, level="BACKWARD")
        ids[spec.subject] = int(client.register_schema(spec.subject, schema))
        for schema_file, subject in zip(spec.record_schemas, spec.record_subjects().values(), strict=True):
            client.set_compatibility(subject_name=subject, level="BACKWARD")
            ids[subject] = int(client.register_schema(subject, Schema(load_schema_text(schema_file), "AVRO")))
    return ids


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def default_base(root: Path = PROJECT_ROOT) -> str | None:
    """HEAD when schemas/ has uncommitted edits, else the commit before HEAD."""
    dirty = _git(root, "status", "--porcelain", "--", "schemas").stdout.strip()
    ref = "HEAD" if dirty else "HEAD~1"
    return ref if _git(root, "rev-parse", "--verify", "--quiet", ref).returncode == 0 else None


def check_compatibility(base: str, root: Path = PROJECT_ROOT) -> list[str]:
    """Problems found: each new schema must read data written with the base's version."""
    problems: list[str] = []
    schema_dir = root / "schemas"
    for path in sorted(schema_dir.glob("*.avsc")):
        rel = path.relative_to(root).as_posix()
        old = _git(root, "show", f"{base}:{rel}")
        if old.returncode != 0:
            continue  # a new schema has nothing to be compatible with
        try:
            reader = avro_parse(path.read_text())
            writer = avro_parse(old.stdout)
        except Exception as exc:
            problems.append(f"{rel}: does not parse: {exc}")
            continue
        result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
        if result.compatibility is not SchemaCompatibilityType.compatible:
            problems.append(
                f"{rel}: not backward compatible with {base}: {'; '.join(result.messages)}"
            )
    for spec in load_topic_specs(root / "ops" / "topics.toml").values():
        for schema_file in (spec.value_schema, *spec.record_schemas):
            if not (schema_dir / schema_file).exists():
                problems.append(f"topic {spec.name}: schema {schema_file} is missing")
    return problems


@app.command("apply")
def apply_cmd() -> None:
    """Register every topic's schema (BACKWARD per subject)."""
    ids = register_all(get_settings().registry_url)
    for subject, sid in ids.items():
        Console().print(f"{subject}: id {sid}")


@app.command("check")
def check_cmd(
    base: str = typer.Option(None, help="git revision to compare with"),
    root: Path = typer.Option(
        PROJECT_ROOT, "--root", help="checkout to check (default: this project)",
        exists=True, file_okay=False, resolve_path=True,
    ),
) -> None:
    """Fail when a schema change is not backward compatible with BASE (registers nothing)."""
    console = Console()
    ref = base or default_base(root)
    unparsable: list[str] = []
    for path in sorted((root / "schemas").glob("*.avsc")):
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            unparsable.append(f"{path.relative_to(root).as_posix()}: invalid JSON: {exc}")
    if unparsable:
        for p in unparsable:
            console.print(f"[red]error:[/red] {p}", soft_wrap=True)
        raise typer.Exit(1)
    if ref is None:
        console.print("no previous revision to compare with; schemas parse")
        return
    problems = check_compatibility(ref, root)
    if problems:
        for p in problems:
            console.print(f"[red]incompatible:[/red] {p}", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"schemas are backward compatible with {ref}")
