"""The `paystream` command: the one entry point for operators.

Each component registers its own typer sub-app here so the CLI stays a thin
index; the work lives in the component modules.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="paystream operator CLI")


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
    register_toolkit(app)
    register_asyncapi(app)


def explain(exc: BaseException) -> str | None:
    """One line saying what to run, for the failures an operator causes by order of
    operations (stack not started, database not migrated, a wrong setting), found
    anywhere in the exception's chain; None for anything else (a bug: the traceback
    is the right answer then)."""
    import psycopg
    from confluent_kafka import KafkaException
    from pydantic import ValidationError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from ops.stack import StackError

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, psycopg.errors.UndefinedTable):
            return f"the database is not migrated ({first}): run `paystream db migrate` (or `paystream up`)"
        if isinstance(e, psycopg.OperationalError):
            return f"cannot reach Postgres ({first}): start the stack with `paystream stack up`"
        if isinstance(e, KafkaException):
            return f"Kafka refused or is unreachable ({first}): is the stack up (`paystream stack status`)?"
        if isinstance(e, RedisConnectionError):
            return f"cannot reach Redis ({first}): start the stack with `paystream stack up`"
        if isinstance(e, StackError):
            return str(e)
        if isinstance(e, ValidationError):
            return f"a setting is invalid: {first} (PAYSTREAM_* environment or .env)"
        e = e.__cause__ or e.__context__
    return None


def main() -> None:
    _register()
    try:
        app()
    except Exception as exc:
        hint = explain(exc)
        if hint is None:
            raise
        from rich.console import Console

        Console(stderr=True).print(f"[red]{hint}[/red]", highlight=False)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
