"""The one settings object: every port, address, secret and tuning knob.

Values come from the environment (prefix ``PAYSTREAM_``) or from a ``.env``
file; secrets may also be given as ``PAYSTREAM_<NAME>_FILE`` pointing at a file,
so they never need to live in source or in the process list.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from paystream.topics import LedgerTopics, ledger_topics

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _read_secret_file(name: str) -> str | None:
    path = os.environ.get(f"PAYSTREAM_{name.upper()}_FILE")
    if path:
        return Path(path).read_text().strip()
    return None


# What PAYSTREAM_PROFILE=dev changes: the per-IP limits on registration and login,
# which a script registering users from one machine hits at once (3 and 5 a minute).
# Per-user payment limits, lockouts and everything about money stay as they are.
DEV_PROFILE: dict[str, object] = {
    "gateway_rate_register_per_minute": 600,
    "gateway_rate_login_per_minute": 600,
}


class Settings(BaseSettings):
    # The *_override fields are read from the environment under their validation
    # aliases (PAYSTREAM_BOOTSTRAP_SERVERS, PAYSTREAM_REGISTRY_URL, PAYSTREAM_POSTGRES_DSN,
    # PAYSTREAM_REDIS_URL; env_prefix is not added to an alias). populate_by_name lets
    # code pass them by field name too: without it, extra="ignore" silently dropped
    # e.g. Settings(registry_url_override=None), so an isolated test stack could not
    # shield itself from those variables. (validation_alias rather than alias keeps the
    # field names in the typed __init__ that mypy sees.)
    model_config = SettingsConfigDict(
        env_prefix="PAYSTREAM_", env_file=".env", extra="ignore", populate_by_name=True
    )

    environment: Literal["development", "production"] = Field(
        default="development",
        description="production refuses a missing or short JWT secret and hides /docs, "
        "/openapi.json and /metrics unless exposed on purpose",
    )
    profile: Literal["standard", "dev"] = Field(
        default="standard",
        description="dev (PAYSTREAM_PROFILE=dev): limits relaxed for scripts run from one machine (see "
        "DEV_PROFILE); a setting given explicitly still wins; refused in production",
    )
    home: Path = Field(default=PROJECT_ROOT / ".stack", description="state of the local stack")
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "paystream",
        description="downloaded Kafka/Apicurio jars; outside home so `stack reset` keeps them",
    )

    # Kafka (KRaft, single node unless bootstrap_servers is overridden)
    kafka_version: str = "4.1.1"
    kafka_host: str = "127.0.0.1"
    kafka_port: int = 29092
    kafka_controller_port: int = 29093
    kafka_heap: str = "512m"
    bootstrap_servers_override: str | None = Field(
        default=None, validation_alias="PAYSTREAM_BOOTSTRAP_SERVERS"
    )
    # Authentication (docs/SECURITY.md). Every client authenticates with SASL/SCRAM as
    # one principal; the broker's ACLs say what that principal may read and write.
    kafka_security_protocol: Literal["SASL_PLAINTEXT", "SASL_SSL", "PLAINTEXT"] = Field(
        default="SASL_PLAINTEXT",
        description="PLAINTEXT turns authentication off: anyone who reaches the broker may move money",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    kafka_principal: str = Field(
        default="admin",
        description="the Kafka user this process is; `paystream run NAME` makes it the component's own",
    )
    kafka_password: str | None = Field(
        default=None, description="else PAYSTREAM_KAFKA_PASSWORD_FILE, else <kafka_secrets_dir>/<principal>"
    )
    kafka_secrets_dir: Path | None = Field(
        default=None,
        description="a file per principal holding its password; default <home>/secrets/kafka, which "
        "`paystream stack up` fills",
    )

    # Schema registry (Apicurio, Confluent-compatible API)
    apicurio_version: str = "3.0.9"
    registry_port: int = 28081
    registry_heap: str = "256m"
    registry_url_override: str | None = Field(
        default=None, validation_alias="PAYSTREAM_REGISTRY_URL"
    )

    # PostgreSQL
    postgres_port: int = 25432
    postgres_host: str = "127.0.0.1"
    postgres_user: str = "paystream"
    postgres_password: str | None = None
    postgres_db: str = "paystream"
    postgres_dsn_override: str | None = Field(
        default=None, validation_alias="PAYSTREAM_POSTGRES_DSN"
    )

    # Redis
    redis_port: int = 26379
    redis_url_override: str | None = Field(
        default=None, validation_alias="PAYSTREAM_REDIS_URL"
    )

    # Gateway
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    jwt_secret: str | None = None
    audit_signing_key: str | None = Field(
        default=None,
        description="Ed25519 private key (PEM, PKCS#8) that signs `paystream audit export` files; else "
        "PAYSTREAM_AUDIT_SIGNING_KEY_FILE; development generates one under home",
    )
    jwt_ttl_seconds: int = 900
    jwt_issuer: str = "paystream"
    gateway_workers: int = 1
    gateway_trusted_proxies: str = Field(
        default="", description="comma-separated IPs/CIDRs whose X-Forwarded-For is believed"
    )
    gateway_max_body_bytes: int = 16 * 1024
    gateway_wait_default_seconds: float = 5.0
    gateway_wait_max_seconds: float = 30.0
    gateway_finalize_seconds: float = 120.0
    gateway_read_wait_seconds: float = Field(
        default=2.0,
        description="how long a read waits for the read model to show outcomes its caller was told "
        "(gateway/reads.py); then 503 read_model_behind. 0: reads never wait",
    )
    gateway_produce_timeout_seconds: float = 5.0
    gateway_rate_login_per_minute: int = 5
    gateway_rate_register_per_minute: int = 3
    gateway_login_lockout_after: int = Field(
        default=5, description="failed logins for one email before it is locked out (0: never)"
    )
    gateway_login_lockout_base_seconds: float = Field(
        default=30.0, description="first lockout; each further failure doubles it"
    )
    gateway_login_lockout_max_seconds: float = Field(default=900.0, description="longest lockout")
    gateway_login_failures_reset_seconds: float = Field(
        default=3600.0, description="failed logins are forgotten this long after the last one"
    )
    gateway_rate_payments_per_minute: int = 1200
    gateway_max_accounts_per_user: int = Field(
        default=10, description="accounts one user may hold, the first included (POST /v1/accounts: 409 beyond)"
    )
    gateway_idempotency_ttl_seconds: int = 86400
    gateway_inflight_lock_seconds: int = 30
    gateway_redis_prefix: str = "gw:"
    gateway_pg_pool_max: int = 10
    # How long a request waits for a Postgres connection before it answers 503 with
    # Retry-After (psycopg-pool's default is 30 s, longer than clients wait).
    gateway_pg_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    # Concurrent payments bound for one partition leave as one batch record
    # (`paystream.batching`): up to this many, waiting at most this long for company.
    # 1 sends every command alone. With tracing on, commands always go alone, so each
    # payment keeps its own trace through the ledger.
    gateway_batch_max_items: int = 64
    gateway_batch_linger_ms: float = 2.0
    outbox_batch_size: int = 100
    outbox_poll_interval: float = 0.5
    outbox_fault: str | None = Field(
        default=None, description="test hook: 'crash_after_publish' kills the relay before it marks rows"
    )

    # Postgres sink (read model)
    sink_group: str = Field(
        default="paystream-sink",
        description="consumer group and offsets owner; the sink principal may use groups paystream-sink*",
    )
    sink_instance: str | None = Field(
        default=None, description="static group membership id: a restart rejoins without a rebalance"
    )
    sink_batch_max: int = 5000
    sink_batch_timeout: float = 0.2
    sink_metrics_port: int = 9102

    # Observability (docs/OBSERVABILITY.md). Each process serves Prometheus metrics on its
    # own port (the gateway on its HTTP port at /metrics); 0 turns a port off.
    metrics_host: str = Field(default="127.0.0.1", description="address the metrics ports bind")
    ledger_metrics_port: int = 9101
    fraud_metrics_port: int = 9103
    notifications_metrics_port: int = 9104
    webhooks_metrics_port: int = 9105
    outbox_relay_metrics_port: int = 9106
    compensation_metrics_port: int = 9107
    reviews_metrics_port: int = 9108
    metrics_stats_interval_ms: int = Field(
        default=5000, description="librdkafka statistics period: how often consumer lag is refreshed"
    )
    backlog_poll_seconds: float = Field(default=5.0, description="how often outbox backlogs are counted")
    gateway_metrics_enabled: bool | None = Field(
        default=None,
        description="serve /metrics on the gateway; default: only in development (in production "
        "it would tell anyone the traffic and error rates)",
    )
    gateway_docs_enabled: bool | None = Field(
        default=None, description="serve /docs and /openapi.json; default: only in development"
    )
    log_level: str = "INFO"
    log_format: str = Field(
        default="auto",
        description="json (one object per line), console, or auto: console on a terminal, json otherwise",
    )
    otel_enabled: bool = False
    otel_endpoint: str = Field(
        default="http://127.0.0.1:4318", description="OTLP/HTTP collector; traces go to <endpoint>/v1/traces"
    )
    otel_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0, description="share of new traces recorded")

    # The generation of the ledger's input topics (docs/PARTITIONS.md). Unset: the topics of
    # ops/topics.toml (payments.commands, payments.privileged, ledger.legs); N: the generation
    # `paystream partitions grow --to N` made (payments.commands.pN, ...). Every producer and
    # the ledger read it, so switching generations is this one setting.
    ledger_partitions: int | None = Field(
        default=None, gt=0,
        description="partition count of the ledger's input topics when grown past ops/topics.toml's "
        "(topics named <name>.p<N>); unset: the original topics",
    )

    # Ledger tuning
    ledger_commit_interval: float = 0.1
    # How long the ledger's fetches wait for data. Each hop of a transfer pays up to
    # this after the previous hop's commit; lower means more fetch requests for the
    # broker. The latency setting (docs/LEDGER.md) sets 5 ms.
    ledger_fetch_wait_ms: int = 20
    # Group commit: when set, a checkpoint also commits as soon as no input is ready,
    # once it is this many seconds old; the interval above still bounds it under load.
    # None: commit on the interval only (docs/LEDGER.md, "Latency").
    ledger_commit_when_idle_after: float | None = Field(default=0.005, ge=0)
    ledger_instance: str = "0"
    # The ledger's consumer-group membership (docs/LEDGER.md, "Failover"). Static
    # membership (group.instance.id = paystream-ledger-<instance>): an instance
    # restarted within the session timeout takes its partitions back without a
    # rebalance; one that is gone is noticed after the session timeout, and the
    # survivors hear of the rebalance at their next heartbeat.
    ledger_static_membership: bool = True
    ledger_session_timeout_ms: int = Field(default=6_000, ge=1_000)
    ledger_heartbeat_interval_ms: int = Field(default=1_000, ge=100)
    # How long the transaction coordinator lets a ledger transaction stay open. An
    # instance that dies for good leaves its last transaction open on every partition
    # it wrote (its legs go to all of them), and read_committed readers (the other
    # instances, its changelog's restore) wait until the coordinator aborts it.
    ledger_transaction_timeout_ms: int = Field(default=10_000, ge=1_000)
    ledger_time_alignment: bool = False
    # Account entries each partition's writer keeps in memory between batches (about
    # 0.6 KiB each); a miss costs one state read. 0 turns the memo off.
    ledger_account_memo: int = Field(default=20_000, ge=0)
    # Holds (AUTHORIZE): how long one lasts unless its command names a timeout, the most
    # it may name, and how often each ledger process writes the ticks that expire them
    # (docs/LEDGER.md, "Holds"; 0 writes none, for tests that drive time themselves).
    ledger_hold_default_seconds: int = Field(default=7 * 86_400, gt=0)
    ledger_hold_max_seconds: int = Field(default=30 * 86_400, gt=0)
    ledger_tick_interval: float = Field(default=1.0, ge=0)

    # Downstream Quix apps. Instance ids name the transactional id and the local state
    # directory: one per running process, stable across its restarts so a restart
    # fences its zombie at once instead of leaving consumers to wait out the transaction.
    fraud_instance: str = "0"
    # Accounts each fraud partition keeps decoded between messages; a miss costs one
    # state read. A quiet account takes about a KiB, one with full windows (2,000
    # entries per list) some hundreds: lower it where many accounts are that busy.
    fraud_account_memo: int = Field(default=20_000, ge=1)
    compensation_instance: str = "0"
    notifications_instance: str = "0"
    downstream_commit_interval: float = Field(
        default=0.2, description="seconds per Quix checkpoint: bounds the latency of each hop"
    )

    # Webhook delivery policy (pipelines/notifications/webhooks.py, docs/NOTIFICATIONS.md).
    webhook_backoff_base_seconds: float = 5.0
    webhook_backoff_cap_seconds: float = 3600.0
    webhook_max_age_seconds: float = 3 * 86400.0
    webhook_concurrency: int = 16  # endpoints served at once per worker process
    webhook_timeout_seconds: float = 10.0  # per attempt; a slow endpoint costs its own slot only
    webhook_lease_seconds: float = 60.0
    webhook_poll_interval: float = 0.2
    webhook_batch_per_endpoint: int = 50  # deliveries per lease before the endpoint goes back in line
    webhook_allow_private_urls: bool = False  # http:// and loopback/private hosts: development and tests
    webhook_max_endpoints_per_user: int = 10
    # Names this worker's leases; stable across its restarts (one per running process
    # on a host), so a restarted worker takes back what its dead predecessor leased
    # instead of waiting `webhook_lease_seconds` for the leases to expire.
    webhook_instance: str = "0"

    def metrics_port(self, component: str) -> int:
        """The Prometheus port of a component (0: none); the sink keeps `sink_metrics_port`."""
        return int(getattr(self, f"{component.replace('-', '_')}_metrics_port", 0) or 0)

    @model_validator(mode="after")
    def _apply_profile(self) -> Settings:
        if self.profile == "dev":
            if self.environment == "production":
                raise ValueError("PAYSTREAM_PROFILE=dev relaxes the gateway's abuse limits: refused in production")
            for name, value in DEV_PROFILE.items():
                if name not in self.model_fields_set:
                    setattr(self, name, value)
        return self

    @property
    def gateway_serves_metrics(self) -> bool:
        """`/metrics` on the gateway: as set, else only in development."""
        if self.gateway_metrics_enabled is not None:
            return self.gateway_metrics_enabled
        return self.environment == "development"

    @property
    def gateway_serves_docs(self) -> bool:
        """`/docs` and `/openapi.json`: as set, else only in development."""
        if self.gateway_docs_enabled is not None:
            return self.gateway_docs_enabled
        return self.environment == "development"

    @property
    def ledger_topics(self) -> LedgerTopics:
        """The ledger's input topics of the generation this process runs on."""
        return ledger_topics(self.ledger_partitions)

    @property
    def bootstrap_servers(self) -> str:
        return self.bootstrap_servers_override or f"{self.kafka_host}:{self.kafka_port}"

    @property
    def registry_url(self) -> str:
        return self.registry_url_override or (
            f"http://127.0.0.1:{self.registry_port}/apis/ccompat/v7"
        )

    @property
    def postgres_dsn(self) -> str:
        if self.postgres_dsn_override:
            return self.postgres_dsn_override
        password = self.resolved_postgres_password()
        auth = self.postgres_user + (f":{quote(password, safe='')}" if password else "")
        return f"postgresql://{auth}@{self.postgres_host}:{self.postgres_port}/{self.postgres_db}"

    @property
    def postgres_password_path(self) -> Path:
        """Where `paystream stack up` keeps the password it generated for the local Postgres."""
        return self.home / "secrets" / "postgres.password"

    def resolved_postgres_password(self) -> str | None:
        """Explicit password (env or ``*_FILE``) first, else the one the local stack generated.

        The fallback lets every component talk to the local stack with zero
        configuration while never putting a password in source.
        """
        password = self.postgres_password or _read_secret_file("postgres_password")
        if password:
            return password
        path = self.postgres_password_path
        if path.exists():
            return path.read_text().strip() or None
        return None

    @property
    def kafka_credentials_dir(self) -> Path:
        """Where `paystream stack up` keeps the password it generated for each Kafka principal."""
        return self.kafka_secrets_dir or self.home / "secrets" / "kafka"

    def kafka_credentials(self) -> tuple[str, str]:
        """(user, password) of `kafka_principal`: explicit password first, else the local stack's.

        As with Postgres, the fallback lets every component reach the local stack
        with no configuration, and no password ever lives in source.
        """
        password = self.kafka_password or _read_secret_file("kafka_password")
        if password:
            return self.kafka_principal, password
        path = self.kafka_credentials_dir / self.kafka_principal
        if path.exists():
            return self.kafka_principal, path.read_text().strip()
        raise ConfigError(
            f"no Kafka password for principal {self.kafka_principal!r}: set PAYSTREAM_KAFKA_PASSWORD "
            f"(or _FILE), or start the local stack (`paystream stack up` writes {path})"
        )

    @property
    def redis_url(self) -> str:
        return self.redis_url_override or f"redis://127.0.0.1:{self.redis_port}/0"

    def jwt_key(self) -> str:
        """The JWT signing key: env, then ``*_FILE``, then a generated key kept under ``home``.

        Generating on first use keeps a fresh checkout working without ever
        committing a secret. Outside development a key must be given and be at
        least 32 bytes (RFC 7518 3.2: an HS256 key no shorter than the hash): a
        key generated on one host would differ between gateway replicas and
        vanish with the container, and a short one can be brute-forced offline
        from any token.
        """
        given = self.jwt_secret or _read_secret_file("jwt_secret")
        if given:
            if len(given.encode()) < MIN_JWT_SECRET_BYTES:
                raise ConfigError(
                    f"PAYSTREAM_JWT_SECRET is {len(given.encode())} bytes; "
                    f"at least {MIN_JWT_SECRET_BYTES} are required"
                )
            return given
        if self.environment != "development":
            raise ConfigError(
                f"environment is {self.environment}: set PAYSTREAM_JWT_SECRET or "
                f"PAYSTREAM_JWT_SECRET_FILE (at least {MIN_JWT_SECRET_BYTES} bytes, e.g. "
                "`openssl rand -base64 48`)"
            )
        path = self.home / "secrets" / "jwt.key"
        if not path.exists():
            write_secret_once(path, secrets.token_urlsafe(48))
        return path.read_text().strip()


    def audit_key_pem(self) -> str:
        """The audit exports' signing key (PEM): env, then ``*_FILE``, then, in
        development only, a key generated once under ``home`` (as `jwt_key` does).
        Never in source: whoever holds it can sign an export. Its public half is
        what third parties check exports with (`paystream audit public-key`)."""
        given = self.audit_signing_key or _read_secret_file("audit_signing_key")
        if given:
            return given
        path = self.audit_key_path
        if not path.exists():
            if self.environment != "development":
                raise ConfigError(
                    f"environment is {self.environment}: set PAYSTREAM_AUDIT_SIGNING_KEY or "
                    "PAYSTREAM_AUDIT_SIGNING_KEY_FILE (an Ed25519 key in PEM, e.g. "
                    "`openssl genpkey -algorithm ed25519`)"
                )
            write_secret_once(path, _new_ed25519_pem())
        return path.read_text()

    @property
    def audit_key_path(self) -> Path:
        """Where development keeps the audit signing key it generated."""
        return self.home / "secrets" / "audit-ed25519.pem"


def _new_ed25519_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class ConfigError(RuntimeError):
    """A setting that the process must not start with."""


MIN_JWT_SECRET_BYTES = 32


def write_secret_once(path: Path, value: str) -> None:
    """Create ``path`` holding ``value``, mode 0600 from the start, atomically.

    The secret is written to a private temporary file and linked into place:
    nobody ever reads a half-written key or one that is briefly world-readable,
    and when two processes race, the first link wins and both use that key.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made one first: use theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def use_component_principal(component: str) -> None:
    """Make this process authenticate to Kafka as `component` (`paystream run NAME`).

    A process given its password explicitly (docker-compose, a deployment) keeps the
    principal it was given; otherwise each component is its own principal, with the
    password the local stack generated for it, so the broker's ACLs bound what a
    compromised or buggy component can write.
    """
    if not (os.environ.get("PAYSTREAM_KAFKA_PASSWORD") or os.environ.get("PAYSTREAM_KAFKA_PASSWORD_FILE")):
        os.environ["PAYSTREAM_KAFKA_PRINCIPAL"] = component
    get_settings.cache_clear()
