"""paystream/records.py spells schemas/*.avsc in Python; this keeps the two equal.

A field or enum symbol added, removed or renamed in a schema without the same change
in records.py (or the reverse) fails here, before mypy can vouch for code written
against a shape the wire no longer has. Checked for every `Literal` and `TypedDict`
in records.py: Literal members against the enum's symbols, TypedDict keys against
the record's fields, and each field's Python type against its Avro type (nullable
iff the Avro type is a union with null, enums and records by name).
"""

from __future__ import annotations

import ast
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import fastavro
import pytest

from paystream import records

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

_PRIMITIVES = {"string": "str", "long": "int", "int": "int", "boolean": "bool", "bytes": "bytes",
               "double": "float", "float": "float", "null": "None"}


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def named_types(schema_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every enum and record of every schema file, by short name (records.py has no
    namespaces). A name defined in several files (Command in command.avsc and
    command_batch.avsc, CommandType in command.avsc and ledger_event.avsc) must be
    defined the same way in each."""
    found: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}

    def walk(t: Any, file: str) -> None:
        if isinstance(t, list):
            for branch in t:
                walk(branch, file)
        elif isinstance(t, dict):
            kind = t["type"]
            if kind in ("record", "enum"):
                name = _short(t["name"])
                if kind == "enum":
                    definition = {"kind": "enum", "symbols": list(t["symbols"])}
                else:
                    definition = {"kind": "record", "fields": {f["name"]: f for f in t["fields"]}}
                if name in found:
                    assert _comparable(found[name]) == _comparable(definition), (
                        f"{name} differs between {where[name]} and {file}")
                else:
                    found[name], where[name] = definition, file
                for f in t.get("fields", []):
                    walk(f["type"], file)
            elif kind == "array":
                walk(t["items"], file)
            elif kind == "map":
                walk(t["values"], file)
            else:
                walk(kind, file)

    for path in sorted((schema_dir or SCHEMAS).glob("*.avsc")):
        schema = json.loads(path.read_text())
        fastavro.parse_schema(schema)  # each file is valid Avro on its own
        walk(schema, path.name)
    return found


def _comparable(definition: dict[str, Any]) -> Any:
    if definition["kind"] == "enum":
        return definition["symbols"]
    return {name: (json.dumps(_undocumented(f["type"]), sort_keys=True), "default" in f)
            for name, f in definition["fields"].items()}


def _undocumented(t: Any) -> Any:
    if isinstance(t, list):
        return [_undocumented(x) for x in t]
    if isinstance(t, dict):
        return {k: _undocumented(v) for k, v in t.items() if k != "doc"}
    return t


def avro_shape(t: Any, named: dict[str, dict[str, Any]]) -> str:
    """An Avro type as the Python type records.py must give it, spelt canonically."""
    if isinstance(t, str):
        if t in _PRIMITIVES:
            return _PRIMITIVES[t]
        return f"{named[_short(t)]['kind']}:{_short(t)}"
    if isinstance(t, list):
        return " | ".join(sorted(avro_shape(branch, named) for branch in t))
    kind = t["type"]
    if kind in ("record", "enum"):
        return f"{kind}:{_short(t['name'])}"
    if kind == "array":
        return f"list[{avro_shape(t['items'], named)}]"
    if kind == "map":
        return f"dict[str, {avro_shape(t['values'], named)}]"
    return avro_shape(kind, named)  # a primitive with a logical type: the codec strips it


def literals() -> dict[str, Any]:
    return {name: value for name, value in vars(records).items() if get_origin(value) is Literal}


def typed_dicts() -> dict[str, Any]:
    return {name: value for name, value in vars(records).items()
            if typing.is_typeddict(value) and value.__module__ == records.__name__}


def constants() -> dict[str, str]:
    return {name: value for name, value in vars(records).items() if name.isupper() and isinstance(value, str)}


def py_shape(hint: Any) -> str:
    """A Python type from records.py, spelt as `avro_shape` spells Avro types."""
    if hint is type(None):
        return "None"
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " | ".join(sorted(py_shape(arg) for arg in get_args(hint)))
    if origin is Literal:
        names = sorted(name for name, value in literals().items() if value == hint)
        return "enum:" + ("/".join(names) or f"<unnamed {hint}>")
    if typing.is_typeddict(hint):
        return f"record:{hint.__name__}"
    if origin is list:
        return f"list[{py_shape(get_args(hint)[0])}]"
    if origin is dict:
        key, value = get_args(hint)
        return f"dict[{py_shape(key)}, {py_shape(value)}]"
    if hint in (str, int, bool, bytes, float):
        return str(hint.__name__)
    return f"<{hint!r}>"


def test_records_py_has_a_literal_and_a_typeddict_at_all() -> None:
    # Guards the tests below against passing vacuously (say, if the helpers stopped
    # recognising the module's types).
    assert {"CommandType", "EventType", "LegKind"} <= set(literals())
    assert {"Command", "LedgerEvent", "Leg", "FraudAlert", "ReviewDecision", "Notification"} <= set(typed_dicts())


def test_every_literal_has_exactly_the_symbols_of_its_enum() -> None:
    named = named_types()
    enums = {name: d["symbols"] for name, d in named.items() if d["kind"] == "enum"}
    for name, literal in literals().items():
        assert name in enums, f"records.{name} names no enum in schemas/*.avsc"
        assert set(get_args(literal)) == set(enums[name]), (
            f"records.{name} differs from the Avro enum: only in records.py "
            f"{sorted(set(get_args(literal)) - set(enums[name]))}, only in the schema "
            f"{sorted(set(enums[name]) - set(get_args(literal)))}")
    missing = sorted(set(enums) - set(literals()))
    assert not missing, f"Avro enums without a Literal in records.py: {missing}"


def test_every_typeddict_has_exactly_the_fields_of_its_record() -> None:
    named = named_types()
    for name, td in typed_dicts().items():
        assert name in named and named[name]["kind"] == "record", f"records.{name} names no record in schemas/*.avsc"
        fields = named[name]["fields"]
        keys = td.__required_keys__ | td.__optional_keys__
        assert keys == set(fields), (
            f"records.{name} differs from the Avro record: only in records.py {sorted(keys - set(fields))}, "
            f"only in the schema {sorted(set(fields) - keys)}")
        # A field the schema gives no default is in every record written: never optional.
        undefaulted = {f for f, spec in fields.items() if "default" not in spec}
        assert not td.__optional_keys__ & undefaulted, f"records.{name}: {sorted(td.__optional_keys__ & undefaulted)}"


@pytest.mark.parametrize("name", sorted(typed_dicts()))
def test_every_field_has_the_python_type_of_its_avro_type(name: str) -> None:
    named = named_types()
    hints = get_type_hints(typed_dicts()[name])
    want = {f: avro_shape(spec["type"], named) for f, spec in named[name]["fields"].items()}
    got = {f: py_shape(hint) for f, hint in hints.items()}
    assert got == want


def test_every_enum_symbol_has_a_constant_named_as_itself() -> None:
    symbols = {s for d in named_types().values() if d["kind"] == "enum" for s in d["symbols"]}
    consts = constants()
    assert all(name == value for name, value in consts.items()), {n: v for n, v in consts.items() if n != v}
    assert set(consts.values()) == symbols, (
        f"constants without a symbol {sorted(set(consts.values()) - symbols)}, "
        f"symbols without a constant {sorted(symbols - set(consts.values()))}")


def test_records_imports_only_the_standard_library() -> None:
    """Every floor imports it (pipelines, sinks, gateway, ops): it must stay a leaf."""
    tree = ast.parse(Path(records.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "typing"}, imported
