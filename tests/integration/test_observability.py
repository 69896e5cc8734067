"""Observability end to end (issue 8): metrics that move under a small load, one payment's
trace across gateway → ledger → fraud → notifications, and the admin console driven by
headless Chromium (log in, open an alert, reject it, see the reversal and the freeze).

Every component runs as its own process, as `paystream up` runs them, with tracing on and
exporting OTLP/HTTP to a tiny collector inside this test process. Each metrics port is a
free port of its own, so other test sessions on the machine do not collide with us.

Partitions are shared with whatever else runs in the same consumer groups (other test
sessions): a span exists only where *our* instance processed the message. The test finds
our instances' partitions from the group descriptions (client.id names the instance) and
picks accounts that land on them.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from paystream import kafka
from paystream.settings import PROJECT_ROOT, Settings
from pipelines.fraud.domain import alert_id
from tests.conftest import Component

pytestmark = pytest.mark.integration

PID = os.getpid()
INSTANCE = f"obs-{PID}"
ADMIN_PASSWORD = "Console password 42"
USER_PASSWORD = "Correct horse 42"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the partitioner of Quix and of paystream's producers)."""
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    body = len(data) // 4 * 4
    for i in range(0, body, 4):
        k = (int.from_bytes(data[i:i + 4], "little") * m) & 0xFFFFFFFF
        k ^= k >> r
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    tail = data[body:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def partition_of(key: str, partitions: int = 8) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


# ------------------------------------------------------------------ OTLP collector


@dataclass
class Collector:
    """Accepts OTLP/HTTP protobuf trace exports and keeps the spans."""

    spans: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                got = []
                for rs in req.resource_spans:
                    attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for sp in ss.spans:
                            got.append({
                                "service": attrs.get("service.name"), "name": sp.name,
                                "trace_id": sp.trace_id.hex(), "span_id": sp.span_id.hex(),
                                "parent": sp.parent_span_id.hex() or None,
                                "attributes": {a.key: (a.value.string_value or a.value.int_value)
                                               for a in sp.attributes},
                            })  # fmt: skip
                with collector.lock:
                    collector.spans.extend(got)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


# ------------------------------------------------------------------ the running system


@dataclass
class System:
    settings: Settings
    base: str
    env: dict[str, str]
    comps: dict[str, Component]
    collector: Collector
    ports: dict[str, int]
    admin_email: str
    admin_headers: dict[str, str] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30, headers={"X-Forwarded-For": _ip()})

    def scrape(self, component: str) -> str:
        url = f"{self.base}/metrics" if component == "gateway" else \
            f"http://127.0.0.1:{self.ports[component]}/metrics"
        return httpx.get(url, timeout=10).text

    def owned(self, component: str, topic: str) -> set[int]:
        """Partitions of `topic` our instance of `component` holds right now."""
        admin = kafka.admin(self.settings)
        group = f"paystream-{component}"
        desc = admin.describe_consumer_groups([group])[group].result(15)
        mine = f"paystream-{component}-{INSTANCE}"
        return {tp.partition for m in desc.members if m.client_id == mine
                for tp in m.assignment.topic_partitions if tp.topic == topic}


_ips = iter(range(1, 10**6))


def _ip() -> str:
    n = next(_ips) + (PID % 200) * 1000
    return f"203.0.{(n // 250) % 250}.{n % 250 + 1}"  # documentation range, only a header value


def sample(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def _wait(what: str, check: Callable[[], Any], timeout: float, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(every)


@pytest.fixture(scope="module")
def system(db: Settings, log_dir: Path) -> Iterator[System]:
    collector = Collector()
    endpoint = collector.start()
    names = ["ledger", "fraud", "notifications", "compensation", "reviews", "outbox-relay", "sink"]
    ports = {n: _free_port() for n in names}
    gw_port = _free_port()
    env = {
        "PAYSTREAM_OTEL_ENABLED": "true",
        "PAYSTREAM_OTEL_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "PAYSTREAM_METRICS_STATS_INTERVAL_MS": "1000",
        "PAYSTREAM_BACKLOG_POLL_SECONDS": "1",
        **{f"PAYSTREAM_{n.upper().replace('-', '_')}_METRICS_PORT": str(p) for n, p in ports.items()},
        **{f"PAYSTREAM_{n.upper()}_INSTANCE": INSTANCE for n in ("ledger", "fraud", "compensation",
                                                                "notifications")},
        "PAYSTREAM_GATEWAY_PORT": str(gw_port),
        "PAYSTREAM_GATEWAY_REDIS_PREFIX": f"obs:{uuid.uuid4().hex[:8]}:",
        "PAYSTREAM_GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
        "PAYSTREAM_GATEWAY_RATE_REGISTER_PER_MINUTE": "1000",
        "PAYSTREAM_GATEWAY_RATE_LOGIN_PER_MINUTE": "1000",
        "PAYSTREAM_OUTBOX_POLL_INTERVAL": "0.2",
    }
    admin_email = f"admin-{uuid.uuid4().hex[:10]}@observability-test.example"
    subprocess.run(
        [sys.executable, "-m", "ops.cli", "admin", "create-user", "--email", admin_email, "--role", "admin"],
        env={**os.environ, **env, "PAYSTREAM_ADMIN_PASSWORD": ADMIN_PASSWORD}, cwd=PROJECT_ROOT, check=True,
        capture_output=True, timeout=120,
    )  # fmt: skip
    comps = {n: Component(n, log_dir, env).start() for n in [*names, "gateway"]}
    sys_ = System(db, f"http://127.0.0.1:{gw_port}", env, comps, collector, ports, admin_email)
    try:
        def healthy() -> bool:
            for name, c in comps.items():
                assert c.proc is not None and c.proc.poll() is None, f"{name} exited:\n{c.tail()}"
            try:
                return httpx.get(f"{sys_.base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait("gateway healthy", healthy, 120)
        for comp, topic in (("ledger", "payments.commands"), ("fraud", "ledger.events"),
                            ("notifications", "ledger.events")):
            _wait(f"{comp} assigned", lambda c=comp, t=topic: sys_.owned(c, t), 180, every=1)
        with sys_.client() as c:
            r = c.post("/v1/auth/login", json={"email": admin_email, "password": ADMIN_PASSWORD})
            assert r.status_code == 200, r.text
            sys_.admin_headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        yield sys_
    finally:
        for c in comps.values():
            c.stop()
        collector.stop()


@dataclass
class User:
    email: str
    number: str
    account_id: str
    headers: dict[str, str]


def register(sys_: System, dsn: str) -> User:
    email = f"u-{uuid.uuid4().hex[:12]}@observability-test.example"
    with sys_.client() as c:
        r = c.post("/v1/auth/register", json={"email": email, "password": USER_PASSWORD, "name": "Obs Test",
                                               "currency": "USD"})
        assert r.status_code == 201, r.text
        number = r.json()["account"]["account_number"]
        tok = c.post("/v1/auth/login", json={"email": email, "password": USER_PASSWORD})
        assert tok.status_code == 200, tok.text
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT account_id FROM gateway_accounts WHERE account_number = %s", (number,)).fetchone()
    assert row is not None
    return User(email, number, str(row[0]), {"Authorization": f"Bearer {tok.json()['access_token']}"})


@dataclass
class Pair:
    sender: User
    receiver: User
    traced: bool  # both accounts' partitions are held by our traced ledger/fraud/notifications


@pytest.fixture(scope="module")
def pair(system: System) -> Pair:
    """A funded sender and a receiver, on partitions our instances hold when possible."""
    ledger = system.owned("ledger", "payments.commands")
    downstream = system.owned("fraud", "ledger.events") & system.owned("notifications", "ledger.events")
    want_sender, want_receiver = ledger & downstream, ledger
    users: list[User] = []
    sender = receiver = None
    for _ in range(24):
        u = register(system, system.settings.postgres_dsn)
        users.append(u)
        p = partition_of(u.account_id)
        if sender is None and p in want_sender:
            sender = u
        elif receiver is None and p in want_receiver:
            receiver = u
        if sender and receiver:
            break
    traced = sender is not None and receiver is not None
    sender = sender or users[0]
    receiver = receiver or next(u for u in users if u is not sender)
    with system.client() as c:
        def opened(u: User) -> bool:
            r = c.get(f"/v1/accounts/{u.number}", headers=system.admin_headers)
            return r.status_code == 200 and r.json()["status"] == "active"

        _wait("accounts opened", lambda: opened(sender) and opened(receiver), 240)
        dep = c.post(f"/v1/accounts/{sender.number}/deposits", headers={**system.admin_headers,
                     "Idempotency-Key": uuid.uuid4().hex, "Prefer": "wait=30"},
                     json={"amount": "50000.00", "currency": "USD"})  # fmt: skip
        assert settle(system, dep, system.admin_headers) == "completed", dep.text
    return Pair(sender, receiver, traced)


def settle(system: System, resp: httpx.Response, headers: dict[str, str], timeout: float = 240) -> str:
    """The payment's final status. A 202 (the ledger did not answer within the wait: a
    rebalance elsewhere makes a fresh instance restore its state first) is polled."""
    assert resp.status_code in (201, 202, 402), resp.text
    if resp.status_code == 402:
        return "refused"
    if resp.status_code == 201:
        return str(resp.json()["status"])
    pid = resp.json()["id"]
    with system.client() as c:
        def final() -> str | None:
            st = c.get(f"/v1/payments/{pid}", headers=headers).json().get("status")
            return None if st in (None, "pending") else str(st)
        return str(_wait(f"payment {pid} settled", final, timeout, every=1))


def pay(system: System, u: User, to: User, amount: str, headers: dict[str, str] | None = None) -> httpx.Response:
    with system.client() as c:
        return c.post("/v1/payments", headers={**u.headers, "Idempotency-Key": uuid.uuid4().hex,
                                               "Prefer": "wait=30", **(headers or {})},
                      json={"from_account": u.number, "to_account": to.number, "amount": amount,
                            "currency": "USD"})  # fmt: skip


# ------------------------------------------------------------------ metrics


def test_metrics_are_exposed_and_move_under_load(system: System, pair: Pair):
    comps = ["gateway", "ledger", "fraud", "notifications", "outbox-relay", "reviews", "compensation"]
    before = {c: system.scrape(c) for c in comps}
    ok = [pay(system, pair.sender, pair.receiver, "1.25") for _ in range(8)]
    refused = pay(system, pair.sender, pair.receiver, "900000.00")  # more than the sender has
    answers = [r.status_code for r in [*ok, refused]]
    assert [settle(system, r, pair.sender.headers) for r in ok] == ["completed"] * 8
    assert settle(system, refused, pair.sender.headers) in ("refused", "rejected")

    def delta(comp: str, name: str, **labels: str) -> float:
        return sample(system.scrape(comp), name, **labels) - sample(before[comp], name, **labels)

    # gateway: requests by route template and status, payment request -> outcome latency
    for code, outcome in ((201, "completed"), (402, "refused"), (202, "pending")):
        n = answers.count(code)
        assert delta("gateway", "paystream_http_requests_total", method="POST", route="/v1/payments",
                     status=str(code)) >= n
        assert delta("gateway", "paystream_gateway_payment_seconds_count", kind="transfer", outcome=outcome) >= n
    assert delta("gateway", "paystream_http_request_seconds_count", route="/v1/payments") >= 9

    # ledger: our instance holds the sender's or the receiver's partition (pair fixture), so its
    # counters moved; outcomes by type and reason, end-to-end latency, per-message and commit times
    ledger_parts = system.owned("ledger", "payments.commands")
    if partition_of(pair.sender.account_id) in ledger_parts:
        assert delta("ledger", "paystream_ledger_outcomes_total", command_type="TRANSFER", status="REJECTED",
                     reason="INSUFFICIENT_FUNDS") >= 1
    if partition_of(pair.receiver.account_id) in ledger_parts:
        assert delta("ledger", "paystream_ledger_outcomes_total", command_type="TRANSFER", status="COMPLETED") >= 8
        assert delta("ledger", "paystream_ledger_e2e_seconds_count", command_type="TRANSFER") >= 8
    assert delta("ledger", "paystream_messages_total", component="ledger") >= 8

    def moved() -> bool:
        text = system.scrape("ledger")
        return sample(text, "paystream_commit_seconds_count", component="ledger") > 0 and \
            "paystream_consumer_lag{" in text
    _wait("ledger commits timed and lag reported", moved, 30)
    text = system.scrape("ledger")
    assert sample(text, "paystream_process_seconds_count", component="ledger") >= 8
    for p in ledger_parts:
        assert f'paystream_consumer_lag{{component="ledger",partition="{p}",topic="payments.commands"}}' in text
    assert "paystream_dead_letters_total" in text

    # downstream: fraud scored the debits, notifications were emitted (eventually: commit interval)
    if partition_of(pair.sender.account_id) in system.owned("fraud", "ledger.events"):
        _wait("fraud scored", lambda: delta("fraud", "paystream_fraud_scored_total") >= 8, 60)
    if partition_of(pair.sender.account_id) in system.owned("notifications", "ledger.events"):
        _wait("notifications", lambda: delta("notifications", "paystream_notifications_total",
                                             kind="PAYMENT_SENT") >= 8, 60)
    for comp in ("fraud", "notifications", "compensation"):
        assert f'paystream_up{{component="{comp}"}} 1.0' in system.scrape(comp)
    # outbox backlogs are counted by the processes that publish them
    _wait("gateway outbox backlog gauge", lambda: 'paystream_outbox_backlog{outbox="gateway"}'
          in system.scrape("outbox-relay"), 30)
    _wait("review outbox backlog gauge", lambda: 'paystream_outbox_backlog{outbox="reviews"}'
          in system.scrape("reviews"), 30)
    assert delta("outbox-relay", "paystream_outbox_published_total", outbox="gateway") >= 0


def test_component_logs_are_json(system: System, pair: Pair):
    import json

    for name in ("ledger", "fraud", "gateway", "outbox-relay"):
        lines = [ln for ln in system.comps[name].log_path.read_text().splitlines() if ln.strip()]
        parsed = []
        for ln in lines:
            with contextlib.suppress(ValueError):
                parsed.append(json.loads(ln))
        assert parsed and len(parsed) >= 0.9 * len(lines), system.comps[name].tail()
        assert all(p["component"] == name and {"ts", "level", "event", "logger"} <= set(p) for p in parsed)


# ------------------------------------------------------------------ traces


@dataclass
class HighValue:
    payment_id: str
    alert_id: str
    trace_id: str
    response: dict[str, Any]


@pytest.fixture(scope="module")
def high_value(system: System, pair: Pair) -> HighValue:
    """One transfer of 12,000.00 (HIGH_VALUE: alert, sender frozen), in a trace we name."""
    trace_id = uuid.uuid4().hex
    parent = uuid.uuid4().hex[:16]
    r = pay(system, pair.sender, pair.receiver, "12000.00", {"traceparent": f"00-{trace_id}-{parent}-01"})
    pid = r.json()["id"]
    assert settle(system, r, pair.sender.headers) == "completed", r.text
    return HighValue(pid, alert_id(pid), trace_id, r.json())


def test_one_payment_is_one_trace_across_the_pipeline(system: System, pair: Pair, high_value: HighValue):
    if not pair.traced:
        pytest.skip("other sessions' instances hold the partitions; spans would be theirs")

    def complete() -> list[dict[str, Any]] | None:
        spans = system.collector.trace(high_value.trace_id)
        services = {s["service"] for s in spans}
        ledger = [s for s in spans if s["service"] == "ledger"]
        if {"gateway", "ledger", "fraud", "notifications"} <= services and len(ledger) >= 2:
            return spans
        return None

    try:
        spans = _wait("spans of every hop", complete, 90)
    except TimeoutError:
        got = [(s["service"], s["name"]) for s in system.collector.trace(high_value.trace_id)]
        raise AssertionError(f"spans so far: {got}") from None
    by_id = {s["span_id"]: s for s in spans}
    (http,) = [s for s in spans if s["service"] == "gateway"]
    assert http["name"] == "POST /v1/payments" and http["attributes"]["http.route"] == "/v1/payments"
    assert http["attributes"]["http.response.status_code"] == 201
    # the debit's span is the HTTP span's child (traceparent on the command); the credit leg's
    # span is the debit's child (traceparent on the leg the debit emitted)
    ledger = [s for s in spans if s["service"] == "ledger"]
    debit = next(s for s in ledger if s["parent"] == http["span_id"])
    assert debit["attributes"]["messaging.destination.name"] == "payments.commands"
    assert debit["attributes"]["payment_id"] == high_value.payment_id
    assert debit["attributes"]["account"] == pair.sender.account_id
    credit = next(s for s in ledger if s["attributes"]["messaging.destination.name"] == "ledger.legs")
    assert credit["parent"] == debit["span_id"]
    # fraud and notifications continue from the ledger's events
    for service in ("fraud", "notifications"):
        parents = {by_id[s["parent"]]["service"] for s in spans if s["service"] == service and s["parent"] in by_id}
        assert parents & {"ledger", "fraud"}, (service, spans)
    fraud = [s for s in spans if s["service"] == "fraud" and s["attributes"].get("payment_id")]
    assert any(s["attributes"]["payment_id"] == high_value.payment_id for s in fraud)


# ------------------------------------------------------------------ admin console (browser)


def _chrome(download_dir: Path) -> Any:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium / chromium-driver not installed (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,1050", "--force-device-scale-factor=1",
                 f"--user-data-dir={download_dir}"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))


def _shot(driver: Any, name: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(out / f"{name}.png"))
    if os.environ.get("PAYSTREAM_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / f"{name}.png", SCREENSHOTS / f"{name}.png")


def test_admin_console_rejects_an_alert(system: System, pair: Pair, high_value: HighValue, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    with system.client() as c:  # the reviews worker has written the alert into the queue
        _wait("review queued", lambda: c.get(f"/v1/admin/reviews/{high_value.alert_id}",
                                             headers=system.admin_headers).status_code == 200, 240, every=0.5)
    driver = _chrome(tmp_path / "chromium-profile")
    shots = tmp_path / "screenshots"
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(f"{system.base}/admin/")
        wait.until(EC.visibility_of_element_located((By.ID, "login-form")))
        driver.find_element(By.ID, "login-email").send_keys(system.admin_email)
        driver.find_element(By.ID, "login-password").send_keys("wrong password")
        driver.find_element(By.ID, "login-submit").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "login-error"), "wrong"))
        _shot(driver, "admin-login", shots)
        driver.find_element(By.ID, "login-password").clear()
        driver.find_element(By.ID, "login-password").send_keys(ADMIN_PASSWORD)
        driver.find_element(By.ID, "login-submit").click()
        wait.until(EC.visibility_of_element_located((By.ID, "app-view")))

        # the queue, filtered to the sender's account
        acct = driver.find_element(By.ID, "f-account")
        acct.send_keys(pair.sender.number)
        driver.find_element(By.ID, "f-apply").click()
        row = (By.CSS_SELECTOR, f'tr[data-alert="{high_value.alert_id}"]')
        wait.until(EC.visibility_of_element_located(row))
        acct.clear()  # the whole queue (other tests' alerts too): page with "Load more" to ours
        driver.find_element(By.ID, "f-apply").click()
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "tr.review")))
        for _ in range(10):
            if driver.find_elements(*row):
                break
            more = driver.find_element(By.ID, "more")
            if not more.is_displayed():
                break
            before = len(driver.find_elements(By.CSS_SELECTOR, "tr.review"))
            more.click()
            WebDriverWait(driver, 15).until(lambda d, n=before: len(d.find_elements(By.CSS_SELECTOR, "tr.review")) > n)
        if not driver.find_elements(*row):  # far down a busy queue: filter again
            acct.send_keys(pair.sender.number)
            driver.find_element(By.ID, "f-apply").click()
        wait.until(EC.visibility_of_element_located(row))
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", driver.find_element(*row))
        assert "HIGH" in driver.find_element(*row).text
        driver.find_element(*row).click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "d-alert"), high_value.alert_id))
        assert driver.find_element(By.ID, "d-state").text == "open"
        assert "HIGH_VALUE" in driver.find_element(By.ID, "d-reasons").text
        sender_box = (By.CSS_SELECTOR, f'#d-sender .account[data-number="{pair.sender.number}"]')
        WebDriverWait(driver, 90).until(EC.presence_of_element_located(sender_box))
        # fraud froze the sender: the read model shows it once the sink has the event
        _until_status(driver, sender_box, "frozen", 90)
        _shot(driver, "admin-review", shots)

        driver.find_element(By.ID, "d-note").send_keys("mule account: refund the sender")
        driver.find_element(By.ID, "d-reject").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "d-state"), "rejected"))
        # compensation reverses the transfer, freezes the receiver, releases the sender; the
        # console polls and shows it
        receiver_box = (By.CSS_SELECTOR, f'#d-receiver .account[data-number="{pair.receiver.number}"]')
        _until_status(driver, receiver_box, "frozen", 120)
        WebDriverWait(driver, 120).until(lambda d: d.find_element(By.ID, "d-payment-status")
                                         .get_attribute("data-status") == "reversed")
        _until_status(driver, sender_box, "active", 120)
        assert driver.find_elements(By.CSS_SELECTOR, '#d-sender tr[data-type="transfer_reversed"]')
        assert "mule account" in driver.find_element(By.ID, "d-decision").text
        _shot(driver, "admin-rejected", shots)

        # an admin can unfreeze the receiver from the console
        driver.find_element(By.CSS_SELECTOR, '#d-receiver button[data-action="unfreeze"]').click()
        _until_status(driver, receiver_box, "active", 60)
        wait.until(EC.text_to_be_present_in_element((By.ID, "flash"), "active"))

        # payment lookup by id
        driver.find_element(By.CSS_SELECTOR, 'nav .tab[data-tab="payment"]').click()
        driver.find_element(By.ID, "p-id").send_keys(high_value.payment_id)
        driver.find_element(By.CSS_SELECTOR, "#payment-form button").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "payment-result"), high_value.payment_id))
        result = driver.find_element(By.ID, "payment-result").text
        assert "12,000.00 USD" in result and "reversed" in result
        _shot(driver, "admin-payment", shots)

        # a hold: the payment shows what it authorized, the sender's box its open holds
        with system.client() as c:
            r = c.post("/v1/payments", headers={**pair.sender.headers, "Idempotency-Key": uuid.uuid4().hex,
                                                "Prefer": "wait=30"},
                       json={"from_account": pair.sender.number, "to_account": pair.receiver.number,
                             "amount": "25.00", "currency": "USD", "capture": False})  # fmt: skip
        assert r.status_code == 201 and r.json()["status"] == "requires_capture", r.text
        hold = r.json()["id"]

        def hold_shown(d: Any) -> bool:
            field = d.find_element(By.ID, "p-id")
            field.clear()
            field.send_keys(hold)
            d.find_element(By.CSS_SELECTOR, "#payment-form button").click()
            time.sleep(1)  # the sink may not have the hold's row yet: look again
            return bool(d.find_elements(By.CSS_SELECTOR, f'#payment-result tr[data-hold="{hold}"]'))

        WebDriverWait(driver, 60, poll_frequency=0.5).until(hold_shown)
        result = driver.find_element(By.ID, "payment-result").text
        assert "requires_capture" in result and "Authorized" in result and "25.00" in result
        assert "open holds" in driver.find_element(By.CSS_SELECTOR, "#payment-result .account .held").text
        _shot(driver, "admin-hold", shots)

        # nothing overflows on narrower screens: back to the decided review, at 1280 and 1024
        driver.find_element(By.CSS_SELECTOR, 'nav .tab[data-tab="reviews"]').click()  # the pane keeps it
        wait.until(EC.text_to_be_present_in_element((By.ID, "d-state"), "rejected"))
        assert system.admin_email in driver.find_element(By.ID, "d-decision").text  # who, not an id
        for width in (1280, 1024):
            driver.set_window_size(width, 900)
            time.sleep(0.5)
            _shot(driver, f"admin-review-{width}", shots)
            assert driver.execute_script(OVERFLOW_JS) == [], width
        # no script errors; the one failed request is the wrong password's 401
        logs = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"
                and not ("/v1/auth/login" in e["message"] and "401" in e["message"])]
        assert not logs, logs
    finally:
        driver.quit()


# What does not fit: a page wider than the window, the queue and the detail pane
# overlapping, or anything sticking out of the card that holds it (hidden under the
# pane next to it, or clipped on the right).
OVERFLOW_JS = """
const bad = [];
const doc = document.documentElement;
if (doc.scrollWidth > doc.clientWidth) bad.push(`page ${doc.scrollWidth} > ${doc.clientWidth}`);
const panes = [...document.querySelectorAll('.split > *')].filter(e => e.offsetParent !== null);
if (panes.length === 2) {
  const [a, b] = panes.map(e => e.getBoundingClientRect());
  if (a.right > b.left + 1 && a.bottom > b.top + 1) bad.push(`panes overlap: ${a.right} > ${b.left}`);
}
for (const card of document.querySelectorAll('.card, .account-box')) {
  if (card.offsetParent === null) continue;
  const box = card.getBoundingClientRect();
  for (const e of card.querySelectorAll('*')) {
    const r = e.getBoundingClientRect();
    if (r.width && r.height && r.right > box.right + 1) {
      bad.push(`${e.tagName}.${e.className} right ${Math.round(r.right)} > its card ${Math.round(box.right)}`);
      break;
    }
  }
}
return bad;
"""


def _until_status(driver: Any, locator: tuple[str, str], status: str, timeout: float) -> None:
    """Wait for an account box to show `status`, clicking Refresh now and then (the console
    also polls by itself after a decision)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while True:
        try:
            boxes = driver.find_elements(*locator)
            if boxes and boxes[0].get_attribute("data-status") == status:
                return
        except StaleElementReferenceException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{locator[1]} never became {status}")
        driver.find_element(By.ID, "d-refresh").click()
        time.sleep(1.5)
