"""paystream.ids.uuid5 is uuid.uuid5, only faster: every stored id depends on it."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from paystream.ids import uuid5


@given(st.uuids(), st.text(max_size=300))
def test_uuid5_equals_the_standard_library(namespace: uuid.UUID, name: str) -> None:
    assert uuid5(namespace, name) == str(uuid.uuid5(namespace, name))


def test_uuid5_known_vector() -> None:
    # RFC 4122 appendix-style check against a fixed value (DNS namespace, "python.org").
    assert uuid5(uuid.NAMESPACE_DNS, "python.org") == "886313e1-3b8a-5372-9b90-0c9aee199e5d"
