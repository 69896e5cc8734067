"""A stream processor that cannot commit must stop, so its supervisor starts a fresh one.

Quix Streams 3.28 gives transactional operations no timeout outside a rebalance
(`send_offsets_to_transaction`, `commit_transaction` wait "until done"). Under
`paystream chaos` (kafka-restart) the ledger hung in `send_offsets_to_transaction`
for good after the broker came back, next to librdkafka's leaderless-partition bug
(confluentinc/librdkafka#5430): alive, in the group, holding every partition,
processing nothing. A process that cannot commit makes no progress, so the guard
ends it; under exactly-once a hard exit is exactly as safe as the `kill -9` the
chaos tests inflict (the next instance fences the open transaction and replays
from the last commit).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

log = logging.getLogger("paystream.liveness")

EXIT_STALLED = 75  # EX_TEMPFAIL: try again


def exit_on_stalled_commits(app: Any, component: str, limit: float) -> bool:
    """Wrap the Quix app's checkpoint commits; exit the process when one runs longer than
    `limit` seconds. Returns False (and guards nothing) if Quix's internals moved."""
    ctx = getattr(app, "_processing_context", None)
    if ctx is None or not hasattr(ctx, "commit_checkpoint"):
        log.warning("cannot guard %s commits: no processing context", component)
        return False
    original = ctx.commit_checkpoint
    since: list[float | None] = [None]

    def guarded(force: bool = False, revoking: bool = False) -> None:
        since[0] = time.monotonic()
        try:
            original(force=force, revoking=revoking)
        finally:
            since[0] = None

    def watch() -> None:
        while True:
            time.sleep(1.0)
            started = since[0]
            if started is not None and time.monotonic() - started > limit:
                log.critical("%s: a checkpoint commit has not returned for %.0fs; exiting so a fresh "
                             "process takes over (exactly-once: the open transaction is fenced)",
                             component, time.monotonic() - started)
                logging.shutdown()
                os._exit(EXIT_STALLED)

    ctx.commit_checkpoint = guarded
    threading.Thread(target=watch, name=f"{component}-commit-guard", daemon=True).start()
    return True


# A checkpoint commit takes milliseconds; one that has not returned after this long
# is hung, and the process exits for the supervisor to replace.
COMMIT_STALL_SECONDS = 30.0


def run_app(app: Any, component: str) -> None:
    """How every Quix app of paystream runs (ledger, fraud, compensation,
    notifications): exit on a hung commit, and the startup heap frozen out of the
    cyclic GC (`paystream.runtime.tune_gc`) once everything long-lived is built."""
    from paystream import runtime

    exit_on_stalled_commits(app, component, COMMIT_STALL_SECONDS)
    runtime.tune_gc()
    app.run()
