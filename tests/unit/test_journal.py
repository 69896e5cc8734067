"""The hash chain (paystream/journal.py): its canonical bytes are what any JSON library
writes, an edit to any field of any event is caught at that event's link, and the
schema can grow without invalidating hashes already written."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paystream import journal
from tests.unit.ledger_sim import scenario

A, B, C, NOBODY = (str(uuid.UUID(int=i)) for i in (11, 12, 13, 14))
SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "ledger_event.avsc"


EVENTS = scenario(A, B, C, NOBODY)


def python_json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_the_scenario_is_one_whole_chain_per_account() -> None:
    assert journal.check_chains(EVENTS) == []
    firsts = {}
    for ev in EVENTS:
        firsts.setdefault(ev["account_id"], ev)
    assert {ev["prev_hash"] for ev in firsts.values()} == {journal.GENESIS}
    assert {ev["type"] for ev in EVENTS} >= {
        "ACCOUNT_OPENED", "DEPOSITED", "TRANSFER_DEBITED", "TRANSFER_COMPLETED", "TRANSFER_FAILED",
        "COMMAND_REJECTED", "COMMAND_DUPLICATE", "REVERSAL_DEBITED", "ACCOUNT_FROZEN", "TRANSFER_REVERSED",
        "ACCOUNT_UNFROZEN",
    }  # fmt: skip


def test_hash_is_sha256_of_the_documented_json() -> None:
    """The procedure in docs/LEDGER.md, with nothing but hashlib and json."""
    import hashlib

    for ev in EVENTS:
        body = {k: v for k, v in ev.items() if v is not None}
        body["hash"] = ""
        assert hashlib.sha256(python_json(body)).hexdigest() == ev["hash"]


# Text as a hostile producer may send it: controls, quotes, non-ASCII, astral planes.
_text = st.text(st.characters(codec="utf-8"), max_size=12)


@given(st.dictionaries(_text, _text, max_size=5), _text, st.one_of(st.none(), _text),
       st.integers(-(2**63), 2**63 - 1))
def test_orjson_writes_the_bytes_python_json_writes(meta: dict, text: str, note: str | None, n: int) -> None:
    ev = {**EVENTS[5], "metadata": meta, "requested_by": text, "note": note, "amount": n}
    body = {k: v for k, v in ev.items() if v is not None}
    body["hash"] = ""
    assert journal.canonical_bytes(ev) == python_json(body)


def test_the_ledgers_fast_hash_equals_the_general_one() -> None:
    for ev in EVENTS:
        assert journal.event_hash_fast({**ev, "hash": ""}) == journal.event_hash(ev) == ev["hash"]


def test_a_field_added_later_as_null_keeps_old_hashes() -> None:
    """What a reader with a later schema decodes: the new field at its default, null."""
    for ev in EVENTS:
        assert journal.event_hash({**ev, "hold_id": None}) == ev["hash"]


CHAINED_FIELDS = {
    "event_id", "command_id", "payment_id", "account_id", "sequence", "type", "command_type", "status",
    "terminal", "replay", "reason", "counterparty_id", "amount", "currency", "balance_after", "postings",
    "account", "requested_by", "note", "metadata", "occurred_at", "prev_hash", "hash",
}  # fmt: skip
NESTED_FIELDS = {
    "Posting": {"account_id", "account_kind", "amount", "currency"},
    "AccountInfo": {"external_number", "owner_id", "currency", "kind"},
}


def _nullable_with_null_default(f: dict[str, Any]) -> bool:
    return isinstance(f["type"], list) and f["type"][0] == "null" and "default" in f and f["default"] is None


def test_fields_added_to_events_after_the_chain_are_nullable_with_default_null() -> None:
    """The rule that keeps hashes valid across schema versions: a field an older event
    lacks must decode as null, which the canonical form leaves out. A non-null
    default (0, false, "") would be hashed, and every older event's hash would break."""
    schema = json.loads(SCHEMA.read_text())
    for f in schema["fields"]:
        assert f["name"] in CHAINED_FIELDS or _nullable_with_null_default(f), f["name"]
    records = {}
    for f in schema["fields"]:
        for t in f["type"] if isinstance(f["type"], list) else [f["type"]]:
            if isinstance(t, dict) and t.get("type") == "array":
                t = t["items"]
            if isinstance(t, dict) and t.get("type") == "record":
                records[t["name"]] = t
    assert set(records) == set(NESTED_FIELDS)
    for name, rec in records.items():
        for f in rec["fields"]:
            assert f["name"] in NESTED_FIELDS[name] or _nullable_with_null_default(f), f"{name}.{f['name']}"


# ------------------------------------------------------------------- tampering


def _edit(value: Any, data: st.DataObject) -> Any:
    """A different value of the same shape."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + data.draw(st.sampled_from([1, -1, 100, -(10**6)]))
    if isinstance(value, str):
        return data.draw(_text.filter(lambda s: s != value))
    if value is None:
        return data.draw(st.sampled_from(["x", 0, "OTHER"]))
    if isinstance(value, list):
        if not value:
            return [{"account_id": A, "account_kind": "USER", "amount": 1, "currency": "USD"}]
        i = data.draw(st.integers(0, len(value) - 1))
        changed = copy.deepcopy(value)
        how = data.draw(st.sampled_from(["edit", "drop", "swap"]))
        if how == "drop":
            del changed[i]
        elif how == "swap" and len(value) > 1:
            changed.reverse()
        else:
            key = data.draw(st.sampled_from(sorted(changed[i])))
            changed[i][key] = _edit(changed[i][key], data)
        return changed
    assert isinstance(value, dict)
    changed = dict(value)
    if changed and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(changed)))
        changed[key] = _edit(changed[key], data)
    else:
        changed[data.draw(_text.filter(lambda s: s not in value))] = "x"
    return changed


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_edit_to_any_field_of_any_event_is_caught_at_that_link(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(EVENTS) - 1))
    field = data.draw(st.sampled_from(sorted(EVENTS[i])))
    tampered = copy.deepcopy(EVENTS)
    before = tampered[i][field]
    tampered[i][field] = _edit(before, data)
    if journal.canonical_bytes(tampered[i]) == journal.canonical_bytes(EVENTS[i]) and field != "hash":
        return  # e.g. a null edited to... null: nothing changed
    victim = EVENTS[i]
    breaks = journal.check_chains(tampered)
    if field == "account_id":
        # the event moved to another account's chain: a break there (and a gap here,
        # unless it was this account's last event)
        moved = tampered[i]["account_id"]
        assert any((b.account_id, b.sequence) == (moved, victim["sequence"]) for b in breaks), breaks
        return
    assert len(breaks) == 1, breaks
    (brk,) = breaks
    assert (brk.account_id, brk.sequence) == (victim["account_id"], victim["sequence"] if field != "sequence"
                                             else tampered[i]["sequence"])  # fmt: skip
    if field == "hash":
        assert (brk.what, brk.expected, brk.found) == ("hash", victim["hash"], tampered[i]["hash"] or "none")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_an_edit_that_recomputes_its_own_hash_is_caught_at_the_next_link(data: st.DataObject) -> None:
    account = data.draw(st.sampled_from([A, B]))
    mine = [j for j, ev in enumerate(EVENTS) if ev["account_id"] == account]
    i = data.draw(st.sampled_from(mine[:-1]))
    tampered = copy.deepcopy(EVENTS)
    tampered[i]["amount"] = (tampered[i]["amount"] or 0) + 1
    tampered[i]["hash"] = journal.event_hash(tampered[i])
    (brk,) = journal.check_chains(tampered)
    assert (brk.account_id, brk.sequence, brk.what) == (account, EVENTS[i]["sequence"] + 1, "prev_hash")
    assert (brk.expected, brk.found) == (tampered[i]["hash"], EVENTS[i]["hash"])


def test_a_removed_or_reordered_event_is_a_sequence_break() -> None:
    mine = [j for j, ev in enumerate(EVENTS) if ev["account_id"] == A]
    gone = [ev for j, ev in enumerate(EVENTS) if j != mine[3]]
    (brk,) = journal.check_chains(gone)
    assert (brk.account_id, brk.what, brk.expected, brk.found) == (A, "sequence", "4", "5")
    swapped = list(EVENTS)
    swapped[mine[1]], swapped[mine[2]] = swapped[mine[2]], swapped[mine[1]]
    (brk,) = journal.check_chains(swapped)
    assert (brk.account_id, brk.sequence, brk.what) == (A, 3, "sequence")
    head_cut = [ev for j, ev in enumerate(EVENTS) if j != mine[0]]
    (brk,) = journal.check_chains(head_cut)
    assert (brk.account_id, brk.sequence, brk.what) == (A, 2, "sequence")


def test_events_from_before_the_chain_may_only_come_first() -> None:
    legacy = [{**ev, "prev_hash": "", "hash": ""} for ev in EVENTS if ev["account_id"] == A][:3]
    chained = [ev for ev in EVENTS if ev["account_id"] == A][3:]
    rebased = []
    prev = journal.GENESIS
    for ev in chained:  # what an upgraded ledger writes: the chain starts at GENESIS
        ev = {**ev, "prev_hash": prev}
        ev["hash"] = prev = journal.event_hash(ev)
        rebased.append(ev)
    checker = journal.ChainChecker()
    for ev in legacy + rebased:
        assert checker.feed(ev) is None
    assert (checker.unchained, checker.checked) == (3, len(rebased))
    stripped = [*rebased[:2], {**rebased[2], "prev_hash": "", "hash": ""}, *rebased[3:]]
    (brk,) = journal.check_chains(legacy + stripped)
    assert (brk.sequence, brk.what) == (rebased[2]["sequence"], "unchained")


def test_a_window_links_to_the_hash_before_it() -> None:
    mine = [ev for ev in EVENTS if ev["account_id"] == A]
    window = mine[2:6]
    assert journal.check_window(window, mine[1]["hash"]) is None
    assert journal.check_window(mine[:3], journal.GENESIS) is None
    brk = journal.check_window(window, mine[0]["hash"])
    assert brk is not None and (brk.sequence, brk.what) == (window[0]["sequence"], "prev_hash")
    brk = journal.check_window([window[0], window[2]], mine[1]["hash"])
    assert brk is not None and brk.what == "sequence"
    other = next(ev for ev in EVENTS if ev["account_id"] == B)
    brk = journal.check_window([*window, other], mine[1]["hash"])
    assert brk is not None and brk.what == "account_id"
    assert journal.check_window([], mine[1]["hash"]) is None


@pytest.mark.parametrize("sequence", [1, 7])
def test_a_break_names_account_sequence_expected_and_found(sequence: int) -> None:
    brk = journal.Break(A, sequence, "hash", "ab" * 32, "cd" * 32, "ledger.events[0]@5")
    assert str(brk) == (f"account {A} sequence {sequence} (ledger.events[0]@5): hash expected {'ab' * 32}, "
                        f"found {'cd' * 32}")  # fmt: skip
