"""Two ledger instances share the partitions; when one is killed the other takes its
partitions over, restores their state from the changelog and carries on."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from paystream import commands as C
from paystream import kafka
from paystream.codec import Codec
from paystream.settings import Settings
from tests.conftest import Component
from tests.kafka_helpers import EventReader, send

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_second_instance_takes_over(stack: Settings, codec: Codec, ledger: Component, log_dir: Path):
    other = Component("ledger", log_dir, env={"PAYSTREAM_LEDGER_INSTANCE": f"peer-{os.getpid()}"}).start()
    try:
        rnd = random.Random(11)
        accounts = [str(uuid.uuid4()) for _ in range(200)]
        reader = EventReader(stack, codec)
        send(stack, codec, [C.open_account(a, external_number=a[:12], owner_id="fo", currency="GBP") for a in accounts])
        deposits = [C.deposit(a, 1_000_000, "GBP") for a in accounts]
        send(stack, codec, deposits)
        reader.terminals([d["command_id"] for d in deposits], timeout=180)
        transfers = [C.transfer(*rnd.sample(accounts, 2), rnd.randint(1, 5_000), "GBP") for _ in range(5_000)]

        def produce() -> None:
            p = kafka.producer(stack)
            for i, t in enumerate(transfers):
                p.produce(C.topic_for(t), key=t["account_id"].encode(), value=codec.encode(C.topic_for(t), t))
                if i % 250 == 0:
                    p.poll(0)
                    time.sleep(0.05)
            assert p.flush(60) == 0

        th = threading.Thread(target=produce)
        th.start()
        time.sleep(2)
        other.kill9()  # its partitions move to the remaining instance
        th.join()
        out = reader.terminals([t["command_id"] for t in transfers], timeout=300)
        assert len(out) == len(transfers)
        mine = set(accounts)
        events = [e for e in reader.events if e["account_id"] in mine]
        assert max(Counter((e["payment_id"], e["type"]) for e in events if e["postings"]).values()) == 1
        completed = [t for t in transfers if out[t["command_id"]]["status"] == "COMPLETED"]
        expected = dict.fromkeys(accounts, 1_000_000)
        for t in completed:
            expected[t["account_id"]] -= t["movement"]["amount"]
            expected[t["movement"]["counterparty_id"]] += t["movement"]["amount"]
        last: dict[str, tuple[int, int]] = {}
        for e in events:
            if e["balance_after"] is not None and e["sequence"] >= last.get(e["account_id"], (-1, 0))[0]:
                last[e["account_id"]] = (e["sequence"], e["balance_after"])
        assert {a: last[a][1] for a in accounts} == expected
        reader.close()
    finally:
        other.stop()
