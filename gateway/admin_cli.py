"""`paystream admin create-user`: the only way to make an admin (never over HTTP)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from gateway import store
from gateway.security import hash_password, normalise_email, password_problem, valid_email
from paystream.settings import get_settings

app = typer.Typer(no_args_is_help=True)


def _password(from_stdin: bool, from_file: Path | None) -> str:
    if from_stdin and from_file is not None:
        raise typer.BadParameter("give --password-stdin or --password-file, not both")
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if from_file is not None:
        lines = from_file.read_text().splitlines()
        return lines[0] if lines else ""
    return os.environ.get("PAYSTREAM_ADMIN_PASSWORD") or typer.prompt(
        "password", hide_input=True, confirmation_prompt=True
    )


@app.command("create-user")
def create_user(
    email: str = typer.Option(..., "--email"),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="read the password from the first line of stdin"
    ),
    password_file: Path | None = typer.Option(
        None, "--password-file", help="read the password from this file (first line)"
    ),
    role: str = typer.Option("admin", "--role", help="admin or user"),
    name: str = typer.Option("Administrator", "--name"),
) -> None:
    """Create a user with the given role directly in Postgres.

    The password comes from --password-stdin, --password-file,
    PAYSTREAM_ADMIN_PASSWORD or a prompt, never from a command-line value:
    arguments are visible to every local user in the process list and end up in
    shell history.
    """
    console = Console()
    password = _password(password_stdin, password_file)
    email = normalise_email(email)
    if role not in ("admin", "user"):
        raise typer.BadParameter("role must be admin or user")
    if not valid_email(email):
        raise typer.BadParameter("not a valid email address")
    problem = password_problem(password)
    if problem:
        raise typer.BadParameter(problem)
    try:
        user = store.create_user_sync(
            get_settings().postgres_dsn,
            email=email,
            password_hash=hash_password(password),
            name=name,
            role=role,
        )
    except store.EmailTaken:
        console.print(f"[red]{email} already exists[/red]")
        raise typer.Exit(1) from None
    console.print(f"created {role} {email} ({user.user_id})")
