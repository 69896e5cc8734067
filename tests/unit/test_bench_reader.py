"""The bench's outcome reader reads an event's first fields exactly as a full decode does."""

from __future__ import annotations

import io
import json
import uuid

import fastavro
from hypothesis import given, settings
from hypothesis import strategies as st

from ops.lab.bench.ledger import _STATUS, event_head
from paystream.codec import SCHEMA_DIR

SCHEMA = json.loads((SCHEMA_DIR / "ledger_event.avsc").read_text())
PARSED = fastavro.parse_schema(SCHEMA)
STATUSES = next(f for f in SCHEMA["fields"] if f["name"] == "status")["type"]["symbols"]
TYPES = next(f for f in SCHEMA["fields"] if f["name"] == "type")["type"]["symbols"]


def _event(command_id: str, status: str, terminal: bool, replay: bool, sequence: int, etype: str) -> dict:
    return {
        "event_id": str(uuid.uuid4()), "command_id": command_id, "payment_id": str(uuid.uuid4()),
        "account_id": str(uuid.uuid4()), "sequence": sequence, "type": etype, "command_type": "TRANSFER",
        "status": status, "terminal": terminal, "replay": replay, "reason": None, "counterparty_id": None,
        "amount": 5, "currency": "USD", "balance_after": 7, "postings": [], "account": None,
        "requested_by": "x", "note": None, "metadata": {}, "occurred_at": 1,
    }  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.uuids().map(str), st.sampled_from(STATUSES), st.booleans(), st.booleans(),
       st.integers(0, 2**62), st.sampled_from(TYPES))
def test_event_head_reads_what_a_full_decode_reads(command_id, status, terminal, replay, sequence, etype):
    assert _STATUS is not None
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, PARSED, _event(command_id, status, terminal, replay, sequence, etype))
    assert event_head(b"\x00\x00\x00\x00\x07" + buf.getvalue()) == (command_id, status, terminal, replay)
