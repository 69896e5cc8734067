"""The AsyncAPI document is generated from ops/topics.toml and schemas/, and the
committed copy is what the generator writes (a topic or schema change without
`paystream asyncapi` fails here)."""

from __future__ import annotations

import json

from ops.asyncapi import DOC, ROLES, generate, render
from paystream import topics
from paystream.codec import SCHEMA_DIR, topic_specs


def test_the_committed_document_is_current() -> None:
    assert DOC.read_text() == render(generate()), "run `paystream asyncapi`"


def test_every_public_topic_is_a_channel_with_its_avro_payloads_by_reference() -> None:
    doc = generate()
    specs = topic_specs()
    by_address = {c["address"]: c for c in doc["channels"].values()}
    assert set(by_address) == set(ROLES) == set(topics.ALL) - {topics.LEGS, topics.FLOWS}
    for topic, channel in by_address.items():
        spec = specs[topic]
        assert channel["bindings"]["kafka"]["partitions"] == spec.partitions
        files = {doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]["payload"]["schema"]["$ref"]
                 for ref in channel["messages"].values()}  # fmt: skip
        assert files == {f"../schemas/{f}" for f in (spec.value_schema, *spec.record_schemas)}
        for f in files:
            assert json.loads((SCHEMA_DIR / f.rsplit("/", 1)[1]).read_text())["type"] == "record"
    actions = {op["channel"]["$ref"].rsplit("/", 1)[1]: op["action"] for op in doc["operations"].values()}
    assert actions["paymentsCommands"] == "receive" and actions["ledgerEvents"] == "send"
