"""`paystream bench http`: payments per second through a running gateway.

N concurrent clients (httpx, asyncio) each send payments back to back for a
fixed time, once with `Prefer: wait=0` (the 202 path: the answer comes when
Kafka acknowledged the command) and once waiting for the ledger's outcome (the
201 path). It prints accepted requests/s and p50/p99 latency for each.

The load has the shape of real payments, so fraud's rules see nothing to stop:
bench users are payers and merchants; every payer pays only merchants (at most
10 of them, below the fan-out rule), merchants never pay (no round trips), and
amounts are small. Earlier runs had 50 users paying each other as fast as they
could: velocity, fan-out and round-trip rules fired together, fraud froze the
payers within the first phase, and the second phase measured 402s. A phase in
which more than 1% of requests do not end as asked fails the command.

Setup goes around HTTP where HTTP would measure the wrong thing: bench users are
inserted directly (one shared argon2 hash, no registration rate limit) and their
tokens are minted with the gateway's own key, as an operator on the same host
can. Their OpenAccount commands go through the outbox like any registration;
the bench drains the outbox itself, so no relay needs to be running.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import psutil
import typer
import uvloop
from rich.console import Console

from paystream.settings import Settings, get_settings


@dataclass
class Phase:
    name: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str | int] = field(default_factory=Counter)
    errors: int = 0
    client_cpu: float = 0.0
    client_sent: int = 0

    def ok(self) -> int:
        return self.statuses[201] + self.statuses[202]

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000


_SENT = [0]  # requests sent by this (client) process


@dataclass
class BenchUser:
    user_id: str
    number: str
    headers: dict[str, str]


async def _setup(settings: Settings, base: str, n: int, console: Console) -> list[BenchUser]:
    from psycopg_pool import AsyncConnectionPool

    from gateway import store
    from gateway.outbox import relay as outbox_relay
    from gateway.security import hash_password, issue_token

    pw_hash = hash_password(uuid.uuid4().hex + "A1")
    users: list[BenchUser] = []
    run = uuid.uuid4().hex[:8]
    async with AsyncConnectionPool(settings.postgres_dsn, min_size=1, max_size=4) as pool:
        admin, _ = await store.create_user(
            pool,
            email=f"bench-admin-{run}@bench.invalid",
            password_hash=pw_hash,
            name="bench",
            role="admin",
            currency=None,
        )
        for i in range(n):
            user, ref = await store.create_user(
                pool, email=f"bench-{run}-{i}@bench.invalid", password_hash=pw_hash,
                name=f"bench {i}", role="user", currency="USD",
            )  # fmt: skip
            assert ref is not None
            token = issue_token(settings, user.user_id, "user", now=time.time())
            users.append(BenchUser(user.user_id, ref.account_number, {"Authorization": f"Bearer {token}"}))
    relay = outbox_relay(settings)
    await asyncio.to_thread(relay.drain)
    admin_headers = {"Authorization": f"Bearer {issue_token(settings, admin.user_id, 'admin')}"}
    console.print(f"created {n} users; funding their accounts")
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:

        async def fund(u: BenchUser) -> None:
            # One key for every try: a deposit that went through before an answer was
            # lost is replayed, not made twice.
            headers = {**admin_headers, "Idempotency-Key": uuid.uuid4().hex, "Prefer": "wait=10"}
            last = ""
            for _ in range(120):  # until the ledger has opened the account; a busy gateway's 503 is retried
                try:
                    r = await c.post(f"/v1/accounts/{u.number}/deposits",
                                     json={"amount": "1000000.00", "currency": "USD"}, headers=headers)  # fmt: skip
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__} from the gateway"
                else:
                    if r.status_code == 201:
                        return
                    last = f"{r.status_code} {r.text}"
                    if 400 <= r.status_code < 500 and r.status_code != 409:
                        # Refused (say, the ledger has not opened the account yet): the key
                        # keeps that answer, so the next try needs a new one.
                        headers = {**headers, "Idempotency-Key": uuid.uuid4().hex}
                await asyncio.sleep(0.5)
            raise RuntimeError(f"could not fund {u.number}: {last}")

        await asyncio.gather(*(fund(u) for u in users))
    return users


class _Connection:
    """A minimal HTTP/1.1 keep-alive client for the hot loop.

    httpx spent 1.0-1.2 ms of CPU per request here, more than the gateway itself,
    on the same two cores: the bench measured its own client as much as the
    gateway. This one sends prebuilt request bytes and reads a Content-Length
    response (what uvicorn always sends for these endpoints), as wrk-style load
    generators do; real clients run on other machines."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):  # one reconnect if the server closed an idle connection
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                assert self.reader is not None
                self.writer.write(head + body)
                raw = await self.reader.readuntil(b"\r\n\r\n")
                status = int(raw[9:12])
                length = 0
                for line in raw.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                payload = await self.reader.readexactly(length) if length else b""
                if b"connection: close" in raw.lower():
                    await self.close()
                return status, payload
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


MERCHANTS_PER_PAYER = 10  # fraud's fan-out rule fires at the 11th distinct receiver in 10 minutes


async def _clients(
    base: str, users: list[BenchUser], ids: list[int], prefer: str | None, measure_from: float, stop_at: float,
    merchants: list[BenchUser], clients_total: int, rate: float = 0.0,
) -> tuple[list[float], dict[str | int, int]]:
    """Clients `ids` of one process, each with its own keep-alive connection. Client i
    pays in turn as each payer whose index is i modulo the number of clients, so the
    load is spread over all payers and each stays at a realistic rate (below the
    gateway's per-user payment limit when there are enough payers).

    With `rate` (payments/s over all clients) each client sends on a fixed schedule
    instead of as soon as its last answer came, and a latency counts from when the
    request was due: a slow answer delays the next request, and that delay is counted
    rather than hidden (no coordinated omission)."""
    latencies: list[float] = []
    statuses: Counter[str | int] = Counter()
    url = httpx.URL(base)
    host, port = url.host, url.port or 80

    async def client(i: int) -> None:
        payers = users[i % clients_total::clients_total] or [users[i % len(users)]]
        rng = random.Random(i)
        shops = {p.number: rng.sample(merchants, min(MERCHANTS_PER_PAYER, len(merchants))) for p in payers}
        conn = _Connection(host, port)
        fixed = {p.number: (f"Host: {host}:{port}\r\nContent-Type: application/json\r\n"
                            f"Authorization: {p.headers['Authorization']}\r\n"
                            + (f"Prefer: {prefer}\r\n" if prefer else "")) for p in payers}
        turn = 0
        every = clients_total / rate if rate else 0.0
        due = time.time() + rng.random() * every
        try:
            while time.time() < stop_at:
                me = payers[turn % len(payers)]
                turn += 1
                mine = shops[me.number]
                to = mine[rng.randrange(len(mine))]
                body = orjson.dumps(
                    {"from_account": me.number, "to_account": to.number, "amount": "0.01", "currency": "USD"}
                )
                head = (f"POST /v1/payments HTTP/1.1\r\n{fixed[me.number]}Idempotency-Key: {uuid.uuid4().hex}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode()
                if every:
                    await asyncio.sleep(max(0.0, due - time.time()))
                    t0, due = due, due + every
                else:
                    t0 = time.time()
                _SENT[0] += 1
                code: str | int
                try:
                    status, payload = await conn.request(head, body)
                    code = status
                    if status >= 400:
                        code = f"{status} {orjson.loads(payload).get('code') if payload else ''}"
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    code = status = 0
                t1 = time.time()
                if t0 >= measure_from and t1 <= stop_at:
                    statuses[code] += 1
                    if status in (201, 202):
                        latencies.append(t1 - t0)
        finally:
            await conn.close()

    await asyncio.gather(*(client(i) for i in ids))
    return latencies, dict(statuses)


def _worker(args: tuple[str, list[BenchUser], list[int], str | None, float, float, list[BenchUser], int, float],
            out: Any) -> None:
    """One client process; also reports its CPU per request sent (warm-up included),
    so client cost can be told apart from server cost on a shared machine."""
    cpu0 = time.process_time()
    lat, statuses = uvloop.run(_clients(*args))
    out.send((lat, statuses, time.process_time() - cpu0, _SENT[0]))
    out.close()


def _phase(
    base: str,
    users: list[BenchUser],
    merchants: list[BenchUser],
    clients: int,
    procs: int,
    phase: Phase,
    prefer: str | None,
    warmup: float,
    gateway: psutil.Process | None,
    rate: float = 0.0,
) -> float:
    """Run `clients` clients spread over `procs` processes; all measure one window.
    Returns the gateway's CPU seconds inside that window."""
    ctx = mp.get_context("fork")
    measure_from = time.time() + warmup + 0.5
    stop_at = measure_from + phase.seconds
    running = []
    for k in range(procs):
        ids = list(range(k, clients, procs))
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker,
                           args=((base, users, ids, prefer, measure_from, stop_at, merchants, clients, rate), send))
        proc.start()
        running.append((proc, recv))
    time.sleep(max(0.0, measure_from - time.time()))
    cpu0 = _cpu(gateway)
    time.sleep(max(0.0, stop_at - time.time()))
    cpu = _cpu(gateway) - cpu0
    for proc, recv in running:
        lat, statuses, client_cpu, sent = recv.recv()
        proc.join()
        phase.latencies.extend(lat)
        phase.statuses.update(statuses)
        phase.client_cpu += client_cpu
        phase.client_sent += sent
    return cpu


def _gateway_process(port: int) -> psutil.Process | None:
    """The process listening on the gateway port (its CPU time gives a
    load-independent cost per request)."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


def _cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        procs = [proc, *proc.children(recursive=True)]
        return sum(sum(p.cpu_times()[:2]) for p in procs)
    except psutil.Error:
        return 0.0


def register(app: typer.Typer) -> None:
    @app.command("http")
    def bench_http(
        clients: int = typer.Option(50, help="concurrent HTTP clients"),
        seconds: float = typer.Option(10.0, help="measured seconds per phase"),
        warmup: float = typer.Option(10.0, help="unmeasured seconds before each phase (docs/PROOF.md: how long "
                                     "a fresh stack takes to warm)"),
        users: int = typer.Option(500, help="paying bench users (one funded account each); each client pays as "
                                            "its share of them in turn, so each stays under the per-user limit"),
        merchants: int = typer.Option(20, help="receiving bench users (they never pay)"),
        max_failed: float = typer.Option(0.01, help="fail when more than this share of requests do not end as asked"),
        procs: int = typer.Option(2, help="client processes the clients are spread over"),
        base_url: str = typer.Option(None, help="gateway URL (default: settings)"),
        phases: str = typer.Option("accepted,completed", help="accepted (wait=0), completed"),
        rate: float = typer.Option(0.0, help="offered payments/s over all clients, open loop (0: each client "
                                             "sends as soon as its last answer came)"),
    ) -> None:
        """Payments/s and latency through a running gateway (needs ledger + gateway)."""
        settings = get_settings()
        console = Console()
        base = base_url or f"http://{settings.gateway_host}:{settings.gateway_port}"
        port = int(base.rsplit(":", 1)[1].split("/")[0])
        gateway = _gateway_process(port)
        everyone = asyncio.run(_setup(settings, base, users + merchants, console))
        bench_users, shops = everyone[:users], everyone[users:]
        console.print(f"{clients} clients over {procs} processes, {seconds:.0f} s per phase after "
                      f"{warmup:.0f} s of warm-up; {users} payers pay {merchants} merchants")
        failed_phases: list[str] = []
        for name in [p.strip() for p in phases.split(",") if p.strip()]:
            phase = Phase(name, seconds)
            prefer = "wait=0" if name == "accepted" else None
            cpu = _phase(base, bench_users, shops, clients, procs, phase, prefer, warmup, gateway, rate)
            total = sum(phase.statuses.values())
            per_req = f"  gateway CPU {cpu / total * 1000:.2f} ms/req" if gateway and total else ""
            if phase.client_sent:
                per_req += f", client CPU {phase.client_cpu / phase.client_sent * 1000:.2f} ms/req"
            console.print(
                f"{name:>9}: {phase.ok() / seconds:8.1f} accepted req/s  "
                f"p50 {phase.pct(0.50):6.1f} ms  p99 {phase.pct(0.99):6.1f} ms  "
                f"statuses {dict(sorted(phase.statuses.items(), key=str))}{per_req}",
                soft_wrap=True,
            )
            expected = 202 if name == "accepted" else 201
            wrong = total - phase.statuses[expected]
            if total == 0 or wrong > max_failed * total:
                failed_phases.append(f"{name}: {wrong} of {total} requests did not end {expected}")
        if failed_phases:
            console.print(f"[red]bench http failed: {'; '.join(failed_phases)}[/red]")
            raise typer.Exit(1)
