"""`POST /v1/payments`'s fast path (gateway.fastpath): a well-formed request goes
straight to the route's function; anything else reaches FastAPI with its body intact,
so every refusal keeps its one implementation; the route's domain errors get the
app's own problem documents."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway import fastpath, problems
from gateway.problems import Problem
from gateway.routes import payments
from gateway.security import TokenVerifier, issue_token
from paystream.settings import Settings

SETTINGS = Settings(jwt_secret="k" * 48)
USER = "6f1c2a3b-0000-4000-8000-000000000001"
TOKEN = issue_token(SETTINGS, USER, "user")
BODY = orjson.dumps({"from_account": "PS8554726573", "to_account": "PS4661663890", "amount": "12.50",
                     "currency": "USD"})  # fmt: skip
GOOD = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"idempotency-key", b"k-1"),
        (b"content-type", b"application/json"), (b"prefer", b"wait=2")]  # fmt: skip


class Inner:
    """FastAPI's place: records what reached it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        msg = await receive()
        self.bodies.append(msg.get("body", b""))
        await Response(b"fastapi", status_code=299)(scope, receive, send)


def _app() -> FastAPI:
    app = FastAPI()
    problems.install(app)
    app.state.gw = SimpleNamespace(tokens=TokenVerifier(SETTINGS.jwt_key(), SETTINGS.jwt_issuer))
    return app


def _call(headers: list[tuple[bytes, bytes]], body: bytes = BODY, *, query: bytes = b"", path: str = "/v1/payments",
          chunks: int = 1) -> tuple[Inner, list[Message], Scope]:  # fmt: skip
    inner = Inner()
    mw = fastpath.PaymentsFastPath(inner)
    scope: Scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "query_string": query,
                    "app": _app()}  # fmt: skip
    parts = [body[i::chunks] for i in range(chunks)] if chunks > 1 else [body]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(m: Message) -> None:
        sent.append(m)

    asyncio.run(mw(scope, receive, send))
    return inner, sent, scope


@pytest.fixture
def route(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    async def create_payment(*args: Any) -> Response:
        calls.append(args)
        return Response(b'{"ok":1}', status_code=201, media_type="application/json")

    monkeypatch.setattr(payments, "create_payment", create_payment)
    return calls


def test_a_well_formed_payment_skips_fastapi_and_calls_the_route(route: list[tuple[Any, ...]]) -> None:
    inner, sent, scope = _call(GOOD)
    assert inner.bodies == [] and sent[0]["status"] == 201
    body, principal, gw, key, prefer = route[0]
    assert (body.from_account, body.amount, body.currency) == ("PS8554726573", "12.50", "USD")
    assert (principal.user_id, key, prefer) == (USER, "k-1", "wait=2") and gw is scope["app"].state.gw
    assert scope["route"].path == "/v1/payments"  # the metrics' route label


@pytest.mark.parametrize("case", [
    "no token", "bad token", "two tokens", "two types", "no key", "two keys", "long key", "long prefer", "form body",
    "bad body", "not json", "query", "chunked", "other path",
])  # fmt: skip
def test_anything_else_reaches_fastapi_with_its_body(route: list[tuple[Any, ...]], case: str) -> None:
    headers, body, query, path, chunks = list(GOOD), BODY, b"", "/v1/payments", 1
    drop = {"no token": b"authorization", "no key": b"idempotency-key"}.get(case)
    headers = [h for h in headers if h[0] != drop]
    if case == "bad token":
        headers[0] = (b"authorization", b"Bearer " + TOKEN[:-4].encode() + b"AAAA")
    elif case == "two tokens":
        headers.append((b"authorization", b"Bearer x"))
    elif case == "two types":
        headers.insert(0, (b"content-type", b"text/plain"))
    elif case == "two keys":
        headers.append((b"idempotency-key", b"k-2"))
    elif case == "long key":
        headers[1] = (b"idempotency-key", b"k" * 256)
    elif case == "long prefer":
        headers[3] = (b"prefer", b"wait=1" + b" " * 200)
    elif case == "form body":
        headers[2] = (b"content-type", b"application/x-www-form-urlencoded")
    elif case == "bad body":
        body = orjson.dumps({**json.loads(BODY), "amount": "12.505"})
    elif case == "not json":
        body = b"{not json"
    elif case == "query":
        query = b"x=1"
    elif case == "chunked":
        chunks = 3
    elif case == "other path":
        path = "/v1/payments/x/capture"
    inner, sent, _ = _call(headers, body, query=query, path=path, chunks=chunks)
    assert route == [] and sent[0]["status"] == 299
    assert b"".join(inner.bodies) == (body if chunks == 1 else body[0::3])  # the first part, replayed


def test_the_routes_domain_errors_get_the_apps_problem_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    async def create_payment(*_args: Any) -> Response:
        raise Problem(422, "unknown_account", "to_account does not exist")

    monkeypatch.setattr(payments, "create_payment", create_payment)
    inner, sent, _ = _call(GOOD)
    assert inner.bodies == [] and sent[0]["status"] == 422
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
    assert orjson.loads(sent[1]["body"])["code"] == "unknown_account"


def test_a_changed_route_stops_the_app_from_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dependency added to the route, or a parameter, would be skipped by the fast path."""
    from fastapi import Depends

    assert fastpath._route().path == "/v1/payments"
    route = fastpath._route()
    monkeypatch.setattr(route, "dependencies", [Depends(lambda: None)])
    with pytest.raises(RuntimeError, match="must learn the change"):
        fastpath._route()
