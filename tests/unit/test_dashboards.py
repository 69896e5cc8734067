"""Grafana dashboards and the Prometheus scrape config refer only to metrics paystream defines."""

from __future__ import annotations

import importlib
import json
import os
import re

import pytest
import yaml
from prometheus_client import REGISTRY

from paystream.settings import PROJECT_ROOT, Settings

MODULES = ["paystream.metrics", "pipelines.ledger.app", "pipelines.fraud.app", "pipelines.compensation.app",
           "pipelines.notifications.app", "pipelines.notifications.webhooks", "gateway.observability",
           "sinks.postgres_sink"]
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created")


def _defined() -> set[str]:
    for m in MODULES:
        importlib.import_module(m)
    return {fam.name + s for fam in REGISTRY.collect() for s in SUFFIXES}


def test_dashboards_use_defined_metrics_and_are_generated() -> None:
    from ops.grafana import build_dashboards

    defined = _defined()
    files = sorted((PROJECT_ROOT / "ops" / "grafana" / "dashboards").glob("*.json"))
    assert {f.stem for f in files} == set(build_dashboards.DASHBOARDS)
    for f in files:
        doc = json.loads(f.read_text())
        assert doc == json.loads(json.dumps(build_dashboards.DASHBOARDS[f.stem])), f"{f.name} is stale: regenerate"
        for p in doc["panels"]:
            for t in p["targets"]:
                for name in re.findall(r"paystream_[a-z0-9_]+", t["expr"]):
                    assert name in defined, (f.name, p["title"], name)


def test_prometheus_scrapes_every_component_on_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    from ops.run_cli import COMPONENTS

    # the file documents the default ports, whatever this shell overrides
    for var in [v for v in os.environ if v.startswith("PAYSTREAM_")]:
        monkeypatch.delenv(var)

    cfg = yaml.safe_load((PROJECT_ROOT / "ops" / "prometheus" / "prometheus.yaml").read_text())
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "paystream"]
    targets = {t["labels"]["component"]: t["targets"][0] for t in job["static_configs"]}
    assert set(targets) == set(COMPONENTS)
    s = Settings()
    for name, target in targets.items():
        port = s.gateway_port if name == "gateway" else s.sink_metrics_port if name == "sink" else s.metrics_port(name)
        assert target == f"{name}:{port}"
