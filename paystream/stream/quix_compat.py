"""Every use of Quix Streams' private API in paystream, with the reason for it.

Checked against quixstreams 3.28 (pinned in pyproject.toml). Each function fails
loudly when the attribute it needs is gone, so an upgrade breaks here, in one
place, and not silently somewhere in a pipeline.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, cast

from quixstreams import Application
from quixstreams.state import State
from quixstreams.state.base.transaction import PartitionTransactionStatus
from quixstreams.state.metadata import CHANGELOG_CF_MESSAGE_HEADER as CHANGELOG_CF_HEADER
from quixstreams.state.metadata import CHANGELOG_PROCESSED_OFFSETS_MESSAGE_HEADER, Marker
from quixstreams.state.metadata import CHANGELOG_TTL_STAMPED_HEADER as _TTL_STAMPED
from quixstreams.state.metadata import SEPARATOR as _SEPARATOR
from quixstreams.state.rocksdb import RocksDBOptions
from quixstreams.utils.json import dumps as _state_dumps
from quixstreams.utils.json import loads as _state_loads
from rocksdict import DBCompactionStyle, WriteOptions

CHECKED_VERSION = "3.28"
_UNDEFINED = Marker.UNDEFINED
_STARTED = PartitionTransactionStatus.STARTED


def disable_time_alignment(app: Application) -> None:
    """`concat()` turns on cross-topic timestamp alignment, which holds a partition's
    commands back while its legs partition has an open transaction (always, under
    load: the ledger writes the legs; fraud feeds fraud.flows itself). Quix has no
    public switch (docs/LEDGER.md)."""
    registry = app._dataframe_registry
    if not hasattr(registry, "_requires_time_alignment"):
        raise RuntimeError(f"quixstreams changed: no _requires_time_alignment (checked {CHECKED_VERSION})")
    registry._requires_time_alignment = False


class TransactionalProducer:
    """Produces through the very librdkafka producer whose transaction each
    checkpoint commits, so every record is part of the same exactly-once
    transaction as the state and the input offsets.

    It skips Quix's wrappers, which cost more than the record: a Python delivery
    callback per record (to track offsets of *changelog* topics), a `poll(0)` after
    each produce, and per-row serializer calls; about 4-5 us per record, with two
    to four output records per transfer (docs/LEDGER.md). No callback is needed for
    correctness: librdkafka fails `commit_transaction` when any record of the
    transaction failed, so the checkpoint aborts and the inputs are processed again.
    (`app.get_producer()` is another, non-transactional producer: never use it here.)
    """

    __slots__ = ("_quix", "_raw")

    def __init__(self, app: Application) -> None:
        internal = getattr(app, "_producer", None)
        quix = getattr(internal, "_producer", None)
        if quix is None or not hasattr(type(quix), "_producer"):
            raise RuntimeError(f"quixstreams changed: no Application._producer._producer (checked {CHECKED_VERSION})")
        self._quix = quix
        self._raw: Any = None

    def _producer(self) -> Any:
        # Quix creates its librdkafka producer (and calls init_transactions) on
        # first use and keeps it for the life of the application.
        if self._raw is None:
            self._raw = self._quix._producer
        return self._raw

    def produce(self, topic: str, value: bytes, key: str | bytes, timestamp: int,
                headers: Any = None, partition: int | None = None) -> None:
        raw = self._raw or self._producer()
        if partition is None:
            _produce_raw(raw, topic, value, key, timestamp=timestamp, headers=headers)
        else:
            _produce_raw(raw, topic, value, key, partition=partition, timestamp=timestamp, headers=headers)


def _produce_raw(raw: Any, topic: str, value: bytes | None, key: str | bytes, **kwargs: Any) -> None:
    """librdkafka's produce, waiting out a full local queue (as Quix's wrapper does)."""
    for _ in range(10):
        try:
            raw.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            # The local queue is full: let librdkafka send, then try again.
            raw.poll(0.1)
    raise BufferError(f"librdkafka's queue stayed full producing to {topic}")


# Quix stamps every changelog record with the input offsets its transaction
# processed, so that an at-least-once restore can skip records whose inputs were
# never committed. Under exactly-once a restore reads the changelog read_committed
# (librdkafka's default, which Quix keeps): every record it sees was committed in the
# same Kafka transaction as those offsets, so the check always passes (Quix applies a
# record without the header, as it does records of older versions). The header is
# about 110 of a changelog record's bytes, four records a transfer, and it is one
# more header for librdkafka to copy and the broker to parse per record.
_PROCESSED_OFFSETS = CHANGELOG_PROCESSED_OFFSETS_MESSAGE_HEADER


class _HeldBackChangelog:
    """Stands in for a `ChangelogProducer` while a store transaction produces its
    changelog: every record but the last goes straight to librdkafka (headers
    converted once, no Python delivery callback, no `poll(0)`, and without the
    processed-offsets header, which exactly-once makes redundant: above); the last
    goes through Quix's own path, whose delivery callback records the changelog
    offset Quix stores beside the state for recovery. Records leave in the same
    order, so that last offset is the partition's highest."""

    __slots__ = ("_headers", "_headers_of", "_held", "_inner", "_raw")

    def __init__(self, inner: Any, raw: Any) -> None:
        self._inner = inner
        self._raw = raw
        self._held: tuple[Any, Any, Any] | None = None
        self._headers_of: Any = None
        self._headers: list[tuple[str, bytes]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def produce(self, key: bytes, value: bytes | None = None, headers: Any = None, migration: bool = False,
                on_delivery: Any = None) -> None:
        if migration or on_delivery is not None:
            self.release()
            self._inner.produce(key=key, value=value, headers=headers, migration=migration,
                                on_delivery=on_delivery)
            return
        held = self._held
        self._held = (key, value, headers)
        if held is None:
            return
        hkey, hvalue, hheaders = held
        if hheaders is not self._headers_of:
            self._headers_of = hheaders
            self._headers = [(k, v if isinstance(v, bytes) else str(v).encode())
                             for k, v in (hheaders or {}).items() if k != _PROCESSED_OFFSETS]
        inner = self._inner
        _produce_raw(self._raw, inner.changelog_name, hvalue, hkey, partition=inner.partition, headers=self._headers)

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._inner.produce(key=held[0], value=held[1], headers=held[2])


def fast_changelog(app: Application) -> None:
    """Produce state changelogs without Quix's per-record Python machinery (a
    delivery callback, a `poll(0)` and header conversion per record: about as much
    as the ledger's rules per transfer, with three or four changelog records per
    transfer). Behaviour is unchanged: the same records in the same order (all but
    the last without the processed-offsets header, which only an at-least-once
    restore reads: hence `app` must be exactly-once), the same Kafka transaction, the
    same changelog offset stored with the state. A delivery failure still fails the
    commit: librdkafka refuses to commit a transaction any of whose records failed.
    Applies to every store transaction in this process."""
    if not app.config.exactly_once:
        raise ValueError("fast_changelog drops a header only an at-least-once restore needs: exactly-once apps only")
    from quixstreams.state.base import transaction as base

    cls = base.PartitionTransaction
    if getattr(cls, "_paystream_fast_changelog", False):
        return
    original = getattr(cls, "_prepare", None)
    if original is None:
        raise RuntimeError(f"quixstreams changed: no PartitionTransaction._prepare (checked {CHECKED_VERSION})")

    def _prepare(self: Any, processed_offsets: dict[str, int] | None) -> None:
        inner = self._changelog_producer
        if inner is None:
            return original(self, processed_offsets)
        raw = inner._producer_for(False)._producer._producer
        proxy = _HeldBackChangelog(inner, raw)
        self._changelog_producer = proxy
        try:
            original(self, processed_offsets)
            proxy.release()
        finally:
            self._changelog_producer = inner
        return None

    setattr(cls, "_prepare", _prepare)  # noqa: B010 (a method replaced on purpose)
    setattr(cls, "_paystream_fast_changelog", True)  # noqa: B010


class _ChangelogDurableOptions(RocksDBOptions):
    """Quix's RocksDB options with `atomic_flush`: with the write-ahead log off, the
    column families (state, and the changelog offset in Quix's metadata family)
    must reach disk together, or a crash could keep an offset without its data.
    Compaction is universal, as Kafka Streams runs its stores (`RocksDBStore`): a
    store rewritten at every transfer pays less write amplification than with
    levels, and its compactions run on the ledger's own two cores."""

    def to_options(self) -> Any:
        opts = super().to_options()
        opts.set_atomic_flush(True)
        opts.set_compaction_style(DBCompactionStyle.universal())
        # A whole-key bloom filter in each memtable: most reads are of ids never seen
        # (a new command's `c:<id>`, a new payment's `p:<id>`), and without the no-log
        # memtables' own filter each such miss searched three of them: 2.0 -> 0.5 us
        # a missing key, two a transfer. 2 % of a memtable: 0.3 MiB each.
        opts.set_memtable_prefix_bloom_ratio(0.02)
        opts.set_memtable_whole_key_filtering(True)
        return opts


def changelog_durable_state() -> RocksDBOptions:
    """RocksDB options for stores whose durability is their changelog, as Kafka
    Streams runs RocksDB: no write-ahead log (each state write then costs about
    1.7 us a key instead of 2.7 on this machine, four keys a transfer).

    Sound because the changelog is the record: every batch Quix writes carries the
    changelog offset it reaches, in the same batch, and `atomic_flush` keeps them
    together on disk. After a crash RocksDB opens at its last flush, an older but
    consistent point, and Quix replays the changelog from the offset stored there
    (the crash and failover tests kill -9 the ledger mid-stream). A clean close
    flushes the memtables. Pass the result as `Application(rocksdb_options=...)`;
    it also turns the log off for every store partition this process writes."""
    from quixstreams.state.rocksdb import partition as rocks

    cls = rocks.RocksDBStorePartition
    if not getattr(cls, "_paystream_no_wal", False):
        if not hasattr(cls, "_write"):
            raise RuntimeError(f"quixstreams changed: no RocksDBStorePartition._write (checked {CHECKED_VERSION})")
        no_wal = WriteOptions()
        no_wal.disable_wal = True  # type: ignore[assignment,method-assign]  # a property in rocksdict 0.3

        def _write(self: Any, batch: Any) -> None:
            self._db.write(batch, no_wal)

        setattr(cls, "_write", _write)  # noqa: B010 (a method replaced on purpose)
        setattr(cls, "_paystream_no_wal", True)  # noqa: B010
    # Kafka Streams' RocksDB sizes (16 MiB write buffers, three of them) instead of
    # Quix's (64 MiB, and a 1 GiB block cache each): memory is bounded per store
    # partition, and since memtables reach disk only when full (no log), smaller
    # ones also bound how much changelog a restart after kill -9 replays.
    # No block compression either, as Kafka Streams: state is small and hot, and lz4
    # cost every flush and compaction CPU that processing needs.
    return _ChangelogDurableOptions(
        write_buffer_size=16 * MIB, max_write_buffer_number=3, block_cache_size=8 * MIB,
        compression_type="none",
    )


MIB = 1024 * 1024


def before_commit(app: Application, hook: Callable[[], None], on_failure: Callable[[], None]) -> None:
    """Call `hook` just before Quix commits a non-empty checkpoint (on its interval,
    on a forced commit and on a partition revoke), while the checkpoint's Kafka
    transaction is still open: whatever `hook` produces through
    `TransactionalProducer(app)` commits or aborts with that checkpoint's state and
    input offsets. `on_failure` runs when the commit (or `hook`) raises: whatever the
    caller holds for the checkpoint did not commit. Quix 3.28 has no public hook for
    commits, so this wraps the processing context's `commit_checkpoint` (called once
    per poll loop iteration)."""
    ctx = getattr(app, "_processing_context", None)
    if ctx is None or not hasattr(ctx, "commit_checkpoint") or not hasattr(type(ctx), "checkpoint"):
        raise RuntimeError(f"quixstreams changed: no ProcessingContext.commit_checkpoint (checked {CHECKED_VERSION})")
    original = ctx.commit_checkpoint

    def committing(force: bool = False, revoking: bool = False) -> None:
        cp = ctx.checkpoint
        # Decide once: `expired()` is a clock check, and asking it again inside Quix's
        # own call could find the interval over a moment after the hook was skipped,
        # committing the checkpoint without what the hook adds.
        if not (force or cp.expired()):
            return
        try:
            if not cp.empty():
                hook()
            original(force=True, revoking=revoking)
        except BaseException:
            on_failure()
            raise

    ctx.commit_checkpoint = committing


def commit_when_idle(app: Application, after: float) -> None:
    """Group commit: commit a non-empty checkpoint as soon as no input is ready (and
    `after` seconds have passed since it began), not only when its interval ends.

    A transfer's outputs are visible only once their checkpoint commits, so under a
    light load each hop waited out the rest of the interval for nothing; under a heavy
    one input is always ready and checkpoints still run their full interval, which is
    what keeps commits per transfer low at full speed. While a checkpoint has
    uncommitted work the consumer is polled without blocking, so "nothing ready" is
    found at once instead of after the poll timeout. Call after `before_commit`, which
    this wraps. Quix 3.28 has no such policy: it wraps the consumer's `poll_row` and
    the processing context's `commit_checkpoint` (checked here)."""
    ctx = getattr(app, "_processing_context", None)
    consumer = getattr(app, "_consumer", None)
    if ctx is None or not hasattr(ctx, "commit_checkpoint") or consumer is None or not hasattr(consumer, "poll_row"):
        raise RuntimeError(f"quixstreams changed: no commit_checkpoint or poll_row (checked {CHECKED_VERSION})")
    poll_row, commit = consumer.poll_row, ctx.commit_checkpoint
    seen: dict[str, Any] = {"checkpoint": None, "since": 0.0, "idle": False}

    def polling(timeout: float | None = None, buffered: bool = False) -> Any:
        pending = not ctx.checkpoint.empty()
        rows = poll_row(timeout=0 if pending else timeout, buffered=buffered)
        seen["idle"] = rows is None
        return rows

    def committing(force: bool = False, revoking: bool = False) -> None:
        cp = ctx.checkpoint
        now = time.monotonic()
        if cp is not seen["checkpoint"]:
            seen["checkpoint"], seen["since"] = cp, now
        idle = seen["idle"] and now - seen["since"] >= after and not cp.empty()
        commit(force=force or idle, revoking=revoking)

    consumer.poll_row = polling
    ctx.commit_checkpoint = committing


_PARTITION_LOCALS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
T = TypeVar("T")


def partition_local(state: State, factory: Callable[[], T]) -> T:
    """An object that lives exactly as long as this process holds the state's store
    partition: Quix closes a store partition when its Kafka partition is revoked
    and opens a new one when it is assigned again, so whatever another instance
    did to the partition meanwhile is never hidden behind an old copy."""
    transaction = getattr(state, "_transaction", None)
    partition = getattr(transaction, "_partition", None)
    if partition is None:
        raise RuntimeError(f"quixstreams changed: no PartitionTransaction._partition (checked {CHECKED_VERSION})")
    local = _PARTITION_LOCALS.get(partition)
    if local is None:
        local = _PARTITION_LOCALS[partition] = factory()
    return cast(T, local)


def forget_partition_locals() -> None:
    """Drop every partition-local object (after a failure that may have left one
    ahead of the state that was committed)."""
    _PARTITION_LOCALS.clear()


class _LeanState:
    """A key prefix's state in a store transaction, read and written through the
    transaction's own update cache and RocksDB partition, as Quix's `get` and `set`
    do, without the layers between (a status check wrapper, TTL branches, key
    serialization through two helpers): 4-5 % of the ledger's CPU, with four state
    reads and four writes per transfer. Only for a store partition that has never
    seen TTL (`state_for` checks); any other falls back to Quix's own `State`.
    Values and keys are serialized with the transaction's own functions, so the
    bytes in RocksDB and the changelog are Quix's (unit-tested)."""

    __slots__ = ("_cache", "_deleted", "_dumps", "_key_prefix", "_loads", "_prefix", "_read", "_updated")

    def __init__(self, transaction: Any, prefix: bytes) -> None:
        cache = transaction._update_cache
        self._cache = cache
        self._prefix = prefix
        self._key_prefix = prefix + _SEPARATOR
        self._dumps = transaction._dumps
        self._loads = transaction._loads
        # The update cache buckets updates by column family and prefix; reading the
        # bucket once per state is what Quix does per call.
        self._updated = cache._updated["default"][prefix]
        self._deleted = cache._deleted["default"]
        self._read = transaction._partition.get

    def get(self, key: str, default: Any = None) -> Any:
        k = self._key_prefix + self._dumps(key)
        if k in self._deleted:
            return default
        value = self._updated.get(k)
        if value is None:
            value = self._read(k, "default")
            if value is _UNDEFINED:
                return default
        return self._loads(value)

    def set(self, key: str, value: Any) -> None:
        self._cache.set(self._key_prefix + self._dumps(key), self._dumps(value), self._prefix, "default")

    def delete(self, key: str) -> None:
        self._cache.delete(self._key_prefix + self._dumps(key), self._prefix, "default")


def state_for(state: State, prefix: bytes) -> Any:
    """The state of another key in the same partition's store transaction.

    Quix scopes `State` to the message key. A batch carries many accounts of one
    partition, and each must read and write exactly the keys a single command for
    that account would (the prefix is the account id's UTF-8 bytes, as the message
    key of a single command), so both paths share one state per account."""
    transaction = getattr(state, "_transaction", None)
    if transaction is None:
        raise RuntimeError(f"quixstreams changed: no TransactionState._transaction (checked {CHECKED_VERSION})")
    partition = transaction._partition
    if getattr(partition, "uses_ttl_stamps", True) or getattr(partition, "_ttl_stamped_reads_unflagged", True):
        return transaction.as_state(prefix=prefix)
    if transaction.status is not _STARTED:
        raise RuntimeError(f"state transaction is {transaction.status}, not started")
    return _LeanState(transaction, prefix)


# -- changelog records, as `paystream partitions grow` copies them (docs/PARTITIONS.md) --
# A store's changelog record is keyed `<message key> | <JSON of the state key>`, its
# value the JSON of the state value (None: deleted), with the column family in a
# header. Restoring a fresh store from such records is Quix's own recovery path; the
# processed-offsets header names input offsets of the *old* topics, which a restore
# into another generation must not check against its own, so a copy drops it (Quix
# then applies the record as one from an older version, unconditionally).


def changelog_key(prefix: bytes, name: str) -> bytes:
    """The changelog key of state key `name` under message key `prefix`."""
    return prefix + _SEPARATOR + _state_dumps(name)


def split_changelog_key(key: bytes) -> tuple[bytes, str]:
    """(message key, state key) of a changelog record's key."""
    prefix, sep, name = key.partition(_SEPARATOR)
    if not sep:
        raise ValueError(f"changelog key without a {_SEPARATOR!r} separator: {key[:80]!r}")
    decoded = _state_loads(name)
    if not isinstance(decoded, str):
        raise ValueError(f"changelog state key is not a string: {key[:80]!r}")
    return prefix, decoded


def state_value(value: bytes | None) -> Any:
    """A changelog value as the store holds it (None: the key was deleted)."""
    return None if value is None else _state_loads(value)


def state_bytes(value: Any) -> bytes:
    return _state_dumps(value)


def copied_headers(headers: list[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
    """A changelog record's headers for a copy into another generation's changelog:
    the processed-offsets header dropped (see above). A TTL-stamped value carries a
    stamp this code does not read: refused, rather than copied with a wrong meaning."""
    out = []
    for name, value in headers or []:
        if name == _PROCESSED_OFFSETS:
            continue
        if name == _TTL_STAMPED and value:
            raise ValueError("a TTL-stamped changelog record: the ledger's store has no TTL; refusing to copy")
        out.append((name, value))
    return out


DEFAULT_CF_HEADERS: list[tuple[str, bytes]] = [(CHANGELOG_CF_HEADER, b"default")]
