"""Webhook deliveries connect only to public addresses, checked on what the host
name resolves to at connect time (DNS rebinding), and to the checked address."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest

from paystream.settings import Settings
from pipelines.notifications.webhooks import WebhookPolicy


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("64:ff9b::808:808", True),
    ("127.0.0.1", False), ("10.0.0.1", False), ("169.254.169.254", False), ("0.0.0.0", False),
    ("100.64.0.1", False), ("224.0.0.1", False), ("240.0.0.1", False), ("::1", False), ("::", False),
    ("::ffff:127.0.0.1", False), ("::ffff:a9fe:a9fe", False), ("64:ff9b::a9fe:a9fe", False),
    ("64:ff9b:1::a9fe:a9fe", False), ("2002:7f00:1::", False), ("fe80::1", False), ("fc00::1", False),
    ("fec0::1", False), ("ff02::1", False), ("::127.0.0.1", False), ("2001:db8::1", False),
])  # fmt: skip
def test_public_addresses(address: str, public: bool) -> None:
    from pipelines.notifications.egress import is_public_address

    assert is_public_address(ipaddress.ip_address(address)) is public


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.server.hosts.append(self.headers["Host"])  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[HTTPServer]:
    """A local receiver on 127.0.0.1: where a rebinding name would point."""
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    server.hosts = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _post(url: str, *, allow_private: bool, answers: list[str] | None = None) -> httpx.Response:
    from pipelines.notifications.egress import PublicOnlyTransport

    async def resolver(host: str, port: int) -> list[str]:
        assert answers is not None
        return answers

    async def go() -> httpx.Response:
        kwargs: dict[str, Any] = {} if answers is None else {"resolver": resolver}
        transport = PublicOnlyTransport(limits=httpx.Limits(), allow_private=allow_private, **kwargs)
        async with httpx.AsyncClient(transport=transport, timeout=5, trust_env=False) as client:
            return await client.post(url, content=b"{}")

    return asyncio.run(go())


def test_delivery_refuses_a_name_that_resolves_to_loopback(receiver: HTTPServer) -> None:
    port = receiver.server_port
    # "localhost" is refused at registration, but any DNS name can point at 127.0.0.1
    with pytest.raises(httpx.ConnectError, match="not a public address"):
        _post(f"http://localhost:{port}/hook", allow_private=False)
    with pytest.raises(httpx.ConnectError, match="not a public address"):
        _post(f"http://hooks.example.com:{port}/hook", allow_private=False, answers=["127.0.0.1"])
    # one bad answer among public ones is enough to refuse: the connect could pick it
    with pytest.raises(httpx.ConnectError, match="not a public address"):
        _post(f"http://hooks.example.com:{port}/hook", allow_private=False,
              answers=["8.8.8.8", "::ffff:127.0.0.1"])
    with pytest.raises(httpx.ConnectError, match="not a public address"):
        _post(f"http://2130706433:{port}/hook", allow_private=False)
    assert receiver.hosts == []  # type: ignore[attr-defined]


def test_delivery_connects_to_the_checked_address_with_the_original_host(receiver: HTTPServer) -> None:
    from pipelines.notifications import egress

    port = receiver.server_port
    seen: list[str] = []
    original = egress.is_public_address

    def pretend_loopback_is_public(ip: Any) -> bool:
        seen.append(str(ip))
        return True if str(ip) == "127.0.0.1" else original(ip)

    egress.is_public_address = pretend_loopback_is_public  # type: ignore[assignment]
    try:
        r = _post(f"http://hooks.example.com:{port}/hook", allow_private=False, answers=["127.0.0.1"])
    finally:
        egress.is_public_address = original  # type: ignore[assignment]
    assert r.status_code == 204
    assert seen == ["127.0.0.1"]
    # the TCP connect was pinned to the checked address; Host (and SNI) stay the URL's
    assert receiver.hosts == [f"hooks.example.com:{port}"]  # type: ignore[attr-defined]


def test_local_receivers_still_work_when_private_urls_are_allowed(receiver: HTTPServer) -> None:
    r = _post(f"http://127.0.0.1:{receiver.server_port}/hook", allow_private=True)
    assert r.status_code == 204


def test_the_worker_client_refuses_private_addresses(receiver: HTTPServer) -> None:
    from pipelines.notifications.webhooks import http_client

    async def go(ws: WebhookPolicy) -> httpx.Response:
        async with http_client(ws) as client:
            return await client.post(f"http://localhost:{receiver.server_port}/hook", content=b"{}")

    with pytest.raises(httpx.ConnectError, match="not a public address"):
        asyncio.run(go(WebhookPolicy.of(Settings(webhook_allow_private_urls=False))))
    assert receiver.hosts == []  # type: ignore[attr-defined]
    assert asyncio.run(go(WebhookPolicy.of(Settings(webhook_allow_private_urls=True)))).status_code == 204
