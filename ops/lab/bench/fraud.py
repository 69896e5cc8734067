"""`paystream bench fraud`: how fast fraud scores a journal, and does it grow with instances?

Fraud reads every event of `ledger.events` and every flow it sent itself on
`fraud.flows`; for each debit it runs the rules and writes a flow for the receiver.
Live, it is measured only as "does it keep up". Here it catches up instead: on a
fresh isolated stack the ledger first writes the journal of `transfers` transfers
between `accounts` accounts (a workload of `bench compare`: uniform, hot or fan-in),
then stops;
then 1, 2 or more fraud instances start from the beginning of the journal, each
held to `cores` of CPU (cgroup, as `bench scale` holds the ledgers) or unbounded,
and the bench times them from their first commit to the moment their group has read
every event and every flow.

The rate is transfers scored per second (events read / events per transfer), and
CPU is the fraud processes' own, per transfer. Uniform is small amounts between
many accounts, so few rules fire: the cost of the clean path that most payments
take, with short per-account histories. Few accounts (`--accounts 20`) give every
account full windows; fan-in gives one merchant half of all payments, from up to
`max_entries` distinct payers (docs/FRAUD.md, "Cost per event").
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from ops import groups as G
from ops.lab.bench.compare import PaystreamRunner, transfers
from ops.lab.bench.scale import CpuQuota, write_points
from paystream import topics
from paystream.settings import PROJECT_ROOT, Settings

GROUP = "paystream-fraud"


@dataclass
class Point:
    instances: int
    quota_cores: float  # 0: no quota
    transfers: int
    events: int
    seconds: float  # from the group's first commit to the last record read
    startup_seconds: float  # from starting the processes to their first commit
    read_share: float  # of the journal's offsets, read within `seconds`
    cpu_seconds: float  # the fraud processes', within `seconds`
    peak_rss_mib: list[float] = field(default_factory=list)
    alerts: int = 0
    throttled_share: float = 0.0

    @property
    def rate(self) -> float:
        """Transfers scored per second (only what was read within `seconds` counts)."""
        return self.transfers * self.read_share / self.seconds if self.seconds else 0.0

    @property
    def us_per_transfer(self) -> float:
        done = self.transfers * self.read_share
        return 1e6 * self.cpu_seconds / done if done else 0.0


class FraudProcess:
    def __init__(self, settings: Settings, env_extra: dict[str, str], instance: str) -> None:
        env = {**os.environ, **env_extra, "PAYSTREAM_FRAUD_INSTANCE": instance, "PYTHONUNBUFFERED": "1"}
        self.log_path = settings.home / "logs" / f"bench-fraud-{instance}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "run", "fraud"], stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)
        self.ps = psutil.Process(self.proc.pid)
        self.peak = 0

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self.ps.memory_info().rss)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _positions(settings: Settings, inputs: tuple[str, ...]) -> dict[tuple[str, int], int]:
    return {tp: o for tp, o in G.committed(settings, GROUP).items() if tp[0] in inputs}


def _ends(settings: Settings, topic: str) -> dict[tuple[str, int], int]:
    tps = [(topic, p) for p in G.partitions(settings, topic)]
    return {tp: hw for tp, (_, hw) in G.watermarks(settings, tps).items()}


def measure(settings: Settings, env_extra: dict[str, str], instances: int, *, cores: float, accounts: int,
            transfers_n: int, timeout: float, console: Console, workload: str = "uniform") -> Point:
    # 1. the journal: the ledger writes it, then leaves
    runner = PaystreamRunner(settings, console, commit_interval=0.1, env_extra=env_extra, group_wait=0)
    try:
        ids = [str(uuid.uuid4()) for _ in range(accounts)]
        runner.setup(ids)
        m = runner.measure(workload, transfers(ids, transfers_n, workload, "fraud"), [], 0.0)
        if m.completed < transfers_n:
            raise RuntimeError(f"the ledger completed {m.completed} of {transfers_n} transfers")
        events = len(runner.events)
    finally:
        runner.close()
    journal = _ends(settings, topics.EVENTS)
    total = sum(journal.values())
    console.print(f"  journal: {events:,} events of {transfers_n:,} transfers; fraud starts")

    # 2. fraud catches up on it
    procs = [FraudProcess(settings, env_extra, f"bench-{i}") for i in range(instances)]
    quotas: list[CpuQuota] = []
    try:
        if cores > 0:
            for i, p in enumerate(procs):
                q = CpuQuota(f"paystream-bench-fraud-{os.getpid()}-{i}", cores)
                q.add(p.proc.pid)
                quotas.append(q)
        inputs = (topics.EVENTS, topics.FLOWS)
        started = time.monotonic()
        deadline = started + timeout
        first: tuple[float, int, float, float] | None = None  # time, events read, CPU, throttled
        while True:
            time.sleep(0.2)
            pos = _positions(settings, inputs)
            read = sum(o for (t, _), o in pos.items() if t == topics.EVENTS)
            now = time.monotonic()
            for p in procs:
                p.sample()
            if first is None and read > 0:
                first = (now, read, sum(p.cpu_seconds() for p in procs), sum(q.throttled_seconds() for q in quotas))
            if first is not None and read >= total - 2 * len(journal):  # a commit marker or two short
                flows = _ends(settings, topics.FLOWS)
                left = G.lags(settings, {**{tp: pos.get(tp, 0) for tp in journal},
                                         **{tp: pos.get(tp, 0) for tp in flows}})
                if not any(left.values()):
                    break
            if now > deadline:
                raise RuntimeError(f"fraud had read {read:,} of {total:,} journal offsets after {timeout:.0f}s")
            for p in procs:
                if p.proc.poll() is not None:
                    # The isolated stack's home goes with it: show the log's end now.
                    tail = p.log_path.read_bytes()[-3000:].decode("utf-8", "replace")
                    raise RuntimeError(f"fraud instance exited with {p.proc.returncode}; its log ends:\n{tail}")
        assert first is not None
        end = time.monotonic()
        cpu = sum(p.cpu_seconds() for p in procs) - first[2]
        throttled = sum(q.throttled_seconds() for q in quotas) - first[3]
        alerts = sum(hw for hw in _ends(settings, topics.ALERTS).values())
        seconds = end - first[0]
        return Point(instances, cores, transfers_n, events, seconds, first[0] - started,
                     (total - first[1]) / total, cpu, [round(p.peak / 2**20, 1) for p in procs],
                     alerts, round(throttled / max(len(quotas), 1) / seconds, 3) if quotas else 0.0)
    finally:
        for p in procs:
            p.stop()
        for q in quotas:
            q.remove()


WORKLOADS = ("uniform", "hot", "fanin")


def bench(*, instances: list[int], cores: float, accounts: int, transfers_per_instance: int, timeout: float,
          json_path: Path | None, console: Console, workload: str = "uniform") -> list[Point]:
    from ops.lab.isolated import isolated_stack, settings_env

    if workload not in WORKLOADS:
        raise RuntimeError(f"unknown workload {workload!r}: one of {', '.join(WORKLOADS)}")
    points: list[Point] = []
    for n in instances:
        with isolated_stack("paystream-bench-fraud-", console=console) as iso:
            quota = f"{cores} core each" if cores > 0 else "no CPU quota"
            console.print(f"[bold]{n} fraud instance{'s' if n > 1 else ''}[/bold], {quota}, {workload}")
            p = measure(iso, settings_env(iso), n, cores=cores, accounts=accounts,
                        transfers_n=transfers_per_instance * n, timeout=timeout, console=console,
                        workload=workload)
            points.append(p)
            console.print(f"  {p.rate:,.0f} transfers/s, {p.us_per_transfer:,.0f} us CPU per transfer "
                          f"(startup {p.startup_seconds:.1f}s, {p.alerts} alerts)")
        time.sleep(2)
    render(points, console)
    if json_path is not None:
        write_points(json_path, [{**asdict(p), "rate": p.rate, "us_per_transfer": p.us_per_transfer} for p in points],
                     base=points[0].rate / points[0].instances if points else 0.0, console=console,
                     quota_cores=cores, accounts=accounts, workload=workload)  # fmt: skip
    return points


def render(points: list[Point], console: Console) -> None:
    if not points:
        return
    per_one = points[0].rate / points[0].instances
    t = Table(title="fraud catching up on a journal")
    for col in ("instances", "transfers/s", "x one instance", "floor 0.8 x N", "us CPU / transfer",
                "startup (s)", "peak RSS (MiB)", "alerts", "throttled"):
        t.add_column(col, justify="right")
    for p in points:
        t.add_row(str(p.instances), f"{p.rate:,.0f}", f"{p.rate / per_one:.2f}" if per_one else "-",
                  f"{0.8 * p.instances:.1f}", f"{p.us_per_transfer:,.0f}", f"{p.startup_seconds:.1f}",
                  ", ".join(f"{r:.0f}" for r in p.peak_rss_mib), str(p.alerts), f"{p.throttled_share:.0%}")
    console.print(t)
