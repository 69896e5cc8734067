"""`paystream audit export | check | public-key`: signed, self-verifying extracts of
one account's journal, for a third party (an auditor, a regulator, the customer).

An export is one JSON document: the account's events in a window with their hashes,
the link into the window (the hash of the event just before it, which the first
event's ``prev_hash`` must equal), and an Ed25519 signature over the whole. Anyone
holding the published public key checks it with hashlib, json and `cryptography`
alone (docs/LEDGER.md, "Tamper-evident journal", has the procedure and the snippet):

* the signature, over the document without its ``signature`` field, written as
  canonical JSON (keys sorted, no whitespace, UTF-8);
* every event's hash (`paystream.journal.event_hash`);
* the links: the first event's ``prev_hash`` is ``link.hash``, each next event's is
  the hash of the one before, sequences follow each other, ``head`` is the last.

The events come from the read model, and the export refuses to sign a window
whose chain does not check there (an edited row); `paystream verify` is what holds
the read model to the journal on Kafka (chain heads included).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import typer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from psycopg.rows import dict_row
from rich.console import Console

from ops.verify import event_rows_sql
from paystream import journal
from paystream.commands import is_uuid
from paystream.records import Decoded
from paystream.settings import Settings, get_settings
from sinks.read_model import event_from_row

FORMAT = "paystream.audit-export/1"
# Said in every export, so that the document carries its own verification recipe.
HASH_RULE = (
    "hash = sha256 hex of the UTF-8 JSON of the event with hash set to \"\", null fields left out "
    "at every depth, keys sorted, separators ',' ':', non-ASCII as is; prev_hash = hash of the previous "
    f"event of the account, {journal.GENESIS} before the first"
)
SIGNATURE_RULE = "Ed25519 over the UTF-8 JSON of the document without 'signature', keys sorted, separators ',' ':'"

app = typer.Typer(no_args_is_help=True)


class ExportError(RuntimeError):
    """The read model cannot give a window that checks: nothing is signed."""


def canonical_json(doc: Any) -> bytes:
    """The bytes a signature covers (also what `journal.canonical_bytes` writes)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -------------------------------------------------------------------------- keys


def private_key(settings: Settings) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(settings.audit_key_pem().encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise typer.BadParameter("the audit signing key is not an Ed25519 key")
    return key


def public_key_text(key: Ed25519PublicKey) -> str:
    """How exports and `audit public-key` spell a public key: base64 of its 32 raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def trusted_key(settings: Settings, given: str | None) -> str:
    """The public key an export must be signed with: `given` (base64 raw, or a PEM
    file), else this installation's own. Never the export's own claim alone: anyone
    can sign a forged export with a key of their own and put that key in it."""
    if given:
        path = Path(given)
        if path.is_file():
            pem = serialization.load_pem_public_key(path.read_bytes())
            if not isinstance(pem, Ed25519PublicKey):
                raise typer.BadParameter(f"{given} is not an Ed25519 public key")
            return public_key_text(pem)
        return given
    return public_key_text(private_key(settings).public_key())


# ------------------------------------------------------------------------ export

_WINDOW = """
SELECT min(sequence) FILTER (WHERE occurred_at >= %(from)s),
       max(sequence) FILTER (WHERE occurred_at < %(to)s),
       max(sequence) FILTER (WHERE occurred_at < %(from)s)
FROM ledger_events WHERE account_id = %(account)s
"""
_ROWS = event_rows_sql("e.account_id = %(account)s AND e.sequence BETWEEN %(first)s AND %(last)s")


def parse_time(text: str) -> datetime:
    """RFC 3339; a time without a zone is UTC."""
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def window_events(conn: psycopg.Connection[Any], account: str, start: datetime, end: datetime) -> tuple[
        list[Decoded], dict[str, Any]]:  # fmt: skip
    """The account's events from the first at or after `start` to the last before `end`,
    every sequence between (times come from the ledger's clock, which a failover may
    move back a little: the window is a run of sequences, never a sequence with holes),
    and the link into it."""
    first, last, before = conn.execute(_WINDOW, {"account": account, "from": start, "to": end}).fetchone() or (
        None, None, None)  # fmt: skip
    if first is None or last is None or last < first:
        seq = before or 0
        events: list[Decoded] = []
    else:
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(_ROWS, {"account": account, "first": first, "last": last}).fetchall()
        events = [event_from_row(r, r["postings"]) for r in rows]
        seq = first - 1
    if seq == 0:
        link = {"sequence": 0, "hash": journal.GENESIS}
    elif events:
        link = {"sequence": seq, "hash": events[0]["prev_hash"]}
    else:
        row = conn.execute("SELECT hash FROM ledger_events WHERE account_id = %s AND sequence = %s",
                           (account, seq)).fetchone()  # fmt: skip
        link = {"sequence": seq, "hash": (row[0] if row else None) or ""}
    return events, link


def build_export(events: list[Decoded], link: dict[str, Any], account: str, start: datetime, end: datetime,
                 key: Ed25519PrivateKey, now: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    """The signed document; refuses (ExportError) a window whose chain does not check."""
    brk = journal.check_window(events, link["hash"])
    if brk is not None:
        raise ExportError(f"the read model's chain is broken: {brk}; run `paystream verify`")
    head = {"sequence": events[-1]["sequence"], "hash": events[-1]["hash"]} if events else dict(link)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "account_id": account,
        "from": start.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "to": end.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "exported_at": (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "hash_rule": HASH_RULE,
        "signature_rule": SIGNATURE_RULE,
        "link": link,
        "head": head,
        "events": events,
        "public_key": public_key_text(key.public_key()),
    }
    doc["signature"] = base64.b64encode(key.sign(canonical_json(doc))).decode()
    return doc


def export(settings: Settings, account: str, start: datetime, end: datetime) -> dict[str, Any]:
    """`account` is the account's id or its number (`PS…`, what the API shows)."""
    key = private_key(settings)
    with psycopg.connect(settings.postgres_dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            account = _account_id(conn, account)
            events, link = window_events(conn, account, start, end)
    return build_export(events, link, account, start, end, key)


def _account_id(conn: psycopg.Connection[Any], account: str) -> str:
    if is_uuid(account):
        return account
    row = conn.execute("SELECT account_id::text FROM accounts WHERE external_number = %s", (account,)).fetchone()
    if row is None:
        raise ExportError(f"no account has the id or number {account!r} in the read model"
                          " (if it was opened a moment ago, `paystream lag` shows whether the sink is behind)")
    return str(row[0])


# ------------------------------------------------------------------------- check


@dataclass
class Checked:
    ok: bool
    problem: str = ""
    events: int = 0
    head: str = ""


def check_export(doc: dict[str, Any], public_key: str) -> Checked:
    """What a third party does (docs/LEDGER.md): the signature with the key they trust,
    then every hash and link. Says what is wrong first, or ok."""
    if doc.get("format") != FORMAT:
        return Checked(False, f"not a {FORMAT} document")
    if doc.get("public_key") != public_key:
        return Checked(False, f"signed by key {doc.get('public_key')}, not the trusted {public_key}")
    body = {k: v for k, v in doc.items() if k != "signature"}
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key)).verify(
            base64.b64decode(doc.get("signature", "")), canonical_json(body)
        )
    except (InvalidSignature, ValueError) as exc:
        return Checked(False, f"the signature does not match the document ({type(exc).__name__})")
    try:
        return _check_chain(doc)
    except (KeyError, TypeError, ValueError) as exc:
        return Checked(False, f"malformed export: {type(exc).__name__} {exc}")


def _check_chain(doc: dict[str, Any]) -> Checked:
    events, link = doc["events"], doc["link"]
    if any(ev["account_id"] != doc["account_id"] for ev in events):
        return Checked(False, "an event of another account")
    if link["sequence"] == 0 and link["hash"] != journal.GENESIS:
        return Checked(False, f"the link before sequence 1 must be the genesis hash, not {link['hash']}")
    if events and events[0]["sequence"] != link["sequence"] + 1:
        return Checked(False, f"the first event is sequence {events[0]['sequence']}, the link {link}")
    brk = journal.check_window(events, link["hash"])
    if brk is not None:
        return Checked(False, f"broken link: {brk}")
    last = {"sequence": events[-1]["sequence"], "hash": events[-1]["hash"]} if events else link
    if doc["head"] != last:
        return Checked(False, f"head {doc['head']} is not the last event {last}")
    return Checked(True, events=len(events), head=f"sequence {last['sequence']} hash {last['hash']}")


# --------------------------------------------------------------------------- cli


@app.command("export")
def export_cmd(
    account: str = typer.Option(..., "--account", help="account number (PS…) or id"),
    start: str = typer.Option("1970-01-01T00:00:00Z", "--from", help="RFC 3339, inclusive"),
    end: str = typer.Option(None, "--to", help="RFC 3339, exclusive (default: now)"),
    out: Path = typer.Option(None, "--out", "-o", help="file to write (default: stdout)"),
) -> None:
    """Write a signed, self-verifying export of ACCOUNT's journal in [FROM, TO)."""
    try:
        doc = export(get_settings(), account, parse_time(start), parse_time(end) if end else datetime.now(UTC))
    except ExportError as exc:
        Console(stderr=True).print(f"[red]{exc}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        Console(stderr=True).print(f"{len(doc['events'])} events, head {doc['head']['sequence']} -> {out}")


@app.command("check")
def check_cmd(
    file: Path = typer.Argument(..., exists=True, dir_okay=False),
    public_key: str = typer.Option(
        None, "--public-key",
        help="trusted key: base64 (as `audit public-key` prints) or a PEM file; default: this installation's",
    ),
) -> None:
    """Verify an export: its signature with the trusted key, every hash, every link; exit 1 if not."""
    doc = json.loads(file.read_text())
    result = check_export(doc, trusted_key(get_settings(), public_key))
    console = Console()
    if not result.ok:
        console.print(f"[red]export does not check: {result.problem}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"ok: {result.events} events of account {doc['account_id']} from {doc['from']} to "
                  f"{doc['to']}, link sequence {doc['link']['sequence']}, head {result.head}",
                  highlight=False, soft_wrap=True)  # fmt: skip


@app.command("public-key")
def public_key_cmd() -> None:
    """Print the public key exports are checked with (base64 of its 32 raw bytes): publish it."""
    typer.echo(public_key_text(private_key(get_settings()).public_key()))
