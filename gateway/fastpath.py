"""`POST /v1/payments` without FastAPI's routing and dependency solving, for the
requests that need neither.

Profiled at 300 payments/s, FastAPI and Starlette took about 45 % of the gateway's
event loop per payment: matching the path against every router before the payments
one, solving five dependencies, validating two headers and the body through their
generic machinery (docs/LEDGER.md, "Where the gateway's CPU goes"). A payment whose
request is well formed needs none of that to be decided: this middleware verifies its
token, validates its body with the very model the route declares, and calls the
route's own function. Anything else, a missing or bad token, a body the model
refuses, a header out of bounds, another content type, tracing on, goes to FastAPI
untouched (the body is replayed), so every refusal keeps its one implementation and
its problem document. Domain errors the route raises are answered by the app's own
exception handlers, as FastAPI would.
"""

from __future__ import annotations

import inspect
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import models as M
from gateway.routes import payments
from gateway.security import bearer
from paystream import tracing

PATH = "/v1/payments"


# The headers the fast path reads (uvicorn gives names in lower case).
_HEADERS = (b"authorization", b"idempotency-key", b"prefer", b"content-type")

# The route's parameters, in the order the fast path passes them.
PARAMETERS = ["body", "p", "gw", "idempotency_key", "prefer"]


def _route() -> APIRoute:
    """The route the fast path stands in for, checked at startup: a dependency added
    to it or to its router, or a parameter added to its function, would be skipped
    here without a word, so the app refuses to start instead."""
    for r in payments.router.routes:
        if isinstance(r, APIRoute) and r.path == PATH and "POST" in (r.methods or ()):
            params = list(inspect.signature(r.endpoint).parameters)
            if r.dependencies or payments.router.dependencies or params != PARAMETERS:
                raise RuntimeError(f"POST {PATH} changed ({params}, dependencies {r.dependencies}); "
                                   "gateway/fastpath.py must learn the change")  # fmt: skip
            return r
    raise LookupError(f"no POST {PATH} route")


class PaymentsFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = _route()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST" or tracing.enabled():
            await self.app(scope, receive, send)
            return
        first = await receive()
        replay = _replay(first, receive)
        whole = first["type"] == "http.request" and not first.get("more_body")
        call = self._call(scope, first.get("body", b"")) if whole else None
        if call is None:
            await self.app(scope, replay, send)
            return
        scope["route"] = self.route  # the metrics' and logs' route label, as FastAPI sets it
        request = Request(scope, replay)
        try:
            response = await payments.create_payment(*call)
        except Exception as exc:
            response = await _handled(request, exc)
        await response(scope, replay, send)

    def _call(self, scope: Scope, body: bytes) -> tuple[Any, ...] | None:
        """The route's arguments, or None when FastAPI must decide."""
        if scope.get("query_string"):
            return None
        found: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _HEADERS:
                if name in found:  # a repeated header: which one counts is FastAPI's call
                    return None
                found[name] = value
        auth, idem, prefer, ctype = (found.get(h) for h in _HEADERS)
        if auth is None or idem is None or ctype is None or ctype.split(b";")[0].strip() != b"application/json":
            return None
        try:
            key, wait = idem.decode("latin-1"), None if prefer is None else prefer.decode("latin-1")
            if not 1 <= len(key) <= 255 or (wait is not None and len(wait) > 200):
                return None
            gw = scope["app"].state.gw
            principal = gw.tokens.verify(bearer(auth.decode("latin-1")))
            model = M.PaymentIn.model_validate(orjson.loads(body))
        except Exception:  # a bad token, a refused body: FastAPI answers it, as for any request
            return None
        return model, principal, gw, key, wait


def _replay(first: Message, receive: Receive) -> Receive:
    """`receive` with the message already read given back first. BodyLimit, outside,
    has bounded the body and hands it over in one message."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return first
        return await receive()

    return replay


async def _handled(request: Request, exc: Exception) -> Response:
    """The app's own handler for `exc`, found as Starlette finds it (by the class's MRO)."""
    handlers = request.app.exception_handlers
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            result = handler(request, exc)
            if inspect.isawaitable(result):
                result = await result
            assert isinstance(result, Response)
            return result
    raise exc
