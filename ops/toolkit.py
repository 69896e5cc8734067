"""The operator toolkit (issue 6) in one registration call, so `ops/cli.py`
(shared by every component) gains a single line for all of it."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from ops.demo import register as register_demo
    from ops.dlq import register as register_dlq
    from ops.offsets import register as register_offsets
    from ops.reprocess import register as register_reprocess
    from ops.state import register as register_state
    from ops.webhooks_cli import register as register_webhooks

    register_reprocess(app)
    register_dlq(app)
    register_offsets(app)
    register_state(app)
    register_demo(app)
    register_webhooks(app)
