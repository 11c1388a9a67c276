"""The deployment files parse, point at files that exist, start inferis with
options it has, and query only metrics the workers export (no Docker daemon
here: the files are checked by reading them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from inferis.engine import metrics
from inferis.engine.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\b(inferis_[a-z_]+)\b")


def exported() -> set[str]:
    """Every sample name the workers' /metrics can show."""
    names = {"up"}
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        for family in obj.describe():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
            else:
                names.add(family.name)
    return names


def queried(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_every_service_with_health_checks(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "worker", "gateway", "prometheus", "grafana"}
    assert "--appendonly" in services["redis"]["command"]
    for name in ("redis", "worker", "gateway"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    assert "/health/ready" in " ".join(services["worker"]["healthcheck"]["test"])
    assert "/v2/health/ready" in " ".join(services["gateway"]["healthcheck"]["test"])
    assert services["gateway"]["depends_on"]["worker"]["condition"] == "service_healthy"
    assert services["worker"]["deploy"]["replicas"] >= 1
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


@pytest.mark.parametrize("service", ["worker", "gateway"])
def test_compose_commands_are_inferis_commands(compose: dict, service: str) -> None:
    command = compose["services"][service]["command"]
    assert command[0] == "inferis"
    ns = build_parser().parse_args(command[1:])  # exits (fails the test) on unknown flags
    assert ns.redis == "redis://redis:6379"
    if service == "worker":
        assert ns.metrics_port == 9100 and ns.metrics_addr == "0.0.0.0"


def test_dashboard_queries_only_exported_metrics() -> None:
    dash = json.loads((ROOT / "deploy/grafana/dashboards/inferis.json").read_text())
    exprs = [t["expr"] for panel in dash["panels"] for t in panel["targets"]]
    assert len(dash["panels"]) >= 10 and all(exprs)
    used = set().union(*(queried(e) for e in exprs))
    assert used and used <= exported(), used - exported()
    # what the issue asks to see: requests, errors, latency, queue depth, batch size
    for needed in ("inferis_requests_total", "inferis_request_seconds_bucket",
                   "inferis_queue_depth", "inferis_read_batch_size_bucket"):
        assert needed in used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_alert_rules_are_valid_and_query_exported_metrics() -> None:
    doc = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    rules = [r for group in doc["groups"] for r in group["rules"]]
    names = {r["alert"] for r in rules}
    assert {"InferisHighErrorRate", "InferisHighP99Latency", "InferisQueueBacklog",
            "InferisDeadLetters", "InferisDrift", "InferisWorkerDown"} <= names
    for rule in rules:
        assert rule["expr"].strip() and rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule
        assert queried(rule["expr"]) <= exported(), rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")")


def test_prometheus_loads_the_rules_and_scrapes_the_workers() -> None:
    doc = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert doc["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (job,) = doc["scrape_configs"]
    assert job["job_name"] == "inferis-workers"
    assert job["dns_sd_configs"][0]["port"] == 9100
