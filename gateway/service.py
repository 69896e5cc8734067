"""The gateway's runtime: connections, caches, and the idempotent command path.

One `Gateway` per process (uvicorn worker). Everything a request needs hangs off
it, so routes stay declarative and tests can read the moving parts in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool
from starlette.responses import Response

from gateway import store
from gateway.errors import (
    KEY_REUSED_DETAIL,
    IdempotencyKeyReused,
    LedgerUnavailable,
    RateLimited,
    RequestInProgress,
    TooManyAccounts,
)
from gateway.idempotency import Claim, IdempotencyStore, LoginGuard, RateLimiter, fingerprint
from gateway.ledger_io import CommandSender, ResultListener, Waiter
from gateway.movements import Movement
from gateway.problems import PROBLEM_JSON, problem_body
from gateway.reads import ReadYourWrites
from gateway.resp import RespClient
from gateway.security import Network, TokenVerifier, parse_networks
from paystream.codec import SCHEMA_DIR, Codec
from paystream.settings import Settings

log = logging.getLogger("paystream.gateway")

# How long a new payment waits for the read model's answer to "is this id taken?".
TAKEN_CHECK_SECONDS = 0.5

# "reversed": completed, then taken back by a chargeback; still the end of the request.
# "requires_capture" ends an authorization's request (the hold is placed) and
# "canceled" a cancel's; a hold nobody captured ends "expired".
TERMINAL_STATUSES = {"completed", "failed", "rejected", "reversed", "requires_capture", "canceled", "expired"}

# What an event's COMPLETED means for the command types whose success is not a
# completed movement: a placed hold, a released one.
_COMPLETED_AS = {"AUTHORIZE": "requires_capture", "VOID": "canceled"}


# A payment's statuses in the order they can follow each other; equal ranks never
# replace each other (the read model's `payment_status_rank`).
_RANK = {"requires_capture": -1, "pending": 0, "reversed": 2}


def later_status(new: str, old: str) -> bool:
    """Whether a payment showing `old` now shows `new`: a later stage of its life."""
    return _RANK.get(new, 1) > _RANK.get(old, 1)


def _status_of(ev: dict[str, Any]) -> str:
    status = str(ev.get("status", "")).lower()
    if status == "completed":
        return _COMPLETED_AS.get(str(ev.get("command_type")), status)
    return status


def _reason_codes() -> frozenset[str]:
    schema = json.loads((SCHEMA_DIR / "ledger_event.avsc").read_text())
    field = next(f for f in schema["fields"] if f["name"] == "reason")
    enum = next(t for t in field["type"] if isinstance(t, dict) and t.get("type") == "enum")
    return frozenset(enum["symbols"])


# The ledger's reason codes (ReasonCode in schemas/ledger_event.avsc). Only these are
# shown to a payment's parties: a reversed payment's reason in the read model is the
# reversal's free-text note, which carries the reviewing admin's internal note.
REASON_CODES = _reason_codes()


def public_reason(reason: Any, status: str) -> str | None:
    """A payment's reason as its parties may see it: a ledger reason code, lower
    case, or a generic one for a reversal; never free text written by staff."""
    if reason and str(reason).upper() in REASON_CODES:
        return str(reason).lower()
    if status == "reversed":
        return "reversed_after_review"
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a command ended, as the gateway reports it."""

    status: str  # completed | failed | rejected
    reason: str | None = None
    id_reused: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """A request's answer as the idempotency key stores and replays it."""

    status: int
    body: bytes
    media: str
    headers: dict[str, str] = field(default_factory=dict)


_TOKEN_PREFIX = uuid.uuid4().hex[:12]
_TOKEN_COUNTER = itertools.count()


def _token() -> str:
    """A claim token unique across processes and restarts, without a urandom call
    per request."""
    return f"{_TOKEN_PREFIX}{next(_TOKEN_COUNTER)}"


def outcome_from_event(ev: dict[str, Any]) -> Outcome | None:
    """The outcome an event proves, or None for a replay that proves nothing yet
    (a duplicate of a transfer whose debit is all its partition knows)."""
    reason = ev.get("reason")
    if ev.get("replay"):
        if ev["type"] == "COMMAND_REJECTED" and reason == "ID_REUSED_WITH_DIFFERENT_FIELDS":
            return Outcome("rejected", reason, id_reused=True)
        status = _status_of(ev)
        if status in TERMINAL_STATUSES:
            return Outcome(status, reason)
        return None
    return Outcome(_status_of(ev), reason)


class AccountCache:
    """Number <-> id <-> owner never changes once registered, so it is cached for
    the process lifetime (bounded, evicting the oldest)."""

    def __init__(self, limit: int = 200_000) -> None:
        self.by_number: dict[str, store.AccountRef] = {}
        self.by_id: dict[str, store.AccountRef] = {}
        self.limit = limit

    def put(self, ref: store.AccountRef) -> None:
        if len(self.by_number) >= self.limit:
            old = next(iter(self.by_number))
            self.by_id.pop(self.by_number.pop(old).account_id, None)
        self.by_number[ref.account_number] = ref
        self.by_id[ref.account_id] = ref


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def list_response(data: list[dict[str, Any]], has_more: bool, **extra: Any) -> Response:
    """The API's one list envelope (`models.Page`): a page of `data` and whether more
    follow; a client asks for the next page with `starting_after` = its last item's id."""
    return json_response(200, {"object": "list", **extra, "data": data, "has_more": has_more})


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        redis: RespClient | None = None,
        idem: IdempotencyStore | None = None,
        sender: CommandSender | None = None,
        listener: ResultListener | None = None,
        reads: ReadYourWrites | None = None,
    ) -> None:
        """Adapters not given are built from `settings`; tests give fakes, so the
        idempotency protocol runs in unit tests without Redis or Kafka."""
        self.settings = settings
        self.trusted: tuple[Network, ...] = parse_networks(settings.gateway_trusted_proxies)
        self.jwt_key = settings.jwt_key()
        self.tokens = TokenVerifier(self.jwt_key, settings.jwt_issuer)
        self.prefix = settings.gateway_redis_prefix
        self.pool = AsyncConnectionPool(
            settings.postgres_dsn, min_size=settings.gateway_pg_pool_max, max_size=settings.gateway_pg_pool_max,
            open=False, timeout=settings.gateway_pg_pool_timeout_seconds,
            # Every read is one statement: no BEGIN/COMMIT round trips around it, and a
            # connection goes back to the pool sooner. Writes open `conn.transaction()`.
            kwargs={"autocommit": True},
        )
        self.redis = redis or RespClient(settings.redis_url)
        self.idem = idem or IdempotencyStore(
            self.redis,
            self.prefix,
            settings.gateway_idempotency_ttl_seconds,
            settings.gateway_inflight_lock_seconds,
        )
        self.limiter = RateLimiter(self.redis, self.prefix)
        self.payment_rows = store.PaymentRows(self.pool)
        self.logins = LoginGuard(
            self.redis,
            self.prefix,
            threshold=settings.gateway_login_lockout_after,
            base_seconds=settings.gateway_login_lockout_base_seconds,
            max_seconds=settings.gateway_login_lockout_max_seconds,
            reset_seconds=settings.gateway_login_failures_reset_seconds,
        )
        self.codec = Codec(settings.registry_url)
        self.sender = sender or CommandSender(settings, self.codec)
        self.listener = listener or ResultListener(settings, self.codec, uuid.uuid4().hex[:12])
        self.accounts = AccountCache()
        self.reads = reads or ReadYourWrites(self.redis, self.pool, self.prefix, settings.gateway_read_wait_seconds)
        self.background: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.pool.open(wait=True, timeout=30)
        await self.redis.execute("PING")
        await asyncio.to_thread(self.sender.start)
        await asyncio.to_thread(self.listener.start)
        from gateway.security import dummy_hash

        await asyncio.to_thread(dummy_hash)

    async def stop(self) -> None:
        for t in list(self.background):
            t.cancel()
        await asyncio.to_thread(self.listener.close)
        await asyncio.to_thread(self.sender.close)
        await self.pool.close()
        await self.redis.close()

    # ---------------------------------------------------------------- accounts

    async def account(self, number: str) -> store.AccountRef | None:
        ref = self.accounts.by_number.get(number)
        if ref is None:
            ref = await store.account_by_number(self.pool, number)
            if ref is not None:
                self.accounts.put(ref)
        return ref

    async def accounts_by_id(self, ids: list[str]) -> dict[str, store.AccountRef]:
        found = {i: self.accounts.by_id[i] for i in ids if i in self.accounts.by_id}
        missing = [i for i in ids if i not in found]
        if missing:
            for i, ref in (await store.accounts_by_ids(self.pool, missing)).items():
                self.accounts.put(ref)
                found[i] = ref
        return found

    async def open_account(
        self,
        user_id: str,
        idem_key: str,
        currency: str,
        view: Callable[[store.AccountRef], Awaitable[dict[str, Any]]],
    ) -> Answer:
        """Open another account for `user_id`, idempotently: the key is claimed as a
        payment's is (a finished request replays its answer, one in flight is 409,
        another currency is 422), and the account id derives from the key, so even a
        retry that Redis forgot opens nothing twice (`store.open_another_account`)."""
        key = self.idem.key(user_id, "accounts", idem_key)
        token = _token()
        claim = await self.idem.claim(key, fingerprint({"currency": currency}), token)
        if claim.kind == "mismatch":
            raise IdempotencyKeyReused(KEY_REUSED_DETAIL)
        if claim.kind == "busy":
            raise RequestInProgress("a request with this Idempotency-Key is still being processed",
                                    retry_after=claim.retry_after)  # fmt: skip
        if claim.kind == "done":
            return replayed(claim)
        limit = self.settings.gateway_max_accounts_per_user
        account_id = store.requested_account_id(user_id, idem_key)
        try:
            ref = await store.open_another_account(self.pool, user_id, currency, account_id, limit)
            if ref.currency != currency:  # the key opened an account in another currency
                raise IdempotencyKeyReused(KEY_REUSED_DETAIL)
        except store.AccountLimitReached:
            await self.idem.release(key, token)
            raise TooManyAccounts(f"at most {limit} accounts per user") from None
        except BaseException:
            await self.idem.release(key, token)
            raise
        self.accounts.put(ref)
        body = orjson.dumps(await view(ref))
        headers = {"Location": f"/v1/accounts/{ref.account_number}"}
        await self.idem.done(key, 201, body, headers)
        return Answer(201, body, "application/json", headers)

    # ---------------------------------------------------------------- payments

    def _pay_key(self, payment_id: str) -> str:
        return f"{self.prefix}pay:{payment_id}"

    @property
    def _pay_ttl(self) -> int:
        """Payment records outlive idempotency keys: GET /payments/{id} uses them
        until the read model has the payment."""
        return self.settings.gateway_idempotency_ttl_seconds * 7

    async def cached_payment(self, payment_id: str) -> dict[str, Any] | None:
        raw = await self.redis.execute("GET", self._pay_key(payment_id))
        return orjson.loads(raw) if raw else None

    async def known_outcome(
        self, payment_id: str, command: dict[str, Any] | None = None, record: dict[str, Any] | None = None,
        answers: frozenset[str] | None = None,
    ) -> Outcome | None:
        """The outcome as recorded by an earlier request or the read model. Given the
        request's `command` and `record`, a stored payment that describes another
        movement under this id (the key was reused with another body after Redis lost
        it, or after it expired while the payment record lives on) is `id_reused`.
        `answers`: the statuses that answer the request (`Movement.answers`); a hold's
        payment showing requires_capture does not answer its capture."""
        return await self._final(payment_id, await self.cached_payment(payment_id), command, record, answers)

    async def _final(
        self,
        payment_id: str,
        rec: dict[str, Any] | None,
        command: dict[str, Any] | None,
        record: dict[str, Any] | None,
        answers: frozenset[str] | None = None,
    ) -> Outcome | None:
        """`known_outcome` with the payment record already read."""
        final = TERMINAL_STATUSES if answers is None else answers
        if rec and rec.get("status") in final:
            reused = record is not None and not same_payment(rec, record)
            return Outcome(rec["status"], rec.get("reason_code"), id_reused=reused)
        row = await store.payment_row(self.pool, payment_id)
        if row:
            status = str(row.get("status") or "").lower()
            if status in final:
                reason = row.get("reason")
                reused = command is not None and not describes(row, command)
                return Outcome(status, str(reason) if reason else None, id_reused=reused)
        return None

    async def _settled(self, move: Movement, command: dict[str, Any],
                       record: dict[str, Any]) -> tuple[dict[str, Any], Outcome | None]:
        """For a retry: the payment record as first written (its `created_at`), and
        the outcome if it is already final."""
        prior = await self.cached_payment(record["id"])
        if prior is not None:
            record = {**record, "created_at": prior.get("created_at", record["created_at"])}
        return record, await self._final(record["id"], prior, command, record, move.answers)

    async def _taken(self, command: dict[str, Any]) -> bool:
        """Whether the read model holds this payment id for another movement, checked
        before a new claim sends anything. The ledger remembers ids per account, so it
        refuses a reused id only on the account that used it first: a key Redis forgot,
        reused from another of the user's accounts (or by an admin, for another
        account), would reach partitions that never saw the id and be applied as a
        second payment under the same id. A read model that does not answer within
        `TAKEN_CHECK_SECONDS` is not waited for: payments do not depend on it."""
        try:
            async with asyncio.timeout(TAKEN_CHECK_SECONDS):
                row = await self.payment_rows.get(command["command_id"])
        except Exception as exc:  # Postgres down or slow: the ledger's own check remains
            log.warning("payment id check skipped for %s: %s", command["command_id"], exc)
            return False
        return row is not None and not describes(row, command)

    async def _claimed_and_taken(self, taken: asyncio.Future[bool], key: str, token: str) -> bool:
        """`_taken`'s answer for a claim this request holds: a request cancelled
        while waiting for it gives the key back."""
        try:
            return await taken
        except asyncio.CancelledError:
            taken.cancel()
            await self.idem.release(key, token)
            raise

    async def wait_outcome(self, waiter: Waiter, budget: float, move: Movement | None = None) -> Outcome | None:
        """Wait for the command's own terminal event. A replay that does not settle
        the question (a duplicate of a transfer still in flight or long finished)
        switches to polling the recorded outcome of the payment (`move`'s, or the
        command's own id) while still listening."""
        payment_id = move.payment_id if move is not None else waiter.command_id
        answers = move.answers if move is not None else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        polling = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(min(remaining, 0.2) if polling else remaining):
                    ev = await waiter.queue.get()
            except TimeoutError:
                if polling:
                    known = await self.known_outcome(payment_id, answers=answers)
                    if known is not None:
                        return known
                continue
            out = outcome_from_event(ev)
            if out is not None:
                return out
            polling = True
            known = await self.known_outcome(payment_id, answers=answers)
            if known is not None:
                return known

    async def submit(self, move: Movement, wait: float) -> Answer:
        """Run one idempotent movement: claim the key, send, wait, answer, remember.

        Payments count against the user's per-minute budget in the same Redis call
        as the claim. The answer is what the key replays byte for byte (Stripe's
        rule), so it is rendered here; refusals are domain errors (gateway.errors)."""
        command, record = move.command(), move.record()
        key = self.idem.key(move.user_id, move.endpoint, move.idem_key)
        token = _token()
        limit = self.settings.gateway_rate_payments_per_minute if move.kind == "transfer" else 0
        rate = self.limiter.window(move.endpoint, move.user_id, limit) if limit else None
        # The read model's check runs beside the claim (one round trip each, to
        # Postgres and to Redis): it only matters for a new claim, and a retry's
        # wasted read is cheaper than adding it to every payment's latency.
        taken = asyncio.ensure_future(self._taken(command)) if move.hold_id is None else None
        try:
            claim = await self.idem.claim(key, move.fingerprint(), token, rate)
        except BaseException:
            if taken is not None:
                taken.cancel()
            raise
        if taken is not None and claim.kind != "new":
            taken.cancel()
        if claim.kind == "rate":
            raise RateLimited(
                f"too many {move.endpoint} requests; retry in {claim.retry_after} s", retry_after=claim.retry_after
            )
        if claim.kind == "mismatch":
            raise IdempotencyKeyReused(KEY_REUSED_DETAIL)
        if claim.kind == "busy":
            # Another request holds the key. If the payment's outcome is already
            # final, that is the answer whoever holds it: a retry must get the first
            # answer, not 409 until the lock deadline of a holder that may be gone.
            record, known = await self._settled(move, command, record)
            if known is not None:
                return await self._answer(move, command, key, known, record)
            raise RequestInProgress(
                "a request with this Idempotency-Key is still being processed", retry_after=claim.retry_after
            )
        if claim.kind == "done":
            return replayed(claim)

        command_id = command["command_id"]
        if claim.kind == "resume":
            record, known = await self._settled(move, command, record)
            if known is not None:
                return await self._answer(move, command, key, known, record)
        elif taken is not None and await self._claimed_and_taken(taken, key, token):
            body = problem_body(422, IdempotencyKeyReused.code, KEY_REUSED_DETAIL)
            await self.idem.done(key, 422, body)
            return Answer(422, body, PROBLEM_JSON)

        waiter = self.listener.register(command_id)
        handed_off = False
        try:
            try:
                await self.sender.send(command)
            except Exception as exc:  # SendError, or the registry unreachable while encoding
                if not claim.sent:
                    await self.idem.release(key, token)
                else:
                    await self.idem.accepted(key, token)
                    await self.idem.unlock(key, token)
                log.warning("command %s not sent: %s", command_id, exc)
                raise LedgerUnavailable("the payment could not be submitted; retry later", retry_after=1) from None
            except BaseException:
                if not claim.sent:
                    await self.idem.release(key, token)
                raise
            await self.idem.accepted(key, token, self._pay_key(record["id"]), orjson.dumps(record), self._pay_ttl)
            try:
                outcome = await self.wait_outcome(waiter, wait, move) if wait > 0 else None
            except BaseException:
                # Postgres failed us, or the client went away: the command is on its
                # way, so a retry should wait for its outcome at once, not 409 until
                # the lock deadline.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.idem.unlock(key, token))
                raise
            if outcome is None:
                handed_off = True
                await self.idem.unlock(key, token)  # a retry now waits for the outcome, not 409
                self._spawn(self._finalize_later(key, waiter, record, move))
                headers = {"Location": f"/v1/payments/{record['id']}", "Retry-After": "1"}
                return Answer(202, orjson.dumps(public(record)), "application/json", headers)
            return await self._answer(move, command, key, outcome, record)
        finally:
            if not handed_off:
                self.listener.unregister(waiter)

    async def send_and_wait(self, command: dict[str, Any], wait: float) -> Outcome | None:
        """Send a command that needs no idempotency key (its id is its own) and wait
        up to `wait` seconds for its outcome; None if it did not come in time."""
        waiter = self.listener.register(command["command_id"])
        try:
            try:
                await self.sender.send(command)
            except Exception as exc:  # SendError, or the registry unreachable while encoding
                log.warning("command %s not sent: %s", command["command_id"], exc)
                raise LedgerUnavailable("the command could not be submitted; retry later", retry_after=1) from None
            return await self.wait_outcome(waiter, wait)
        finally:
            self.listener.unregister(waiter)

    async def _answer(
        self, move: Movement, command: dict[str, Any], key: str, outcome: Outcome, record: dict[str, Any]
    ) -> Answer:
        """The outcome as the answer, remembered for the caller's next reads."""
        # A refused capture or cancel leaves the payment as it was: nothing new to read.
        # Both are Redis scripts on one connection: sent together, one round trip.
        if not outcome.id_reused and outcome.status in move.answers:
            answer, _ = await asyncio.gather(
                self._finish(key, outcome, record, move),
                self.reads.told(move.user_id, record["id"], command["account_id"], outcome.status),
            )
            return answer
        return await self._finish(key, outcome, record, move)

    async def _finish(self, key: str, outcome: Outcome, record: dict[str, Any], move: Movement) -> Answer:
        if outcome.id_reused:
            # The ledger knows this payment id with other fields (Redis had lost the
            # key): the record written at send time describes the refused request,
            # so it goes; the key remembers the refusal.
            body = problem_body(422, IdempotencyKeyReused.code, KEY_REUSED_DETAIL)
            await self.redis.execute("DEL", self._pay_key(record["id"]))
            await self.idem.done(key, 422, body)
            return Answer(422, body, PROBLEM_JSON)
        final = {
            **record,
            "status": outcome.status,
            "reason": public_reason(outcome.reason, outcome.status),
        }
        status, body, media = render_payment(outcome, public(final), created=move.hold_id is None)
        if outcome.status not in move.answers:
            # A refused capture or cancel: the payment is as it was, and so stays its record.
            await self.idem.done(key, status, body)
            return Answer(status, body, media)
        saved = orjson.dumps({**final, "reason_code": outcome.reason})
        await self.idem.done(key, status, body, None, self._pay_key(record["id"]), saved, self._pay_ttl)
        return Answer(status, body, media)

    async def _finalize_later(self, key: str, waiter: Waiter, record: dict[str, Any], move: Movement) -> None:
        """After a 202, keep listening so the key and the payment record learn the
        outcome without the client having to come back with the same request."""
        try:
            outcome = await self.wait_outcome(waiter, self.settings.gateway_finalize_seconds, move)
            if outcome is not None:
                await self._finish(key, outcome, record, move)
        except Exception:
            log.exception("finalizing %s failed", waiter.command_id)
        finally:
            self.listener.unregister(waiter)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


def replayed(claim: Claim) -> Answer:
    """A finished request's answer, as its key replays it."""
    headers = {**(claim.headers or {}), "Idempotent-Replayed": "true"}
    media = PROBLEM_JSON if claim.status >= 400 else "application/json"
    return Answer(claim.status, claim.body, media, headers)


def render_payment(outcome: Outcome, final: dict[str, Any], created: bool = True) -> tuple[int, bytes, str]:
    """201 with the payment when it completed or its hold was placed (200 for a capture
    or cancel of a payment that already existed); 402 problem (code = the ledger's
    reason, lower-cased) when the ledger refused it or it failed on the receiver."""
    if outcome.status in ("completed", "reversed", "requires_capture", "canceled"):
        return 201 if created else 200, orjson.dumps(final), "application/json"
    code = (outcome.reason or "payment_failed").lower()
    detail = f"the payment was {outcome.status}: {code.replace('_', ' ')}"
    return 402, problem_body(402, code, detail, payment=final), PROBLEM_JSON


def describes(row: dict[str, Any], command: dict[str, Any]) -> bool:
    """Whether a read-model payment row is the movement `command` asks for."""
    mv = command.get("movement")
    if mv is None:
        return True  # status changes carry no movement to compare
    kind = str(row.get("kind") or "")
    account = command["account_id"]
    ends = {
        "TRANSFER": (account, mv.get("counterparty_id")),
        "AUTHORIZE": (account, mv.get("counterparty_id")),
        "DEPOSIT": (None, account),
        "WITHDRAW": (account, None),
    }.get(command["type"])
    if ends is None or kind != _ROW_KIND.get(command["type"], command["type"]):
        return False
    src, dst = ends
    description = (mv.get("metadata") or {}).get("description")
    # A hold's row states what it authorized apart from what a (partial) capture moved.
    amount_column = "authorized_amount" if command["type"] == "AUTHORIZE" else "amount"
    wanted = {"from_account": src, "to_account": dst, amount_column: mv["amount"], "currency": mv["currency"],
              "description": description}  # fmt: skip
    # A column the read model has not filled (yet) says nothing: a rejected payment's
    # event carries no description, and a completed transfer's row gets its sender
    # and description from the debit, which another partition's sink batch may hold.
    for column, value in wanted.items():
        have = row.get(column)
        if have is not None and value is not None and str(have) != str(value):
            return False
        if have is not None and value is None and column == "description":
            return False
    return True


# The read model's `kind` of a payment made by each command type.
_ROW_KIND = {"AUTHORIZE": "TRANSFER"}


def same_payment(stored: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether a stored payment record is the one this request would write."""
    fields = ("kind", "from_account", "to_account", "amount", "currency", "description")
    return all(stored.get(f) == record.get(f) for f in fields)


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A stored payment record without the gateway's bookkeeping fields."""
    return {k: v for k, v in record.items() if k not in ("owners", "reason_code")}
