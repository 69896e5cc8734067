"""The codec refuses bytes that are not Confluent wire format before it asks the
registry: they are UNDECODABLE, not an UNKNOWN_SCHEMA with an invented id."""

from __future__ import annotations

from typing import Any

import pytest

from paystream import commands as C
from paystream.codec import Codec
from paystream.errors import DecodeError, UnknownSchemaError


class _NoRegistry:
    """A registry client that fails the test if the codec calls it at all."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"registry.{name} called for bytes that are not wire format")


def _codec() -> Codec:
    codec = Codec("http://registry.invalid:1")
    codec.registry = _NoRegistry()  # type: ignore[assignment]
    return codec


NOT_WIRE_FORMAT = [
    b"",
    b"\x00",
    b"\x00\x00\x00\x01",  # magic byte, but shorter than the 5-byte header
    b"\x01\x00\x00\x00\x07payload",  # wrong magic byte, plausible id
    b'{"type": "DEPOSIT", "amount": 100}',  # JSON: magic byte '{'
    b"\xff\xff\xff\xff\xff",
]


@pytest.mark.parametrize("data", NOT_WIRE_FORMAT)
def test_decode_refuses_non_wire_format_without_a_registry_call(data: bytes) -> None:
    codec = _codec()
    with pytest.raises(DecodeError) as exc:
        codec.decode(C.COMMANDS_TOPIC, data)
    assert not isinstance(exc.value, UnknownSchemaError)
    assert exc.value.code == "undecodable"


@pytest.mark.parametrize("data", NOT_WIRE_FORMAT)
def test_writer_name_refuses_non_wire_format_without_a_registry_call(data: bytes) -> None:
    # the ledger asks writer_name before decode; it must not look up an invented id
    with pytest.raises(DecodeError) as exc:
        _codec().writer_name(data)
    assert not isinstance(exc.value, UnknownSchemaError)


def test_decode_refuses_none() -> None:
    with pytest.raises(DecodeError):
        _codec().decode(C.COMMANDS_TOPIC, None)


def test_wire_schema_id_reads_the_header() -> None:
    from paystream.codec import wire_schema_id

    assert wire_schema_id(b"\x00\x00\x00\x01\x02rest") == 258
