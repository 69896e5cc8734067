"""Webhook endpoints API; `pipelines.notifications` delivers to the endpoints.

`POST /v1/webhooks {url}` registers an endpoint for the calling user and returns
its signing secret, the only time the secret is shown. Authentication is the
gateway's (JWT); the Postgres pool is the gateway's.

URLs must be https to a public host. A URL naming a loopback, private,
link-local or otherwise non-public address, in any notation (`127.1`,
`2130706433`, `0x7f000001`, IPv4-mapped or NAT64 IPv6), or `localhost`, is
refused unless PAYSTREAM_WEBHOOK_ALLOW_PRIVATE_URLS is set (development and
tests), so users cannot aim deliveries at our own network. A host name is
checked again at every delivery, on the addresses it resolves to then
(`pipelines.notifications.egress`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gateway import models as M
from gateway.deps import GatewayDep, User
from gateway.problems import Problem, responses
from paystream.webhooks import new_secret
from pipelines.notifications.egress import host_problem

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class EndpointIn(BaseModel):
    model_config = M.examples({"url": "https://hooks.example.com/paystream"}, extra="forbid")
    url: str = Field(min_length=8, max_length=2048)


class EndpointOut(BaseModel):
    model_config = M.examples({"endpoint_id": "5e1c2b7a-0d9f-4b3e-8a6c-2f1e0d9c8b7a",
                               "url": "https://hooks.example.com/paystream", "active": True,
                               "created_at": "2026-12-01T09:00:00Z"})
    endpoint_id: str
    url: str
    active: bool
    created_at: str


class EndpointCreated(EndpointOut):
    model_config = M.examples({"endpoint_id": "5e1c2b7a-0d9f-4b3e-8a6c-2f1e0d9c8b7a",
                               "url": "https://hooks.example.com/paystream", "active": True,
                               "created_at": "2026-12-01T09:00:00Z", "secret": "whsec_3k…"})
    secret: str = Field(description="HMAC-SHA256 key of Paystream-Signature; shown only once")


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def url_problem(url: str, allow_private: bool) -> str | None:
    if not url.isascii() or not url.isprintable() or " " in url:
        return "the url must be printable ASCII without spaces (percent-encode the rest)"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "the url is not valid"
    if parts.scheme not in ("https", "http") or not host:
        return "the url must be an absolute https:// url"
    if parts.username or parts.password:
        return "the url must not carry credentials"
    if allow_private:
        return None
    if parts.scheme != "https":
        return "the url must use https"
    return host_problem(host)


@router.post("", status_code=201, response_model=EndpointCreated,
             responses=responses(401, 409, 422))
async def register(body: EndpointIn, p: User, gw: GatewayDep) -> dict[str, Any]:
    problem = url_problem(body.url, gw.settings.webhook_allow_private_urls)
    if problem:
        raise Problem(422, "invalid_webhook_url", problem)
    endpoint_id, secret = str(uuid.uuid4()), new_secret()
    async with gw.pool.connection() as conn, conn.transaction():
        # serialise one user's registrations so the limit below holds
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"webhooks:{p.user_id}",))
        cur = await conn.execute(
            "SELECT count(*) FROM webhook_endpoints WHERE user_id = %s AND active", (p.user_id,))
        row = await cur.fetchone()
        if row is not None and row[0] >= gw.settings.webhook_max_endpoints_per_user:
            raise Problem(409, "too_many_webhooks",
                          f"at most {gw.settings.webhook_max_endpoints_per_user} active endpoints per user")
        cur = await conn.execute(
            "INSERT INTO webhook_endpoints (endpoint_id, user_id, url, secret) VALUES (%s, %s, %s, %s)"
            " RETURNING created_at", (endpoint_id, p.user_id, body.url, secret))
        created = await cur.fetchone()
    assert created is not None
    return {"endpoint_id": endpoint_id, "url": body.url, "active": True,
            "created_at": _iso(created[0]), "secret": secret}


@router.get("", response_model=list[EndpointOut], responses=responses(401))
async def list_endpoints(p: User, gw: GatewayDep) -> list[dict[str, Any]]:
    async with gw.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT endpoint_id, url, active, created_at FROM webhook_endpoints WHERE user_id = %s"
            " ORDER BY created_at, endpoint_id", (p.user_id,))
        rows = await cur.fetchall()
    return [{"endpoint_id": str(r[0]), "url": r[1], "active": r[2], "created_at": _iso(r[3])}
            for r in rows]


@router.delete("/{endpoint_id}", status_code=204, responses=responses(401, 404, 422))
async def deactivate(endpoint_id: Annotated[uuid.UUID, Path()], p: User,
                     gw: GatewayDep) -> Response:
    """Stops new deliveries; pending ones to this endpoint are no longer attempted."""
    async with gw.pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE webhook_endpoints SET active = false WHERE endpoint_id = %s AND user_id = %s",
            (endpoint_id, p.user_id))
        if cur.rowcount == 0:
            raise Problem(404, "webhook_not_found", "no such webhook endpoint")
    return Response(status_code=204)
