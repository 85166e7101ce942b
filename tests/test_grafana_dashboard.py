"""deploy/grafana's dashboard asks only for what the gateway exports: every metric a query names
is in a live gateway's /metrics, and every label it groups or filters by is on that metric."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "nanochat-gateway.json"
METRIC_RE = re.compile(r"\bnanochat_[a-z0-9_]+\b")
GROUP_RE = re.compile(r"\bby \(([^)]*)\)")
SELECTOR_RE = re.compile(r"(nanochat_[a-z0-9_]+)\{([^}]*)\}")
SCRAPE_LABELS = {"instance", "job", "le"}  # added by Prometheus at scrape time, or the bucket bound
# The sample names each metric type exports (prometheus_client's families drop the suffixes).
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",)}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def queries(board: dict) -> list[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


async def exported(gateway) -> tuple[set[str], dict[str, set[str]]]:
    """(sample names /metrics can hold, label names seen on each) after some real traffic."""
    model = gateway.model_id
    async with aiohttp.ClientSession() as session:
        for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                           ("/v1/completions", {"prompt": ["a", "b"]})):
            async with session.post(gateway.base_url + path.removeprefix("/v1"),
                                    json={"model": model, "max_tokens": 3, **body}) as resp:
                assert resp.status == 200
        async with session.get(f"{gateway.url}/metrics") as resp:
            text = await resp.text()
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


def test_the_dashboard_is_well_formed():
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] == "nanochat-gateway"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "model_name"}
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
    # docker-compose.yml mounts the provisioning files and this dashboard into its Grafana.
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/nanochat-gateway.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]


async def test_every_query_names_metrics_and_labels_the_gateway_exports(start_gateway):
    # The plugins deploy/gateway.toml runs (request_log, metrics, api_keys, rate_limit, ...).
    gateway = await start_gateway(**{"plugins.enabled": ["request_log", "metrics", "api_keys", "rate_limit",
                                                         "stop_sequences"]})
    names, labels = await exported(gateway)
    used: set[str] = set()
    for expr in queries(dashboard()):
        metrics = set(METRIC_RE.findall(expr))
        assert metrics, expr
        missing = metrics - names
        assert not missing, f"{expr}: {sorted(missing)} are not exported"
        used |= metrics
        grouped = {label.strip() for group in GROUP_RE.findall(expr) for label in group.split(",") if label.strip()}
        for metric in metrics:
            if metric in labels:  # metrics without samples yet (no auth failures...) have no labels to check
                assert grouped <= labels[metric] | SCRAPE_LABELS, f"{expr}: {metric} has no {grouped - labels[metric]}"
        for metric, selector in SELECTOR_RE.findall(expr):
            keys = {part.split("=")[0].strip(" !~") for part in selector.split(",") if part.strip()}
            if metric in labels:
                assert keys <= labels[metric] | SCRAPE_LABELS, f"{expr}: {metric} has no {keys - labels[metric]}"
    # The latency and per-request histograms this release added are all on the dashboard.
    for family in ("request_queue_time_seconds", "request_prefill_time_seconds", "request_decode_time_seconds",
                   "time_per_output_token_seconds", "request_prompt_tokens", "request_generation_tokens",
                   "request_params_max_tokens"):
        assert f"nanochat_{family}_bucket" in used, family
