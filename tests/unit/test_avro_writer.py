"""The compiled Avro writers write exactly fastavro's bytes, for every schema of the project."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paystream import avro_writer
from paystream.batching import assemble
from paystream.codec import SCHEMA_DIR, _physical

SCHEMAS = sorted(p.name for p in SCHEMA_DIR.glob("*.avsc"))


def values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Valid values of an Avro schema, as the project's code builds them."""
    if isinstance(schema, str):
        if schema in named:
            return values(named[schema], named)
        return {
            "null": st.none(), "boolean": st.booleans(), "string": st.text(max_size=80),
            "bytes": st.binary(max_size=80), "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1), "double": st.floats(allow_nan=False),
        }[schema]  # fmt: skip
    if isinstance(schema, list):
        return st.one_of(*[values(s, named) for s in schema])
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        if schema.get("namespace"):
            named[f"{schema['namespace']}.{schema['name']}"] = schema
        fields = {f["name"]: values(f["type"], named) for f in schema["fields"]}
        return st.fixed_dictionaries(fields)
    if kind == "enum":
        named[schema["name"]] = schema
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(values(schema["items"], named), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=10), values(schema["values"], named), max_size=3)
    return values(kind, named)


def _fastavro(schema: Any, value: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), value)
    return buf.getvalue()


@pytest.mark.parametrize("name", SCHEMAS)
def test_compiled_writer_writes_fastavros_bytes(name: str) -> None:
    schema = _physical(json.loads((SCHEMA_DIR / name).read_text()))
    write = avro_writer.compile_writer(schema)
    parsed = fastavro.parse_schema(schema)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(values(schema, {}))
    def check(value: Any) -> None:
        expected = io.BytesIO()
        fastavro.schemaless_writer(expected, parsed, value)
        assert write(value) == expected.getvalue()

    check()


@given(st.integers(-(2**63), 2**63 - 1))
def test_long_bytes_is_avros_zigzag_varint(n: int) -> None:
    assert avro_writer.long_bytes(n) == _fastavro("long", n)


def test_missing_fields_are_written_as_their_default_like_fastavro() -> None:
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": ["null", "string"]},
        {"name": "b", "type": {"type": "map", "values": "string"}, "default": {}},
        {"name": "c", "type": "long", "default": 7},
    ]}  # fmt: skip
    assert avro_writer.compile_writer(schema)({}) == _fastavro(schema, {})


def test_a_value_of_the_wrong_type_is_refused() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}
    with pytest.raises(AttributeError):
        avro_writer.compile_writer(schema)({"a": 5})


@given(st.lists(st.binary(min_size=1, max_size=30), max_size=5), st.integers(0, 200), st.integers(1, 200))
def test_assembled_batch_is_the_avro_encoding_of_the_record(bodies: list[bytes], partition: int, count: int) -> None:
    """A batch built by concatenating item bodies equals fastavro's encoding of the
    same record (items here are opaque `bytes` fields, each body one Avro bytes value)."""
    item = {"type": "record", "name": "Item", "fields": [{"name": "v", "type": "bytes"}]}
    schema = {"type": "record", "name": "B", "fields": [
        {"name": "batch_id", "type": "string"}, {"name": "partition", "type": "int"},
        {"name": "partition_count", "type": "int"}, {"name": "items", "type": {"type": "array", "items": item}},
    ]}  # fmt: skip
    encoded_items = [_fastavro(item, {"v": b}) for b in bodies]
    record = {"batch_id": "x", "partition": partition, "partition_count": count, "items": [{"v": b} for b in bodies]}
    assert assemble(b"H", "x", partition, count, encoded_items) == b"H" + _fastavro(schema, record)
