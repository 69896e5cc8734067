"""The ledger's ticks: the log's own time, written to every partition of the legs topic.

Holds expire by time, and the ledger reads time only from its records, so that a
replay decides every expiry as the first run did. A partition with no traffic would
never see time pass, so each ledger process writes a TICK leg to every partition of
`ledger.legs` every `ledger_tick_interval` seconds, stamped with its clock. The
partition's writer applies it like any leg (`domain.expire_due`): the expiries it
causes commit with the partition's state in one Kafka transaction.

Ticks carry no money and nothing is keyed by them, so they need no exactly-once: a
lost tick only delays expiries until the next, a repeated one finds nothing more due.
Several ledger instances all tick every partition: a few more tiny records a second.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from paystream import ids, kafka
from paystream.codec import Codec
from paystream.records import Leg
from paystream.settings import Settings
from pipelines.ledger import domain

log = logging.getLogger("paystream.ledger.clock")


def tick(partition: int, partitions: int, now_ms: int) -> Leg:
    key = domain.clock_key(partition, partitions)
    return {
        "leg_id": ids.uuid5(domain.NAMESPACE, f"tick:{partition}:{now_ms}"), "kind": "TICK",
        "command_id": key, "payment_id": key, "account_id": key, "counterparty_id": key,
        "amount": 0, "currency": "", "reason": None, "requested_by": "ledger", "issued_at": now_ms,
    }  # fmt: skip


class Ticker:
    """A daemon thread with a producer of its own (the ledger's transactional producer
    belongs to the processing loop, and a tick must not wait for a checkpoint)."""

    def __init__(self, settings: Settings, codec: Codec, partitions: int, topic: str = domain.LEGS) -> None:
        self.settings = settings
        self.codec = codec
        self.partitions = partitions
        self.topic = topic  # the legs topic of the ledger's generation
        self.interval = settings.ledger_tick_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-ticks", daemon=True)

    def start(self) -> Ticker:
        if self.interval > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        publisher = kafka.BatchPublisher(lambda: kafka.producer(self.settings, **{"linger.ms": 5}))
        failed = 0

        def report(err: Any, _msg: Any) -> None:
            nonlocal failed
            if err is not None:
                failed += 1

        while not self._stop.wait(self.interval):
            now = int(time.time() * 1000)
            for p in range(self.partitions):
                value = self.codec.encode(self.topic, dict(tick(p, self.partitions, now)))
                publisher.produce(self.topic, key=domain.clock_key(p, self.partitions).encode(), value=value,
                                  on_delivery=report, partition=p, timestamp=now)
            publisher.flush(max(1.0, self.interval))
            if failed:
                log.warning("%d ticks were not delivered; expiries wait for the next ones", failed)
                failed = 0
