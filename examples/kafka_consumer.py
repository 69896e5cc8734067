"""A consumer of the ledger's journal: prints typed ledger events from `ledger.events`
(read_committed) in a consumer group of its own, committing after each one it printed.

    .venv/bin/python examples/kafka_consumer.py [--group NAME] [--limit N] [--idle SECONDS]

Run twice with the same group: the second run goes on where the first committed.
Kafka, the registry and the principal come from the PAYSTREAM_* environment (docs/SDK.md);
the principal needs READ on `ledger.events` and on the group.
"""

from __future__ import annotations

import argparse
import sys

from paystream.consumer import EventConsumer
from paystream.money import format_minor


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--group", default="example-journal-printer")
    args.add_argument("--limit", type=int, default=20, help="stop after this many events")
    args.add_argument("--idle", type=float, default=5.0, help="stop when no event came for this long")
    opts = args.parse_args()
    printed = 0
    with EventConsumer(opts.group) as consumer:
        for event in consumer.events(idle_timeout=opts.idle):
            minor, currency = event["amount"], event["currency"]
            amount = format_minor(minor, currency) if minor is not None and currency else ""
            print(f"{event['account_id']} #{event['sequence']:<4} {event['type']:<20} {event['status']:<9} "
                  f"{amount:>10} {event['currency'] or '':<3} {event['reason'] or ''}")
            consumer.commit()  # processed: at least once, never lost
            printed += 1
            if printed >= opts.limit:
                break
        if consumer.skipped:
            print(f"skipped {consumer.skipped} records that are no ledger events", file=sys.stderr)
    print(f"{printed} events", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
