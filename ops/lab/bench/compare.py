"""`paystream bench compare`: paystream against the classic row-locking design
and against a Kafka Streams peer of the same shape.

All designs get the same transfers (same accounts, same seed), on the same
machine, with the same durability promise per acknowledged transfer: paystream
end to end through Kafka with acks=all, produce -> terminal event visible to a
read_committed consumer; the Kafka Streams peer (`ops.lab.bench.kstreams`, `--design
kstreams`) by the very same procedure on topics of its own on the same broker;
the baseline (`ops.lab.bench.baseline`) one Postgres transaction with
synchronous_commit=on. Three workloads: uniform over all accounts, one hot
account sending 50 % of the transfers, and fan-in where one merchant receives 50 %.
The load client encodes every command before the clock starts and submits each
transfer on its own (docs/PROOF.md, fairness rules).

Per workload and design: sustained throughput (all transfers offered at once),
then latency p50/p95/p99 at a fixed offered rate (open loop, measured from the
moment each transfer was due), CPU (per process group, as % of one core and as
CPU ms per transfer) and peak memory. The baseline is tried with several pool
sizes and variants on a prefix of the workload; the best is then measured in
full and reported, with what it was.

After the paystream and peer runs, the invariants `paystream verify` checks are
applied to the design's own accounts (every event of them, replayed): sums per currency
zero, one terminal outcome per command, no leg twice, no negative balance,
balance_after equal to the replay. The baseline is checked in its own terms
(money conserved, no negative balance, one row per payment).
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from ops.lab.bench import baseline as B
from ops.lab.bench import kstreams as K
from ops.lab.bench.ledger import EVENTS, Encoded, LedgerProcess, Outcomes, _group_is_busy, encode_all, produce_encoded
from paystream import commands as C
from paystream.codec import Codec
from paystream.settings import PROJECT_ROOT, Settings

WORKLOADS = ("uniform", "hot", "fanin")
CURRENCY = "USD"
BALANCE = 10**12  # nobody runs out: every transfer is a real money movement
RESULTS = PROJECT_ROOT / "results"
DOC_PLOT = PROJECT_ROOT / "docs" / "bench" / "compare.png"
FLOORS = {"uniform": 1.5, "hot": 3.0, "fanin": 3.0}  # paystream throughput / baseline, at least (issue 14)
PEER_FLOOR = 0.5  # paystream throughput / Kafka Streams peer, at least (the goal is parity)


def transfers(accounts: list[str], n: int, workload: str, seed: str) -> list[dict[str, Any]]:
    """The workload as commands; the same seed gives both designs the same transfers.
    accounts[0] is the hot sender (hot) or the merchant (fanin)."""
    rnd = random.Random(seed)
    star, others = accounts[0], accounts[1:]
    out = []
    for _ in range(n):
        if workload == "hot" and rnd.random() < 0.5:
            src, dst = star, rnd.choice(others)
        elif workload == "fanin" and rnd.random() < 0.5:
            src, dst = rnd.choice(others), star
        else:
            src, dst = rnd.sample(accounts, 2)
        out.append(C.transfer(src, dst, rnd.randint(1, 10_000), CURRENCY, requested_by="bench"))
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# ----------------------------------------------------------------------------- sampling


def listener(port: int) -> psutil.Process | None:
    """The process listening on a local port: how we find the broker and the postmaster."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


def postgres_processes(port: int, dbname: str) -> list[psutil.Process]:
    """The postmaster, its auxiliary processes and the backends of `dbname`; backends
    of other databases (other people's work on a shared server) are left out."""
    pm = listener(port)
    if pm is None:
        return []
    procs = [pm]
    for child in pm.children():
        try:
            title = " ".join(child.cmdline())
        except psutil.Error:
            continue
        parts = title.split()
        # a backend's title: "postgres: <user> <database> <host(port)> <state>"
        is_backend = len(parts) >= 4 and "(" in parts[3]
        if not is_backend or parts[2] == dbname:
            procs.append(child)
    return procs


class Sampler:
    """CPU seconds and peak memory of named process groups over one measurement.

    Peak memory is RSS for single processes and PSS (shared pages split) for the
    Postgres tree, whose backends all map the same shared buffers: summing their
    RSS would count those buffers once per backend.
    """

    def __init__(self, groups: dict[str, Callable[[], list[psutil.Process]]], pss: frozenset[str] = frozenset(),
                 interval: float = 0.25) -> None:
        self.groups = groups
        self.pss = pss
        self.interval = interval
        self.first: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}
        self.peak: dict[str, float] = dict.fromkeys(groups, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = self.t1 = 0.0

    def _sample(self) -> None:
        for name, procs in self.groups.items():
            mem = 0
            for p in procs():
                try:
                    t = p.cpu_times()
                    cpu = t.user + t.system
                    mem += p.memory_full_info().pss if name in self.pss else p.memory_info().rss
                except psutil.Error:
                    continue
                self.first.setdefault((name, p.pid), cpu)
                self.last[(name, p.pid)] = cpu
            self.peak[name] = max(self.peak[name], mem / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Sampler:
        self._sample()
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.t1 = time.perf_counter()

    def cpu_seconds(self) -> dict[str, float]:
        out = dict.fromkeys(self.groups, 0.0)
        for (name, pid), v in self.last.items():
            out[name] += v - self.first[(name, pid)]
        return out


# ----------------------------------------------------------------------------- results


@dataclass
class Measurement:
    design: str  # paystream | kstreams | baseline
    workload: str
    config: str
    transfers: int
    completed: int
    seconds: float
    paced_rate: float = 0.0
    paced_completed: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    cpu_window: float = 0.0  # seconds the CPU was sampled over (a little more than `seconds`)
    peak_mib: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    sweep: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def cpu_pct(self, group: str) -> float:
        window = self.cpu_window or self.seconds
        return 100 * self.cpu_seconds.get(group, 0.0) / window if window else 0.0

    def cpu_ms_per_transfer(self, group: str) -> float:
        return 1000 * self.cpu_seconds.get(group, 0.0) / self.completed if self.completed else 0.0

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies_ms")
        d.update(rate=self.rate, p50=pct(self.latencies_ms, 0.5), p95=pct(self.latencies_ms, 0.95),
                 p99=pct(self.latencies_ms, 0.99))
        return d


@dataclass
class Report:
    started: str
    settings: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)
    paystream_invariants: dict[str, Any] = field(default_factory=dict)
    baseline_invariants: dict[str, Any] = field(default_factory=dict)
    kstreams_invariants: dict[str, Any] = field(default_factory=dict)
    plot: str = ""

    def get(self, design: str, workload: str) -> Measurement | None:
        return next((m for m in self.measurements if m.design == design and m.workload == workload), None)


# ----------------------------------------------------------------------------- paystream


class StreamRunner:
    """A design on the broker: one process of its own and one reader of its events
    topic for the whole run. paystream and the Kafka Streams peer are measured by the
    same procedure: same accounts and transfers, commands pre-encoded by the load
    client and submitted one by one (to paystream through its client library, which
    coalesces them per partition), timed from produce to the terminal event visible
    to a read_committed consumer."""

    design = ""
    app_group = ""  # the name of the design's own process in the CPU and memory samples

    def __init__(self, settings: Settings, console: Console, codec: Codec, *, commands_topic: str | None,
                 events_topic: str) -> None:
        self.settings = settings
        self.console = console
        self.codec = codec
        self.commands_topic = commands_topic
        self.mine: set[str] = set()
        self.outcomes = Outcomes(settings, self.codec, keep=True, topic=events_topic)
        self.command_ids: list[str] = []
        self.config = ""

    # the design's process: `ps` (psutil) and `peak_rss` (bytes)
    def _process(self) -> Any:
        raise NotImplementedError

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event of our accounts, decoded once the measurements are over."""
        return [e for e in self.outcomes.events() if e["account_id"] in self.mine]

    def _send(self, cmds: list[Encoded], rate: float = 0.0, sent_at: dict[str, float] | None = None) -> None:
        # The codec lets paystream's client library batch paystream's commands (each to
        # its own command topic: None); the peer's topic gets one produce per command.
        produce_encoded(self.settings, cmds, topic=self.commands_topic, rate=rate, sent_at=sent_at,
                        codec=self.codec)

    def setup(self, accounts: list[str]) -> None:
        self.mine.update(accounts)
        opens = [C.open_account(a, external_number=a[:12], owner_id="bench", currency=CURRENCY)
                 for a in accounts]
        deposits = [C.deposit(a, BALANCE, CURRENCY) for a in accounts]
        self.command_ids += [c["command_id"] for c in opens + deposits]
        t0 = time.monotonic()
        self._send(encode_all(self.codec, opens))
        self._send(encode_all(self.codec, deposits))
        if not self.outcomes.wait_for([d["command_id"] for d in deposits], 600):
            raise RuntimeError(f"{self.design} did not open and fund the accounts within 600 s")
        self.console.print(f"{self.design}: {len(accounts)} accounts opened and funded in "
                           f"{time.monotonic() - t0:.1f}s")

    def warm_up(self, rounds: Callable[[int], list[dict[str, Any]]], seconds: float) -> None:
        """Unmeasured transfers before the first measured workload, as the baseline's
        pool and variant sweep warms Postgres before its measured runs: rounds of
        fresh transfers until `seconds` have passed. A broker whose JIT is still cold
        spent 2-3x the CPU per message (its C2 compiler alone took half a core in its
        first minute, docs/LEDGER.md), and a fixed count (6,000 transfers, 2.4 s once
        the ledger batched) left the first design measured on a colder broker than
        the next; a JVM peer needs its own JIT warm too."""
        t0 = time.monotonic()
        n = 0
        while n == 0 or time.monotonic() - t0 < seconds:
            cmds = rounds(n)
            ids = [c["command_id"] for c in cmds]
            self.command_ids += ids
            self._send(encode_all(self.codec, cmds))
            if not self.outcomes.wait_for(ids, timeout=max(180.0, len(cmds) / 100)):
                raise RuntimeError(f"{self.design} did not settle the warm-up transfers in time")
            n += 1
        self.console.print(f"{self.design}: warm-up, {n} rounds of unmeasured transfers in "
                           f"{time.monotonic() - t0:.1f}s")

    def _processes(self) -> list[Any]:
        return [self._process()]

    def _groups(self) -> dict[str, Callable[[], list[psutil.Process]]]:
        broker = listener(self.settings.kafka_port)
        me = psutil.Process()
        procs = [p.ps for p in self._processes()]
        return {self.app_group: lambda: procs, "broker": lambda: [broker] if broker else [],
                "client": lambda: [me]}

    def measure(self, workload: str, cmds: list[dict[str, Any]], paced: list[dict[str, Any]],
                rate: float) -> Measurement:
        m = Measurement(self.design, workload, self.config, len(cmds), 0, 0.0)
        ids = [c["command_id"] for c in cmds]
        self.command_ids += ids + [c["command_id"] for c in paced]
        full, slow = encode_all(self.codec, cmds), encode_all(self.codec, paced)
        with Sampler(self._groups()) as s:
            t0 = time.monotonic()
            self._send(full)
            self.outcomes.wait_for(ids, timeout=max(180.0, len(cmds) / 100))
            done = [i for i in ids if i in self.outcomes.seen]
            end = max((self.outcomes.seen[i][0] for i in done), default=time.monotonic())
        m.completed, m.seconds = len(done), end - t0
        m.cpu_seconds, m.cpu_window, m.peak_mib = s.cpu_seconds(), s.t1 - s.t0, dict(s.peak)
        m.statuses = dict(_count(self.outcomes.seen[i][1] for i in done))
        m.peak_mib[self.app_group] = max(m.peak_mib.get(self.app_group, 0.0),
                                         sum(p.peak_rss for p in self._processes()) / 2**20)
        # latency at a fixed offered rate
        sent_at: dict[str, float] = {}
        pids = [c["command_id"] for c in paced]
        self._send(slow, rate=rate, sent_at=sent_at)
        self.outcomes.wait_for(pids, timeout=max(120.0, len(paced) / 100))
        got = [i for i in pids if i in self.outcomes.seen]
        m.paced_rate, m.paced_completed = rate, len(got)
        m.latencies_ms = [(self.outcomes.seen[i][0] - sent_at[i]) * 1000 for i in got]
        return m

    def invariants(self) -> dict[str, Any]:
        """`paystream verify`'s replay checks (a, b, c, e) over every event of our accounts."""
        from ops.verify import Replay

        time.sleep(1.0)  # the reader thread may still be appending the last events
        replay = Replay(invariants=True)
        for e in self.events:
            replay.feed(e)
        sums = {cur: s for cur, s in replay.by_currency.items() if s != 0}
        terminals = [replay.terminals.get(cid, 0) for cid in self.command_ids]
        from pipelines.ledger.domain import transit_account

        return {
            "events": len(replay.event_ids),
            "commands": len(self.command_ids),
            "sum_per_currency_zero": not sums and not replay.unbalanced,
            "nonzero_sums": sums,
            "one_terminal_outcome_each": all(t == 1 for t in terminals),
            "missing_outcomes": sum(1 for t in terminals if t == 0),
            "repeated_outcomes_or_legs": replay.twice[:10],
            "duplicate_events": len(replay.duplicates),
            "negative_user_balances": len(replay.negative),
            "balance_after_wrong": len(replay.balance_after_wrong),
            "transit_left": replay.balance.get(transit_account(CURRENCY), 0),
        }

    def close(self) -> None:
        self.outcomes.close()


class PaystreamRunner(StreamRunner):
    """`instances` ledger processes of our own on the project's topics, one consumer
    group: Kafka's task model spreads the partitions over them (the peer gets as many
    stream threads, the baseline a pool of connections)."""

    design = "paystream"
    app_group = "ledger"

    def __init__(self, settings: Settings, console: Console, *, commit_interval: float,
                 env_extra: dict[str, str] | None, group_wait: float, instances: int = 1) -> None:
        deadline = time.monotonic() + group_wait
        while _group_is_busy(settings):
            if time.monotonic() > deadline:
                raise RuntimeError("another ledger is in group paystream-ledger (someone's tests or "
                                   "`paystream up`); the bench needs the group to itself. Stop it, "
                                   "wait longer (--group-wait) or use --isolated")
            console.print("[yellow]another ledger is in the group; waiting for it to leave[/yellow]")
            time.sleep(10)
        super().__init__(settings, console, Codec(settings.registry_url), commands_topic=None,
                         events_topic=EVENTS)
        self.ledgers = [LedgerProcess(settings, commit_interval, env_extra, instance=f"bench-{i}")
                        for i in range(instances)]
        self.commit_interval = commit_interval
        self.config = f"{instances} ledger{'s' if instances > 1 else ''}, commit {commit_interval}s"

    def _process(self) -> Any:
        return self.ledgers[0]

    def _processes(self) -> list[Any]:
        return list(self.ledgers)

    def close(self) -> None:
        for ledger in self.ledgers:
            ledger.stop()
        super().close()


class KStreamsRunner(StreamRunner):
    """The Kafka Streams peer (ops/lab/bench/kstreams.py) on topics of its own, same broker."""

    design = "kstreams"
    app_group = "kstreams"

    def __init__(self, settings: Settings, console: Console, built: Path, *, commit_interval: float,
                 threads: int = 1) -> None:
        codec = Codec(settings.registry_url)
        self.peer = K.Peer(settings, codec, built, commit_ms=round(commit_interval * 1000), threads=threads)
        try:
            super().__init__(settings, console, codec, commands_topic=self.peer.commands,
                             events_topic=self.peer.events)
            self.peer.wait_running()
        except BaseException:
            self.peer.close()
            raise
        plural = "s" if threads > 1 else ""
        self.config = f"{threads} stream thread{plural}, commit {commit_interval}s, heap {K.JVM_HEAP}"

    def _process(self) -> Any:
        return self.peer

    def measure(self, workload: str, cmds: list[dict[str, Any]], paced: list[dict[str, Any]],
                rate: float) -> Measurement:
        m = super().measure(workload, cmds, paced, rate)
        if not self.peer.alive():
            raise RuntimeError(f"the Kafka Streams peer died during {workload}:\n{self.peer.tail()}")
        return m

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.peer.close()


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


# ----------------------------------------------------------------------------- baseline


class BaselineRunner:
    def __init__(self, settings: Settings, console: Console, dbname: str) -> None:
        self.settings = settings
        self.console = console
        self.db = B.BaselineDB(settings.postgres_dsn, dbname)
        self.db.create()
        self.accounts: list[str] = []
        self.last_invariants: dict[str, Any] = {}

    def setup(self, accounts: list[str]) -> None:
        self.accounts = accounts

    def _groups(self) -> dict[str, Callable[[], list[psutil.Process]]]:
        me = psutil.Process()
        port, name = self.settings.postgres_port, self.db.name
        return {"postgres": lambda: postgres_processes(port, name), "client": lambda: [me]}

    def _run(self, cmds: list[dict[str, Any]], pool: int, variant: str, rate: float = 0.0
             ) -> tuple[B.BaselineRun, Sampler]:
        self.db.reset(self.accounts, BALANCE, CURRENCY)
        with Sampler(self._groups(), pss=frozenset({"postgres"})) as s:
            r = B.run(self.db.dsn, cmds, pool_size=pool, variant=variant, rate=rate)
        return r, s

    def measure(self, workload: str, cmds: list[dict[str, Any]], paced: list[dict[str, Any]], rate: float,
                pools: list[int], variants: list[str], sweep_n: int) -> Measurement:
        sweep: list[dict[str, Any]] = []
        for variant in variants:
            for pool in pools:
                r, _ = self._run(cmds[:sweep_n], pool, variant)
                sweep.append({"variant": variant, "pool": pool, "rate": r.rate, "errors": r.errors,
                              "p50": pct(r.latencies_ms, 0.5), "p99": pct(r.latencies_ms, 0.99)})
                self.console.print(f"  baseline {workload:8} {variant:8} pool {pool:3}: {r.rate:7.0f}/s "
                                   f"(closed loop p50 {pct(r.latencies_ms, .5):.1f} ms, "
                                   f"p99 {pct(r.latencies_ms, .99):.1f} ms)")
        best = max(sweep, key=lambda x: x["rate"])
        variant, pool = best["variant"], best["pool"]
        r, s = self._run(cmds, pool, variant)
        inv = self.db.invariants(len(self.accounts), BALANCE)
        m = Measurement("baseline", workload, f"{variant}, pool {pool}", len(cmds), sum(r.statuses.values()),
                        r.seconds, cpu_seconds=s.cpu_seconds(), cpu_window=s.t1 - s.t0, peak_mib=dict(s.peak),
                        statuses=dict(r.statuses), sweep=sweep)
        m.statuses["errors"] = r.errors
        p, _ = self._run(paced, pool, variant, rate=rate)
        m.paced_rate, m.paced_completed, m.latencies_ms = rate, sum(p.statuses.values()), p.latencies_ms
        inv_paced = self.db.invariants(len(self.accounts), BALANCE)
        ok = all(i["sum_conserved"] and i["negative_balances"] == 0 for i in (inv, inv_paced))
        self.last_invariants = {"money_conserved_and_no_negative": ok, "after_full_run": inv,
                                "after_paced_run": inv_paced}
        return m

    def close(self) -> None:
        self.db.drop()


# ----------------------------------------------------------------------------- main

DESIGNS = ("paystream", "baseline", "kstreams")
# the processes whose CPU and memory are the design's cost ("server"), by design
SERVER = {"paystream": ("ledger", "broker"), "kstreams": ("kstreams", "broker"), "baseline": ("postgres",)}


def parse_designs(text: str) -> list[str]:
    """`paystream,baseline,kstreams` (any subset, any order) -> the designs, in run order."""
    names = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in names if d not in DESIGNS]
    if unknown or not names:
        raise ValueError(f"unknown design(s) {unknown or text!r}: choose from {', '.join(DESIGNS)}")
    return [d for d in ("paystream", "kstreams", "baseline") if d in names]


def server_cpu_us(m: Measurement) -> float:
    """Server CPU microseconds per completed transfer (the design's processes summed)."""
    return sum(1000 * m.cpu_ms_per_transfer(g) for g in SERVER[m.design])


def server_peak_mib(m: Measurement) -> float:
    return sum(m.peak_mib.get(g, 0.0) for g in SERVER[m.design])


def compare(settings: Settings, *, accounts: int = 10_000, transfers_n: int = 20_000, paced_rate: float = 500.0,
            paced_seconds: float = 10.0, pools: list[int] | None = None, variants: list[str] | None = None,
            sweep_n: int = 6_000, workloads: list[str] | None = None, commit_interval: float = 0.1,
            env_extra: dict[str, str] | None = None, group_wait: float = 600.0, dbname: str = "bench_baseline",
            publish: bool = False, designs: list[str] | None = None, json_path: Path | None = None,
            warmup_seconds: float = 30.0, instances: int = 2, console: Console | None = None) -> Report:
    console = console or Console()
    pools = pools or [8, 16, 32, 64]
    variants = variants or ["classic", "proc"]
    workloads = workloads or list(WORKLOADS)
    designs = parse_designs(",".join(designs or DESIGNS))
    built = K.build(settings) if "kstreams" in designs else None  # a failed build stops the bench here
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    report = Report(stamp, {
        "accounts": accounts, "transfers": transfers_n, "paced_rate": paced_rate, "paced_seconds": paced_seconds,
        "pools": pools, "variants": variants, "sweep_n": sweep_n, "commit_interval": commit_interval,
        "bootstrap": settings.bootstrap_servers, "postgres_port": settings.postgres_port,
        "kafka_version": settings.kafka_version, "broker_heap": settings.kafka_heap, "designs": designs,
        "cpus": psutil.cpu_count(), "load_at_start": list(psutil.getloadavg()), "instances": instances,
    })
    ids = [str(uuid.uuid4()) for _ in range(accounts)]
    n_paced = int(paced_rate * paced_seconds)
    work = {wl: (transfers(ids, transfers_n, wl, f"{wl}/max"), transfers(ids, n_paced, wl, f"{wl}/paced"))
            for wl in workloads}
    def warm(n: int) -> list[dict[str, Any]]:
        return transfers(ids, min(sweep_n, transfers_n), "uniform", f"warm-up/{n}")

    for design in designs:
        if design == "baseline":
            _run_baseline(settings, console, report, ids, work, paced_rate, pools, variants,
                          min(sweep_n, transfers_n), dbname)
            continue
        runner: StreamRunner
        if design == "paystream":
            console.print(f"[bold]paystream[/bold]: ledger on {settings.bootstrap_servers}, {accounts} accounts")
            runner = PaystreamRunner(settings, console, commit_interval=commit_interval, env_extra=env_extra,
                                     group_wait=group_wait, instances=instances)
        else:
            assert built is not None
            console.print(f"[bold]kstreams[/bold]: Kafka Streams {settings.kafka_version} peer on "
                          f"{settings.bootstrap_servers}, {accounts} accounts")
            runner = KStreamsRunner(settings, console, built, commit_interval=commit_interval, threads=instances)
        try:
            runner.setup(ids)
            runner.warm_up(warm, warmup_seconds)
            for wl in workloads:
                cmds, paced = work[wl]
                m = runner.measure(wl, cmds, paced, paced_rate)
                report.measurements.append(m)
                console.print(f"  {design:9} {wl:8}: {m.rate:7.0f}/s; at {paced_rate:.0f}/s p50 "
                              f"{pct(m.latencies_ms, .5):.0f} ms p99 {pct(m.latencies_ms, .99):.0f} ms; "
                              f"{runner.app_group} CPU {m.cpu_pct(runner.app_group):.0f}%")
            inv = runner.invariants()
            if design == "paystream":
                report.paystream_invariants = inv
            else:
                report.kstreams_invariants = inv
        finally:
            runner.close()

    render(report, console)
    report.plot = str(plot(report, RESULTS / f"compare-{stamp}.png"))
    shutil.copyfile(report.plot, RESULTS / "compare.png")
    if publish:
        DOC_PLOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report.plot, DOC_PLOT)
    data = {**asdict(report), "measurements": [m.summary() for m in report.measurements]}
    (RESULTS / f"compare-{stamp}.json").write_text(json.dumps(data, indent=2, default=str))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results_json(report), indent=2, default=str) + "\n")
        console.print(f"results: {json_path}")
    console.print(f"plot: {report.plot}" + (f" (copied to {DOC_PLOT})" if publish else ""))
    return report


def _run_baseline(settings: Settings, console: Console, report: Report, ids: list[str],
                  work: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]], paced_rate: float,
                  pools: list[int], variants: list[str], sweep_n: int, dbname: str) -> None:
    console.print(f"[bold]baseline[/bold]: Postgres on port {settings.postgres_port}, database {dbname}")
    bl = BaselineRunner(settings, console, dbname)
    try:
        bl.setup(ids)
        inv: dict[str, Any] = {}
        for wl, (cmds, paced) in work.items():
            m = bl.measure(wl, cmds, paced, paced_rate, pools, variants, sweep_n)
            report.measurements.append(m)
            inv[wl] = bl.last_invariants
            console.print(f"  baseline  {wl:8}: {m.rate:7.0f}/s ({m.config}); at {paced_rate:.0f}/s p50 "
                          f"{pct(m.latencies_ms, .5):.1f} ms p99 {pct(m.latencies_ms, .99):.1f} ms")
        report.baseline_invariants = inv
    finally:
        bl.close()


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and a == a and b == b else None  # NaN-safe


def ratios(report: Report, peer: str, wl: str) -> dict[str, float | None] | None:
    """paystream / `peer` on one workload: throughput (higher is better for paystream),
    latency and CPU per transfer (lower is better for paystream)."""
    p, o = report.get("paystream", wl), report.get(peer, wl)
    if p is None or o is None:
        return None
    return {
        "throughput": _ratio(p.rate, o.rate),
        "p50": _ratio(pct(p.latencies_ms, .5), pct(o.latencies_ms, .5)),
        "p99": _ratio(pct(p.latencies_ms, .99), pct(o.latencies_ms, .99)),
        "cpu_per_transfer": _ratio(server_cpu_us(p), server_cpu_us(o)),
    }


def results_json(report: Report) -> dict[str, Any]:
    """The `--json` file: per design and workload the headline figures, then the
    ratios of paystream against each peer."""
    designs: dict[str, dict[str, Any]] = {}
    for m in report.measurements:
        designs.setdefault(m.design, {})[m.workload] = {
            "config": m.config,
            "transfers": m.transfers,
            "completed": m.completed,
            "transfers_per_s": m.rate,
            "p50_ms": pct(m.latencies_ms, .5),
            "p99_ms": pct(m.latencies_ms, .99),
            "paced_rate": m.paced_rate,
            "paced_completed": m.paced_completed,
            "cpu_us_per_transfer": server_cpu_us(m),
            "cpu_us_per_transfer_by_process": {g: 1000 * m.cpu_ms_per_transfer(g) for g in SERVER[m.design]},
            "client_cpu_us_per_transfer": 1000 * m.cpu_ms_per_transfer("client"),
            "peak_rss_mib": server_peak_mib(m),
            "peak_mib_by_process": {g: m.peak_mib.get(g, 0.0) for g in SERVER[m.design]},
        }
    out_ratios: dict[str, dict[str, Any]] = {}
    for wl in WORKLOADS:
        for peer in ("baseline", "kstreams"):
            r = ratios(report, peer, wl)
            if r is not None:
                out_ratios.setdefault(wl, {})[f"paystream/{peer}"] = r
    return {
        "started": report.started,
        "settings": report.settings,
        "units": {"transfers_per_s": "completed transfers per second, full speed",
                  "p50_ms": "ms, produce -> terminal event, at paced_rate offered",
                  "cpu_us_per_transfer": "server CPU microseconds per transfer (design's processes + broker)",
                  "peak_rss_mib": "peak MiB of the design's processes (RSS; Postgres: PSS)"},
        "designs": designs,
        "ratios": out_ratios,
        "invariants": {"paystream": report.paystream_invariants, "kstreams": report.kstreams_invariants,
                       "baseline": {wl: v["money_conserved_and_no_negative"]
                                    for wl, v in report.baseline_invariants.items()}},
    }


def render(report: Report, console: Console) -> None:
    rate = report.settings["paced_rate"]
    t = Table("workload", "design", "config", "transfers/s", f"p50 ms\n@{rate:.0f}/s", "p95 ms", "p99 ms",
              "server CPU %\n(of 1 core)", "server CPU\nms/transfer", "client\nCPU %", "peak MiB",
              title="paystream vs Kafka Streams vs classic Postgres "
                    "(server = ledger | kstreams + broker | postgres processes)")
    for m in report.measurements:
        groups = SERVER[m.design]
        cpu = " + ".join(f"{m.cpu_pct(g):.0f}" for g in groups)
        per = " + ".join(f"{m.cpu_ms_per_transfer(g):.2f}" for g in groups)
        if m.design == "baseline":
            mem = f"{m.peak_mib.get('postgres', 0):.0f} (PSS)"
        else:
            mem = " + ".join(f"{g} {m.peak_mib.get(g, 0):.0f}" for g in groups)
        short = m.paced_completed < 0.99 * rate * report.settings["paced_seconds"]
        t.add_row(m.workload, m.design, m.config, f"{m.rate:,.0f}",
                  f"{pct(m.latencies_ms, .5):.1f}" + (" *" if short else ""),
                  f"{pct(m.latencies_ms, .95):.1f}", f"{pct(m.latencies_ms, .99):.1f}", cpu, per,
                  f"{m.cpu_pct('client'):.0f}", mem)
    console.print(t)

    def x(v: float | None) -> str:
        return f"{v:.2f}x" if v is not None else "-"

    r = Table("workload", "throughput paystream / best baseline", "floor", "met",
              "paystream / classic statements (best pool, sweep)", "p99 paystream / baseline",
              "throughput paystream / kstreams", "p99 paystream / kstreams",
              "CPU per transfer paystream / kstreams", title="ratios")
    for wl in WORKLOADS:
        vb, vk = ratios(report, "baseline", wl), ratios(report, "kstreams", wl)
        if vb is None and vk is None:
            continue
        cols = ["-"] * 5
        if vb is not None:
            b = report.get("baseline", wl)
            p = report.get("paystream", wl)
            assert b is not None and p is not None
            ratio = vb["throughput"] or 0.0
            classic = classic_best(b)
            cols = [x(vb["throughput"]), f">= {FLOORS[wl]:g}x",
                    "[green]yes[/green]" if ratio >= FLOORS[wl] else "[red]no[/red]",
                    f"{p.rate / classic:.2f}x ({classic:,.0f}/s)" if classic else "-", x(vb["p99"])]
        kcols = ([x(vk["throughput"]) + (" [green]>= 0.5x[/green]" if (vk["throughput"] or 0) >= PEER_FLOOR
                                         else " [red]< 0.5x[/red]"), x(vk["p99"]), x(vk["cpu_per_transfer"])]
                 if vk else ["-"] * 3)
        r.add_row(wl, *cols, *kcols)
    console.print(r)
    if report.paystream_invariants:
        console.print(f"paystream invariants on the bench's accounts: {report.paystream_invariants}")
    if report.kstreams_invariants:
        console.print(f"kstreams invariants on the bench's accounts: {report.kstreams_invariants}")
    if report.baseline_invariants:
        console.print("baseline invariants: " + json.dumps(
            {wl: v["money_conserved_and_no_negative"] for wl, v in report.baseline_invariants.items()}))


def classic_best(m: Measurement) -> float:
    """The best sweep rate of the one-statement-per-round-trip variant: what most
    application code does, next to the best variant that is reported."""
    return max((s["rate"] for s in m.sweep if s["variant"] == "classic"), default=0.0)


def plot(report: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    wls = [wl for wl in WORKLOADS if any(report.get(d, wl) for d in DESIGNS)]
    designs = [d for d in ("paystream", "kstreams", "baseline") if any(report.get(d, wl) for wl in wls)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6))
    colors = {"paystream": "#2b6cb0", "kstreams": "#2f855a", "baseline": "#c05621", "classic": "#f6ad55"}

    def rates(design: str, of: Callable[[Measurement], float]) -> list[float]:
        return [of(m) if (m := report.get(design, wl)) else 0.0 for wl in wls]

    series = []
    if "paystream" in designs:
        series.append(("paystream", rates("paystream", lambda m: m.rate), colors["paystream"]))
    if "kstreams" in designs:
        series.append(("Kafka Streams peer (same shape, same broker)", rates("kstreams", lambda m: m.rate),
                       colors["kstreams"]))
    if "baseline" in designs:
        series.append(("baseline, statements (best pool)", rates("baseline", classic_best), colors["classic"]))
        series.append(("baseline, best variant and pool per workload", rates("baseline", lambda m: m.rate),
                       colors["baseline"]))
    width = 0.8 / max(1, len(series))
    for i, (label, vals, color) in enumerate(series):
        xs = [k - 0.4 + width * (i + 0.5) for k in range(len(wls))]
        bars = ax1.bar(xs, vals, width, label=label, color=color)
        ax1.bar_label(bars, fmt="%.0f", fontsize=8)
    ax1.set_xticks(range(len(wls)), wls)
    ax1.set_ylabel("transfers/s (sustained)")
    ax1.set_title("throughput")
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    rate = report.settings["paced_rate"]
    qs = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))
    group = 0.8 / (3 * max(1, len(designs)))
    for i, design in enumerate(designs):
        for j, (q, label) in enumerate(qs):
            vals = []
            for wl in wls:
                m = report.get(design, wl)
                vals.append(pct(m.latencies_ms, q) if m else 0)
            xs = [k - 0.4 + group * (i * 3 + j + 0.5) for k in range(len(wls))]
            ax2.bar(xs, vals, group, color=colors[design], alpha=(1.0, 0.7, 0.45)[j],
                    label=f"{design} {label}")
    ax2.set_yscale("log")
    ax2.set_xticks(range(len(wls)), wls)
    ax2.set_ylabel("ms (log)")
    ax2.set_title(f"latency at {rate:.0f} transfers/s offered")
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    fig.suptitle("paystream (Kafka, exactly-once ledger) vs a Kafka Streams peer vs classic Postgres row locks — "
                 f"{report.settings['accounts']} accounts, {psutil.cpu_count()} cores", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
