"""The gateway's /metrics, request metrics and the static admin console, without the stack
(the app's lifespan is not run: these routes need no connections)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from gateway.app import create_app
from paystream.settings import Settings


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_count_requests_by_route_template_and_status() -> None:
    client = TestClient(create_app(Settings(jwt_secret="x" * 40)))
    before = client.get("/metrics").text
    assert client.get("/admin/").status_code == 200
    assert client.get("/no/such/thing").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    assert client.post("/v1/auth/login", json={"nope": 1}).status_code == 422  # rejected before any I/O
    text = client.get("/metrics").text
    assert text.count("# TYPE paystream_http_requests_total counter") == 1
    for labels in ({"route": "/admin", "status": "200"}, {"route": "unmatched", "status": "404"},
                   {"route": "/openapi.json", "status": "200"}):
        was = _sample(before, "paystream_http_requests_total", method="GET", **labels) or 0
        assert _sample(text, "paystream_http_requests_total", method="GET", **labels) == was + 1, labels
    assert _sample(text, "paystream_http_requests_total", method="POST", route="/v1/auth/login", status="422")
    assert _sample(text, "paystream_http_request_seconds_count", method="GET", route="/admin")
    assert "paystream_gateway_payment_seconds" in text


def test_admin_console_is_static_and_locked_down() -> None:
    client = TestClient(create_app(Settings(jwt_secret="x" * 40)))
    page = client.get("/admin/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="login-form"' in page.text and "/admin/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    js = client.get("/admin/app.js")
    assert js.status_code == 200 and "/v1/admin/reviews" in js.text
    assert '"/statement"' in js.text and '"text/csv"' in js.text  # an account's statement, as a file
    assert "innerHTML" not in js.text  # data is rendered with textContent only
    assert client.get("/admin/style.css").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/admin", "/metrics"))]


def test_production_hides_metrics_and_api_docs_by_default() -> None:
    prod = TestClient(create_app(Settings(jwt_secret="x" * 40, environment="production")))
    for path in ("/metrics", "/docs", "/openapi.json"):
        assert prod.get(path).status_code == 404, path
    exposed = TestClient(create_app(Settings(jwt_secret="x" * 40, environment="production",
                                             gateway_metrics_enabled=True, gateway_docs_enabled=True)))
    dev = TestClient(create_app(Settings(jwt_secret="x" * 40, environment="development")))
    for client in (exposed, dev):
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
