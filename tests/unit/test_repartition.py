"""Growing the ledger's partitions (docs/PARTITIONS.md): the pure parts.

The partition mapping of a grown generation, the topic names of a generation, and the
move of the ledger's state: every account's records land whole on the account's new
partition and restore to exactly the state it had, and the hold timers are rebuilt so
that every open hold still expires, on the partition that now owns its account."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paystream import commands as C
from paystream import topics
from paystream.codec import spec_of, topic_specs
from paystream.partitioning import partition_for
from paystream.settings import Settings
from paystream.stream import quix_compat
from paystream.stream.store import DictStore
from pipelines.ledger import domain
from pipelines.ledger.repartition import Repartition, StateRecord, repartition

accounts = st.uuids().map(str)
counts = st.sampled_from([(8, 16), (8, 32), (4, 16), (8, 12), (16, 32), (1, 3)])
times = st.integers(10**12, 10**12 + 10**7)  # ms: holds and the move within a few hours of each other


@given(accounts, st.sampled_from([1, 2, 4, 8]), st.sampled_from([2, 3, 4]))
def test_multiplying_the_count_splits_each_partition_and_never_merges_two(account, old, factor):
    """murmur2 mod k*n, taken mod n, is murmur2 mod n: an account's new partition is one
    of the k its old partition split into, so each new partition's accounts all come
    from one old partition (one old writer's state)."""
    assert partition_for(account, old * factor) % old == partition_for(account, old)


def test_generation_names_carry_the_count_and_the_first_generation_keeps_its_names():
    assert topics.ledger_topics(None).inputs == ("payments.commands", "payments.privileged", "ledger.legs")
    grown = topics.ledger_topics(16)
    assert grown.inputs == ("payments.commands.p16", "payments.privileged.p16", "ledger.legs.p16")
    assert Settings(ledger_partitions=16).ledger_topics == grown
    assert topics.generation_of("ledger.legs.p16") == ("ledger.legs", 16)
    assert topics.generation_of("ledger.events") == ("ledger.events", None)
    assert topics.generation_of("fraud.flows.p16") == ("fraud.flows.p16", None)  # not a ledger input
    assert topics.in_generation("payments.privileged", grown) == "payments.privileged.p16"
    assert topics.in_generation("payments.privileged.p16", topics.ledger_topics(None)) == "payments.privileged"
    assert topics.in_generation("ledger.events", grown) == "ledger.events"


def test_a_generation_topic_has_its_base_spec_under_its_own_name_and_count():
    base = topic_specs()["payments.commands"]
    spec = spec_of("payments.commands.p16")
    assert (spec.name, spec.partitions, spec.subject) == ("payments.commands.p16", 16, "payments.commands.p16-value")
    assert (spec.value_schema, spec.record_schemas, spec.timestamp_type) == (
        base.value_schema, base.record_schemas, base.timestamp_type)


def test_a_generation_that_was_grown_past_sees_its_successor():
    existing = ["payments.commands", "ledger.legs", "payments.commands.p16", "ledger.events"]
    assert topics.successors(existing, topics.ledger_topics(None)) == ["payments.commands.p16"]
    assert topics.successors(existing, topics.ledger_topics(16)) == []
    assert topics.successors([*existing, "payments.commands.p32"], topics.ledger_topics(16)) == [
        "payments.commands.p32"]
    # and a grown one its predecessors, newest first: it waits for the newest's seal
    assert topics.predecessors([*existing, "payments.commands.p32"], topics.ledger_topics(32)) == [
        topics.ledger_topics(16), topics.ledger_topics(None)]
    assert topics.predecessors(existing, topics.ledger_topics(None)) == []
    assert topics.sealed_marker(topics.ledger_topics(16)) != topics.sealed_marker(topics.ledger_topics(32))


# -- state ------------------------------------------------------------------------------
def _value(draw: Any, name: str) -> Any:
    if name.startswith("h:"):
        return {"st": draw(st.sampled_from(["HELD", "CAPTURED", "VOIDED", "EXPIRED"])), "amount": 5,
                "currency": "EUR", "to": str(uuid.uuid4()), "exp": draw(times)}
    ints = st.integers(-(2**63), 2**63 - 1)
    return draw(st.one_of(ints, st.text(max_size=5), st.dictionaries(st.text(max_size=3), ints,
                                                                            max_size=2)))


@st.composite
def ledger_states(draw: Any) -> tuple[int, int, dict[str, dict[str, Any]], list[tuple[int, StateRecord]]]:
    """A random ledger state, as the changelog of `old` partitions holds it: each account's
    keys on its partition, with older values and deletions before the last."""
    old, new = draw(counts)
    ids = draw(st.lists(accounts, min_size=1, max_size=12, unique=True))
    state: dict[str, dict[str, Any]] = {}
    log: list[tuple[int, StateRecord]] = []
    headers = (("__column_family__", b"default"), ("__processed_tp_offsets__", b'{"ledger.legs":4}'))
    for account in ids:
        names = draw(st.lists(st.sampled_from(["a", "q", "h", "c:1", "c:2", "p:1", "l:1", "h:1", "h:2", "h:3"]),
                              min_size=1, max_size=8))
        for name in names:
            key = quix_compat.changelog_key(account.encode(), name)
            if draw(st.booleans()) and name in state.get(account, {}):
                state[account].pop(name)
                log.append((partition_for(account, old), StateRecord(key, None, headers[:1])))
            else:
                value = _value(draw, name)
                state.setdefault(account, {})[name] = value
                log.append((partition_for(account, old), StateRecord(key, quix_compat.state_bytes(value), headers)))
    # the old partitions' clock keys, with timers of their own: they must not survive
    for p in range(old):
        clock = domain.clock_key(p, old).encode()
        log.append((p, StateRecord(quix_compat.changelog_key(clock, "tc"), b"1", headers)))
        log.append((p, StateRecord(quix_compat.changelog_key(clock, "t:5:0"), b'["x","y"]', headers)))
    # the changelog is read partition by partition: interleave partitions, keep each one's order
    by_partition: dict[int, list[StateRecord]] = {}
    for p, r in log:
        by_partition.setdefault(p, []).append(r)
    interleaved = [(p, r) for p in draw(st.permutations(sorted(by_partition))) for r in by_partition[p]]
    state = {a: s for a, s in state.items() if s}
    return old, new, state, interleaved


def _restore(records: list[StateRecord]) -> dict[bytes, dict[str, Any]]:
    """What a fresh store restored from `records` holds, per message key."""
    out: dict[bytes, dict[str, Any]] = {}
    for r in records:
        prefix, name = quix_compat.split_changelog_key(r.key)
        if r.value is None:
            out.get(prefix, {}).pop(name, None)
        else:
            out.setdefault(prefix, {})[name] = quix_compat.state_value(r.value)
    return {k: v for k, v in out.items() if v}


@settings(max_examples=150, deadline=None)
@given(ledger_states(), times)
def test_every_account_moves_whole_to_its_new_partition_and_restores_to_the_same_state(case, now_ms):
    old, new, state, log = case
    moved = repartition((r for _, r in log), old, new, now_ms)
    clocks = {domain.clock_key(p, new).encode(): p for p in range(new)}
    restored_accounts: dict[str, dict[str, Any]] = {}
    for p, records in moved.items():
        assert all(dict(r.headers).keys() == {"__column_family__"} for r in records)  # no old offsets
        for prefix, values in _restore(records).items():
            if prefix in clocks:
                assert clocks[prefix] == p  # a clock key only on its own partition
                continue
            account = prefix.decode()
            assert partition_for(account, new) == p, "an account's state on a partition that is not its writer"
            restored_accounts[account] = values
    assert restored_accounts == state


@settings(max_examples=150, deadline=None)
@given(ledger_states(), times)
def test_every_open_hold_gets_one_timer_on_its_accounts_new_partition_and_expires_there(case, now_ms):
    old, new, state, log = case
    moved = repartition((r for _, r in log), old, new, now_ms)
    held = {(a, name[2:]): v["exp"] for a, s in state.items() for name, v in s.items()
            if name.startswith("h:") and v["st"] == "HELD"}
    due: list[tuple[str, str]] = []
    for p, records in moved.items():
        store = DictStore(dict(_restore(records).get(domain.clock_key(p, new).encode(), {})))
        found = []
        while store.get("tc", 0):  # ticks until every timer fired (a tick walks a bounded number of buckets)
            found += domain.HoldTimers(store).due(max([now_ms, *held.values()]) + 2_000)
        assert all(partition_for(account, new) == p for account, _ in found)
        due += found
    assert sorted(due) == sorted(held)


def test_counts_of_what_moved():
    account = str(uuid.uuid4())
    clock = domain.clock_key(0, 8).encode()
    r = Repartition(8, 16)
    assert r.route(StateRecord(quix_compat.changelog_key(clock, "tn"), b"5")) is None
    hold = quix_compat.state_bytes({"st": "HELD", "exp": 9, "amount": 1, "currency": "EUR", "to": account})
    routed = r.route(StateRecord(quix_compat.changelog_key(account.encode(), "h:p"), hold))
    assert routed is not None and routed[0] == partition_for(account, 16)
    assert (r.moved, r.dropped, r.open_holds) == (1, 1, 1)


def test_forwarding_splits_batches_into_their_items_and_drops_ticks():
    """What `partitions grow` forwards from the old generation: one record per command or
    leg, keyed by its account (a batch's partition means nothing under the new count)."""
    from ops.partitions import carried
    from pipelines.ledger.clock import tick

    a, b = C.transfer("a", "b", 1, "EUR"), C.transfer("c", "d", 2, "EUR")
    assert carried("io.paystream.commands.Command", a) == [a]
    assert carried("io.paystream.commands.CommandBatch", {"items": [a, b]}) == [a, b]
    leg = {"kind": "CREDIT", "account_id": "b"}
    ticks = [dict(tick(p, 8, 1000)) for p in range(2)]
    assert carried("io.paystream.ledger.LegBatch", {"items": [ticks[0], leg, ticks[1]]}) == [leg]
    assert carried("io.paystream.ledger.Leg", ticks[0]) == []
    assert carried("io.paystream.ledger.LedgerEvent", {}) is None


def test_dead_letters_replay_to_the_generation_the_ledger_reads_and_legs_never():
    from ops.dlq import Letter, replay, target_topic

    def letter(source: str) -> Letter:
        return Letter({"dead_letter_id": "x", "source_topic": source}, 0, 0)

    grown = Settings(ledger_partitions=16)
    assert target_topic(grown, letter("payments.commands")) == "payments.commands.p16"
    assert target_topic(grown, letter("payments.privileged.p16")) == "payments.privileged.p16"
    assert target_topic(Settings(), letter("payments.commands")) == "payments.commands"
    with pytest.raises(ValueError, match="internal"):
        replay(grown, None, [letter("ledger.legs.p16")], console=None)  # type: ignore[arg-type]
