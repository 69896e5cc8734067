"""`paystream admin create-user`: the only way to make an admin (never over HTTP)."""

from __future__ import annotations

import os

import typer
from rich.console import Console

from gateway import store
from gateway.security import hash_password, normalise_email, password_problem, valid_email
from paystream.settings import get_settings

app = typer.Typer(no_args_is_help=True)


@app.command("create-user")
def create_user(
    email: str = typer.Option(..., "--email"),
    password: str = typer.Option(
        None, "--password", help="or PAYSTREAM_ADMIN_PASSWORD; prompted for when neither is given"
    ),
    role: str = typer.Option("admin", "--role", help="admin or user"),
    name: str = typer.Option("Administrator", "--name"),
) -> None:
    """Create a user with the given role directly in Postgres."""
    console = Console()
    password = (
        password
        or os.environ.get("PAYSTREAM_ADMIN_PASSWORD")
        or typer.prompt("password", hide_input=True, confirmation_prompt=True)
    )
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
