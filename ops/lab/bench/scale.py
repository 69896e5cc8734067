"""`paystream bench scale`: does throughput grow with ledger instances?

Kafka's answer to "more load" is more instances: the partitions spread over them and
each takes its share. Here every instance is held to the same CPU quota through the
cgroup cpu controller (by default 0.2 of a core), so that each stands in for a small
machine of its own and the question is not hidden by the two cores the processes
would otherwise share. For 1, 2, 4 and 8 instances (8 partitions: at most one each)
the bench starts a fresh stack, opens and funds the accounts, warms the broker up,
then offers the same full-speed uniform workload through paystream's client library
and reports sustained transfers/s against one instance.

What is *not* held to a quota: the broker and the load client. On this 2-core
machine they share what the instances leave, so the report says, for every point,
how much CPU each took: where the curve bends because the broker or the client ran
out of machine, the figures show it.

cgroup v1 (this machine) and v2 are both handled; without a writable cpu controller
the bench refuses to run rather than measure something else.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from ops.lab.bench.compare import PaystreamRunner, transfers
from paystream.settings import Settings

CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class CpuQuota:
    """A cgroup holding processes to `cores` of CPU (CFS bandwidth control)."""

    def __init__(self, name: str, cores: float) -> None:
        quota = int(cores * PERIOD_US)
        if (CGROUP_V1 / "cgroup.procs").exists():
            self.path = CGROUP_V1 / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        elif (CGROUP_V2 / "cgroup.controllers").exists() and "cpu" in (CGROUP_V2 / "cgroup.controllers").read_text():
            self.path = CGROUP_V2 / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            raise RuntimeError("no writable cgroup cpu controller: bench scale needs one to hold each instance "
                               "to its quota")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_seconds(self) -> float:
        """Time the group spent throttled (it wanted more than its quota)."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "throttled_time":  # v1, ns
                return int(value) / 1e9
            if name == "throttled_usec":  # v2
                return int(value) / 1e6
        return 0.0

    def remove(self) -> None:
        with contextlib.suppress(OSError):  # a process still leaving: an empty group is harmless
            self.path.rmdir()


@dataclass
class Point:
    instances: int
    quota_cores: float
    transfers: int
    completed: int
    seconds: float
    cpu_cores: dict[str, float] = field(default_factory=dict)  # mean cores per process group
    throttled_share: float = 0.0  # of the run, mean over instances

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


def measure(settings: Settings, env_extra: dict[str, str], instances: int, *, cores: float, accounts: int,
            transfers_n: int, warmup_seconds: float, console: Console) -> Point:
    runner = PaystreamRunner(settings, console, commit_interval=0.1, env_extra=env_extra, group_wait=0,
                             instances=instances)
    quotas = []
    try:
        for i, ledger in enumerate(runner.ledgers):
            q = CpuQuota(f"paystream-bench-scale-{os.getpid()}-{i}", cores)
            q.add(ledger.proc.pid)
            quotas.append(q)
        ids = [str(uuid.uuid4()) for _ in range(accounts)]
        runner.setup(ids)
        runner.warm_up(lambda n: transfers(ids, 4_000 * instances, "uniform", f"warm/{n}"), warmup_seconds)
        cmds = transfers(ids, transfers_n, "uniform", "scale")
        throttled = [q.throttled_seconds() for q in quotas]
        m = runner.measure("uniform", cmds, [], 0.0)  # samples the ledgers', broker's and client's CPU
        point = Point(instances, cores, len(cmds), m.completed, m.seconds,
                      {name: round(m.cpu_pct(group) / 100, 3)
                       for name, group in (("ledgers", runner.app_group), ("broker", "broker"), ("client", "client"))})
        point.throttled_share = round(sum(q.throttled_seconds() - t for q, t in zip(quotas, throttled, strict=True))
                                      / len(quotas) / max(m.seconds, 1e-9), 3)
        inv = runner.invariants()
        if not (inv["sum_per_currency_zero"] and inv["one_terminal_outcome_each"]):
            raise RuntimeError(f"invariants broken at {instances} instances: {inv}")
        return point
    finally:
        runner.close()
        for q in quotas:
            q.remove()


def scale(*, instances: list[int], cores: float, accounts: int, transfers_per_instance: int,
          warmup_seconds: float, json_path: Path | None, console: Console) -> list[Point]:
    from ops.lab.isolated import isolated_stack, settings_env

    points: list[Point] = []
    for n in instances:
        with isolated_stack("paystream-scale-", console=console) as iso:
            console.print(f"[bold]{n} instance{'s' if n > 1 else ''}[/bold] at {cores} core each")
            p = measure(iso, settings_env(iso), n, cores=cores, accounts=accounts,
                        transfers_n=transfers_per_instance * n, warmup_seconds=warmup_seconds, console=console)
            points.append(p)
            console.print(f"  {p.rate:,.0f} transfers/s; cores used {p.cpu_cores}; instances throttled "
                          f"{p.throttled_share:.0%} of the time")
        time.sleep(2)
    render(points, console)
    if json_path is not None and points:
        console.print(f"plot: {plot(points, json_path.with_suffix('.png'))}")
    if json_path is not None:
        write_points(json_path, [{**asdict(p), "rate": p.rate} for p in points],
                     base=points[0].rate if points else 0.0, console=console, quota_cores=cores, accounts=accounts)
    return points


def write_points(path: Path, points: list[dict[str, Any]], *, base: float, console: Console, **meta: Any) -> None:
    """A scaling run's raw results: each point with its rate's ratio to `base` (the
    one-instance rate), beside the run's settings and the machine's CPU count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "cpus": psutil.cpu_count(), **meta,
        "points": [{**p, "ratio_to_one": p["rate"] / base if base else None} for p in points],
    }, indent=2) + "\n")  # fmt: skip
    console.print(f"results: {path}")


def render(points: list[Point], console: Console) -> None:
    if not points:
        return
    base = points[0].rate * (1 / points[0].instances)
    t = Table(title="throughput by ledger instances (each held to its CPU quota)")
    for col in ("instances", "transfers/s", "x one instance", "floor 0.8 x N", "ledgers (cores)",
                "broker (cores)", "client (cores)", "throttled"):
        t.add_column(col, justify="right")
    for p in points:
        ratio = p.rate / base if base else 0.0
        t.add_row(str(p.instances), f"{p.rate:,.0f}", f"{ratio:.2f}", f"{0.8 * p.instances:.1f}",
                  f"{p.cpu_cores.get('ledgers', 0):.2f}", f"{p.cpu_cores.get('broker', 0):.2f}",
                  f"{p.cpu_cores.get('client', 0):.2f}", f"{p.throttled_share:.0%}")
    console.print(t)



def plot(points: list[Point], path: Path) -> Path:
    """Transfers/s against instances, beside linear growth and the 0.8 x N floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_one = points[0].rate / points[0].instances
    ns = [p.instances for p in points]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(ns, [p.rate for p in points], "o-", color="#2b6cb0", label="paystream (measured)")
    ax.plot(ns, [per_one * n for n in ns], "--", color="#718096", label="N x one instance")
    ax.plot(ns, [0.8 * per_one * n for n in ns], ":", color="#c05621", label="floor: 0.8 x N x one instance")
    for p in points:
        used = sum(p.cpu_cores.values())
        ax.annotate(f"{used:.1f} cores", (p.instances, p.rate), textcoords="offset points", xytext=(6, -12),
                    fontsize=8)
    ax.set_xlabel(f"ledger instances, each held to {points[0].quota_cores} core")
    ax.set_ylabel("sustained transfers/s (uniform)")
    ax.set_xticks(ns)
    ax.set_title(f"throughput by instances on a {psutil.cpu_count()}-core machine")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
