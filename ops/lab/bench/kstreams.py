"""The Kafka Streams peer of `paystream bench compare`: build, topics, process.

`ops/lab/bench/kstreams/` is a small Maven project (Kafka Streams at the broker's
version, Apache Avro; everything from Maven Central) with the ledger's shape:
commands and legs merged into one processor with one persistent RocksDB store
(changelogged), `exactly_once_v2`, commit 100 ms, producer linger 20 ms, consumer
fetch wait 20 ms, `max.task.idle.ms=-1`. It reads and writes paystream's own Avro
schemas in Confluent wire format, with the schema ids the registry gave them
(passed on its command line), so paystream's codec and `verify`'s replay read its
events as they read the ledger's.

The jar is built once per content of the Maven project (and Kafka version) and
kept in the stack's download cache. A failed build raises: the bench never skips
the peer silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import psutil

from ops.lab.bench.ledger import PeakRss
from paystream import commands as C
from paystream import kafka, topics
from paystream.codec import SCHEMA_DIR, Codec, topic_specs
from paystream.settings import PROJECT_ROOT, Settings

PROJECT = PROJECT_ROOT / "ops" / "lab" / "bench" / "kstreams"
EVENTS = topics.EVENTS
LEGS = topics.LEGS
TOPICS = (C.COMMANDS_TOPIC, LEGS, EVENTS)
JVM_HEAP = "512m"


class BuildError(RuntimeError):
    pass


def project_hash(kafka_version: str) -> str:
    """Content hash of the Maven project (pom and sources) and the Kafka version."""
    h = hashlib.sha256(kafka_version.encode())
    files = [PROJECT / "pom.xml", *sorted((PROJECT / "src").rglob("*"))]
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(PROJECT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build(settings: Settings, log: object | None = None) -> Path:
    """The built peer (a directory with paystream-kstreams.jar and lib/), from the cache
    when this content was built before. Raises BuildError with Maven's output."""
    digest = project_hash(settings.kafka_version)
    out = settings.cache_dir.expanduser().resolve() / f"kstreams-peer-{digest}"
    if (out / "paystream-kstreams.jar").exists() and (out / "lib").is_dir():
        return out
    if shutil.which("mvn") is None:
        raise BuildError("the Kafka Streams peer needs Maven (apt-get install maven) and Java 17")
    with tempfile.TemporaryDirectory(prefix="kstreams-build-") as tmp:
        # build from a copy, so a concurrent build (another checkout, a test) cannot mix targets
        src = Path(tmp) / "project"
        shutil.copytree(PROJECT, src, ignore=shutil.ignore_patterns("target"))
        env = {**os.environ, "MAVEN_OPTS": os.environ.get("MAVEN_OPTS", "") + " -Djansi.force=false",
               "TERM": "dumb"}
        r = subprocess.run(["mvn", "-q", "-B", "package", f"-Dkafka.version={settings.kafka_version}"],
                           cwd=src, env=env, capture_output=True, text=True, timeout=900)
        jar = src / "target" / "paystream-kstreams.jar"
        if r.returncode != 0 or not jar.exists():
            tail = "\n".join((r.stdout + r.stderr).splitlines()[-40:])
            raise BuildError(f"Maven build of the Kafka Streams peer failed (exit {r.returncode}):\n{tail}")
        partial = out.with_name(out.name + f".partial-{uuid.uuid4().hex[:6]}")
        partial.mkdir(parents=True)
        shutil.copy2(jar, partial / jar.name)
        shutil.copytree(src / "target" / "lib", partial / "lib")
        try:
            partial.rename(out)
        except OSError:  # someone else finished the same build first
            shutil.rmtree(partial, ignore_errors=True)
    return out


class Peer:
    """One run of the peer on a broker: its own topics (`kstreams.<run>.` + paystream's
    names, with ops/topics.toml's partitions and configs), its own application id and
    state directory; everything deleted by `close`."""

    def __init__(self, settings: Settings, codec: Codec, built: Path, *, commit_ms: int = 100,
                 heap: str = JVM_HEAP, threads: int = 1) -> None:
        self.settings = settings
        self.run = uuid.uuid4().hex[:8]
        self.prefix = f"kstreams.{self.run}."
        self.app_id = f"paystream-kstreams-{self.run}"
        self.commands = self.prefix + C.COMMANDS_TOPIC
        self.events = self.prefix + EVENTS
        # state and log in a scratch directory of its own, not in the stack's home
        # (the shared stack's home may belong to another checkout)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"paystream-kstreams-{self.run}-"))
        self.state_dir = self.workdir / "state"
        self._create_topics()
        self.log_path = self.workdir / "peer.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        ids = {t: codec.schema_id(t) for t in TOPICS}
        cmd = [
            "java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-cp", f"{built / 'paystream-kstreams.jar'}{os.pathsep}{built / 'lib'}/*",
            "io.paystream.kstreams.Main",
            "--bootstrap", settings.bootstrap_servers, "--app-id", self.app_id, "--prefix", self.prefix,
            "--state-dir", str(self.state_dir), "--schemas", str(SCHEMA_DIR),
            "--command-id", str(ids[C.COMMANDS_TOPIC]), "--event-id", str(ids[EVENTS]),
            "--leg-id", str(ids[LEGS]), "--commit-ms", str(commit_ms), "--threads", str(threads),
            # the ledger's producer lingers one commit interval (pipelines/ledger/app.py); so does the peer's
            "--linger-ms", str(max(20, commit_ms)),
        ]
        env = dict(os.environ)
        if settings.kafka_security_protocol != "PLAINTEXT":
            # the peer authenticates like paystream's own clients, so both pay the same for it
            user, password = settings.kafka_credentials()
            cmd += ["--security-protocol", settings.kafka_security_protocol,
                    "--sasl-mechanism", settings.kafka_sasl_mechanism, "--sasl-user", user]
            env["PAYSTREAM_KSTREAMS_SASL_PASSWORD"] = password
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, env=env)
        self.ps = psutil.Process(self.proc.pid)
        self.rss = PeakRss(self.ps)

    def _create_topics(self) -> None:
        from ops.topics import apply_topics

        specs = topic_specs()
        apply_topics(self.settings, specs={self.prefix + t: replace(specs[t], name=self.prefix + t) for t in TOPICS})

    @property
    def peak_rss(self) -> int:
        return self.rss.peak

    def wait_running(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Kafka Streams peer exited ({self.proc.returncode}); see {self.log_path}:\n"
                                   + self.tail())
            if b"STATE RUNNING" in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"the Kafka Streams peer did not reach RUNNING in {timeout:.0f}s; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        self.rss.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def close(self) -> None:
        """Stop the process and delete its topics, internal topics, group and state
        (the log too, unless the process had failed)."""
        failed = self.proc.poll() not in (None, 0)
        self.stop()
        admin = kafka.admin(self.settings)
        names = [t for t in admin.list_topics(timeout=10).topics
                 if t.startswith((self.prefix, self.app_id + "-"))]
        # best effort: a leftover is named after the run; the group may never have committed
        futures = list(admin.delete_topics(names, operation_timeout=30).values()) if names else []
        futures += admin.delete_consumer_groups([self.app_id]).values()
        for f in futures:
            with contextlib.suppress(Exception):
                f.result()
        if failed:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
