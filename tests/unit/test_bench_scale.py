"""`paystream bench scale` holds each ledger instance to its CPU quota: the quota must
really bind, or the curve would measure the machine's two cores instead."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from ops.lab.bench.scale import CpuQuota, Point, write_points


def test_a_busy_process_in_a_quota_gets_about_its_quota() -> None:
    try:
        quota = CpuQuota(f"paystream-test-{uuid.uuid4().hex[:8]}", 0.1)
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"no writable cgroup cpu controller here: {exc}")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        quota.add(busy.pid)
        ps = psutil.Process(busy.pid)
        t0, c0 = time.monotonic(), sum(ps.cpu_times()[:2])
        time.sleep(1.5)
        used = (sum(ps.cpu_times()[:2]) - c0) / (time.monotonic() - t0)
        assert used < 0.2, f"a 0.1-core quota let the process use {used:.2f} cores"
        assert quota.throttled_seconds() > 0
    finally:
        busy.kill()
        busy.wait()
        quota.remove()


def test_a_point_rate_is_completed_over_seconds() -> None:
    assert Point(2, 0.2, 100, 90, 3.0).rate == 30.0
    assert Point(1, 0.2, 0, 0, 0.0).rate == 0.0


def test_the_raw_results_give_each_point_its_ratio_to_one_instance(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "scale.json"
    write_points(out, [{"instances": 1, "rate": 100.0}, {"instances": 2, "rate": 190.0}], base=100.0,
                 console=Console(quiet=True), quota_cores=0.2, accounts=10)  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["quota_cores"] == 0.2 and doc["accounts"] == 10 and doc["cpus"] == psutil.cpu_count()
    assert [p["ratio_to_one"] for p in doc["points"]] == [1.0, 1.9]
    write_points(out, [], base=0.0, console=Console(quiet=True))
    assert json.loads(out.read_text())["points"] == []
