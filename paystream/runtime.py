"""Process-wide runtime tuning shared by the long-running services."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Call once everything long-lived is allocated (modules, schemas, clients, pools).

    Freezing moves those objects out of the cyclic GC's reach and a higher young
    threshold makes collections rarer: full collections over a large heap were the
    ledger's longest pauses, and in the gateway they showed up in the p99, since
    every pause delays every request (or every partition) behind it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
