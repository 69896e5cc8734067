"""Audit exports (ops/audit.py) and the procedure docs/LEDGER.md gives third parties:
an export checks, with paystream and with the documented snippet alone; any edit,
truncation or re-signing does not; the documented example hash is the ledger's."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ops import audit
from paystream import journal
from paystream.settings import ConfigError, Settings
from tests.unit.ledger_sim import scenario

A, B, C, NOBODY = (str(uuid.uuid4()) for _ in range(4))
EVENTS = scenario(A, B, C, NOBODY)
MINE = [e for e in EVENTS if e["account_id"] == A]
KEY = Ed25519PrivateKey.generate()
TRUSTED = audit.public_key_text(KEY.public_key())
DOCS = Path(__file__).resolve().parents[2] / "docs" / "LEDGER.md"
START, END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)


def export_of(events: list[dict[str, Any]], link: dict[str, Any], key: Ed25519PrivateKey = KEY) -> dict[str, Any]:
    return audit.build_export(copy.deepcopy(events), link, A, START, END, key)


def window(first: int, last: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """MINE[first:last] and its link."""
    link = {"sequence": 0, "hash": journal.GENESIS} if first == 0 else {
        "sequence": MINE[first - 1]["sequence"], "hash": MINE[first - 1]["hash"]}  # fmt: skip
    return MINE[first:last], link


def resign(doc: dict[str, Any], key: Ed25519PrivateKey = KEY) -> dict[str, Any]:
    doc = {k: v for k, v in doc.items() if k != "signature"}
    doc["public_key"] = audit.public_key_text(key.public_key())
    doc["signature"] = audit.base64.b64encode(key.sign(audit.canonical_json(doc))).decode()
    return doc


def snippet() -> str:
    text = DOCS.read_text()
    (code,) = re.findall(r"<!-- audit-check-snippet -->\n```python\n(.*?)```", text, re.S)
    return re.sub(r'PUBLISHED_KEY = "[^"]*"', f'PUBLISHED_KEY = "{TRUSTED}"', code)


def third_party(doc: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The documented snippet, verbatim but for the key, in a fresh interpreter."""
    (tmp_path / "check.py").write_text(snippet())
    (tmp_path / "export.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")
    return subprocess.run([sys.executable, "check.py", "export.json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(("first", "last"), [(0, len(MINE)), (2, 6), (3, 3), (0, 1)])
def test_an_export_checks_with_paystream_and_with_the_documented_snippet(first: int, last: int, tmp_path: Path) -> None:
    events, link = window(first, last)
    doc = export_of(events, link)
    result = audit.check_export(doc, TRUSTED)
    assert result.ok, result.problem
    assert result.events == last - first
    assert doc["head"] == ({"sequence": events[-1]["sequence"], "hash": events[-1]["hash"]} if events else link)
    done = third_party(doc, tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("ok:"), done.stdout + done.stderr


def _edited_amount(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    (ev,) = [e for e in doc["events"] if e["type"] == "TRANSFER_DEBITED" and not e["replay"]][:1]
    ev["amount"] = 1
    return doc


def tamperings() -> dict[str, tuple[dict[str, Any], str, str]]:
    """name -> (tampered export, paystream's complaint, the snippet's complaint)."""
    events, link = window(0, len(MINE))
    doc = export_of(events, link)
    edited = _edited_amount(doc)
    rehashed = copy.deepcopy(edited)
    prev = link["hash"]
    for ev in rehashed["events"]:  # a forger re-hashes the whole chain and the head...
        ev["prev_hash"] = prev
        ev["hash"] = prev = journal.event_hash(ev)
    rehashed["head"]["hash"] = prev
    mallory = Ed25519PrivateKey.generate()
    middle, middle_link = window(2, 6)
    dropped = export_of(middle, middle_link)
    dropped["events"] = dropped["events"][1:]
    return {
        "edited amount": (edited, "signature does not match", "bad signature"),
        "edited and re-hashed": (rehashed, "signature does not match", "bad signature"),
        "re-signed by another key": (resign(rehashed, mallory), "signed by key", "signed by another key"),
        "first event dropped": (dropped, "signature does not match", "bad signature"),
        # a faulty or malicious exporter holding the key: the chain inside is still checked
        "signed, broken inside": (resign(edited), "broken link", "hash expected"),
        "signed, event dropped": (resign(dropped), "the first event is sequence", "not the next event"),
        "signed, head moved": (resign({**doc, "head": dict(link)}), "head", "head is not the last event"),
        "signed, false genesis": (resign(export_of(*window(0, 2)) | {"link": {"sequence": 0, "hash": "1" * 64}}),
                                  "genesis", "link to the genesis"),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(tamperings()))
def test_a_tampered_export_does_not_check(name: str, tmp_path: Path) -> None:
    doc, ours, theirs = tamperings()[name]
    result = audit.check_export(doc, TRUSTED)
    assert not result.ok and ours in result.problem, result.problem
    done = third_party(doc, tmp_path)
    assert done.returncode != 0 and theirs in done.stderr, done.stdout + done.stderr


def test_the_export_refuses_to_sign_a_broken_window() -> None:
    events, link = window(2, 6)
    events = copy.deepcopy(events)
    events[1]["note"] = "edited in postgres"
    with pytest.raises(audit.ExportError, match=f"account {A} sequence {events[1]['sequence']}"):
        export_of(events, link)
    with pytest.raises(audit.ExportError, match="prev_hash"):
        export_of(MINE[2:6], {"sequence": 2, "hash": "f" * 64})


def test_a_malformed_export_is_refused_not_raised() -> None:
    doc = resign({k: v for k, v in export_of(*window(0, 2)).items() if k != "head"})
    result = audit.check_export(doc, TRUSTED)
    assert not result.ok and "malformed" in result.problem


def test_the_trusted_key_may_be_a_pem_file(tmp_path: Path) -> None:
    pem = tmp_path / "audit.pub.pem"
    pem.write_bytes(KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    assert audit.trusted_key(Settings(home=tmp_path), str(pem)) == TRUSTED
    assert audit.trusted_key(Settings(home=tmp_path), TRUSTED) == TRUSTED


# --------------------------------------------------------------------------- the key


def test_production_refuses_to_sign_without_a_given_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYSTREAM_AUDIT_SIGNING_KEY", raising=False)
    monkeypatch.delenv("PAYSTREAM_AUDIT_SIGNING_KEY_FILE", raising=False)
    with pytest.raises(ConfigError, match="PAYSTREAM_AUDIT_SIGNING_KEY"):
        audit.private_key(Settings(home=tmp_path, environment="production"))
    assert not (tmp_path / "secrets").exists()


def test_the_key_comes_from_a_file_or_is_generated_once_in_development(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAYSTREAM_AUDIT_SIGNING_KEY", raising=False)
    pem = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    (tmp_path / "given.pem").write_bytes(pem)
    monkeypatch.setenv("PAYSTREAM_AUDIT_SIGNING_KEY_FILE", str(tmp_path / "given.pem"))
    given = audit.private_key(Settings(home=tmp_path, environment="production"))
    assert audit.public_key_text(given.public_key()) == TRUSTED
    monkeypatch.delenv("PAYSTREAM_AUDIT_SIGNING_KEY_FILE")
    first = audit.private_key(Settings(home=tmp_path))
    again = audit.private_key(Settings(home=tmp_path))
    assert audit.public_key_text(first.public_key()) == audit.public_key_text(again.public_key()) != TRUSTED
    path = Settings(home=tmp_path).audit_key_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ---------------------------------------------------------------- the documented example


def test_the_documented_example_is_what_the_ledger_writes() -> None:
    from paystream import commands as cmds
    from paystream.stream.store import DictStore
    from pipelines.ledger import domain

    text = DOCS.read_text()
    (canonical,) = re.findall(r"<!-- journal-example-canonical -->\n```json\n(.*?)\n```", text, re.S)
    (digest,) = re.findall(r"<!-- journal-example-hash -->\n```\n.*?\n([0-9a-f]{64})  -\n```", text, re.S)
    account = "6f1c1d52-8d2e-4a33-9b4e-0b1f6b1c2d3e"
    store = DictStore()
    domain.apply_command(store, cmds.open_account(account, external_number="NL-0001", owner_id="user-42",
                                                  currency="EUR", command_id="0b6e5a43-1c2d-4e5f-8a9b-0c1d2e3f4a5b"),
                         1767225600000)  # fmt: skip
    (out,) = domain.apply_command(store, cmds.deposit(account, 2500, "EUR", metadata={"description": "salary"},
                                                      command_id="9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"),
                                  1767225660000)  # fmt: skip
    assert journal.canonical_bytes(out.value).decode() == canonical
    assert hashlib.sha256(canonical.encode()).hexdigest() == digest == out.value["hash"]
