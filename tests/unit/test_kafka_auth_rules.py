"""Which commands are privileged, and the broker settings and rights derived from it."""

from __future__ import annotations

import pytest

from ops import kafka_auth
from paystream import commands as C
from paystream.settings import Settings


@pytest.mark.parametrize(("cmd", "topic"), [
    (C.transfer("a", "b", 1, "USD"), C.COMMANDS_TOPIC),
    (C.deposit("a", 1, "USD"), C.PRIVILEGED_TOPIC),
    (C.withdraw("a", 1, "USD"), C.PRIVILEGED_TOPIC),
    (C.open_account("a", external_number="1", owner_id="o", currency="USD"), C.PRIVILEGED_TOPIC),
    (C.open_account("a", external_number="1", owner_id="o", currency="USD", kind="SETTLEMENT"), C.PRIVILEGED_TOPIC),
    (C.status_change("FREEZE", "a", reason="r", actor="x"), C.PRIVILEGED_TOPIC),
    (C.status_change("UNFREEZE", "a", reason="r", actor="x"), C.PRIVILEGED_TOPIC),
    (C.reverse_transfer("a", "p", reason="r", actor="x"), C.PRIVILEGED_TOPIC),
])  # fmt: skip
def test_only_transfers_go_to_the_public_topic(cmd, topic):
    assert C.topic_for(cmd) == topic


def test_no_principal_but_the_ledger_writes_legs_or_events_or_reads_privileged_commands():
    def holders(topic: str, op: str) -> set[str]:
        return {p for p, grants in kafka_auth.RIGHTS.items()
                for g in grants if g.resource == "topic" and g.name == topic and op in g.operations}

    assert holders("ledger.legs", "WRITE") == {"ledger"}
    assert holders("ledger.events", "WRITE") == {"ledger"}
    assert holders(C.PRIVILEGED_TOPIC, "READ") == {"ledger"}
    assert holders(C.COMMANDS_TOPIC, "WRITE") == {"gateway"}
    assert (kafka_auth.Grant("topic", C.COMMANDS_TOPIC, ("WRITE", "DESCRIBE")),
            kafka_auth.Grant("topic", C.COMMANDS_TOPIC + ".p", ("WRITE", "DESCRIBE"), prefixed=True),
            ) == kafka_auth.PRODUCER_RIGHTS


def test_a_grown_generation_of_the_ledger_inputs_needs_no_new_acls():
    """`payments.commands.p16` and the like (docs/PARTITIONS.md) are covered by a prefix
    on each ledger input, and only there: the journal and other topics stay literal."""
    def holders(topic: str, op: str) -> set[str]:
        return {p for p, grants in kafka_auth.RIGHTS.items() for g in grants
                if g.resource == "topic" and op in g.operations
                and (g.name == topic or (g.prefixed and topic.startswith(g.name)))}

    assert holders("ledger.legs.p16", "WRITE") == holders("ledger.legs", "WRITE") == {"ledger"}
    assert holders("payments.privileged.p16", "READ") == {"ledger"}
    assert holders("payments.commands.p16", "WRITE") == {"gateway"}
    assert holders("payments.privileged.p16", "WRITE") == holders("payments.privileged", "WRITE")
    assert not any(g.prefixed and g.name.startswith("ledger.events") for gs in kafka_auth.RIGHTS.values() for g in gs)


def test_the_broker_denies_what_no_acl_allows(tmp_path):
    lines = kafka_auth.broker_security(Settings(home=tmp_path), "BROKER")
    assert "allow.everyone.if.no.acl.found=false" in lines
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" in lines
    assert "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,BROKER:SASL_PLAINTEXT" in lines
    # generated passwords live under home/secrets, private
    secret = tmp_path / "secrets" / "kafka" / "admin"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert secret.read_text() in "\n".join(lines)


def test_authentication_off_is_explicit(tmp_path):
    lines = kafka_auth.broker_security(Settings(home=tmp_path, kafka_security_protocol="PLAINTEXT"), "BROKER")
    assert not any("authorizer" in x for x in lines)
    assert not (tmp_path / "secrets").exists()


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "A", "-x", "x" * 64, "a b"])
def test_a_producer_name_cannot_escape_its_file(tmp_path, name):
    with pytest.raises(ValueError):
        kafka_auth.add_producer(Settings(home=tmp_path), name)
