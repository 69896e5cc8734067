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
    from ops.db import app as db_app
    from ops.kafka_access_cli import acls_app
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
    app.add_typer(acls_app, name="acls", help="Kafka users and ACLs of paystream's components")
    app.add_typer(bench_app, name="bench", help="benchmarks that print figures")
    register_bench_http(bench_app)
    app.add_typer(admin_app, name="admin", help="administrative tasks (admin users)")
    register_run(app)
    register_verify(app)
    register_bench_sink(bench_app)
    register_chaos(app)
    register_toolkit(app)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
