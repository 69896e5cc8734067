"""A Kafka-direct producer of ledger commands, for services that send transfers and
holds to `payments.commands` themselves instead of calling the HTTP API.

    from paystream.producer import Producer, transfer

    with Producer() as producer:                      # settings from PAYSTREAM_* (get_settings)
        cmd = transfer(src_id, dst_id, 1250, "USD")   # 12.50 USD, in minor units
        event = producer.send(cmd, wait=10)           # the command's terminal LedgerEvent
        event["type"]                                 # "TRANSFER_COMPLETED", or a rejection's reason

What it does for each command, in this order, before anything is sent:

1. Checks it **exactly as the ledger will**: it encodes the command with the
   registry's schema and decodes it back (the ledger sees only what decodes), then
   runs the ledger's own structural check on it, `paystream.commands.command_problem`
   (the same function the ledger calls). A command the ledger would dead-letter
   raises `InvalidCommand`; business refusals (insufficient funds, a frozen account)
   are not knowable here and come back as the outcome event.
2. Refuses a privileged command (a deposit, an account opening, a freeze: anything
   `paystream.commands.is_privileged` names) with `PrivilegedCommand`, unless built
   with `privileged=True` for one of paystream's privileged principals. A direct
   producer may write `payments.commands` only (docs/SECURITY.md).
3. Keys it by its `account_id` and produces it to the partition Kafka's Java client
   and the ledger compute for that key (murmur2, `paystream.partitioning`), whatever
   partitioner the client configuration names: the ledger dead-letters a command on
   another partition (`MISROUTED`). The producer is idempotent with `acks=all`
   (`paystream.kafka.producer`).

`batch=True` coalesces commands per partition into `CommandBatch` records
(`paystream.batching.CommandBatcher`), which the ledger applies for a fraction of a
single record's cost; each command keeps its own outcome.

`send(cmd)` returns a `Future[Delivery]` (the broker's acknowledgement);
`send(cmd, wait=seconds)` returns the command's terminal `LedgerEvent`, read from
`ledger.events` (read_committed) by one listener per producer that starts at the
end of every partition before the first such send. That needs a principal that may
read `ledger.events` (see `outcomes` below). The command id is the idempotency key:
resending a command (same `command_id`, same fields) never moves money twice.

The ledger identifies accounts by id (a UUID), the API by number (`PS…`).
`AccountDirectory` maps one to the other through the HTTP API
(`GET /v1/accounts/{number}` shows `account_id` to the owner and to admins).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, overload

import httpx
from confluent_kafka import KafkaException

from paystream import kafka
from paystream.batching import COMMAND_BATCH, CommandBatcher
from paystream.codec import Codec
from paystream.commands import (
    authorize,
    capture,
    command_problem,
    is_privileged,
    topic_for,
    transfer,
    void,
)
from paystream.consumer import OutcomeListener
from paystream.errors import (
    AccountNotFound,
    DecodeError,
    InvalidCommand,
    NotDelivered,
    OutcomeTimeout,
    PaystreamError,
    PrivilegedCommand,
    UnknownSchemaError,
)
from paystream.partitioning import partition_for
from paystream.records import LedgerEvent
from paystream.settings import Settings, get_settings
from paystream.topics import LedgerTopics

log = logging.getLogger("paystream.producer")

__all__ = [
    "AccountDirectory", "CheckedCommand", "Delivery", "Producer", "authorize", "capture", "check_command", "transfer",
    "void",
]


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored a command (a batch's record, when batched)."""

    command_id: str
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class CheckedCommand:
    """A command that passed every check, encoded for its topic."""

    command_id: str
    account_id: str
    topic: str
    value: bytes


def check_command(codec: Codec, command: Mapping[str, Any], *, privileged: bool = False,
                  ledger: LedgerTopics | None = None) -> CheckedCommand:
    """`command` encoded for the topic it goes to (in the generation `ledger`, default
    the settings'), once it passed the ledger's checks; `InvalidCommand` or
    `PrivilegedCommand` otherwise (steps 1 and 2 of the module docstring). Nothing is
    sent, and no Kafka is needed (only the registry's ids)."""
    topic = topic_for(command, ledger)
    try:
        value = codec.encode(topic, dict(command))
        record = codec.decode(topic, value)  # what the ledger will see
    except UnknownSchemaError:
        raise
    except DecodeError as exc:
        raise InvalidCommand(f"not a valid Command record: {exc}") from exc
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # fastavro's refusals
        raise InvalidCommand(f"not a valid Command record: {exc!r}") from exc
    problem = command_problem(record, record["account_id"])
    if problem is not None:
        raise InvalidCommand(problem)
    if is_privileged(record) and not privileged:
        raise PrivilegedCommand(
            f"{record['type']} is privileged: it goes to {topic}, which a direct producer may not write; "
            "only transfers and holds (TRANSFER, AUTHORIZE, CAPTURE, VOID) may be sent directly"
        )
    return CheckedCommand(record["command_id"], record["account_id"], topic, value)


class Producer:
    """Sends ledger commands to Kafka (see the module docstring).

    `settings`: where Kafka and the registry are and who this client is
    (`PAYSTREAM_KAFKA_PRINCIPAL`, e.g. `producer-payroll` from `paystream producers add
    payroll`); `get_settings()` when omitted. `outcomes`: the settings `wait` reads
    `ledger.events` with, when this principal may not read it (a direct producer's
    may not; the operator grants a reader knowingly). `config`: further librdkafka
    producer settings (`{"linger.ms": 20}`). Thread-safe; one per process is enough."""

    def __init__(self, settings: Settings | None = None, *, codec: Codec | None = None, privileged: bool = False,
                 batch: bool = False, batch_max_items: int = 256, batch_linger_ms: float = 5.0,
                 outcomes: Settings | None = None, config: Mapping[str, Any] | None = None) -> None:
        self.settings = settings or get_settings()
        self.codec = codec or Codec(self.settings.registry_url)
        self.privileged = privileged
        self._outcome_settings = outcomes or self.settings
        self._producer = kafka.producer(self.settings, **(config or {}))
        self._partitions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._listener: OutcomeListener | None = None
        self._batcher: CommandBatcher | None = None
        self.ledger = self.settings.ledger_topics  # the generation commands go to (docs/PARTITIONS.md)
        if batch:
            topic = self.ledger.commands
            self._batcher = CommandBatcher(
                self._producer, header=self.codec.header(topic, COMMAND_BATCH),
                command_schema_id=self.codec.schema_id(topic), partitions=self.partitions(topic),
                max_items=batch_max_items, linger_ms=batch_linger_ms, topic=topic,
            )  # fmt: skip
        self.fatal: KafkaException | None = None
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="paystream-producer-poll", daemon=True)
        self._poller.start()

    def partitions(self, topic: str) -> int:
        """Partition count of `topic`, from the broker (cached): the ledger computes an
        account's partition with the very same count."""
        n = self._partitions.get(topic)
        if n is None:
            md = self._producer.list_topics(topic, timeout=10)
            meta = md.topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise NotDelivered(f"cannot see topic {topic}: {meta.error if meta is not None else 'missing'}")
            n = self._partitions[topic] = len(meta.partitions)
        return n

    # -- sending -----------------------------------------------------------------
    @overload
    def send(self, command: Mapping[str, Any], *, wait: None = None) -> Future[Delivery]: ...

    @overload
    def send(self, command: Mapping[str, Any], *, wait: float) -> LedgerEvent: ...

    def send(self, command: Mapping[str, Any], *, wait: float | None = None) -> Future[Delivery] | LedgerEvent:
        """Check and produce one command. Without `wait`: a future of its `Delivery`
        (`NotDelivered` if Kafka refuses it). With `wait` (seconds): block until its
        terminal event (a resend's answer is the ledger's `COMMAND_DUPLICATE`,
        `replay=true`, unless the original is still in flight), or `OutcomeTimeout`."""
        prepared = check_command(self.codec, command, privileged=self.privileged, ledger=self.ledger)
        if wait is None:
            return self._produce(prepared)
        return self._send_and_wait([prepared], wait)[prepared.command_id]

    @overload
    def send_many(self, commands: Iterable[Mapping[str, Any]], *, wait: None = None) -> list[Future[Delivery]]: ...

    @overload
    def send_many(self, commands: Iterable[Mapping[str, Any]], *, wait: float) -> dict[str, LedgerEvent]: ...

    def send_many(self, commands: Iterable[Mapping[str, Any]], *,
                  wait: float | None = None) -> list[Future[Delivery]] | dict[str, LedgerEvent]:
        """Several commands, all checked before any is sent. With `wait`: their terminal
        events by command id, all within `wait` seconds."""
        prepared = [check_command(self.codec, c, privileged=self.privileged, ledger=self.ledger) for c in commands]
        if wait is None:
            return [self._produce(p) for p in prepared]
        return self._send_and_wait(prepared, wait)

    def _send_and_wait(self, prepared: list[CheckedCommand], wait: float) -> dict[str, LedgerEvent]:
        deadline = time.monotonic() + wait
        listener = self._outcomes()
        outcomes = [(p.command_id, listener.expect(p.command_id)) for p in prepared]
        try:
            deliveries = [self._produce(p) for p in prepared]
            for d in deliveries:
                d.result(timeout=max(0.0, deadline - time.monotonic()))
            return {cid: fut.result(timeout=max(0.0, deadline - time.monotonic())) for cid, fut in outcomes}
        except TimeoutError:
            raise OutcomeTimeout(
                f"no outcome within {wait}s; the command may still be applied (resend it with the same command id "
                "to learn its outcome: the ledger applies an id once)"
            ) from None
        finally:
            for cid, fut in outcomes:
                listener.forget(cid, fut)

    def _produce(self, p: CheckedCommand) -> Future[Delivery]:
        if self.fatal is not None:
            raise NotDelivered(f"command {p.command_id} was not produced: the producer failed: {self.fatal}")
        fut: Future[Delivery] = Future()

        def delivered(err: Any, msg: Any) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(NotDelivered(f"command {p.command_id} was not delivered: {err}"))
            else:
                fut.set_result(Delivery(p.command_id, msg.topic(), msg.partition(), msg.offset()))

        if self._batcher is not None and p.topic == self.ledger.commands:
            self._batcher.send(p.account_id, p.value, on_delivery=delivered)
            return fut
        partition = partition_for(p.account_id, self.partitions(p.topic))
        while True:
            try:
                self._producer.produce(p.topic, key=p.account_id.encode(), value=p.value, partition=partition,
                                       on_delivery=delivered)
                return fut
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise NotDelivered(f"command {p.command_id} was not produced: {exc}") from exc

    def _outcomes(self) -> OutcomeListener:
        with self._lock:
            if self._listener is None:
                listener = OutcomeListener(self._outcome_settings, self.codec)
                listener.start()  # OutcomesUnavailable when this principal may not read the topic
                self._listener = listener
            return self._listener

    def _poll(self) -> None:
        """Serve delivery reports. A fatal error (say, a principal without the right to
        produce, which an idempotent producer learns when it asks for its id) fails this
        producer for good: it is kept to refuse later sends, and polling goes on so that
        what was queued still gets its report."""
        while not self._closed.is_set():
            try:
                self._producer.poll(0.1)
            except KafkaException as exc:
                self._failed(exc)
                self._closed.wait(0.1)

    def _failed(self, exc: KafkaException) -> None:
        if self.fatal is None:
            log.error("the Kafka producer failed: %s", exc)
        self.fatal = exc

    def flush(self, timeout: float = 30.0) -> int:
        """Send whatever waits (batches included); the number of commands still undelivered.
        The fatal error is raised by whichever poll meets it first, the poller's or this
        flush's: here it is kept like the poller keeps it, and flushing goes on, because the
        queued commands still get their reports (each send's future says NotDelivered)."""
        if self._batcher is not None:
            self._batcher.flush()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return int(self._producer.flush(max(0.0, deadline - time.monotonic())))
            except KafkaException as exc:
                self._failed(exc)
                if time.monotonic() >= deadline:
                    return len(self._producer)

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then stop the producer and the outcome listener."""
        if self._batcher is not None:
            self._batcher.close()
        left = self.flush(timeout)
        self._closed.set()
        self._poller.join(2)
        if self._listener is not None:
            self._listener.close()
        if left:
            raise NotDelivered(f"{left} commands were not delivered before close")

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        try:
            self.close()
        except NotDelivered:
            if exc_type is None:  # never hide the error that is already on its way out
                raise


class AccountDirectory:
    """Account numbers (`PS…`) to the ledger's account ids, through the HTTP API:
    `GET /v1/accounts/{number}/ledger-id` answers `account_id` to the account's owner
    and to admins (others get 404, as for an account that does not exist); the rest of
    the API shows numbers only. A number never
    changes its id, so answers are kept (up to `limit` of them).

    `http` is an `httpx.Client` with the gateway's `base_url` and an `Authorization:
    Bearer <token>` header; `AccountDirectory.connect(url, token)` makes one."""

    def __init__(self, http: httpx.Client, *, limit: int = 100_000) -> None:
        self.http = http
        self.limit = limit
        self._ids: dict[str, str] = {}

    @classmethod
    def connect(cls, base_url: str, token: str, **kw: Any) -> AccountDirectory:
        return cls(httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10), **kw)

    def account_id(self, number: str) -> str:
        known = self._ids.get(number)
        if known is not None:
            return known
        r = self.http.get(f"/v1/accounts/{number}/ledger-id")
        if r.status_code == 404:
            raise AccountNotFound(f"no account {number} that these credentials may see")
        if r.status_code != 200:
            problem = _problem(r)
            raise PaystreamError(f"GET /v1/accounts/{number}: {r.status_code} {problem.get('detail', r.text[:200])}",
                                 code=str(problem.get("code", "http_error")))
        account_id = str(r.json()["account_id"])
        if len(self._ids) >= self.limit:
            self._ids.pop(next(iter(self._ids)))
        self._ids[number] = account_id
        return account_id

    def close(self) -> None:
        self.http.close()


def _problem(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
