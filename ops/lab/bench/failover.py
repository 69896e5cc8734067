"""`paystream bench failover`: time to full throughput after losing one of three ledger instances.

Three ledger instances (distinct instance ids) share the partitions of a stack that
holds `accounts` accounts of ledger state. Transfers between random accounts are
offered open loop at `rate` through paystream's client library; after `before`
seconds one instance is killed with SIGKILL and the bench keeps the load on for
`after` seconds. Two modes:

    lost       the instance does not come back: the survivors must notice (the
               group's session timeout), rebalance, and restore the state of the
               partitions they take over from the changelogs
    restart    it is started again at once with the same instance id and state
               directory (what a supervisor or Kubernetes does with a process that
               ran healthily): it restores only what its local state lacks

Reported, from the kill: the throughput's dip, the time until the completions per
second are back at 90 % of the pre-fault rate (and stay there for 3 s: "full
throughput"), the time from which every command sent is answered within 1 s again
("caught up"), and from each instance's log the rebalances and Quix's state
recoveries (start, end, duration). The pre-fill (open and deposit, in batch records
on `payments.privileged`) is slow for a million accounts, so the stack lives in a
home of its own (`--home`) and is reused by later runs with the same or fewer
accounts. Every run starts its instances with empty state directories, so each
restores its own partitions from the changelogs first (timed too: "cold start").
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ops.lab.bench.ledger import LedgerProcess, Outcomes
from paystream import commands as C
from paystream import kafka
from paystream.batching import COMMAND_BATCH, CommandBatcher
from paystream.codec import Codec
from paystream.settings import Settings

NAMESPACE = uuid.UUID("5d6f1f3e-7c1b-4a8e-9a55-0c1f2b9e7a10")
GROUP = "paystream-ledger"
INSTANCES = 3
VICTIM = 1  # bench-1 is killed
FULL = 0.9  # "full throughput": this share of the pre-fault completions per second
HOLD_S = 3.0  # ... held for this long
BIN_S = 0.5
CAUGHT_UP_S = 1.0  # "answered as fast as before": p99 at 1,000 transfers/s is 0.5-0.7 s here
PREFILL_CHUNK = 50_000


def account_id(i: int) -> str:
    """Account ids are derived, so a later run finds the pre-filled accounts without a list."""
    return str(uuid.uuid5(NAMESPACE, f"failover-{i}"))


# ----------------------------------------------------------------------------- the stack


@contextmanager
def kept_stack(root: Path, console: Console) -> Iterator[Settings]:
    """A stack of its own under `root` that outlives the run (stopped, not deleted):
    its ports are chosen once and kept in `root/ports.json`, because the broker's
    controller address is written into its metadata when it is formatted."""
    from ops import stack
    from ops.lab.isolated import bootstrap, isolated_settings

    ports_file = root / "ports.json"
    if ports_file.exists():
        settings = Settings(**json.loads(ports_file.read_text()), home=root / "home",
                            bootstrap_servers_override=None, registry_url_override=None,
                            postgres_dsn_override=None, redis_url_override=None, postgres_password=None)
        stack.up(settings, console=console)
    else:
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o711)  # the postgres user must traverse it to reach its data dir
        settings = isolated_settings(root / "home")
        bootstrap(settings, console)
        ports_file.write_text(json.dumps({k: getattr(settings, k) for k in (
            "kafka_port", "kafka_controller_port", "registry_port", "postgres_port", "redis_port",
            "gateway_port", "sink_metrics_port", "kafka_heap")}))
    try:
        yield settings
    finally:
        stack.down(settings)


# ----------------------------------------------------------------------------- instances


class Ledgers:
    """The bench's ledger instances (`bench-0`, `bench-1`, ...), each with its own
    state directory under the stack's home."""

    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        from ops.lab.isolated import settings_env

        self.settings = settings
        self.env = {**settings_env(settings), "PAYSTREAM_LEDGER_METRICS_PORT": "0", **env}
        self.procs: dict[int, LedgerProcess] = {}

    def state_dir(self, i: int) -> Path:
        return self.settings.home / "state" / f"ledger-bench-{i}"

    def wipe_state(self) -> None:
        for i in range(INSTANCES + 1):
            shutil.rmtree(self.state_dir(i), ignore_errors=True)

    def start(self, i: int) -> None:
        self.procs[i] = LedgerProcess(self.settings, self.settings.ledger_commit_interval, self.env,
                                      instance=f"bench-{i}")

    def kill9(self, i: int) -> None:
        p = self.procs.pop(i)
        p.rss.stop()
        p.proc.kill()
        p.proc.wait()

    def log(self, i: int) -> Path:
        return self.settings.home / "logs" / f"bench-{i}-ledger.log"

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()
        self.procs.clear()


def _lag(settings: Settings, topic: str) -> int:
    """Records of `topic` the ledger group has not committed past."""
    from ops import groups as G

    parts = G.partitions(settings, topic)
    done = G.committed(settings, GROUP)
    ends = G.watermarks(settings, [(topic, p) for p in parts])
    return sum(max(0, high - done.get((topic, p), 0)) for (_, p), (_, high) in ends.items())


def prefill(settings: Settings, codec: Codec, accounts: int, console: Console) -> float:
    """Opens and funds accounts [have, accounts) in batch records; the seconds it took."""
    marker = settings.home.parent / "prefill.json"
    have = json.loads(marker.read_text())["accounts"] if marker.exists() else 0
    if have >= accounts:
        return 0.0
    t0 = time.monotonic()
    producer = kafka.producer(settings, **{"linger.ms": 5})
    topic = C.PRIVILEGED_TOPIC
    batcher = CommandBatcher(producer, header=codec.header(topic, COMMAND_BATCH),
                             command_schema_id=codec.schema_id(topic), topic=topic,
                             partitions=len(producer.list_topics(topic, timeout=10).topics[topic].partitions),
                             max_items=256, linger_ms=20)
    for start in range(have, accounts, PREFILL_CHUNK):
        for i in range(start, min(accounts, start + PREFILL_CHUNK)):
            a = account_id(i)
            for c in (C.open_account(a, external_number=a[:12], owner_id="failover", currency="USD"),
                      C.deposit(a, 10**12, "USD")):
                batcher.send(a, codec.encode(topic, c))
            producer.poll(0)
        batcher.flush()
        producer.flush(60)
        console.print(f"  pre-fill: {min(accounts, start + PREFILL_CHUNK):,} accounts sent "
                      f"({time.monotonic() - t0:.0f}s)")
    while (lag := _lag(settings, topic)) > 0:
        console.print(f"  pre-fill: {lag:,} batch records still to apply ({time.monotonic() - t0:.0f}s)")
        time.sleep(5)
    seconds = time.monotonic() - t0
    marker.write_text(json.dumps({"accounts": accounts, "seconds_last_fill": round(seconds, 1)}))
    return seconds


# ----------------------------------------------------------------------------- load


class Load(threading.Thread):
    """Transfers between random pre-filled accounts, open loop at `rate`, through
    paystream's client library (batches per partition, 5 ms linger)."""

    def __init__(self, settings: Settings, codec: Codec, accounts: int, rate: float) -> None:
        super().__init__(name="failover-load", daemon=True)
        self.codec = codec
        self.accounts = accounts
        self.rate = rate
        self.producer = kafka.producer(settings, **{"linger.ms": 5})
        topic = C.COMMANDS_TOPIC
        self.batcher = CommandBatcher(
            self.producer, header=codec.header(topic, COMMAND_BATCH), command_schema_id=codec.schema_id(topic),
            partitions=len(self.producer.list_topics(topic, timeout=10).topics[topic].partitions),
            max_items=128, linger_ms=5)
        self.sent: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        rnd = random.Random(5)
        start = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            due = start + n / self.rate
            now = time.monotonic()
            if due > now:
                time.sleep(min(due - now, 0.01))
                continue
            src, dst = (account_id(i) for i in rnd.sample(range(self.accounts), 2))
            t = C.transfer(src, dst, rnd.randint(1, 1000), "USD", requested_by="failover")
            self.sent[t["command_id"]] = now
            self.batcher.send(src, self.codec.encode(C.COMMANDS_TOPIC, t))
            n += 1
            if n % 100 == 0:
                self.producer.poll(0)
        self.batcher.flush()
        self.producer.flush(60)

    def stop(self) -> None:
        self.stopping.set()
        self.join(90)


# ----------------------------------------------------------------------------- analysis


@dataclass
class Recovery:
    instance: str
    started_s: float  # after the kill
    seconds: float


@dataclass
class FailoverRun:
    accounts: int
    mode: str
    rate: float
    env: dict[str, str]
    prefill_seconds: float
    cold_start_seconds: float | None  # three instances from empty state directories to answering
    pre_rate: float  # completions/s in the 10 s before the kill
    pre_p99_ms: float
    dip_rate: float  # the lowest 1 s of completions after the kill
    full_throughput_s: float | None  # back at FULL x pre_rate for HOLD_S
    caught_up_s: float | None  # commands sent from then on were answered within CAUGHT_UP_S
    first_rebalance_s: float | None  # a survivor's first rebalance or recovery check after the kill
    recoveries: list[Recovery] = field(default_factory=list)
    unanswered: int = 0
    bins: list[tuple[float, int]] = field(default_factory=list)  # (s after the kill, completions in BIN_S)


def _wall(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def log_events(path: Path, since: float) -> list[tuple[float, str]]:
    """(wall time, event) of the Quix rebalance and recovery lines logged after `since`."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        ev, ts = str(rec.get("event", "")), rec.get("ts")
        if ts and ("Rebalancing" in ev or "recovery" in ev.lower()) and _wall(ts) >= since:
            out.append((_wall(ts), ev))
    return out


def recoveries(instance: str, events: list[tuple[float, str]], kill_wall: float) -> list[Recovery]:
    out, begun = [], None
    for t, ev in events:
        if ev.startswith("Beginning recovery check"):
            begun = t
        elif ev.startswith("Recovery process complete") and begun is not None:
            out.append(Recovery(instance, round(begun - kill_wall, 2), round(t - begun, 2)))
            begun = None
    return out


def analyse(run: FailoverRun, sent: dict[str, float], seen: dict[str, tuple[float, str]], kill_at: float,
            end: float) -> None:
    done = sorted(seen[c][0] for c in sent if c in seen)
    run.unanswered = sum(1 for c, t in sent.items() if c not in seen and t < end - 30)
    pre = [t for t in done if kill_at - 10 <= t < kill_at]
    run.pre_rate = round(len(pre) / 10, 1)
    pre_lat = sorted(seen[c][0] - t for c, t in sent.items() if c in seen and kill_at - 10 <= t < kill_at)
    run.pre_p99_ms = round(pre_lat[int(0.99 * (len(pre_lat) - 1))] * 1000, 1) if pre_lat else 0.0
    nbins = int((end - kill_at) / BIN_S)
    counts = [0] * nbins
    for t in done:
        k = int((t - kill_at) / BIN_S)
        if 0 <= k < nbins:
            counts[k] += 1
    run.bins = [(round(k * BIN_S, 1), n) for k, n in enumerate(counts)]
    per_s = [sum(counts[k:k + int(1 / BIN_S)]) for k in range(nbins - int(1 / BIN_S) + 1)]
    run.dip_rate = float(min(per_s)) if per_s else 0.0
    hold = int(HOLD_S / BIN_S)
    dipped = next((k for k, r in enumerate(per_s) if r < FULL * run.pre_rate), None)
    if dipped is None:
        run.full_throughput_s = 0.0
    else:
        for k in range(dipped, len(per_s) - hold):
            if all(r >= FULL * run.pre_rate for r in per_s[k:k + hold]):
                run.full_throughput_s = round(k * BIN_S, 1)
                break
    bound = CAUGHT_UP_S
    late = [t - kill_at for c, t in sent.items() if t >= kill_at and (c not in seen or seen[c][0] - t > bound)]
    run.caught_up_s = round(max(late), 1) if late else 0.0
    if late and max(late) > end - kill_at - 5:
        run.caught_up_s = None  # still late at the end of the run


# ----------------------------------------------------------------------------- the run


def failover(*, accounts: int, mode: str, rate: float, before: float, after: float, env: dict[str, str],
             root: Path, json_path: Path | None, console: Console) -> FailoverRun:
    if mode not in ("lost", "restart"):
        raise ValueError(f"mode is lost or restart, not {mode}")
    with kept_stack(root, console) as settings:
        codec = Codec(settings.registry_url)
        (settings.home / "logs").mkdir(parents=True, exist_ok=True)
        ledgers = Ledgers(settings, env)
        try:
            ledgers.wipe_state()
            t0 = time.monotonic()
            for i in range(INSTANCES):
                ledgers.start(i)
            filled = prefill(settings, codec, accounts, console)
            outcomes = Outcomes(settings, codec)
            probe = wait_answering(settings, codec, outcomes, accounts, console)
            cold = None if filled else round(probe - t0, 1)  # a fill's instances restored nothing
            console.print(f"three instances answering {probe - t0:.1f}s after their start"
                          + (f" (pre-fill {filled:.0f}s)" if filled else ", every partition restored"))
            load = Load(settings, codec, accounts, rate)
            load.start()
            time.sleep(before)
            kill_at, kill_wall = time.monotonic(), time.time()
            ledgers.kill9(VICTIM)
            if mode == "restart":
                ledgers.start(VICTIM)
            console.print(f"bench-{VICTIM} killed (-9){', restarted at once' if mode == 'restart' else ''}")
            time.sleep(after)
            load.stop()
            end = time.monotonic()
            time.sleep(2)
            run = FailoverRun(accounts, mode, rate, env, round(filled, 1), cold, 0.0, 0.0, 0.0, None,
                              None, None)
            analyse(run, load.sent, dict(outcomes.seen), kill_at, end)
            outcomes.close()
            survivors = [i for i in range(INSTANCES) if i != VICTIM or mode == "restart"]
            firsts = []
            for i in survivors:
                evs = log_events(ledgers.log(i), kill_wall)
                run.recoveries += recoveries(f"bench-{i}", evs, kill_wall)
                # Quix logs its rebalances at debug level; a recovery check follows each
                firsts += [t - kill_wall for t, ev in evs if "Rebalancing" in ev or ev.startswith("Beginning")]
            run.first_rebalance_s = round(min(firsts), 2) if firsts else None
        finally:
            ledgers.stop()
    render(run, console)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(json_path.read_text()) if json_path.exists() else {"runs": []}
        data["runs"].append({**asdict(run), "at": datetime.now().isoformat(timespec="seconds")})
        json_path.write_text(json.dumps(data, indent=1) + "\n")
        console.print(f"results: {json_path}")
    return run


def wait_answering(settings: Settings, codec: Codec, outcomes: Outcomes, accounts: int, console: Console,
                   timeout: float = 900.0) -> float:
    """When a transfer from an account on every partition has its outcome (every
    instance has restored its partitions and processes)."""
    from paystream.partitioning import partition_for

    parts = len(kafka.producer(settings).list_topics(C.COMMANDS_TOPIC, timeout=10)
                .topics[C.COMMANDS_TOPIC].partitions)
    picked: dict[int, str] = {}
    i = 0
    while len(picked) < parts and i < accounts:
        picked.setdefault(partition_for(account_id(i), parts), account_id(i))
        i += 1
    probes = [C.transfer(a, account_id((k + 1) % accounts), 1, "USD", requested_by="failover-probe")
              for k, a in enumerate(picked.values())]
    p = kafka.producer(settings)
    for t in probes:
        p.produce(C.COMMANDS_TOPIC, key=t["account_id"].encode(), value=codec.encode(C.COMMANDS_TOPIC, t))
    p.flush(30)
    if not outcomes.wait_for([t["command_id"] for t in probes], timeout):
        raise RuntimeError(f"the ledger instances did not answer within {timeout:.0f}s")
    console.print("  every partition answers")
    return time.monotonic()


def render(run: FailoverRun, console: Console) -> None:
    t = Table(title=f"losing one of three ledger instances ({run.mode}), {run.accounts:,} accounts, "
                    f"{run.rate:,.0f} transfers/s offered")
    for col in ("pre-fault /s", "p99 ms", "dip /s", "full throughput s", "caught up s", "first rebalance s",
                "recoveries (start+duration s)", "unanswered"):
        t.add_column(col, justify="right")

    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    t.add_row(f"{run.pre_rate:,.0f}", f"{run.pre_p99_ms:.0f}", f"{run.dip_rate:,.0f}", s(run.full_throughput_s),
              s(run.caught_up_s), s(run.first_rebalance_s),
              ", ".join(f"{r.instance} {r.started_s:+.1f}+{r.seconds:.1f}" for r in run.recoveries) or "-",
              str(run.unanswered))
    console.print(t)
    if run.cold_start_seconds is not None:
        console.print(f"cold start of three instances (every partition restored from empty state): "
                      f"{run.cold_start_seconds:.1f}s")
    console.print(f"env {run.env or '{}'}")
