"""What the route modules (`gateway/routes/`) share: who is calling, the request
headers and parameters several routes take, and the checks they all make the same
way (rate limits, the wait budget, account ownership), so one rule has one place.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from gateway import models as M
from gateway import security, store
from gateway.problems import Problem
from gateway.security import Principal, bearer, rate_subject, valid_account_number
from gateway.service import Answer, Gateway

_bearer = HTTPBearer(auto_error=False, bearerFormat="JWT")
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)


async def gw_of(request: Request) -> Gateway:
    """The process's `Gateway`, started by the app's lifespan. A coroutine so that,
    as a dependency, FastAPI calls it inline rather than in its thread pool."""
    gw: Gateway = request.app.state.gw
    return gw


GatewayDep = Annotated[Gateway, Depends(gw_of)]


async def principal(
    request: Request,
    _creds: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> Principal:
    """Who is calling, from the verified JWT alone (X-User-Id and friends are ignored)."""
    gw = await gw_of(request)
    return gw.tokens.verify(bearer(request.headers.get("authorization")))


async def admin(p: Annotated[Principal, Depends(principal)]) -> Principal:
    if not p.is_admin:
        raise Problem(403, "forbidden", "this operation needs the admin role")
    return p


User = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
IdemKey = Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=255)]
Prefer = Annotated[str | None, Header(alias="Prefer", max_length=200)]
Number = Annotated[str, Path(max_length=32, json_schema_extra=M.NUMBER_SCHEMA)]
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=64)]
# Parsed by `instant`, so that a malformed time is one 400 `invalid_timestamp` however it is malformed.
_TIME_SCHEMA = {"format": "date-time", "examples": ["2026-01-31T23:59:59Z"]}
Instant = Annotated[str | None, Query(json_schema_extra=_TIME_SCHEMA)]

# RFC 3339's date-time: a full date, a full time and an offset, always. Python's
# fromisoformat alone also takes a bare date or a time without a zone, which
# would silently mean the server's local time.
_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def instant(value: str, name: str) -> datetime:
    """A query parameter as an aware UTC time; 400 `invalid_timestamp` unless it is
    an RFC 3339 date-time with its offset. Digits past microseconds are dropped."""
    m = _RFC3339.fullmatch(value)
    if m:
        date, clock, fraction, offset = m.groups()
        micros = f".{(fraction + '00000')[:6]}" if fraction else ""
        zone = "+00:00" if offset in ("Z", "z") else offset
        try:
            return datetime.fromisoformat(f"{date}T{clock}{micros}{zone}").astimezone(UTC)
        except (ValueError, OverflowError):  # 2026-02-30, 24:00:00, a year-1 time east of UTC
            pass
    example = "2026-01-31T23:59:59Z"
    raise Problem(400, "invalid_timestamp", f"{name} must be an RFC 3339 time with an offset, e.g. {example}")


def _ip(gw: Gateway, request: Request) -> str:
    peer = request.client.host if request.client else None
    return security.client_ip(peer, request.headers.get("x-forwarded-for"), gw.trusted)


def ip_bucket(gw: Gateway, request: Request) -> str:
    """The per-IP rate limit's bucket: the client address, IPv6 by /64."""
    return rate_subject(_ip(gw, request))


def too_many(what: str, retry: int) -> Problem:
    return Problem(429, "rate_limited", f"too many {what}; retry in {retry} s", headers={"Retry-After": str(retry)})


async def rate_limit(gw: Gateway, bucket: str, ident: str, limit: int) -> None:
    retry = await gw.limiter.hit(bucket, ident, limit)
    if retry is not None:
        raise too_many(f"{bucket} requests", retry)


def wait_budget(gw: Gateway, prefer: str | None) -> float:
    """`Prefer: wait=N` (RFC 7240) caps how long a request waits for the ledger."""
    if prefer:
        m = _WAIT.search(prefer)
        if m:
            return min(float(m.group(1)), gw.settings.gateway_wait_max_seconds)
    return gw.settings.gateway_wait_default_seconds


_NOT_FOUND = "no such account"


async def account_of(gw: Gateway, p: Principal, number: str, *, strict: bool = False) -> store.AccountRef:
    """The account if the caller may see it (owner, or admin unless `strict`);
    otherwise the same 404 as for an account that does not exist."""
    if not valid_account_number(number):
        raise Problem(404, "account_not_found", _NOT_FOUND)
    ref = await gw.account(number)
    if ref is None or (ref.owner_id != p.user_id and (strict or not p.is_admin)):
        raise Problem(404, "account_not_found", _NOT_FOUND)
    return ref


def respond(answer: Answer) -> Response:
    """A service answer as the HTTP response."""
    return Response(answer.body, status_code=answer.status, media_type=answer.media, headers=answer.headers)
