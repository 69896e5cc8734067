"""Builders for ledger commands: the shape every producer (gateway, ops tools,
benchmarks, tests) sends, and which of the two command topics each goes to.

Commands that create or destroy money, or change who may move it, are privileged:
the ledger accepts them only from `payments.privileged`, which the broker's ACLs let
only paystream's privileged principals write (gateway for its admin role, fraud,
compensation, operators). Kafka does not tell a consumer who produced a record, so
the topic is what carries the authority (docs/SECURITY.md).

The builders return ``dict[str, Any]``, not `paystream.records.Command`: the
gateway and the operator tools hand them to `Codec.encode` and other functions
that take ``dict[str, Any]``, which a TypedDict is not assignable to. Each body is
built as its TypedDict, so mypy checks its fields against the schema."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from paystream import ids, topics
from paystream.records import (
    AUTHORIZE,
    CAPTURE,
    DEPOSIT,
    FREEZE,
    OPEN_ACCOUNT,
    REVERSE_TRANSFER,
    TRANSFER,
    UNFREEZE,
    USER,
    VOID,
    WITHDRAW,
    AccountKind,
    CommandType,
    HoldAction,
    Movement,
    OpenAccount,
    Reversal,
    StatusChange,
)
from paystream.settings import get_settings
from paystream.topics import LedgerTopics

# The first generation's names (ops/topics.toml); a process writes to its settings'
# generation (`Settings.ledger_topics`, `topic_for`), which these are unless grown.
COMMANDS_TOPIC = topics.COMMANDS
PRIVILEGED_TOPIC = topics.PRIVILEGED
COMMAND_TOPICS = (COMMANDS_TOPIC, PRIVILEGED_TOPIC)
PRIVILEGED_TYPES: frozenset[CommandType] = frozenset(
    {OPEN_ACCOUNT, DEPOSIT, WITHDRAW, FREEZE, UNFREEZE, REVERSE_TRANSFER}
)
PAYMENT_NAMESPACE = uuid.UUID("0b8f7c1e-52a4-4b1f-9a0f-6a3a4c7de201")


def is_privileged(command: Mapping[str, Any]) -> bool:
    """Everything but a transfer: deposits and withdrawals move money in and out of
    the books, freezes and reversals override an owner, and opening an account says
    who owns it (and a settlement account may overdraw). So `payments.commands`,
    the topic direct producers may write, carries transfers only: a transfer moves
    the sender's own money, which the sender's account already authorises.

    Order holds within a topic, not across the two: a command that needs one on the
    other topic applied first (a transfer out of a fresh deposit) is sent after that
    one's outcome, as the gateway does (docs/SECURITY.md)."""
    return command.get("type") in PRIVILEGED_TYPES


def topic_for(command: Mapping[str, Any], ledger: LedgerTopics | None = None) -> str:
    """The command topic `command` must be produced to for the ledger to accept it, in
    the generation `ledger` (default: the one this process's settings name)."""
    topics_ = ledger or get_settings().ledger_topics
    return topics_.privileged if is_privileged(command) else topics_.commands


def payment_id_for(client: str, idempotency_key: str) -> str:
    """Deterministic payment id: the same client and key always name the same payment,
    so the ledger applies it once even if the gateway forgets the key."""
    return ids.uuid5(PAYMENT_NAMESPACE, f"{client}\x1f{idempotency_key}")


def _base(ctype: str, account_id: str, command_id: str | None, requested_by: str) -> dict[str, Any]:
    return {
        "command_id": command_id or str(uuid.uuid4()),
        "type": ctype,
        "account_id": account_id,
        "issued_at": int(time.time() * 1000),
        "requested_by": requested_by,
        "open_account": None,
        "movement": None,
        "status_change": None,
        "reversal": None,
        "hold": None,
    }


def open_account(account_id: str, *, external_number: str, owner_id: str, currency: str,
                 kind: AccountKind = USER, command_id: str | None = None,
                 requested_by: str = "system") -> dict[str, Any]:
    c = _base(OPEN_ACCOUNT, account_id, command_id, requested_by)
    body: OpenAccount = {"external_number": external_number, "owner_id": owner_id, "currency": currency,
                         "kind": kind}
    c["open_account"] = body
    return c


def movement(ctype: str, account_id: str, amount: int, currency: str, *,
             counterparty_id: str | None = None, command_id: str | None = None,
             requested_by: str = "system", metadata: dict[str, str] | None = None,
             hold_timeout_ms: int | None = None) -> dict[str, Any]:
    c = _base(ctype, account_id, command_id, requested_by)
    body: Movement = {"amount": amount, "currency": currency, "counterparty_id": counterparty_id,
                      "metadata": metadata or {}, "hold_timeout_ms": hold_timeout_ms}
    c["movement"] = body
    return c


def transfer(src: str, dst: str, amount: int, currency: str, **kw: Any) -> dict[str, Any]:
    return movement(TRANSFER, src, amount, currency, counterparty_id=dst, **kw)


def authorize(src: str, dst: str, amount: int, currency: str, **kw: Any) -> dict[str, Any]:
    """A hold on `src` for `dst`: the funds stop being available but do not move until
    a `capture`; a `void` or the hold's expiry releases them (docs/LEDGER.md, "Holds")."""
    return movement(AUTHORIZE, src, amount, currency, counterparty_id=dst, **kw)


def hold_action(ctype: str, account_id: str, payment_id: str, *, amount: int | None = None,
                command_id: str | None = None, requested_by: str = "system") -> dict[str, Any]:
    """CAPTURE or VOID of the hold `payment_id` (the AUTHORIZE's id), keyed by the
    account holding it; `amount` (CAPTURE only) at most the held amount, None for all."""
    if ctype not in (CAPTURE, VOID):
        raise ValueError(f"{ctype} is not a hold action")
    c = _base(ctype, account_id, command_id, requested_by)
    body: HoldAction = {"payment_id": payment_id, "amount": amount}
    c["hold"] = body
    return c


def capture(account_id: str, payment_id: str, *, amount: int | None = None, **kw: Any) -> dict[str, Any]:
    """Move what the hold `payment_id` reserved on `account_id` (all of it, or `amount`)
    to the hold's counterparty; it ends as a transfer does."""
    return hold_action(CAPTURE, account_id, payment_id, amount=amount, **kw)


def void(account_id: str, payment_id: str, **kw: Any) -> dict[str, Any]:
    """Release the hold `payment_id` on `account_id`: nothing moves."""
    return hold_action(VOID, account_id, payment_id, **kw)


def deposit(account_id: str, amount: int, currency: str, **kw: Any) -> dict[str, Any]:
    return movement(DEPOSIT, account_id, amount, currency, **kw)


def withdraw(account_id: str, amount: int, currency: str, **kw: Any) -> dict[str, Any]:
    return movement(WITHDRAW, account_id, amount, currency, **kw)


def status_change(ctype: str, account_id: str, *, reason: str, actor: str,
                  command_id: str | None = None) -> dict[str, Any]:
    c = _base(ctype, account_id, command_id, actor)
    body: StatusChange = {"reason": reason, "actor": actor}
    c["status_change"] = body
    return c


def reversal_command_id(payment_id: str) -> str:
    """The command id compensation uses, so a reversal is requested at most once."""
    return ids.uuid5(ids.LEDGER_NAMESPACE, f"reverse:{payment_id}")


def reverse_transfer(receiver_id: str, payment_id: str, *, reason: str, actor: str,
                     freeze_receiver: bool = False, command_id: str | None = None,
                     sender_id: str | None = None) -> dict[str, Any]:
    """`sender_id` lets a reversal that overtakes its credit wait for it (docs/LEDGER.md)."""
    c = _base(REVERSE_TRANSFER, receiver_id, command_id or reversal_command_id(payment_id), actor)
    body: Reversal = {"payment_id": payment_id, "reason": reason, "actor": actor,
                      "freeze_receiver": freeze_receiver, "sender_id": sender_id}
    c["reversal"] = body
    return c


# ------------------------------------------------------------------------- validation
# The ledger's structural check of a command, here so that a direct producer refuses
# before sending exactly what the ledger would dead-letter `INVALID` (one function: the
# ledger's domain re-exports it). It runs per command in the ledger: keep it cheap.

_BODY_FOR = {
    OPEN_ACCOUNT: "open_account",
    DEPOSIT: "movement",
    WITHDRAW: "movement",
    TRANSFER: "movement",
    FREEZE: "status_change",
    UNFREEZE: "status_change",
    REVERSE_TRANSFER: "reversal",
    AUTHORIZE: "movement",
    CAPTURE: "hold",
    VOID: "hold",
}


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BODIES = tuple(sorted(set(_BODY_FOR.values())))


def is_uuid(text: Any) -> bool:
    """Only the canonical spelling (lowercase, hyphenated) is accepted: state is keyed
    by the id's bytes, so "ABC…" and "abc…" would otherwise be two accounts. A regex,
    not `uuid.UUID` and back: it ran three times per command, 3.5% of the ledger's CPU."""
    return isinstance(text, str) and _CANONICAL_UUID.fullmatch(text) is not None


def command_problem(cmd: dict[str, Any], key: str) -> str | None:
    """Why a schema-valid command is still malformed (it then goes to the dead-letter
    topic), or None. Business refusals such as a negative amount are *not*
    problems here: they become rejection events the client can see."""
    ctype = cmd.get("type")
    body = _BODY_FOR.get(ctype or "")
    if body is None:
        return f"unknown command type {ctype!r}"
    if not cmd.get(body):
        return f"{ctype} needs the `{body}` field"
    for other in _BODIES:
        if other != body and cmd.get(other):
            return f"{ctype} must not carry `{other}`"
    for name in ("command_id", "account_id"):
        if not is_uuid(cmd.get(name)):
            return f"{name} {cmd.get(name)!r} is not a canonical UUID"
    if cmd["account_id"] != key:
        return f"key {key!r} differs from account_id {cmd['account_id']!r}"
    if ctype in (TRANSFER, AUTHORIZE) and not is_uuid(cmd["movement"].get("counterparty_id")):
        return f"{ctype} needs a UUID counterparty_id"
    if ctype in (CAPTURE, VOID) and not is_uuid(cmd["hold"]["payment_id"]):
        return f"{ctype} needs a UUID payment_id"
    if ctype == REVERSE_TRANSFER and not is_uuid(cmd["reversal"]["payment_id"]):
        return "REVERSE_TRANSFER needs a UUID payment_id"
    return None
