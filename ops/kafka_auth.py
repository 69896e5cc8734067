"""Who may do what on Kafka: principals, their passwords, the broker's listener
security and the ACLs (docs/SECURITY.md).

Every client authenticates with SASL/SCRAM; the KRaft `StandardAuthorizer` denies
what no ACL allows. Each component is its own principal and may write only the
topics it owns, so a compromised or buggy component (or anyone else who reaches
the broker) cannot forge a leg, an event or a privileged command.

The KRaft controller listener uses SASL/PLAIN with a static user: SCRAM
credentials live in the metadata log that the controllers serve, so the
controllers cannot use them to talk to each other (KIP-900).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from paystream import commands as C
from paystream import topics
from paystream.deadletter import DLQ_TOPIC
from paystream.settings import Settings, write_secret_once

if TYPE_CHECKING:
    from confluent_kafka.admin import AclBinding, AdminClient

ADMIN = "admin"            # super user: the operator's tools (paystream ops, tests, benches)
CONTROLLER = "controller"  # the brokers and controllers among themselves
SCRAM_ITERATIONS = 4096    # Kafka's minimum for SCRAM-SHA-512

COMMANDS = C.COMMANDS_TOPIC
PRIVILEGED = C.PRIVILEGED_TOPIC
LEGS = topics.LEGS
EVENTS = topics.EVENTS
ALERTS = topics.ALERTS
DECISIONS = topics.DECISIONS
FLOWS = topics.FLOWS
NOTIFICATIONS = topics.NOTIFICATIONS
DLQ = DLQ_TOPIC

Resource = Literal["topic", "group", "transactional_id", "cluster"]


@dataclass(frozen=True)
class Grant:
    """One ALLOW rule: `operations` on `resource` `name` (a prefix when `prefixed`)."""

    resource: Resource
    name: str
    operations: tuple[str, ...]
    prefixed: bool = False


def _topic(name: str, operations: tuple[str, ...]) -> tuple[Grant, ...]:
    """`operations` on a topic; on a ledger input, in every generation of it too
    (`<name>.p<N>`, docs/PARTITIONS.md), so growing the partitions needs no new ACLs."""
    grant = Grant("topic", name, operations)
    if name not in topics.LEDGER_INPUTS:
        return (grant,)
    return (grant, Grant("topic", f"{name}.p", operations, prefixed=True))


def _quix_app(group: str, reads: tuple[str, ...], writes: tuple[str, ...]) -> tuple[Grant, ...]:
    """What an exactly-once Quix application needs: its inputs, its outputs, its group,
    its transactional ids (`<group>-<instance>`), and its changelog topics, which it
    creates at start (`changelog__<group>--<inputs>--<store>`)."""
    return (
        *(g for t in reads for g in _topic(t, ("READ",))),
        *(g for t in writes for g in _topic(t, ("WRITE",))),
        Grant("group", group, ("READ", "DESCRIBE")),
        Grant("transactional_id", f"{group}-", ("WRITE", "DESCRIBE"), prefixed=True),
        Grant("topic", f"changelog__{group}--", ("CREATE", "READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS"),
              prefixed=True),
    )


# Every component may see which topics exist and how they are configured (Quix checks
# its topics at start), and may dead-letter. None of that moves money. Groups are
# never granted by a wide prefix: one component must not join another's group.
_COMMON = (
    Grant("topic", "*", ("DESCRIBE", "DESCRIBE_CONFIGS")),
    Grant("topic", DLQ, ("WRITE",)),
)

RIGHTS: dict[str, tuple[Grant, ...]] = {
    # the only writer of legs and events, and the only reader of commands
    "ledger": _quix_app("paystream-ledger", reads=(COMMANDS, PRIVILEGED, LEGS), writes=(LEGS, EVENTS)),
    # freezes an account on a high alert
    "fraud": _quix_app("paystream-fraud", reads=(EVENTS, FLOWS), writes=(FLOWS, ALERTS, PRIVILEGED)),
    # unfreezes, and reverses a rejected payment
    "compensation": _quix_app("paystream-compensation", reads=(ALERTS, DECISIONS), writes=(PRIVILEGED,)),
    "notifications": _quix_app("paystream-notifications", reads=(EVENTS, DECISIONS), writes=(NOTIFICATIONS,)),
    # `paystream-sink`, or `paystream-sink-<database>` for a second read model
    "sink": (Grant("topic", EVENTS, ("READ",)),
             Grant("group", "paystream-sink", ("READ", "DESCRIBE"), prefixed=True)),
    "reviews": (Grant("topic", ALERTS, ("READ",)), Grant("group", "paystream-reviews", ("READ", "DESCRIBE")),
                Grant("topic", DECISIONS, ("WRITE",))),
    "webhooks": (Grant("topic", NOTIFICATIONS, ("READ",)),
                 Grant("group", "paystream-webhooks", ("READ", "DESCRIBE"))),
    # user payments; and, for the admin role it checks, deposits, withdrawals and freezes.
    # It reads outcomes with assign() under a group of its own per process.
    "gateway": (*_topic(COMMANDS, ("WRITE",)), *_topic(PRIVILEGED, ("WRITE",)),
                Grant("topic", EVENTS, ("READ",)),
                Grant("group", "paystream-gateway-", ("READ", "DESCRIBE"), prefixed=True)),
    # the gateway's outbox: a new user's account (OPEN_ACCOUNT)
    "outbox-relay": _topic(PRIVILEGED, ("WRITE",)),
}
RIGHTS = {c: (*_COMMON, *grants) for c, grants in RIGHTS.items()}
COMPONENTS = tuple(RIGHTS)

# A Kafka-direct producer (`paystream producers add NAME`) may send transfers only.
PRODUCER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # it names a user and a file
PRODUCER_RIGHTS = _topic(COMMANDS, ("WRITE", "DESCRIBE"))


def consumer_rights(principal: str) -> tuple[Grant, ...]:
    """A journal reader (`paystream consumers add NAME`): `ledger.events` and its own
    groups, `consumer-NAME.<anything>`. The dot cannot occur in a name, so no reader's
    prefix covers another's groups (`consumer-pay.` is not a prefix of `consumer-pay-roll.x`)."""
    return (Grant("topic", EVENTS, ("READ", "DESCRIBE")),
            Grant("group", f"{principal}.", ("READ", "DESCRIBE"), prefixed=True))


# Client principals the operator hands to other teams: prefix -> their rights.
ClientKind = Literal["producer", "consumer"]
_CLIENT_KINDS = {"producer": lambda _principal: PRODUCER_RIGHTS, "consumer": consumer_rights}


def password_path(settings: Settings, principal: str) -> Path:
    return settings.kafka_credentials_dir / principal


def password(settings: Settings, principal: str) -> str:
    """The principal's password, generated (mode 0600, atomically) the first time."""
    path = password_path(settings, principal)
    if not path.exists():
        import secrets

        write_secret_once(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def as_principal(settings: Settings, principal: str) -> Settings:
    """`settings` for a client that authenticates as `principal` with the stack's password."""
    return settings.model_copy(update={"kafka_principal": principal, "kafka_password": password(settings, principal)})


def broker_security(settings: Settings, broker_listener: str) -> list[str]:
    """server.properties lines for the listeners `BROKER` and `CONTROLLER`."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return [
            f"inter.broker.listener.name={broker_listener}",
            f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{broker_listener}:PLAINTEXT",
        ]
    if settings.kafka_security_protocol != "SASL_PLAINTEXT":
        raise ValueError(f"the local brokers serve SASL_PLAINTEXT on 127.0.0.1, not "
                         f"{settings.kafka_security_protocol} (that needs certificates of your own)")
    mech = settings.kafka_sasl_mechanism
    controller = password(settings, CONTROLLER)
    admin = password(settings, ADMIN)
    return [
        f"inter.broker.listener.name={broker_listener}",
        f"listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,{broker_listener}:SASL_PLAINTEXT",
        f"sasl.enabled.mechanisms={mech}",
        f"sasl.mechanism.inter.broker.protocol={mech}",
        f"listener.name.{broker_listener.lower()}.{mech.lower()}.sasl.jaas.config="
        f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN}" password="{admin}";',
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
        f'required username="{CONTROLLER}" password="{controller}" user_{CONTROLLER}="{controller}";',
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{ADMIN};User:{CONTROLLER}",
        "allow.everyone.if.no.acl.found=false",
    ]


def format_args(settings: Settings) -> list[str]:
    """StorageTool arguments that create the admin's SCRAM credential with the cluster:
    the brokers authenticate to each other as admin before anyone could add it."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return []
    mech = settings.kafka_sasl_mechanism
    return ["--add-scram", f"{mech}=[name={ADMIN},password={password(settings, ADMIN)}]"]


def _bindings(principal: str, grants: tuple[Grant, ...]) -> list[AclBinding]:
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    out = []
    for g in grants:
        restype = ResourceType[g.resource.upper()]
        name = "kafka-cluster" if g.resource == "cluster" else g.name
        pattern = ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL
        for op in g.operations:
            out.append(AclBinding(restype, name, pattern, f"User:{principal}", "*",
                                  AclOperation[op], AclPermissionType.ALLOW))
    return out


def _upsert_users(admin: AdminClient, settings: Settings, users: dict[str, str]) -> None:
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    mech = ScramMechanism[settings.kafka_sasl_mechanism.replace("-", "_")]
    upserts = [UserScramCredentialUpsertion(user, ScramCredentialInfo(mech, SCRAM_ITERATIONS), pw.encode())
               for user, pw in users.items()]
    for fut in admin.alter_user_scram_credentials(upserts).values():
        fut.result(30)


def _create_acls(admin: AdminClient, bindings: list[AclBinding]) -> None:
    for fut in admin.create_acls(bindings, request_timeout=30).values():
        fut.result(30)


def apply(settings: Settings) -> None:
    """Create every component's SCRAM user and ACLs (idempotent; run at every stack start)."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return
    from paystream import kafka

    admin = kafka.admin(as_principal(settings, ADMIN))
    _upsert_users(admin, settings, {c: password(settings, c) for c in COMPONENTS})
    wanted = [b for c, grants in RIGHTS.items() for b in _bindings(c, grants)]
    _create_acls(admin, wanted)
    _drop_stale(admin, {f"User:{c}" for c in COMPONENTS}, wanted)


def _key(b: AclBinding) -> tuple[object, ...]:
    return (b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation, b.permission_type)


def _drop_stale(admin: AdminClient, principals: set[str], wanted: list[AclBinding]) -> None:
    """ACLs of our principals that this version no longer grants: a right taken away
    in the code must be taken away on the broker too, not linger from an older start."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    keep = {_key(b) for b in wanted}
    stale = [b for b in admin.describe_acls(everything, request_timeout=30).result(30)
             if b.principal in principals and _key(b) not in keep]
    if not stale:
        return
    filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation,
                                b.permission_type) for b in stale]
    for fut in admin.delete_acls(filters, request_timeout=30).values():
        fut.result(30)


def add_client(settings: Settings, kind: ClientKind, name: str) -> str:
    """A principal `<kind>-NAME` for another team's service: a `producer` may write user
    commands only, a `consumer` may read the journal in its own groups."""
    if not PRODUCER_NAME.fullmatch(name):
        raise ValueError(f"{name!r}: a {kind} name is 1-63 of a-z, 0-9, '-' and '_', starting with a letter or digit")
    from paystream import kafka

    principal = f"{kind}-{name}"
    admin = kafka.admin(as_principal(settings, ADMIN))
    _upsert_users(admin, settings, {principal: password(settings, principal)})
    _create_acls(admin, _bindings(principal, _CLIENT_KINDS[kind](principal)))
    return principal


def remove_client(settings: Settings, kind: ClientKind, name: str) -> None:
    """Revoke a client principal: its SCRAM user and its ACLs go, its password file too."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
        ScramMechanism,
        UserScramCredentialDeletion,
    )

    from paystream import kafka

    if not PRODUCER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a {kind} name")
    principal = f"{kind}-{name}"
    admin = kafka.admin(as_principal(settings, ADMIN))
    mech = ScramMechanism[settings.kafka_sasl_mechanism.replace("-", "_")]
    for fut in admin.alter_user_scram_credentials([UserScramCredentialDeletion(principal, mech)]).values():
        fut.result(30)
    pattern = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{principal}", None,
                               AclOperation.ANY, AclPermissionType.ANY)
    admin.delete_acls([pattern], request_timeout=30)[pattern].result(30)
    password_path(settings, principal).unlink(missing_ok=True)


def clients(settings: Settings, kind: ClientKind) -> list[str]:
    """Names of the `kind` principals the broker has a SCRAM user for."""
    from paystream import kafka

    admin = kafka.admin(as_principal(settings, ADMIN))
    users = admin.describe_user_scram_credentials().result(30)
    prefix = f"{kind}-"
    return sorted(u[len(prefix):] for u in users if u.startswith(prefix))


def add_producer(settings: Settings, name: str) -> str:
    """A principal for a Kafka-direct producer that may write user commands only."""
    return add_client(settings, "producer", name)


def remove_producer(settings: Settings, name: str) -> None:
    remove_client(settings, "producer", name)

