"""A small pipelining Redis client for the gateway's hot path.

Every payment makes three Redis calls. With redis-py's asyncio client each call
checks a connection out of a pool, runs retry and deprecation wrappers and parses
the reply in Python, which cost more CPU than the Lua scripts themselves. Here
all calls share one connection: requests are written as they come, replies are
matched to them in order (Redis answers in order), and hiredis parses. Errors are
redis-py's exception types, so callers and the 503 handler treat them the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.outgoing: list[bytes] = []

    def send(self, data: bytes) -> None:
        """Queue a command; everything queued in one loop iteration goes out in one
        write, so concurrent requests share a system call."""
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outgoing.append(data)

    def _flush(self) -> None:
        data, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(data))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            fut = self.waiters.popleft()
            if fut.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(ResponseError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(RedisConnectionError(f"connection to Redis lost: {exc}"))


class Script:
    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


def _tls_context(url: str) -> ssl.SSLContext | None:
    """TLS for ``rediss://`` (certificate and host name verified; ``ssl_ca_certs=PATH``
    in the query names a private CA, as in redis-py), none for ``redis://``.

    Any other scheme is refused: falling back to plaintext would send the password
    and every idempotency record in the clear to a server the operator meant to
    reach over TLS.
    """
    u = urlparse(url)
    if u.scheme == "redis":
        return None
    if u.scheme != "rediss":
        raise ValueError(f"Redis URL scheme {u.scheme!r} is not supported (use redis:// or rediss://)")
    ca = parse_qs(u.query).get("ssl_ca_certs")
    return ssl.create_default_context(cafile=ca[0] if ca else None)


class RespClient:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        u = urlparse(url)
        self.ssl = _tls_context(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        self.db = int((u.path or "/0").lstrip("/") or 0)
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.timeout = timeout
        self._proto: _Protocol | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.closed:
            return proto
        async with self._lock:
            if self._proto is None or self._proto.closed:
                loop = asyncio.get_running_loop()
                try:
                    _, proto = await asyncio.wait_for(
                        loop.create_connection(_Protocol, self.host, self.port, ssl=self.ssl), self.timeout
                    )
                except (OSError, TimeoutError) as exc:
                    raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
                assert isinstance(proto, _Protocol)
                self._proto = proto
                if self.password:
                    auth = [self.username, self.password] if self.username else [self.password]
                    await self._send(proto, ("AUTH", *auth))
                if self.db:
                    await self._send(proto, ("SELECT", self.db))
            assert self._proto is not None
            return self._proto

    async def _send(self, proto: _Protocol, args: tuple[Any, ...]) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.waiters.append(fut)
        proto.send(hiredis.pack_command(args))
        try:
            async with asyncio.timeout(self.timeout):  # no task per call, as wait_for makes
                return await fut
        except TimeoutError:
            # A reply that never came leaves the stream out of step: start afresh.
            if proto.transport is not None:
                proto.transport.close()
            raise RedisTimeoutError("Redis did not answer in time") from None

    async def execute(self, *args: Any) -> Any:
        return await self._send(await self._connection(), args)

    async def evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.execute("EVAL", script.text, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
