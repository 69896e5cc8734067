"""`rediss://` means TLS to Redis, never plaintext; unknown schemes are refused."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
from redis.exceptions import RedisError

from gateway.resp import RespClient


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server that records the first bytes a client sends and answers nothing."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5)
    got: list[bytes] = []

    def accept() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(3)
            with contextlib.suppress(OSError):
                got.append(conn.recv(64))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1], got
    thread.join(5)
    srv.close()


def _ping(url: str) -> None:
    async def go() -> None:
        client = RespClient(url, timeout=1)
        try:
            await client.execute("PING")
        finally:
            await client.close()

    asyncio.run(go())


def test_rediss_speaks_tls_first(listener: tuple[int, list[bytes]]) -> None:
    port, got = listener
    with pytest.raises((RedisError, OSError, ssl.SSLError, TimeoutError)):
        _ping(f"rediss://:secret-password@127.0.0.1:{port}/0")
    assert got, "nothing was sent"
    assert got[0][:1] == b"\x16", got[0]  # a TLS handshake record, not a Redis command
    assert b"secret-password" not in got[0] and b"PING" not in got[0]


def test_rediss_verifies_the_server() -> None:
    tls = RespClient("rediss://redis.example.com:6380/0").ssl
    assert tls is not None and tls.verify_mode == ssl.CERT_REQUIRED and tls.check_hostname
    assert RespClient("redis://127.0.0.1:6379/0").ssl is None


@pytest.mark.parametrize("url", ["unix:///tmp/redis.sock", "http://127.0.0.1:6379/0", "valkey://127.0.0.1/0"])
def test_unknown_schemes_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="scheme"):
        RespClient(url)
