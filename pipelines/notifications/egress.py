"""Where webhooks may go: public addresses only, checked at registration and at connect.

Users choose the URLs we send to, so a URL is a way to make our network send
requests for them (SSRF). Two checks, both needed:

* At registration (:func:`host_problem`), the URL's host must be a DNS name or a
  canonical IP address that is public. Legacy numeric forms (``2130706433``,
  ``0x7f000001``, ``127.1``, ``0``, octal) are refused outright: resolvers turn
  them into loopback addresses although no ``ipaddress`` parse recognises them.
* At delivery (:class:`PublicOnlyBackend`), the name is resolved once, *every*
  answer must be public, and the connection goes to one of those checked
  addresses. Checking a name and then letting the HTTP client resolve it again
  would allow DNS rebinding (public answer for the check, private one for the
  connect). TLS still uses the original host name (SNI, certificate) and the
  Host header is unchanged: only the TCP connect is pinned.

"Public" is stricter than ``ipaddress.is_global`` alone, which in Python 3.11
calls multicast, site-local and ``::a.b.c.d`` global, and looks into IPv6
addresses that embed an IPv4 one (mapped, NAT64, 6to4), which would otherwise
reach 127.0.0.1 or 169.254.169.254 under an IPv6 disguise.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# NAT64 well-known prefix (RFC 6052): the last 32 bits are the IPv4 destination.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Local-use NAT64 (RFC 8215): operator-defined embedding, so no way to tell the target.
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")

# LDH labels (plus "_", seen in real hostnames); anything else (percent-encoding,
# odd characters) could be decoded differently by the HTTP client than by us.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")


def is_public_address(ip: IPAddress) -> bool:
    """True only for an address on the public internet, IPv6 wrappers unwrapped."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _NAT64_LOCAL:
            return False
        if ip.sixtofour is not None:
            return is_public_address(ip.sixtofour)
        if ip.teredo is not None or ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
        or ip.is_multicast or ip.is_unspecified
    )  # fmt: skip


def _ends_in_number(host: str) -> bool:
    """The WHATWG URL rule: a host whose last label is a number is an IPv4 address,
    in whatever legacy notation (decimal, hex, octal, fewer than four parts)."""
    last = host.rstrip(".").rsplit(".", 1)[-1]
    return bool(last) and _NUMBER.fullmatch(last) is not None


def host_problem(host: str) -> str | None:
    """Why a URL host (as ``urlsplit().hostname`` gives it) may not receive webhooks."""
    host = host.lower()
    bare = host[:-1] if host.endswith(".") else host
    if bare == "localhost" or bare.endswith(".localhost"):
        return "the url must name a public host"
    ip: IPAddress
    if ":" in host:
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            return "the url's host is not a valid IPv6 address"
    elif _ends_in_number(host):
        try:
            ip = ipaddress.IPv4Address(bare)
        except ValueError:
            return "an IP address in the url must be written as four decimal parts (a.b.c.d)"
    elif _DNS_NAME.fullmatch(bare):
        return None  # a name: its addresses are checked at every delivery
    else:
        return "the url's host must be a DNS name (letters, digits, '-', '.'; IDNs in punycode)"
    if not is_public_address(ip):
        return "the url must name a public host"
    return None


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host, in its order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class NonPublicAddressError(httpcore.ConnectError):
    """The host resolved to an address webhooks may not reach; no connection was made."""


class PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to checked public addresses.

    httpcore asks the backend for a TCP connection to the URL's host; this one
    resolves it once, refuses if any answer is not public (a name with one bad
    answer is a name someone aimed at us), and connects to the checked addresses
    in order. The TLS handshake that follows is httpcore's, with the URL's host
    name for SNI and certificate verification.
    """

    def __init__(self, *, allow_private: bool = False, resolver: Resolver = resolve,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        if self.allow_private:  # development and tests: local receivers
            return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.resolver(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            if not is_public_address(ipaddress.ip_address(address.split("%", 1)[0])):
                raise NonPublicAddressError(f"{host} resolves to {address}, which is not a public address")
        error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are never sent over a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class PublicOnlyTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with :class:`PublicOnlyBackend` under its connection pool.

    httpx does not take a network backend, so the pool it built is replaced by
    one with the same settings and ours; everything else (request mapping,
    exception mapping) stays httpx's. No proxy: a proxy would resolve the name
    itself, past the check.
    """

    def __init__(self, *, limits: httpx.Limits, allow_private: bool = False,
                 resolver: Resolver = resolve) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PublicOnlyBackend(allow_private=allow_private, resolver=resolver),
        )
