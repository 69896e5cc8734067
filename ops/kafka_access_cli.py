"""`paystream producers` (principals for teams that produce transfers straight to
Kafka), `paystream consumers` (principals for teams that read the journal) and
`paystream acls apply` (every component's user and rights)."""

from __future__ import annotations

import typer
from rich.console import Console

from ops import kafka_auth
from paystream.settings import get_settings

app = typer.Typer(no_args_is_help=True)
consumers_app = typer.Typer(no_args_is_help=True)
acls_app = typer.Typer(no_args_is_help=True)
console = Console()


@acls_app.command("apply")
def apply_acls() -> None:
    """Create each component's SCRAM user and ACLs, and drop ACLs no longer granted.

    `paystream stack up` does this itself; docker-compose's bootstrap service and
    brokers of your own need it run once per release, as admin."""
    settings = get_settings()
    kafka_auth.apply(settings)
    console.print(f"users and ACLs of {', '.join(kafka_auth.COMPONENTS)} applied")


def _add(kind: kafka_auth.ClientKind, name: str, may: str) -> None:
    settings = get_settings()
    try:
        principal = kafka_auth.add_client(settings, kind, name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    path = kafka_auth.password_path(settings, principal)
    console.print(f"user [bold]{principal}[/bold] ({settings.kafka_sasl_mechanism}) may "
                  f"{may.format(principal=principal)}; its password is in {path}")


def _list(kind: kafka_auth.ClientKind) -> None:
    for name in kafka_auth.clients(get_settings(), kind):
        console.print(name)


def _remove(kind: kafka_auth.ClientKind, name: str) -> None:
    settings = get_settings()  # not under the ValueError below: a bad setting is not a bad name
    try:
        kafka_auth.remove_client(settings, kind, name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"{kind}-{name} removed")


@app.command("add")
def add(name: str = typer.Argument(..., help="the producing team or service, e.g. payroll")) -> None:
    """Create a SCRAM user `producer-NAME` that may write transfers to payments.commands, nothing else.

    The password is written to a file only the operator can read (mode 0600); hand it
    over out of band and delete the file."""
    _add("producer", name, f"write {kafka_auth.COMMANDS}")


@app.command("list")
def list_() -> None:
    """Direct producers the broker knows."""
    _list("producer")


@app.command("remove")
def remove(name: str) -> None:
    """Revoke a direct producer: its user, its ACLs and its password file."""
    _remove("producer", name)


@consumers_app.command("add")
def add_consumer(name: str = typer.Argument(..., help="the reading team or service, e.g. accounting")) -> None:
    """Create a SCRAM user `consumer-NAME` that may read ledger.events in its own consumer
    groups (`consumer-NAME.<anything>`), nothing else.

    The journal shows every account's payments: grant it knowingly. A direct producer
    that waits for its outcomes (`paystream.producer`, `outcomes=`) reads with one."""
    _add("consumer", name, f"read {kafka_auth.EVENTS} in groups {{principal}}.*")


@consumers_app.command("list")
def list_consumers() -> None:
    """Journal readers the broker knows."""
    _list("consumer")


@consumers_app.command("remove")
def remove_consumer(name: str) -> None:
    """Revoke a journal reader: its user, its ACLs and its password file."""
    _remove("consumer", name)
