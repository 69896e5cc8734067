"""The local stack: Postgres, Redis, Kafka (KRaft) and Apicurio as plain processes on 127.0.0.1.

There is no Docker on the machines this runs on, so every service is a child
process we start ourselves, in its own session so it outlives the CLI and
ignores the terminal's Ctrl-C. Pid files under ``<home>/run`` are the only
record of ownership: ``down`` stops exactly what ``up`` started and leaves
anything else alone, even if it listens on "our" port.

State lives under ``settings.home``; downloaded jars live in
``settings.cache_dir`` so ``reset`` and fresh clones don't re-download them.

The package re-exports what callers use, so ``from ops import stack`` and
``stack.up(...)`` keep working. Its modules import only downward, in this order:

- ``errors``, ``files``, ``layout``, ``ports``: StackError, file helpers, the home's layout, port checks
- ``tools``: one-off commands, tools on PATH, apt-get and Maven
- ``service``: the base class of a managed service
- ``supervision``: spawning, readiness waits, stopping, pid-file ownership
- ``postgres``, ``redis``, ``kafka``, ``registry``: one module per service
- ``lifecycle``: ``up``, ``down``, ``stop_service``, ``status``, ``reset``

The resource files (``kafka/pom.xml``, ``log4j2.properties``) sit next to these modules.
"""

from __future__ import annotations

from ops.stack.broker import KAFKA_POM, LOG4J2_CONFIG, STACK_FILES, Kafka, kafka_uuid
from ops.stack.errors import StackError
from ops.stack.files import LOG_TAIL_LINES, log_tail
from ops.stack.layout import Layout
from ops.stack.lifecycle import (
    LOCK_TIMEOUT,
    RESETTABLE_DIRS,
    SERVICES,
    Health,
    ServiceStatus,
    UpReport,
    down,
    ensure_up,
    reset,
    resettable_paths,
    status,
    stop_service,
    up,
)
from ops.stack.ports import port_is_free, port_owner
from ops.stack.postgres import Postgres
from ops.stack.redis import Redis
from ops.stack.registry import APICURIO_COPY_GOAL, Registry
from ops.stack.service import Service
from ops.stack.supervision import MIB, READY_TIMEOUTS, STOP_TIMEOUT
from ops.stack.tools import DOWNLOAD_TIMEOUT, JAVA_HINT, run_step

__all__ = [
    "APICURIO_COPY_GOAL",
    "DOWNLOAD_TIMEOUT",
    "JAVA_HINT",
    "KAFKA_POM",
    "LOCK_TIMEOUT",
    "LOG4J2_CONFIG",
    "LOG_TAIL_LINES",
    "MIB",
    "READY_TIMEOUTS",
    "RESETTABLE_DIRS",
    "SERVICES",
    "STACK_FILES",
    "STOP_TIMEOUT",
    "Health",
    "Kafka",
    "Layout",
    "Postgres",
    "Redis",
    "Registry",
    "Service",
    "ServiceStatus",
    "StackError",
    "UpReport",
    "down",
    "ensure_up",
    "kafka_uuid",
    "log_tail",
    "port_is_free",
    "port_owner",
    "reset",
    "resettable_paths",
    "run_step",
    "status",
    "stop_service",
    "up",
]
