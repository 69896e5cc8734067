"""Avro binary encoders compiled from a schema into straight-line Python.

The codec (`paystream.codec`) stays the one way to encode; this is how it writes.
fastavro's writer interprets the schema for every value: a type dispatch per
field, a branch search per union. The ledger encodes two events and a leg per
transfer, and that interpretation was its largest single cost (13 us of a
ledger event's 13 us encode after logical types were dropped). Compiling the
schema once into a function that writes each field in order, with the union
branch decided by `is None`, gives the same bytes (property-tested against
fastavro in tests/unit/test_avro_writer.py) for a fraction of the time.

Only what paystream's schemas use is compiled: records, enums, arrays, maps,
primitives, and unions of null with one other type. Anything else raises
`Unsupported` and the codec falls back to fastavro for that schema.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

_SMALL = [bytes([(n << 1) ^ (n >> 63)]) if n >= 0 else b"" for n in range(64)]
_NEG_SMALL = {n: bytes([((n << 1) ^ (n >> 63)) & 0xFF]) for n in range(-64, 0)}
_FLOAT = struct.Struct("<f").pack
_DOUBLE = struct.Struct("<d").pack
Writer = Callable[[dict[str, Any]], bytes]


class Unsupported(Exception):
    """The schema uses something this compiler does not handle."""


def long_bytes(n: int) -> bytes:
    """Avro's zigzag varint of an int or long."""
    if 0 <= n < 64:
        return _SMALL[n]
    z = (n << 1) ^ (n >> 63)
    if 0 <= z < 0x80:  # -64 <= n < 0 (0 <= n < 64 returned above)
        return _NEG_SMALL[n]
    if 0 <= z < 0x4000:
        # Two bytes: amounts and sequence numbers mostly; no loop.
        return bytes(((z & 0x7F) | 0x80, z >> 7))
    if 0x7FFFFFFFF < z < 0x2000000000000:
        # Six or seven bytes: balances and epoch milliseconds, two in every ledger
        # event. Unrolled: the loop below costs twice as much.
        if z < 0x40000000000:
            return bytes(((z & 0x7F) | 0x80, (z >> 7 & 0x7F) | 0x80, (z >> 14 & 0x7F) | 0x80,
                          (z >> 21 & 0x7F) | 0x80, (z >> 28 & 0x7F) | 0x80, z >> 35))
        return bytes(((z & 0x7F) | 0x80, (z >> 7 & 0x7F) | 0x80, (z >> 14 & 0x7F) | 0x80,
                      (z >> 21 & 0x7F) | 0x80, (z >> 28 & 0x7F) | 0x80, (z >> 35 & 0x7F) | 0x80, z >> 42))
    if not -(1 << 63) <= n < (1 << 63):
        raise ValueError(f"{n} does not fit an Avro long")
    z &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _int_bytes(n: int) -> bytes:
    if not -(1 << 31) <= n < (1 << 31):
        raise ValueError(f"{n} does not fit an Avro int")
    return long_bytes(n)


def _string_bytes(s: str) -> bytes:
    b = s.encode("utf-8")
    return long_bytes(len(b)) + b


def _bytes_bytes(b: bytes) -> bytes:
    return long_bytes(len(b)) + b


def _bool_bytes(v: bool) -> bytes:
    return b"\x01" if v else b"\x00"


class _Compiler:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.env: dict[str, Any] = {
            "_long": long_bytes, "_int": _int_bytes, "_str": _string_bytes, "_bytes": _bytes_bytes,
            "_bool": _bool_bytes, "_float": _FLOAT, "_double": _DOUBLE, "_Z": b"\x00", "_SMALL": _SMALL,
        }  # fmt: skip
        self.named: dict[str, Any] = {}
        self.counter = 0

    def var(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def value(self, schema: Any, expr: str, indent: int, namespace: str | None = None) -> None:
        """Lines that append the encoding of `expr` (a Python expression) to `w`."""
        if isinstance(schema, str):
            if schema in self.named:
                return self.value(self.named[schema], expr, indent, namespace)
            full = f"{namespace}.{schema}" if namespace and "." not in schema else schema
            if full in self.named:
                return self.value(self.named[full], expr, indent, namespace)
            return self.primitive(schema, expr, indent)
        if isinstance(schema, list):
            return self.union(schema, expr, indent, namespace)
        kind = schema["type"]
        if kind == "record":
            return self.record(schema, expr, indent, namespace)
        if kind == "enum":
            name = self.register(schema, namespace)
            table = self.var("enum")
            self.env[table] = {sym: long_bytes(i) for i, sym in enumerate(schema["symbols"])}
            self.env[f"{table}_name"] = name
            return self.emit(indent, f"w({table}[{expr}])")
        if kind == "array":
            items, item = self.var("items"), self.var("item")
            self.emit(indent, f"{items} = {expr}")
            self.emit(indent, f"if {items}:")
            self.emit(indent + 1, f"w(_long(len({items})))")
            self.emit(indent + 1, f"for {item} in {items}:")
            self.value(schema["items"], item, indent + 2, namespace)
            return self.emit(indent, "w(_Z)")
        if kind == "map":
            entries, k, v = self.var("entries"), self.var("k"), self.var("v")
            self.emit(indent, f"{entries} = {expr}")
            self.emit(indent, f"if {entries}:")
            self.emit(indent + 1, f"w(_long(len({entries})))")
            self.emit(indent + 1, f"for {k}, {v} in {entries}.items():")
            self.emit(indent + 2, f"w(_str({k}))")
            self.value(schema["values"], v, indent + 2, namespace)
            return self.emit(indent, "w(_Z)")
        if kind in ("fixed",) or "logicalType" in schema:
            raise Unsupported(f"{kind} with {schema.get('logicalType')}")
        return self.primitive(kind, expr, indent)

    def primitive(self, kind: str, expr: str, indent: int) -> None:
        call = {"string": "_str", "long": "_long", "int": "_int", "boolean": "_bool", "bytes": "_bytes",
                "float": "_float", "double": "_double"}.get(kind)  # fmt: skip
        if kind == "null":
            return None
        if kind == "string":
            # Inlined: strings are most of an event, and a call costs as much as the work.
            s = self.var("s")
            self.emit(indent, f"{s} = {expr}.encode()")
            self.emit(indent, f"w(_SMALL[len({s})] if len({s}) < 64 else _long(len({s})))")
            return self.emit(indent, f"w({s})")
        if kind == "long":
            n = self.var("n")
            self.emit(indent, f"{n} = {expr}")
            return self.emit(indent, f"w(_SMALL[{n}] if 0 <= {n} < 64 else _long({n}))")
        if kind == "boolean":
            return self.emit(indent, f"w(b'\\x01' if {expr} else b'\\x00')")
        if call is None:
            raise Unsupported(kind)
        self.emit(indent, f"w({call}({expr}))")
        return None

    def union(self, branches: list[Any], expr: str, indent: int, namespace: str | None) -> None:
        if len(branches) != 2 or "null" not in branches:
            raise Unsupported(f"union {branches}")
        null_index = branches.index("null")
        other = branches[1 - null_index]
        v = self.var("u")
        self.emit(indent, f"{v} = {expr}")
        self.emit(indent, f"if {v} is None:")
        self.emit(indent + 1, f"w({long_bytes(null_index)!r})")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"w({long_bytes(1 - null_index)!r})")
        self.value(other, v, indent + 1, namespace)

    def register(self, schema: dict[str, Any], namespace: str | None) -> str:
        name = schema["name"]
        ns = schema.get("namespace", namespace)
        full = name if "." in name or not ns else f"{ns}.{name}"
        self.named[full] = schema
        self.named.setdefault(name, schema)
        return full

    def record(self, schema: dict[str, Any], expr: str, indent: int, namespace: str | None) -> None:
        full = self.register(schema, namespace)
        ns = full.rpartition(".")[0] or None
        d = self.var("r")
        self.emit(indent, f"{d} = {expr}")
        for field in schema["fields"]:
            name = field["name"]
            # A missing field is written as its default, or as null without one:
            # what fastavro does, so both writers agree on every input.
            default = self.var("default")
            self.env[default] = field.get("default")
            get = f"{d}.get({name!r}, {default})"
            self.value(field["type"], get, indent, ns)


def compile_writer(schema: dict[str, Any]) -> Writer:
    """A function record -> Avro body (no header), for a *physical* schema (no
    logical types: the codec strips them, which changes no byte)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise Unsupported("only record schemas are compiled")
    c = _Compiler()
    c.emit(1, "parts = []")
    c.emit(1, "w = parts.append")
    c.value(schema, "value", 1)
    c.emit(1, "return b''.join(parts)")
    source = "def write(value):\n" + "\n".join(c.lines) + "\n"
    exec(compile(source, f"<avro writer {schema.get('name')}>", "exec"), c.env)
    fn: Writer = c.env["write"]
    return fn
