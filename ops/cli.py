"""The `paystream` command: the one entry point for operators.

Each component registers its own typer sub-app here so the CLI stays a thin
index; the work lives in the component modules.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup


class OperatorCommands(TyperGroup):
    """The root command group: an operator's mistake of order (stack not started,
    database not migrated, a wrong setting), raised by any command, ends as one
    line saying what to run and exit 1 (`ops.hints.explain`), not a traceback.
    Here rather than around `app()` so that every way of running the CLI (the
    console script, `python -m ops.cli`, typer's CliRunner in tests) answers the
    same."""

    def invoke(self, ctx: Any) -> Any:
        from paystream import kafka

        before = kafka.fail_fast(False)  # `_operator` decides; restored afterwards
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # the command's own answer (usage errors, an exit code it chose)
        except Exception as exc:
            from ops.hints import explain, say

            hint = explain(exc)
            if hint is None:
                raise  # a bug: the traceback is the right answer
            say(hint)
            raise typer.Exit(1) from None
        finally:
            kafka.fail_fast(before)


app = typer.Typer(cls=OperatorCommands, no_args_is_help=True, add_completion=False, help="paystream operator CLI")

# Commands that run components or load for as long as asked: their Kafka clients wait
# for a broker that is restarting (librdkafka reconnects), as the components' do.
WAIT_FOR_KAFKA = frozenset({"run", "up", "chaos", "bench", "demo"})


@app.callback()
def _operator(ctx: typer.Context) -> None:
    """Every other command's Kafka clients fail fast (`paystream.kafka.fail_fast`): a
    broker that is not there is one line at once, not a 30 s timeout."""
    from paystream import kafka

    kafka.fail_fast(ctx.invoked_subcommand not in WAIT_FOR_KAFKA)


def _register() -> None:
    from gateway.admin_cli import app as admin_app
    from gateway.bench import register as register_bench_http
    from ops.asyncapi import register as register_asyncapi
    from ops.audit import app as audit_app
    from ops.db import app as db_app
    from ops.k8s import app as k8s_app
    from ops.kafka_access_cli import acls_app, consumers_app
    from ops.kafka_access_cli import app as producers_app
    from ops.lab.bench_cli import app as bench_app
    from ops.lab.bench_sink import register as register_bench_sink
    from ops.lab.chaos_cli import register as register_chaos
    from ops.partitions import register as register_partitions
    from ops.run_cli import register as register_run
    from ops.schemas_cli import app as schemas_app
    from ops.stack_cli import app as stack_app
    from ops.toolkit import register as register_toolkit
    from ops.topics import app as topics_app
    from ops.verify import register as register_verify

    app.add_typer(stack_app, name="stack", help="local Kafka, registry, Postgres and Redis")
    app.add_typer(topics_app, name="topics", help="topics from the declarative spec")
    app.add_typer(schemas_app, name="schemas", help="Avro schemas and the registry")
    app.add_typer(db_app, name="db", help="Postgres read-model migrations")
    app.add_typer(producers_app, name="producers", help="Kafka principals for direct producers")
    app.add_typer(consumers_app, name="consumers", help="Kafka principals for readers of the journal")
    app.add_typer(acls_app, name="acls", help="Kafka users and ACLs of paystream's components")
    app.add_typer(k8s_app, name="k8s", help="the Helm chart (deploy/helm/paystream): generate its data, lint it")
    app.add_typer(bench_app, name="bench", help="benchmarks that print figures")
    register_bench_http(bench_app)
    app.add_typer(admin_app, name="admin", help="administrative tasks (admin users)")
    app.add_typer(audit_app, name="audit", help="signed exports of an account's journal, and their check")
    register_run(app)
    register_verify(app)
    register_bench_sink(bench_app)
    register_chaos(app)
    register_partitions(app)
    register_toolkit(app)
    register_asyncapi(app)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
