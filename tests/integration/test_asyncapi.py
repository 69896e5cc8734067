"""The AsyncAPI document validates with the AsyncAPI CLI from npm (installed into the
cache on first use, about a minute), and a document with a broken payload reference
does not: the check can fail."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ops import asyncapi

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cli() -> None:
    if shutil.which("npm") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must validate the AsyncAPI document: install Node 20 and npm")
        pytest.skip("npm is not installed")
    asyncapi.cli_path()


def test_the_asyncapi_document_validates(cli: None) -> None:
    ok, said = asyncapi.validate()
    assert ok, said


def test_a_broken_payload_reference_is_caught(cli: None, tmp_path: Path) -> None:
    doc = asyncapi.generate()
    doc["components"]["messages"]["Command"]["payload"]["schema"]["$ref"] = "../schemas/missing.avsc"
    bad = asyncapi.DOC.parent / f"asyncapi-broken-{os.getpid()}.json"  # beside the real one: same relative refs
    try:
        bad.write_text(json.dumps(doc))
        ok, said = asyncapi.validate(bad)
    finally:
        bad.unlink(missing_ok=True)
    assert not ok and "missing.avsc" in said
