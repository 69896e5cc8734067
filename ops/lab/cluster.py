"""Three KRaft brokers on one machine, and `paystream chaos --cluster`.

A single broker acknowledges a write once it is in its page cache; replication
is Kafka's real durability story. This module runs three combined
broker+controller nodes on free ports with their own data folders (a dynamic
KRaft quorum: `controller.quorum.bootstrap.servers` lists all three, every node
is formatted with the same cluster id and the same `--initial-controllers`),
replication factor 3 and `min.insync.replicas=2` for paystream's topics, for
`__consumer_offsets`, `__transaction_state` and (broker default) the ledger's
changelog. Transactions v1 as on the single node (docs/STACK.md).

`cluster_chaos` runs the ledger against it, produces transfers with acks=all,
kill -9s the broker leading a `payments.commands` partition mid-load (restarting
it a little later), and then checks that no acknowledged command was lost and
that the ledger's invariants hold over every event. Postgres and the registry
come from an isolated stack of their own; nothing shared is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition
from confluent_kafka.admin import ConfigResource
from rich.console import Console
from rich.table import Table

from ops import kafka_auth
from ops.lab.isolated import free_ports
from paystream import kafka, topics
from paystream.settings import Settings

NODES = 3
TOPIC_RF = 3
MIN_ISR = 2


def _dir_id() -> str:
    from ops.stack import kafka_uuid

    return kafka_uuid()


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    home: Path
    dir_id: str = field(default_factory=_dir_id)
    popen: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"

    @property
    def log(self) -> Path:
        return self.home / "kafka.log"


class Cluster:
    """Three brokers started, killed and restarted by this process (never adopted)."""

    def __init__(self, root: Path, settings: Settings, heap: str = "384m") -> None:
        from ops import stack

        self.root = root
        self.heap = heap
        self.kafka = stack.Kafka(settings)  # the jar cache and log4j config of the single-node stack
        self.settings = settings
        ports = free_ports(2 * NODES)
        self.nodes = [Node(i + 1, ports[2 * i], ports[2 * i + 1], root / f"broker-{i + 1}") for i in range(NODES)]
        self.cluster_id = _dir_id()

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def admin_settings(self) -> Settings:
        return kafka_auth.as_principal(self.settings, kafka_auth.ADMIN).model_copy(
            update={"bootstrap_servers_override": self.bootstrap})

    def node(self, node_id: int) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def _write(self, n: Node) -> None:
        quorum = ",".join(f"127.0.0.1:{m.controller_port}" for m in self.nodes)
        lines = [
            "process.roles=broker,controller",
            f"node.id={n.node_id}",
            f"controller.quorum.bootstrap.servers={quorum}",
            f"listeners=BROKER://127.0.0.1:{n.port},CONTROLLER://127.0.0.1:{n.controller_port}",
            f"advertised.listeners=BROKER://127.0.0.1:{n.port},CONTROLLER://127.0.0.1:{n.controller_port}",
            "controller.listener.names=CONTROLLER",
            *kafka_auth.broker_security(self.settings, "BROKER"),
            f"log.dirs={n.data}",
            f"default.replication.factor={TOPIC_RF}",
            f"min.insync.replicas={MIN_ISR}",
            f"offsets.topic.replication.factor={TOPIC_RF}",
            "offsets.topic.num.partitions=10",
            f"transaction.state.log.replication.factor={TOPIC_RF}",
            f"transaction.state.log.min.isr={MIN_ISR}",
            "transaction.state.log.num.partitions=10",
            f"share.coordinator.state.topic.replication.factor={TOPIC_RF}",
            f"share.coordinator.state.topic.min.isr={MIN_ISR}",
            "unclean.leader.election.enable=false",
            "group.initial.rebalance.delay.ms=0",
            "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",  # as ops/stack/broker.py
            "auto.create.topics.enable=false",
        ]
        n.home.mkdir(parents=True, exist_ok=True)
        n.properties.touch(mode=0o600)  # it holds the brokers' passwords
        n.properties.write_text("\n".join(lines) + "\n")

    def format(self, console: Console) -> None:
        if not self.kafka._downloaded():
            self.kafka._download(console)
        from ops.stack import run_step

        initial = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}:{n.dir_id}" for n in self.nodes)
        for n in self.nodes:
            self._write(n)
            run_step([*self.kafka._java_base(), "kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                      "-c", str(n.properties), "--initial-controllers", initial,
                      "--feature", "transaction.version=1", *kafka_auth.format_args(self.settings)],
                     what=f"format broker {n.node_id}", timeout=120)

    def start(self, n: Node) -> None:
        from ops.stack import LOG4J2_CONFIG

        with n.log.open("ab") as log:
            log.write(f"\n=== cluster: starting broker {n.node_id} ===\n".encode())
            log.flush()
            n.popen = subprocess.Popen(
                ["java", f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", f"-Dpaystream.cluster={n.home}",
                 "-cp", f"{self.kafka.lib_dir}/*", "kafka.Kafka", str(n.properties)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=n.home,
                start_new_session=True,
            )

    def wait_started(self, n: Node, since: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert n.popen is not None
            if n.popen.poll() is not None:
                raise RuntimeError(f"broker {n.node_id} exited:\n{_tail(n.log)}")
            with n.log.open("rb") as fh:
                fh.seek(since)
                if b"Kafka Server started" in fh.read():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"broker {n.node_id} not started within {timeout:.0f}s:\n{_tail(n.log)}")

    def start_all(self) -> None:
        offsets = {}
        for n in self.nodes:
            offsets[n.node_id] = n.log.stat().st_size if n.log.exists() else 0
            self.start(n)
        for n in self.nodes:
            self.wait_started(n, offsets[n.node_id])
        self.wait_brokers(NODES)

    def wait_brokers(self, count: int, timeout: float = 60.0) -> None:
        admin = kafka.admin(self.admin_settings, log_level=0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if len(admin.list_topics(timeout=5).brokers) >= count:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"fewer than {count} brokers registered after {timeout:.0f}s")

    def kill9(self, n: Node) -> None:
        if n.popen is not None and n.popen.poll() is None:
            os.killpg(n.popen.pid, signal.SIGKILL)
            n.popen.wait()

    def stop_all(self) -> None:
        for n in self.nodes:
            if n.popen is not None and n.popen.poll() is None:
                n.popen.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if n.popen is None:
                continue
            try:
                n.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9(n)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def apply_replicated_topics(settings: Settings) -> None:
    """ops/topics.toml with replication factor 3 and min.insync.replicas 2 for every topic."""
    from ops.topics import apply_topics
    from paystream.codec import topic_specs

    specs = {name: replace(s, replication_factor=TOPIC_RF, min_insync_replicas=MIN_ISR)
             for name, s in topic_specs().items()}
    apply_topics(settings, specs=specs)


def topic_durability(settings: Settings, topics: list[str]) -> dict[str, tuple[int, str]]:
    """(replication factor, min.insync.replicas) of each topic, as the brokers report them."""
    admin = kafka.admin(settings)
    md = admin.list_topics(timeout=10)
    out: dict[str, tuple[int, str]] = {}
    present = [t for t in topics if t in md.topics]
    configs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, t) for t in present])
    for res, fut in configs.items():
        cfg = fut.result(20)
        parts = md.topics[res.name].partitions
        rf = min(len(p.replicas) for p in parts.values()) if parts else 0
        out[res.name] = (rf, cfg["min.insync.replicas"].value)
    return out


def leader_of(settings: Settings, topic: str, partition: int) -> int:
    admin = kafka.admin(settings)
    return int(admin.list_topics(topic, timeout=10).topics[topic].partitions[partition].leader)


# ----------------------------------------------------------------------------- chaos


@dataclass
class ClusterReport:
    killed_node: int = 0
    partition: int = 0
    new_leader: int = -1
    new_leader_after: float = 0.0
    recovery: float = 0.0  # kill -> first command produced after the kill has its outcome
    rejoined_after: float = 0.0  # kill -> the restarted broker logged "Kafka Server started"
    isr_restored_after: float = 0.0  # kill -> payments.commands[0] has all three replicas in sync again
    sent: int = 0
    acked: int = 0
    lost: list[str] = field(default_factory=list)
    missing_in_topic: list[str] = field(default_factory=list)
    invariants: dict[str, Any] = field(default_factory=dict)
    durability: dict[str, tuple[int, str]] = field(default_factory=dict)
    rates: tuple[float, float, float] = (0.0, 0.0, 0.0)  # acks/s before / while down / after restart
    down: float = 0.0
    ledger_restarts: int = 0
    aborted_records: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        inv = self.invariants
        return (not self.lost and not self.missing_in_topic and bool(inv) and inv.get("ok", False)
                and self.isr_restored_after > 0
                and self.acked > 0 and all(rf == TOPIC_RF and isr == str(MIN_ISR)
                                           for rf, isr in self.durability.values()))


@contextlib.contextmanager
def running_cluster(console: Console, keep: bool = False) -> Iterator[tuple[Settings, Cluster]]:
    """Postgres + registry (isolated) and three brokers; all stopped and deleted afterwards."""
    from ops.lab.isolated import isolated_stack

    with isolated_stack("paystream-cluster-", keep=keep, console=console, only=("postgres", "registry"),
                        topics=False) as iso:
        root = Path(tempfile.mkdtemp(prefix="paystream-brokers-"))
        cluster = Cluster(root, iso)
        try:
            t0 = time.monotonic()
            cluster.format(console)
            cluster.start_all()
            settings = iso.model_copy(update={"bootstrap_servers_override": cluster.bootstrap})
            kafka_auth.apply(settings)
            apply_replicated_topics(settings)
            console.print(f"three brokers up on {cluster.bootstrap} in {time.monotonic() - t0:.0f}s")
            yield settings, cluster
        finally:
            cluster.stop_all()
            if not keep:
                shutil.rmtree(root, ignore_errors=True)


def cluster_chaos(*, console: Console | None = None, keep: bool = False, accounts: int = 200,
                  rate: float = 150.0, before: float = 10.0, down: float = 15.0, after: float = 10.0) -> ClusterReport:
    from ops.lab.chaos import Components, EventLog, KafkaLoad, read_all
    from ops.lab.isolated import settings_env
    from paystream import commands as C
    from paystream import kafka
    from paystream.codec import Codec

    console = console or Console()
    report = ClusterReport(down=down)
    t_start = time.monotonic()
    with running_cluster(console, keep=keep) as (settings, cluster):
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1",
               "PAYSTREAM_LEDGER_INSTANCE": "cluster"}
        logs = cluster.root / "logs"
        logs.mkdir(exist_ok=True)
        comps = Components(["ledger"], env, logs)
        codec = Codec(settings.registry_url)
        comps.start()
        events = EventLog(settings, codec)
        try:
            ids = [str(uuid.uuid4()) for _ in range(accounts)]
            p = kafka.producer(settings)
            setup = [C.open_account(a, external_number=a[:12], owner_id="cluster", currency="EUR") for a in ids]
            deposits = [C.deposit(a, 10**10, "EUR") for a in ids]
            for c in setup + deposits:
                p.produce(C.topic_for(c), key=c["account_id"].encode(), value=codec.encode(C.topic_for(c), c))
            if p.flush(60):
                raise RuntimeError("setup commands not acknowledged")
            _wait(lambda: {d["command_id"] for d in deposits} <= set(events.terminal), 240,
                  "accounts not opened and funded:\n" + comps["ledger"].tail())
            console.print(f"ledger up, {accounts} accounts funded; {rate:.0f} transfers/s with acks=all")
            load = KafkaLoad(settings, codec, ids, rate)
            load.start()
            time.sleep(before)
            report.partition = 0
            victim = cluster.node(leader_of(settings, C.COMMANDS_TOPIC, 0))
            report.killed_node = victim.node_id
            t_kill = time.monotonic()
            cluster.kill9(victim)
            console.print(f"kill -9 broker {victim.node_id}, leader of {C.COMMANDS_TOPIC}[0]")
            _wait(lambda: leader_of(settings, C.COMMANDS_TOPIC, 0) not in (-1, victim.node_id), 60,
                  "no new leader")
            report.new_leader = leader_of(settings, C.COMMANDS_TOPIC, 0)
            report.new_leader_after = time.monotonic() - t_kill
            time.sleep(max(0.0, down - (time.monotonic() - t_kill)))
            t_back = time.monotonic()
            # Restarted in the background: the load goes on while it recovers its logs.
            since = victim.log.stat().st_size

            def rejoin() -> None:
                cluster.wait_started(victim, since, timeout=240)
                report.rejoined_after = time.monotonic() - t_kill

            cluster.start(victim)
            waiter = threading.Thread(target=rejoin, daemon=True)
            waiter.start()
            time.sleep(after)
            t_stop = time.monotonic()
            load.stop(timeout=120)
            acked = [d for d in load.commands if d.acked_at]
            first_after = min((events.terminal.get(d.command["command_id"], 0) for d in load.commands
                               if d.created > t_kill and d.command["command_id"] in events.terminal), default=0.0)
            report.recovery = first_after - t_kill if first_after else float("nan")
            want = {d.command["command_id"] for d in acked}
            with contextlib.suppress(TimeoutError):
                _wait(lambda: want <= set(events.terminal), 240, "")
            report.sent, report.acked = len(load.commands), len(acked)
            report.lost = sorted(want - set(events.terminal))
            report.missing_in_topic = sorted(want - _commands_in_topic(settings, codec))
            ts = sorted(d.acked_at for d in acked)
            report.rates = (_rate(ts, t_kill - before, t_kill), _rate(ts, t_kill, t_back), _rate(ts, t_back, t_stop))
            committed = read_all(settings, codec, "read_committed")
            uncommitted = read_all(settings, codec, "read_uncommitted")
            seen = {(p_, o) for p_, o, _ in committed}
            report.aborted_records = sum(1 for p_, o, _ in uncommitted if (p_, o) not in seen)
            report.invariants = _invariants([e for _, _, e in committed],
                                            [c["command_id"] for c in setup + deposits] + sorted(want))
            from pipelines.ledger.app import CHANGELOG as LEDGER_CHANGELOG

            names = [C.COMMANDS_TOPIC, topics.LEGS, topics.EVENTS, "__consumer_offsets",
                     "__transaction_state", LEDGER_CHANGELOG]
            report.durability = topic_durability(settings, names)
            waiter.join(240)
            with contextlib.suppress(TimeoutError):
                _wait(lambda: _isr(settings, C.COMMANDS_TOPIC, 0) == NODES, 120, "")
                report.isr_restored_after = time.monotonic() - t_kill
        finally:
            report.ledger_restarts = comps["ledger"].crashes
            events.close()
            comps.stop()
    report.seconds = time.monotonic() - t_start
    return report


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except Exception:  # metadata calls fail while a broker is gone; keep asking
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(what or f"condition not met within {timeout:.0f}s")
        time.sleep(0.25)


def _isr(settings: Settings, topic: str, partition: int) -> int:
    admin = kafka.admin(settings)
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions[partition].isrs)


def _rate(ts: list[float], a: float, b: float) -> float:
    return sum(1 for t in ts if a <= t < b) / (b - a) if b > a else 0.0


def _commands_in_topic(settings: Settings, codec: Any) -> set[str]:
    """Command ids present in payments.commands: acks=all means an acknowledged command
    survived its partition leader's death."""
    from paystream import commands as C
    from paystream import kafka

    c = kafka.consumer(settings, f"cluster-audit-{uuid.uuid4()}")
    try:
        parts = c.list_topics(C.COMMANDS_TOPIC, timeout=10).topics[C.COMMANDS_TOPIC].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(C.COMMANDS_TOPIC, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(C.COMMANDS_TOPIC, p, 0) for p in parts])
        todo = {p for p, e in ends.items() if e > 0}
        out: set[str] = set()
        deadline = time.monotonic() + 120
        while todo and time.monotonic() < deadline:
            for m in c.consume(2000, 0.5):
                if m.error() is None:
                    out.add(codec.decode(C.COMMANDS_TOPIC, m.value())["command_id"])
            for tp in c.position([TopicPartition(C.COMMANDS_TOPIC, p) for p in list(todo)]):
                if tp.offset >= ends[tp.partition]:
                    todo.discard(tp.partition)
        return out
    finally:
        c.close()


def _invariants(events: list[dict[str, Any]], command_ids: list[str]) -> dict[str, Any]:
    """`paystream verify`'s replay checks over every committed event of the cluster."""
    from ops.verify import Replay

    replay = Replay(invariants=True)
    for e in events:
        replay.feed(e)
    terminals = Counter({cid: replay.terminals.get(cid, 0) for cid in command_ids})
    sums = {cur: s for cur, s in replay.by_currency.items() if s != 0}
    out = {
        "events": len(replay.event_ids),
        "sum_per_currency_zero": not sums and not replay.unbalanced,
        "one_terminal_outcome_each": all(n == 1 for n in terminals.values()),
        "no_leg_twice": not replay.twice,
        "committed_events_unique": not replay.duplicates,
        "no_negative_user_balance": not replay.negative,
        "balance_after_matches": not replay.balance_after_wrong,
    }
    out["ok"] = all(v for k, v in out.items() if k != "events")
    return out


def render_cluster(r: ClusterReport, console: Console) -> None:
    t = Table("what", "value", title="three-broker cluster: kill -9 of a partition leader under load")
    t.add_row("killed", f"broker {r.killed_node} (leader of payments.commands[{r.partition}])")
    t.add_row("new leader", f"broker {r.new_leader} after {r.new_leader_after:.1f}s")
    t.add_row("first outcome of a command sent after the kill", f"{r.recovery:.1f}s after the kill")
    t.add_row("killed broker restarted / back in the ISR",
              f"{r.rejoined_after:.1f}s / {r.isr_restored_after:.1f}s after the kill (restart at +{r.down:.0f}s)")
    t.add_row("acks/s before / broker down / after its restart", " / ".join(f"{x:.0f}" for x in r.rates))
    t.add_row("transfers sent / acknowledged", f"{r.sent} / {r.acked}")
    t.add_row("acknowledged but no outcome (lost)", str(len(r.lost)))
    t.add_row("acknowledged but not in payments.commands", str(len(r.missing_in_topic)))
    t.add_row("aborted records (read_uncommitted only)", str(r.aborted_records))
    t.add_row("ledger restarts", str(r.ledger_restarts))
    for k, v in r.invariants.items():
        t.add_row(f"invariant {k}", str(v))
    for topic, (rf, isr) in r.durability.items():
        t.add_row(f"RF / min ISR {topic}", f"{rf} / {isr}")
    console.print(t)
    verdict = "[green]0 anomalies[/green]" if r.ok else "[red]FAILED[/red]"
    console.print(f"{verdict} in {r.seconds:.0f}s")


