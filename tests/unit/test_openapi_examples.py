"""Every route of the HTTP API documents a request example (when it takes a body) and
a response example for each success it answers, so a new user learns the bodies from
/docs instead of reading schemas; the examples themselves validate against their models."""

from __future__ import annotations

from typing import Any

from gateway import models as M
from gateway.app import create_app
from paystream.settings import Settings


def _spec() -> dict[str, Any]:
    return create_app(Settings()).openapi()


def _examples(schema: dict[str, Any], components: dict[str, Any]) -> list[Any]:
    """The examples a schema carries, through references, optional bodies and lists."""
    if "$ref" in schema:
        return _examples(components[schema["$ref"].rsplit("/", 1)[1]], components)
    if schema.get("examples") or schema.get("example"):
        return list(schema.get("examples") or [schema["example"]])
    for option in schema.get("anyOf", []):
        if option.get("type") != "null" and (found := _examples(option, components)):
            return found
    if schema.get("type") == "array":
        return [[e] for e in _examples(schema.get("items", {}), components)]
    return []


def test_every_route_has_request_and_response_examples() -> None:
    spec = _spec()
    components = spec["components"]["schemas"]
    missing = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json")
            if body is not None and not _examples(body["schema"], components):
                missing.append(f"{method.upper()} {path}: request")
            for code, answer in op.get("responses", {}).items():
                content = (answer.get("content") or {}).get("application/json")
                if code.startswith("2") and content is not None and not _examples(content["schema"], components):
                    missing.append(f"{method.upper()} {path}: {code}")
    assert missing == []


def test_the_examples_are_valid_bodies() -> None:
    for model in (M.PaymentIn, M.MovementIn, M.CaptureIn, M.AccountIn, M.StatusChangeIn, M.RegisterIn, M.LoginIn,
                  M.AccountOut, M.PaymentOut, M.PaymentList, M.AccountList, M.TransactionList, M.BalanceOut,
                  M.StatementOut, M.RegisterOut, M.TokenOut, M.LedgerIdOut, M.StatusOut, M.DecisionIn, M.ReviewOut,
                  M.ReviewList):  # fmt: skip
        extra = model.model_config.get("json_schema_extra")
        assert isinstance(extra, dict) and extra["examples"], model
        for example in extra["examples"]:
            model.model_validate(example)
