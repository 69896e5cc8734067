"""The bounded memo the ledger and fraud keep per partition: bounded, the newest
value always kept, a pinned key never dropped."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from paystream.stream.memo import PartitionMemo

keys = st.text(alphabet="abcdefghij", min_size=1, max_size=2)


@given(limit=st.integers(1, 12), puts=st.lists(st.tuples(keys, st.integers()), max_size=200),
       pinned=st.sets(keys, max_size=5))  # fmt: skip
def test_the_memo_is_bounded_keeps_the_newest_and_never_drops_a_pinned_key(
        limit: int, puts: list[tuple[str, int]], pinned: set[str]) -> None:
    memo: PartitionMemo[int] = PartitionMemo(limit, pinned=pinned)
    latest: dict[str, int] = {}
    for key, value in puts:
        memo.put(key, value)
        latest[key] = value
        assert memo[key] == value
        assert len(memo) <= max(limit, len(pinned) + 1)
        for k in pinned & latest.keys():
            assert memo.get(k) == latest[k]
        for k, v in latest.items():  # whatever it still holds is the newest value
            assert memo.get(k) in (None, v)
    memo.clear()
    assert len(memo) == 0


def test_a_full_memo_drops_its_oldest_eighth_at_once() -> None:
    memo: PartitionMemo[int] = PartitionMemo(16)
    for i in range(16):
        memo.put(str(i), i)
    memo.put("new", 99)
    assert [memo.get(str(i)) for i in range(3)] == [None, None, 2] and len(memo) == 15


def test_pinned_keys_at_the_front_do_not_stop_the_others_from_leaving() -> None:
    pinned = {"p0", "p1"}
    memo: PartitionMemo[int] = PartitionMemo(8, pinned=pinned)
    for k in ("p0", "p1"):
        memo.put(k, 0)
    for i in range(100):
        memo.put(str(i), i)
    assert len(memo) <= 8 and memo.get("p0") == 0 and memo.get("p1") == 0 and memo.get("99") == 99
