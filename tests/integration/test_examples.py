"""Every script in examples/ runs to the end (exit 0) against the real stack: a
gateway child process over test_gateway.py's database, with an admin made by
`paystream admin create-user` (the `gw` fixture), as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from paystream.settings import PROJECT_ROOT
from tests.integration.test_gateway import ADMIN_EMAIL, ADMIN_PASSWORD, gw
from tests.integration.test_sdk_http import sdk_base

pytestmark = pytest.mark.integration
__all__ = ["gw", "sdk_base"]  # fixtures, imported for this module's tests

EXAMPLES = sorted(p for p in (PROJECT_ROOT / "examples").glob("*") if p.suffix in (".py", ".sh")
                  and not p.name.startswith("_"))  # fmt: skip


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"quickstart.py", "quickstart.sh", "holds.py", "webhook_receiver.py"}


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, sdk_base: str) -> None:
    env = {**os.environ, "PAYSTREAM_API_URL": sdk_base, "PAYSTREAM_ADMIN_EMAIL": ADMIN_EMAIL,
           "PAYSTREAM_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    command = ["bash", str(script)] if script.suffix == ".sh" else [sys.executable, str(script)]
    run = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=180)  # fmt: skip
    assert run.returncode == 0, f"{script.name} exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert run.stdout.strip(), f"{script.name} printed nothing"
