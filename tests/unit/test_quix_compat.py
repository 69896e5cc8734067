"""paystream's uses of Quix internals against a real Quix RocksDB store partition."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quixstreams.state.rocksdb import RocksDBOptions, RocksDBStorePartition

from paystream.stream import quix_compat

keys = st.sampled_from(["a", "q", "c:1", "p:2", "l:3"])
ints = st.integers(-(2**63), 2**63 - 1)
values = st.one_of(st.none(), ints, st.text(max_size=8),
                   st.dictionaries(st.sampled_from(["balance", "st", "fp"]), ints, max_size=3))
prefixes = st.sampled_from([b"acct-1", b"acct-2"])
ops = st.lists(st.tuples(st.sampled_from(["set", "delete", "read"]), prefixes, keys, values), max_size=40)


def _updates(tx: Any) -> tuple[dict[bytes, dict[bytes, bytes]], set[bytes]]:
    cache = tx._update_cache
    return {p: dict(u) for p, u in cache.get_updates("default").items() if u}, set(cache.get_deletes("default"))


@settings(max_examples=60, deadline=None)
@given(ops, ops)
def test_lean_state_reads_and_writes_what_quix_state_does(before: list[Any], during: list[Any]) -> None:
    """Two stores get the same committed history, then the same operations in an open
    transaction (reads, writes and deletes): one through Quix's `State`, one through `quix_compat.state_for`.
    Every read answers the same, and the bytes queued for RocksDB and the changelog
    are identical."""
    with tempfile.TemporaryDirectory() as d:
        parts = [RocksDBStorePartition(path=str(Path(d) / name), options=RocksDBOptions()) for name in ("q", "l")]
        try:
            for part in parts:
                tx = part.begin()
                for op, prefix, key, value in before:
                    if op != "read":
                        tx.as_state(prefix=prefix).set(key, value)
                tx.prepare()
                tx.flush()
            quix_tx, lean_tx = parts[0].begin(), parts[1].begin()
            for op, prefix, key, value in during:
                quix_state = quix_tx.as_state(prefix=prefix)
                lean_state = quix_compat.state_for(lean_tx.as_state(prefix=prefix), prefix)
                assert type(lean_state).__name__ == "_LeanState"
                if op == "set":
                    quix_state.set(key, value)
                    lean_state.set(key, value)
                elif op == "delete":
                    quix_state.delete(key)
                    lean_state.delete(key)
                assert lean_state.get(key, "default") == quix_state.get(key, "default")
                assert lean_state.get("absent") is None
            assert _updates(lean_tx) == _updates(quix_tx)
        finally:
            for part in parts:
                part.close()


class _Inner:
    """A Quix changelog producer as `_HeldBackChangelog` sees it."""

    changelog_name = "changelog__x"
    partition = 3

    def __init__(self) -> None:
        self.produced: list[tuple[bytes, bytes | None, Any]] = []

    def produce(self, key: bytes, value: bytes | None = None, headers: Any = None, **_: Any) -> None:
        self.produced.append((key, value, headers))


class _Raw:
    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes | None, bytes, Any]] = []

    def produce(self, topic: str, value: bytes | None, key: bytes, **kw: Any) -> None:
        self.produced.append((topic, value, key, kw))


def test_held_back_changelog_sends_all_but_the_last_record_raw_without_the_offsets_header() -> None:
    """Every record keeps its column family (a restore refuses a record without it);
    the processed-offsets header, which only an at-least-once restore reads, stays on
    the last record only, which goes through Quix so that it records the offset."""
    inner, raw = _Inner(), _Raw()
    proxy = quix_compat._HeldBackChangelog(inner, raw)
    headers = {"__column_family__": "default", "__processed_tp_offsets__": b'{"payments.commands":7}'}
    for i in range(3):
        proxy.produce(key=b"k%d" % i, value=b"v%d" % i, headers=headers)
    proxy.release()
    assert [(t, v, k, kw["partition"], kw["headers"]) for t, v, k, kw in raw.produced] == [
        ("changelog__x", b"v0", b"k0", 3, [("__column_family__", b"default")]),
        ("changelog__x", b"v1", b"k1", 3, [("__column_family__", b"default")]),
    ]
    assert inner.produced == [(b"k2", b"v2", headers)]


def test_fast_changelog_refuses_an_at_least_once_app() -> None:
    from quixstreams import Application

    app = Application(broker_address="127.0.0.1:1", processing_guarantee="at-least-once")
    with pytest.raises(ValueError, match="exactly-once"):
        quix_compat.fast_changelog(app)


class _Checkpoint:
    def __init__(self, pending: bool) -> None:
        self.pending = pending

    def empty(self) -> bool:
        return not self.pending


class _Ctx:
    def __init__(self) -> None:
        self.checkpoint = _Checkpoint(False)
        self.commits: list[bool] = []

    def commit_checkpoint(self, force: bool = False, revoking: bool = False) -> None:
        self.commits.append(force)
        if force:
            self.checkpoint = _Checkpoint(False)


class _Consumer:
    def __init__(self) -> None:
        self.ready: list[Any] = []
        self.timeouts: list[float | None] = []

    def poll_row(self, timeout: float | None = None, buffered: bool = False) -> Any:
        self.timeouts.append(timeout)
        return self.ready.pop(0) if self.ready else None


def _idle_app(after: float) -> tuple[_Ctx, _Consumer]:
    app = type("App", (), {})()
    app._processing_context, app._consumer = _Ctx(), _Consumer()
    quix_compat.commit_when_idle(app, after)
    return app._processing_context, app._consumer


def test_commit_when_idle_commits_once_nothing_is_ready() -> None:
    """Group commit: work waits for a commit only while more input is ready."""
    ctx, consumer = _idle_app(0.0)
    consumer.ready = ["row"]
    assert consumer.poll_row(timeout=0.05) == "row"  # nothing pending yet: the normal timeout
    ctx.checkpoint.pending = True  # the row changed state
    ctx.commit_checkpoint()
    assert ctx.commits == [False]  # input was ready: no early commit
    consumer.ready = ["more"]
    consumer.poll_row(timeout=0.05)
    assert consumer.timeouts == [0.05, 0]  # uncommitted work: never block waiting for input
    ctx.commit_checkpoint()
    assert ctx.commits == [False, False]
    assert consumer.poll_row(timeout=0.05) is None  # caught up
    ctx.commit_checkpoint()
    assert ctx.commits == [False, False, True]  # committed at once
    assert consumer.poll_row(timeout=0.05) is None and consumer.timeouts[-1] == 0.05  # committed: block again
    ctx.commit_checkpoint()
    assert ctx.commits[-1] is False  # an empty checkpoint is never forced


def test_commit_when_idle_waits_until_the_checkpoint_is_old_enough() -> None:
    ctx, consumer = _idle_app(60.0)
    ctx.commit_checkpoint()
    ctx.checkpoint.pending = True
    assert consumer.poll_row(timeout=0.05) is None
    ctx.commit_checkpoint()
    assert ctx.commits == [False, False]  # idle, but younger than `after`: the interval decides


class _Expiring:
    """A checkpoint whose interval ends between two looks at the clock."""

    def __init__(self) -> None:
        self.looks = 0

    def expired(self) -> bool:
        self.looks += 1
        return self.looks > 1

    def empty(self) -> bool:
        return False


class _QuixCtx:
    """Commits as Quix's `ProcessingContext.commit_checkpoint` does: when expired or forced."""

    def __init__(self) -> None:
        self._cp = _Expiring()
        self.committed: list[_Expiring] = []

    @property
    def checkpoint(self) -> _Expiring:
        return self._cp

    def commit_checkpoint(self, force: bool = False, revoking: bool = False) -> None:
        if self._cp.expired() or force:
            self.committed.append(self._cp)
            self._cp = _Expiring()


def test_before_commit_runs_its_hook_for_every_checkpoint_that_commits() -> None:
    """The hook adds what the checkpoint must carry (fraud's changed accounts, the
    ledger's outputs): a commit without it would lose them. Quix asks the clock again,
    so a checkpoint expiring between the two looks must not slip through."""
    app = type("App", (), {})()
    app._processing_context = ctx = _QuixCtx()
    hooked: list[_Expiring] = []
    quix_compat.before_commit(app, lambda: hooked.append(ctx.checkpoint), lambda: None)
    for _ in range(5):
        ctx.commit_checkpoint()
    ctx.commit_checkpoint(force=True)
    assert ctx.committed, "the checkpoints expired and committed"
    assert hooked == ctx.committed
