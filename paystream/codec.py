"""The one codec: Avro values in Confluent wire format, through the schema registry.

Every component encodes and decodes through `Codec`, so a direct Kafka producer
written in any language with Confluent's serializers interoperates with us.

Choices that matter:

* Decoding resolves the *writer* schema (fetched by id from the registry) to our
  local *reader* schema for the topic, which is how Avro schema evolution is
  meant to work; a record written with an older compatible schema decodes into
  today's shape, with defaults filled in.
* Inside Python, ``uuid`` logical values stay ``str`` and ``timestamp-millis``
  stays an ``int`` of epoch milliseconds. State stores are JSON and the ledger
  compares ids as strings, so converting to ``UUID``/``datetime`` and back on
  every message would cost CPU and invite bugs. This is done by registering
  identity logical readers with fastavro, the documented extension point.
* Keys are plain UTF-8 (see ``ops/topics.toml``), so partitioning never depends
  on a registry-assigned id.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import fastavro
import fastavro.read
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from paystream import avro_writer, topics
from paystream.errors import DecodeError, UnknownSchemaError
from paystream.settings import PROJECT_ROOT

SCHEMA_DIR = PROJECT_ROOT / "schemas"
TOPICS_FILE = PROJECT_ROOT / "ops" / "topics.toml"
MAGIC = 0
_HEADER = struct.Struct(">bI")

# Keep ids and timestamps as plain str/int (see module docstring).
fastavro.read.LOGICAL_READERS["string-uuid"] = lambda data, *_: data
fastavro.read.LOGICAL_READERS["long-timestamp-millis"] = lambda data, *_: data


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    value_schema: str
    cleanup_policy: str
    retention_ms: int
    replication_factor: int
    min_insync_replicas: int
    record_schemas: tuple[str, ...] = ()
    # "LogAppendTime" where a record's time must be the broker's, never the
    # producer's (the ledger's inputs: event time is what fraud ages against).
    timestamp_type: str = "CreateTime"

    @property
    def subject(self) -> str:
        return f"{self.name}-value"

    @property
    def schema_path(self) -> Path:
        return SCHEMA_DIR / self.value_schema

    def record_subjects(self) -> dict[str, str]:
        """Further record types of this topic: full name -> subject (TopicRecordNameStrategy)."""
        return {full_name(f): f"{self.name}-{full_name(f)}" for f in self.record_schemas}


@lru_cache(maxsize=64)
def full_name(schema_file: str) -> str:
    raw = json.loads((SCHEMA_DIR / schema_file).read_text())
    return f"{raw['namespace']}.{raw['name']}" if raw.get("namespace") else str(raw["name"])


def _physical(schema: Any) -> Any:
    """The schema without logical-type annotations. Avro encodes a logical value exactly
    as its underlying type, so the bytes are identical (unit-tested), but fastavro
    skips a conversion hook per uuid and timestamp field: 23 -> 13 us to write a
    ledger event, 5.8 -> 4.9 us to read a command. Writer and reader schemas are both
    physical, so resolution compares like with like."""
    if isinstance(schema, dict):
        return {k: _physical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_physical(s) for s in schema]
    return schema


@lru_cache(maxsize=1)
def topic_specs() -> dict[str, TopicSpec]:
    """The project's topics, from ``ops/topics.toml`` (cached)."""
    return load_topic_specs(TOPICS_FILE)


def spec_of(topic: str, specs: Mapping[str, TopicSpec] | None = None) -> TopicSpec:
    """The spec of `topic`, a later generation of a ledger input included: its base
    topic's spec under its own name and partition count (`paystream.topics.generation_of`)."""
    specs = topic_specs() if specs is None else specs
    spec = specs.get(topic)
    if spec is not None:
        return spec
    base, partitions = topics.generation_of(topic)
    if partitions is None or base not in specs:
        raise KeyError(topic)
    return replace(specs[base], name=topic, partitions=partitions)


def generation_specs(ledger: topics.LedgerTopics) -> dict[str, TopicSpec]:
    """The specs of a generation's input topics (create them, register their schemas)."""
    return {name: spec_of(name) for name in ledger.inputs}


def load_topic_specs(path: Path) -> dict[str, TopicSpec]:
    """Topic specs from any file in the ``ops/topics.toml`` format (tools and tests)."""
    raw = tomllib.loads(path.read_text())
    defaults = raw.get("defaults", {})
    specs = {}
    for t in raw["topic"]:
        merged = {**defaults, **t}
        specs[t["name"]] = TopicSpec(
            name=merged["name"],
            partitions=int(merged["partitions"]),
            key=merged["key"],
            value_schema=merged["value_schema"],
            cleanup_policy=merged.get("cleanup_policy", "delete"),
            retention_ms=int(merged.get("retention_ms", 604800000)),
            replication_factor=int(merged.get("replication_factor", 1)),
            min_insync_replicas=int(merged.get("min_insync_replicas", 1)),
            record_schemas=tuple(merged.get("record_schemas", ())),
            timestamp_type=str(merged.get("timestamp_type", "CreateTime")),
        )
    return specs


def load_schema_text(name: str) -> str:
    """Canonical JSON text of a schema file, so registry lookups match byte for byte."""
    return json.dumps(json.loads((SCHEMA_DIR / name).read_text()), separators=(",", ":"))


def wire_schema_id(data: bytes | None) -> int:
    """The schema id in a Confluent wire-format header; DecodeError if there is none.

    Checked before any registry call: bytes without the magic byte would otherwise
    be read as an invented schema id, cost a registry lookup each and be
    dead-lettered as UNKNOWN_SCHEMA, when they are simply UNDECODABLE.
    """
    if data is None or len(data) < _HEADER.size:
        raise DecodeError("value is empty or shorter than the Confluent header")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError(f"bad magic byte {magic}: not Confluent wire format")
    return int(schema_id)


REGISTRY_TIMEOUT_SECONDS = 30


class Codec:
    """Encodes and decodes topic values; thread-safe; caches ids and parsed schemas."""

    def __init__(self, registry_url: str, specs: Mapping[str, TopicSpec] | None = None) -> None:
        """``specs`` defaults to :func:`topic_specs`; tools pass their own for other topics."""
        # httpx's default read timeout is 5 s, and the client retries only on HTTP
        # statuses, not on a timeout: one slow answer from a registry busy beside a
        # loaded stack failed a whole tool run (CI, `bench http` funding its users).
        # Lookups are cached, so a longer wait costs only the first use of a schema.
        self.registry = SchemaRegistryClient({"url": registry_url, "timeout": REGISTRY_TIMEOUT_SECONDS})
        self._specs = specs
        self._lock = threading.Lock()
        self._writer_ids: dict[str, int] = {}
        self._reader_schemas: dict[str, Any] = {}
        self._physical_schemas: dict[str, Any] = {}
        self._writers: dict[str, Callable[[dict[str, Any]], bytes]] = {}
        self._headers: dict[str, bytes] = {}
        self._record_ids: dict[tuple[str, str], int] = {}
        self._writer_schemas: dict[int, Any] = {}
        self._unregistered: set[str] = set()

    # -- schemas -----------------------------------------------------------------
    def _spec(self, topic: str) -> TopicSpec:
        return spec_of(topic, self._specs if self._specs is not None else topic_specs())

    def reader_schema(self, topic: str) -> Any:
        parsed = self._reader_schemas.get(topic)
        if parsed is None:
            spec = self._spec(topic)
            parsed = fastavro.parse_schema(_physical(json.loads(spec.schema_path.read_text())))
            self._reader_schemas[topic] = parsed
        return parsed

    def _writer(self, schema_file: str) -> Callable[[dict[str, Any]], bytes]:
        """The compiled writer of a schema (`paystream.avro_writer`), or fastavro's when
        the schema uses something the compiler does not handle. A value the compiled
        writer rejects is handed to fastavro, so errors read as fastavro's."""
        writer = self._writers.get(schema_file)
        if writer is None:
            physical = self._physical_schema(schema_file)

            def slow(value: dict[str, Any]) -> bytes:
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, physical, value)
                return buf.getvalue()

            try:
                fast = avro_writer.compile_writer(_physical(json.loads((SCHEMA_DIR / schema_file).read_text())))
            except avro_writer.Unsupported:
                writer = slow
            else:

                def writer(value: dict[str, Any]) -> bytes:
                    try:
                        return fast(value)
                    except Exception:
                        return slow(value)

            self._writers[schema_file] = writer
        return writer

    def _physical_schema(self, schema_file: str) -> Any:
        parsed = self._physical_schemas.get(schema_file)
        if parsed is None:
            parsed = fastavro.parse_schema(_physical(json.loads((SCHEMA_DIR / schema_file).read_text())))
            self._physical_schemas[schema_file] = parsed
        return parsed

    def _record_file(self, topic: str, name: str) -> str:
        for f in self._spec(topic).record_schemas:
            if full_name(f) == name:
                return f
        raise KeyError(f"{name} is not a record type of topic {topic}")

    def record_schema_id(self, topic: str, name: str) -> int:
        """Registry id of a further record type of `topic` (see `TopicSpec.record_schemas`)."""
        sid = self._record_ids.get((topic, name))
        if sid is None:
            with self._lock:
                schema_file = self._record_file(topic, name)
                subject = f"{topic}-{name}"
                try:
                    registered = self.registry.lookup_schema(subject, Schema(load_schema_text(schema_file), "AVRO"))
                except Exception as exc:
                    raise UnknownSchemaError(
                        f"schema for {subject} is not registered (run `paystream schemas apply`): {exc}"
                    ) from exc
                sid = int(registered.schema_id)
                self._record_ids[(topic, name)] = sid
        return sid

    def header(self, topic: str, name: str | None = None) -> bytes:
        """The 5-byte Confluent header for `topic`'s value schema, or for one of its
        further record types: batch writers append Avro bodies to it."""
        sid = self.schema_id(topic) if name is None else self.record_schema_id(topic, name)
        return _HEADER.pack(MAGIC, sid)

    def encode_body(self, topic: str, value: dict[str, Any]) -> bytes:
        """The Avro body of a value of `topic` without the header: the unit batches are
        made of (an Avro array of records is its items' bodies back to back)."""
        return self._writer(self._spec(topic).value_schema)(value)

    def schema_id(self, topic: str) -> int:
        sid = self._writer_ids.get(topic)
        if sid is None:
            with self._lock:
                spec = self._spec(topic)
                try:
                    registered = self.registry.lookup_schema(
                        spec.subject, Schema(load_schema_text(spec.value_schema), "AVRO")
                    )
                except Exception as exc:
                    raise UnknownSchemaError(
                        f"schema for {spec.subject} is not registered "
                        f"(run `paystream schemas apply`): {exc}"
                    ) from exc
                sid = int(registered.schema_id)
                self._writer_ids[topic] = sid
        return sid

    def _own_id(self, topic: str) -> int | None:
        if topic not in self._writer_ids and topic not in self._unregistered:
            try:
                self.schema_id(topic)
            except UnknownSchemaError:
                self._unregistered.add(topic)
        return self._writer_ids.get(topic)

    def _writer_schema(self, schema_id: int) -> Any:
        parsed = self._writer_schemas.get(schema_id)
        if parsed is None:
            try:
                schema = self.registry.get_schema(schema_id)
            except SchemaRegistryError as exc:
                # Only a definite "not found" is the message's fault; an unreachable
                # registry must stop the caller, not dead-letter good data.
                if exc.http_status_code == 404:
                    raise UnknownSchemaError(f"schema id {schema_id} is unknown") from exc
                raise
            # Physical, as for writing: the identity logical readers (top of module) cost a
            # Python call per uuid and timestamp field (decoding a command 5.8 -> 4.9 us).
            parsed = fastavro.parse_schema(_physical(json.loads(schema.schema_str)))
            self._writer_schemas[schema_id] = parsed
        return parsed

    def writer_name(self, data: bytes | None) -> str | None:
        """Full name of the record a value was written as (to spot foreign types).

        Raises DecodeError, without asking the registry, for bytes that are not
        Confluent wire format (see :func:`wire_schema_id`).
        """
        schema = self._writer_schema(wire_schema_id(data))
        return schema.get("name") if isinstance(schema, dict) else None

    # -- values ------------------------------------------------------------------
    def encode(self, topic: str, value: dict[str, Any]) -> bytes:
        header = self._headers.get(topic)
        if header is None:
            header = self._headers[topic] = _HEADER.pack(MAGIC, self.schema_id(topic))
        return header + self._writer(self._spec(topic).value_schema)(value)

    def decode_typed(self, topic: str, data: bytes | None) -> tuple[str | None, dict[str, Any]]:
        """(writer record name, record): the topic's own record type resolved to our
        reader schema as `decode` does, a further record type of the topic (a batch)
        resolved to its local schema, anything else decoded as written so that the
        caller can refuse it by name."""
        if data is None or len(data) < _HEADER.size:
            raise DecodeError("value is empty or shorter than the Confluent header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError(f"bad magic byte {magic}: not Confluent wire format")
        writer = self._writer_schema(schema_id)
        name = writer.get("name") if isinstance(writer, dict) else None
        spec = self._spec(topic)
        reader: Any = None
        if name is not None and name in spec.record_subjects():
            if self._record_ids.get((topic, name)) != schema_id:
                try:
                    own = self.record_schema_id(topic, name)
                except UnknownSchemaError:
                    own = None
                if own != schema_id:
                    reader = self.reader_record_schema(self._record_file(topic, name))
        elif name == self._own_name(topic):
            reader = None if self._own_id(topic) == schema_id else self.reader_schema(topic)
        return name, self._read(data, schema_id, writer, reader)

    def reader_record_schema(self, schema_file: str) -> Any:
        key = f"record:{schema_file}"
        parsed = self._reader_schemas.get(key)
        if parsed is None:
            parsed = fastavro.parse_schema(_physical(json.loads((SCHEMA_DIR / schema_file).read_text())))
            self._reader_schemas[key] = parsed
        return parsed

    def _own_name(self, topic: str) -> str:
        return full_name(self._spec(topic).value_schema)

    @staticmethod
    def _read(data: bytes, schema_id: int, writer: Any, reader: Any) -> dict[str, Any]:
        try:
            buf = io.BytesIO(data)
            buf.seek(_HEADER.size)
            record = fastavro.schemaless_reader(buf, writer, reader)
            if buf.tell() != len(data):
                raise DecodeError(f"{len(data) - buf.tell()} trailing bytes after the record")
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"cannot decode with schema id {schema_id}: {exc}") from exc
        if not isinstance(record, dict):
            raise DecodeError("decoded value is not a record")
        return record

    def decode(self, topic: str, data: bytes | None) -> dict[str, Any]:
        """Decode a value written with any registered schema compatible with ours.

        Raises DecodeError for anything that is not a well-formed record of this
        topic, and UnknownSchemaError when the schema id is not in the registry.
        """
        schema_id = wire_schema_id(data)
        data = cast(bytes, data)  # wire_schema_id refused None
        writer = self._writer_schema(schema_id)
        # Resolution is only needed when the writer used another schema than ours;
        # skipping it for our own schema roughly halves decoding time.
        reader = None if self._own_id(topic) == schema_id else self.reader_schema(topic)
        return self._read(data, schema_id, writer, reader)
