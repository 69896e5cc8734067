"""The one exception the stack raises on purpose: callers (the CLI) turn it into a message and exit 1."""

from __future__ import annotations


class StackError(Exception):
    """Anything that stops the stack from coming up or going down; the message is for humans."""
