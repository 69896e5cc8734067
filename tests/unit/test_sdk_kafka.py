"""The Kafka-direct SDK without Kafka: a producer refuses what the ledger would, the
consumer's handling of records it does not know, the outcome listener's matching and
the account directory (an in-memory registry and httpx's MockTransport)."""

from __future__ import annotations

import io
import json
import struct
import threading
import uuid
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import fastavro
import httpx
import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st

from paystream import commands as C
from paystream import kafka
from paystream.codec import Codec
from paystream.consumer import EventConsumer, OutcomeListener, ledger_event_name
from paystream.errors import (
    AccountNotFound,
    DecodeError,
    InvalidCommand,
    NotDelivered,
    PaystreamError,
    PrivilegedCommand,
    UnknownRecordType,
)
from paystream.producer import AccountDirectory, Producer, check_command
from paystream.settings import Settings
from pipelines.ledger import domain

A, B = str(uuid.uuid4()), str(uuid.uuid4())


class _Registry:
    """An in-memory schema registry: each subject's schema gets an id the first time."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.texts: dict[int, str] = {}

    def lookup_schema(self, subject: str, schema: Any) -> Any:
        text = schema.schema_str
        if text not in self.ids:
            self.ids[text] = len(self.ids) + 1
            self.texts[self.ids[text]] = text
        return SimpleNamespace(schema_id=self.ids[text])

    def get_schema(self, schema_id: int) -> Any:
        return SimpleNamespace(schema_str=self.texts[schema_id])


@pytest.fixture
def codec() -> Codec:
    codec = Codec("http://registry.invalid:1")
    codec.registry = _Registry()
    return codec


def test_the_producer_and_the_ledger_share_one_check() -> None:
    assert domain.command_problem is C.command_problem and domain.is_uuid is C.is_uuid


@pytest.mark.parametrize("cmd", [
    C.transfer(A, B, 1250, "USD"),
    C.authorize(A, B, 500, "EUR", hold_timeout_ms=60_000),
    C.capture(A, str(uuid.uuid4()), amount=100),
    C.capture(A, str(uuid.uuid4())),
    C.void(A, str(uuid.uuid4())),
])  # fmt: skip
def test_transfers_and_holds_pass_and_go_to_the_public_topic(codec: Codec, cmd: dict[str, Any]) -> None:
    checked = check_command(codec, cmd)
    assert (checked.topic, checked.account_id, checked.command_id) == ("payments.commands", A, cmd["command_id"])
    assert codec.decode(checked.topic, checked.value) == cmd


def _with(cmd: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {**cmd, **kw}


def _bad_cases() -> list[tuple[dict[str, Any], str]]:
    t = C.transfer(A, B, 100, "USD")
    mv = t["movement"]
    return [
        (_with(t, account_id=A.upper()), "canonical UUID"),
        (_with(t, account_id="{" + A + "}"), "canonical UUID"),
        (_with(t, command_id="payment-1"), "canonical UUID"),
        (_with(t, movement=None), "needs the `movement` field"),
        (_with(t, hold={"payment_id": B, "amount": None}), "must not carry `hold`"),
        (_with(t, movement={**mv, "counterparty_id": None}), "UUID counterparty_id"),
        (_with(t, movement={**mv, "counterparty_id": "PS0000000001"}), "UUID counterparty_id"),
        (C.capture(A, "not-a-payment"), "UUID payment_id"),
        (_with(t, type="REFUND"), "not a valid Command record"),  # no such enum symbol
        (_with(t, movement={**mv, "amount": 1.5}), "not a valid Command record"),  # money is never a float
        ({k: v for k, v in t.items() if k != "issued_at"}, "not a valid Command record"),
    ]


@pytest.mark.parametrize(("cmd", "why"), _bad_cases())
def test_what_the_ledger_would_dead_letter_is_refused_with_its_reason(codec: Codec, cmd: dict[str, Any],
                                                                      why: str) -> None:
    with pytest.raises(InvalidCommand, match=why.replace("`", ".")) as err:
        check_command(codec, cmd)
    assert isinstance(err.value, PaystreamError) and err.value.code == "invalid_command"


@given(st.sampled_from([c for c, _ in _bad_cases()]), st.booleans())
def test_no_invalid_command_passes_even_for_a_privileged_principal(cmd: dict[str, Any], privileged: bool) -> None:
    codec = Codec("http://registry.invalid:1")
    codec.registry = _Registry()
    with pytest.raises(InvalidCommand):
        check_command(codec, cmd, privileged=privileged)


@pytest.mark.parametrize("cmd", [
    C.deposit(A, 100, "USD"),
    C.withdraw(A, 100, "USD"),
    C.open_account(A, external_number="PS0000000001", owner_id="u", currency="USD"),
    C.status_change("FREEZE", A, reason="r", actor="a"),
    C.reverse_transfer(A, B, reason="r", actor="a"),
])  # fmt: skip
def test_privileged_commands_need_a_privileged_producer(codec: Codec, cmd: dict[str, Any]) -> None:
    with pytest.raises(PrivilegedCommand, match=r"payments\.privileged") as err:
        check_command(codec, cmd)
    assert err.value.status == 403
    assert check_command(codec, cmd, privileged=True).topic == "payments.privileged"


# --------------------------------------------------------------------------- consumer


def _event(**kw: Any) -> dict[str, Any]:
    ev = {
        "event_id": str(uuid.uuid4()), "command_id": str(uuid.uuid4()), "payment_id": str(uuid.uuid4()),
        "account_id": A, "sequence": 1, "type": "TRANSFER_DEBITED", "command_type": "TRANSFER",
        "status": "PENDING", "terminal": False, "replay": False, "reason": None, "counterparty_id": B,
        "amount": 1, "currency": "USD", "balance_after": 0, "postings": [], "account": None,
        "requested_by": "t", "note": None, "metadata": {}, "occurred_at": 0, "held_after": None,
        "expires_at": None, "prev_hash": "", "hash": "",
    }  # fmt: skip
    ev.update(kw)
    return ev


def _foreign(codec: Codec) -> bytes:
    """A record of a type ledger.events does not carry today, as a future envelope
    (a batch of events, say) would look to this version."""
    schema = {"type": "record", "name": "EventBatch", "namespace": "io.paystream.ledger",
              "fields": [{"name": "count", "type": "long"}]}
    sid = codec.registry.lookup_schema("ledger.events-io.paystream.ledger.EventBatch",
                                       SimpleNamespace(schema_str=json.dumps(schema))).schema_id
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, sid))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), {"count": 2})
    return buf.getvalue()


def _message(value: bytes, partition: int = 3, offset: int = 41) -> Any:
    return SimpleNamespace(value=lambda: value, partition=lambda: partition, offset=lambda: offset)


def _consumer(codec: Codec, unknown: str) -> EventConsumer:
    c = EventConsumer.__new__(EventConsumer)  # no Kafka: only the record handling
    c.codec, c.unknown, c.skipped, c._pending = codec, unknown, 0, {}  # type: ignore[assignment]
    return c


def test_the_consumer_yields_typed_events_and_remembers_the_position(codec: Codec) -> None:
    c = _consumer(codec, "skip")
    ev = _event()
    assert list(c._record(_message(codec.encode("ledger.events", ev)))) == [ev]
    assert c._pending == {3: 42}


def test_a_record_of_an_unknown_type_is_skipped_and_counted_or_raised(codec: Codec) -> None:
    assert ledger_event_name().endswith("LedgerEvent")
    foreign = _foreign(codec)
    c = _consumer(codec, "skip")
    assert list(c._record(_message(foreign))) == [] and c.skipped == 1 and c._pending == {3: 42}
    assert list(c._record(_message(b"not avro", offset=42))) == [] and c.skipped == 2 and c._pending == {3: 43}
    strict = _consumer(codec, "raise")
    with pytest.raises(UnknownRecordType, match="is not a ledger event"):
        list(strict._record(_message(foreign)))
    with pytest.raises(DecodeError):
        list(strict._record(_message(b"not avro")))
    assert strict._pending == {}  # never committed past a record it raised on


def test_the_outcome_listener_resolves_a_waiter_with_its_terminal_event_only(codec: Codec) -> None:
    listener = OutcomeListener.__new__(OutcomeListener)
    listener.codec, listener._waiters, listener._lock = codec, {}, threading.Lock()
    listener._event_name = ledger_event_name()
    cid = str(uuid.uuid4())
    fut: Future[Any] = listener.expect(cid)
    other = listener.expect(str(uuid.uuid4()))
    listener._dispatch(codec.encode("ledger.events", _event(command_id=cid)))  # the debit: not terminal
    listener._dispatch(_foreign(codec))
    assert not fut.done()
    done = _event(command_id=cid, type="TRANSFER_COMPLETED", status="COMPLETED", terminal=True, account_id=B)
    listener._dispatch(codec.encode("ledger.events", done))
    assert fut.result(0) == done and not other.done()
    assert cid not in listener._waiters


# ------------------------------------------------------------------ account directory


def test_the_account_directory_asks_the_api_once_per_number() -> None:
    asked: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        assert request.headers["authorization"] == "Bearer t0ken"
        if request.url.path == "/v1/accounts/PS0000000001/ledger-id":
            return httpx.Response(200, json={"account_number": "PS0000000001", "account_id": A})
        if request.url.path == "/v1/accounts/PS0000000003/ledger-id":
            return httpx.Response(503, json={"code": "unavailable", "detail": "read model is behind"})
        return httpx.Response(404, json={"code": "account_not_found", "detail": "no such account"})

    http = httpx.Client(base_url="http://gw", headers={"Authorization": "Bearer t0ken"},
                        transport=httpx.MockTransport(api))
    accounts = AccountDirectory(http)
    assert accounts.account_id("PS0000000001") == A
    assert accounts.account_id("PS0000000001") == A
    assert asked == ["/v1/accounts/PS0000000001/ledger-id"]
    with pytest.raises(AccountNotFound):
        accounts.account_id("PS0000000002")
    with pytest.raises(PaystreamError, match="read model is behind") as err:
        accounts.account_id("PS0000000003")
    assert err.value.code == "unavailable"


# ------------------------------------------------------------------ journal readers


def test_a_journal_reader_reads_the_journal_in_its_own_groups_only() -> None:
    from ops import kafka_auth

    pay, payroll = kafka_auth.consumer_rights("consumer-pay"), kafka_auth.consumer_rights("consumer-pay-roll")
    assert {(g.resource, g.name, g.operations) for g in pay if g.resource == "topic"} == {
        ("topic", "ledger.events", ("READ", "DESCRIBE"))}
    (group,) = [g for g in pay if g.resource == "group"]
    (other,) = [g for g in payroll if g.resource == "group"]
    assert group.prefixed and not f"{other.name}journal".startswith(group.name)
    assert not any("WRITE" in g.operations for g in pay)


@pytest.mark.parametrize("name", ["../etc", "a.b", "", "A"])
def test_a_consumer_name_cannot_escape_its_file_or_its_groups(tmp_path: Any, name: str) -> None:
    from ops import kafka_auth
    from paystream.settings import Settings

    with pytest.raises(ValueError):
        kafka_auth.add_client(Settings(home=tmp_path), "consumer", name)


class _FailingProducer:
    """librdkafka's producer after a fatal error (a principal that may not produce): the
    error is raised once, by whichever poll or flush meets it first; the queued message
    gets its failed report."""

    def __init__(self) -> None:
        self.reports: list[Any] = []
        self.raised = False

    def produce(self, topic: str, *, on_delivery: Any, **_: Any) -> None:
        self.reports.append(on_delivery)

    def _serve(self) -> None:
        if not self.raised and self.reports:
            self.raised = True
            raise KafkaException(
                KafkaError(KafkaError.CLUSTER_AUTHORIZATION_FAILED, "Cluster authorization failed", fatal=True)
            )
        while self.reports:
            self.reports.pop()(KafkaError(KafkaError._FATAL, "Cluster authorization failed"), None)

    def poll(self, timeout: float) -> int:
        return 0  # the poller never meets the error first here: the flush does

    def flush(self, timeout: float) -> int:
        self._serve()
        return 0

    def __len__(self) -> int:
        return len(self.reports)


def test_a_fatal_error_met_by_the_closing_flush_fails_the_sends_not_the_close(
    codec: Codec, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    inner = _FailingProducer()
    monkeypatch.setattr(kafka, "producer", lambda *_a, **_k: inner)
    p = Producer(Settings(home=tmp_path), codec=codec)
    p._partitions[p.ledger.commands] = 3
    with p:
        sent = p.send(C.transfer(A, B, 1, "USD"))
    assert inner.raised and p.fatal is not None and p.fatal.args[0].fatal()
    with pytest.raises(NotDelivered, match=r"(?i)authoriz"):
        sent.result(0)
    with pytest.raises(NotDelivered, match="the producer failed"):
        p.send(C.transfer(A, B, 1, "USD"))
