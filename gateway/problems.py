"""RFC 9457 problem documents: the one shape every gateway error takes.

Clients branch on `code`, which is stable; `title` and `detail` are for people
and may change. Validation errors never echo the submitted input, so a password
typed into the wrong field does not end up in a response or a log.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from psycopg_pool import PoolTimeout
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from paystream.errors import PaystreamError

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("paystream.gateway")

TITLES = {
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Failed", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 428: "Precondition Required",
    429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable",
}  # fmt: skip

_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 413: "body_too_large",
    415: "unsupported_media_type", 429: "rate_limited", 500: "internal_error",
}  # fmt: skip

# Validation error types we raise ourselves; their type becomes the problem's code.
CUSTOM_CODES = {
    "amount_not_a_string", "invalid_amount", "too_many_decimals", "unknown_currency",
    "non_positive_amount", "amount_too_large", "weak_password", "invalid_email",
    "invalid_account_number", "same_account",
}  # fmt: skip


class Problem(PaystreamError):
    """A PaystreamError with its own status, headers and extension members."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str = "",
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or code, code=code)
        self.status = status
        self.headers = headers or {}
        self.extensions = extensions


def problem_body(status: int, code: str, detail: str, **extensions: Any) -> bytes:
    doc: dict[str, Any] = {
        "type": f"urn:paystream:problem:{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    doc.update(extensions)
    return orjson.dumps(doc)


def problem_response(
    status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any
) -> Response:
    return Response(
        problem_body(status, code, detail, **extensions),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(400, "malformed_json", "the request body is not valid JSON")
    first = errors[0] if errors else {}
    loc = tuple(str(x).lower() for x in first.get("loc", ()))
    if loc[:2] == ("header", "idempotency-key"):
        return problem_response(
            400,
            "idempotency_key_required",
            "an Idempotency-Key header (1-255 characters) is required",
        )
    etype = str(first.get("type", ""))
    code = etype if etype in CUSTOM_CODES else "validation_error"
    if (
        code == "validation_error"
        and first.get("type") == "string_type"
        and tuple(first.get("loc", ()))[-1:] == ("amount",)
    ):
        code = "amount_not_a_string"
    shown = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": e.get("msg", ""),
            "type": e.get("type", ""),
        }
        for e in errors[:20]
    ]
    detail = "; ".join(f"{'.'.join(x['loc'][1:]) or 'body'}: {x['msg']}" for x in shown[:3])
    return problem_response(422, code, detail or "invalid request", errors=shown)


def _paystream(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PaystreamError)
    if isinstance(exc, Problem):
        return problem_response(exc.status, exc.code, exc.detail, headers=exc.headers, **exc.extensions)
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return problem_response(exc.status, exc.code, exc.detail, headers=headers)


def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "error")
    return problem_response(exc.status_code, code, detail, headers=dict(exc.headers or {}))


def _unavailable(request: Request, exc: Exception) -> Response:
    gw = getattr(request.app.state, "gw", None)
    if isinstance(exc, PoolTimeout) and gw is not None:
        # Which it is, a pool too small for the load or connections that never come
        # back, shows in the pool's own counters.
        log.warning("dependency unavailable on %s %s: %s; Postgres pool %s", request.method, request.url.path, exc,
                    gw.pool.get_stats())  # fmt: skip
    else:
        log.warning("dependency unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        503, "service_unavailable", "a backing service is unavailable; retry later", headers={"Retry-After": "1"}
    )


def _unhandled(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal_error", "an unexpected error occurred")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(PaystreamError, _paystream)
    app.add_exception_handler(StarletteHTTPException, _http)
    for exc_type in (RedisConnectionError, RedisTimeoutError, psycopg.OperationalError, PoolTimeout):
        app.add_exception_handler(exc_type, _unavailable)
    app.add_exception_handler(Exception, _unhandled)


PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "code": {"type": "string"},
    },
    "additionalProperties": True,
}  # fmt: skip


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses an operation documents."""
    return {
        s: {
            "description": TITLES.get(s, "Error"),
            "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
        }
        for s in statuses
    }
