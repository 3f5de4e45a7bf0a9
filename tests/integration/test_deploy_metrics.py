"""The Grafana dashboard and the Prometheus alert rules in deploy/ name only metrics that a
real server exports: a renamed metric would otherwise leave an empty panel, or an alert
that can never fire, and nobody would notice until the day it should have."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import REPO_ROOT, Server, digits_rows, run_server
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = REPO_ROOT / "deploy"
GRAFANA = DEPLOY / "grafana" / "surge-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
METRIC_NAME = re.compile(r"\bsurge_[A-Za-z0-9_]+")
STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"')
# The names a family's samples take in the text exposition (prometheus_client).
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "unknown": ("",),
}


def grafana_expressions() -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())

    def panels(items: list[dict]) -> Iterator[dict]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))  # rows may nest theirs

    found = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def metric_names(expression: str) -> set[str]:
    # Label values ("queue_fill", "5..") are not metric names; drop them first.
    return set(METRIC_NAME.findall(STRING_LITERAL.sub('""', expression)))


def referenced() -> dict[str, set[str]]:
    """Metric name -> where it is used."""
    names: dict[str, set[str]] = {}
    for expression in grafana_expressions():
        for name in metric_names(expression):
            names.setdefault(name, set()).add(GRAFANA.name)
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            names.setdefault(name, set()).add(f"{ALERTS.name}:{rule['alert']}")
    return names


# -- the files themselves ----------------------------------------------------------------------


def test_files_are_well_formed() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["expr"] and target["refId"], panel["title"]
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "SurgeQueueSaturated", "SurgeP99OverTarget", "SurgeHighErrorRate",
        "SurgeModelDrifting", "SurgeBudgetBurn",
    }  # fmt: skip
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    for expression in [*grafana_expressions(), *(r["expr"] for r in rules)]:
        bare = STRING_LITERAL.sub('""', expression)
        for opening, closing in ("()", "{}", "[]"):
            assert bare.count(opening) == bare.count(closing), expression


def test_the_files_cover_what_the_issue_asks_for() -> None:
    names = referenced()
    for wanted in (
        "surge_requests_total", "surge_stage_latency_seconds_bucket",
        "surge_queue_depth_requests", "surge_inflight_requests", "surge_batch_size_rows_sum",
        "surge_mode", "surge_version_traffic_percent", "surge_cost_total",
        "surge_energy_joules_total", "surge_cost_budget_per_hour", "surge_drift_psi",
        "surge_model_drifting",
    ):  # fmt: skip
        assert wanted in names, wanted


# -- against a real server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with everything on that exports a metric: a cost budget, a cascade route,
    drift windows small enough to fill, receipts flushed quickly."""
    priced = {
        "batching": {"max_batch_size": 32, "max_queue_delay_ms": 1},
        "cost": {"per_compute_second": 0.001, "budget_per_hour": 1.0},
    }
    config = {
        "model_repository": str(demo_models),
        "endpoints": {"digits": priced, "digits_small": priced, "digits_big": priced},
        "routes": {
            "digits_smart": {"cascade": {"tiers": [
                {"target": "digits_small", "threshold": 0.95},
                {"target": "digits_big", "threshold": 0.9},
            ]}},
        },
        "observability": {
            "receipts": {"flush_interval_s": 0.05},
            "drift": {"reference_rows": 50, "window_rows": 50},
        },
    }  # fmt: skip
    with run_server(config, tmp_path_factory.mktemp("deploy-metrics")) as running:
        yield running


def send_traffic(url: str) -> int:
    """Answers for every kind of metric: plain and cascaded requests, and one refusal
    (a deadline no batch can meet) so the refusal counter has a sample."""
    rows, _ = digits_rows(64)
    sent = 0
    with httpx.Client(timeout=10) as client:
        for i in range(200):
            name = "digits_smart" if i % 4 == 0 else "digits"
            body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                "data": rows[i % 64].tolist()}]}  # fmt: skip
            assert client.post(f"{url}/v2/models/{name}/infer", json=body).status_code == 200
            sent += 1
        refused = client.post(
            f"{url}/v2/models/digits/infer",
            json=body,
            headers={"X-Request-Timeout-Ms": "0.001"},
        )
        assert refused.status_code in (429, 503, 504), refused.text
    return sent + 1


def scrape(url: str) -> tuple[dict[str, tuple[str, int]], dict[str, float]]:
    """(family name -> (type, number of samples), sample name -> value of its last sample)."""
    families, values = {}, {}
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        families[family.name] = (family.type, len(family.samples))
        values.update({sample.name: sample.value for sample in family.samples})
    return families, values


def exported_names(families: dict[str, tuple[str, int]], with_samples: bool) -> set[str]:
    return {
        name + suffix
        for name, (kind, samples) in families.items()
        if samples or not with_samples
        for suffix in SAMPLE_SUFFIXES.get(kind, ("",))
    }


def test_every_referenced_metric_is_exported(server: Server) -> None:
    answered = send_traffic(server.url)
    deadline = time.monotonic() + 15
    while True:  # cost and receipt counters follow the receipt writer's flushes
        families, values = scrape(server.url)
        if values.get("surge_receipts_written_total", 0) >= answered:
            break
        if time.monotonic() > deadline:
            break  # the assertions below say what is missing
        time.sleep(0.2)
    names = referenced()
    declared = exported_names(families, with_samples=False)
    missing = {n: sorted(where) for n, where in names.items() if n not in declared}
    assert not missing, f"referenced in deploy/ but not exported by /metrics: {missing}"
    # Declared is not enough for a panel to draw: each must have a value under this load.
    sampled = exported_names(families, with_samples=True)
    empty = {n: sorted(where) for n, where in names.items() if n not in sampled}
    assert not empty, f"exported without any sample under load: {empty}"
