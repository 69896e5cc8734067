"""The topic names code uses (paystream.topics) are exactly the topics ops/topics.toml
declares: a topic renamed in one place and not the other fails here, not at run time."""

from __future__ import annotations

from paystream import topics
from paystream.codec import topic_specs


def test_every_declared_topic_has_a_name_in_code_and_no_other() -> None:
    assert set(topics.ALL) == set(topic_specs())
    assert len(set(topics.ALL)) == len(topics.ALL)
