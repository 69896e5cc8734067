"""Whether a port is free, and who holds it when it is not."""

from __future__ import annotations

import socket

import psutil


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a service could bind ``host:port`` right now.

    SO_REUSEADDR mirrors what the services themselves do, so sockets lingering
    in TIME_WAIT from a previous run don't count as taken; a listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str | None:
    """``pid N (name)`` of whoever listens on ``port``, if the OS tells us."""
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, PermissionError):
        return None
    for conn in connections:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            if conn.pid is None:
                return None
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.Error:
                name = "?"
            return f"pid {conn.pid} ({name})"
    return None
