"""Observable gauges of the fleet's state, read through an in-memory OTel reader and
through the OTel Prometheus exporter, with real traffic through the openai SDK."""

from __future__ import annotations

import contextlib
from typing import Any

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import llm_multicloud as lmc
from llm_multicloud import telemetry as tm
from llm_multicloud.fleet import Fleet, Latency
from llm_multicloud.telemetry import Telemetry

from .conftest import MODEL, make_mc

pytestmark = pytest.mark.integration


def _gauges(reader: InMemoryMetricReader) -> dict[str, dict[str, float]]:
    """gauge name -> {endpoint id or budget kind: value}"""
    data = reader.get_metrics_data()
    out: dict[str, dict[str, float]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name not in tm.GAUGES:
                    continue
                for p in m.data.data_points:
                    a = dict(p.attributes or {})
                    key = str(a.get("llm_multicloud.endpoint", a.get("llm_multicloud.budget")))
                    out.setdefault(m.name, {})[key] = p.value
                    if "llm_multicloud.endpoint" in a:
                        assert a["cloud.provider"] in ("aws", "gcp", "azure") and a["cloud.region"]
    return out


def _attach(mc: lmc.MultiCloud, mp: MeterProvider) -> Telemetry:
    tel = Telemetry(meter_provider=mp)
    mc.request_hooks.append(tel.on_request)
    mc.health.listeners.append(tel.on_transition)
    tel.bind_fleet(mc)
    return tel


def test_gauges_follow_the_fleet(clean: Fleet) -> None:
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    clean.set_latency("aws-euc1", Latency(ttft_ms=2, ttft_jitter=0.0, itl_ms=30.0))
    with make_mc(clean, telemetry=False) as mc:
        tel = _attach(mc, mp)
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder"))
        g = _gauges(reader)
        assert set(g) == set(tm.GAUGES) - {tm.TTFT_ESTIMATE}  # no TTFT sample yet
        assert g[tm.BREAKER_STATE] == {"aws-euc1": 0, "gcp-euw4": 0, "aws-use1": 0, "azure-jpe": 0}
        assert set(g[tm.BUDGET_BALANCE]) == {"retry", "hedge"}

        # in flight while a stream is open; a TTFT estimate once it answered
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True)
        next(iter(stream))
        assert _gauges(reader)[tm.IN_FLIGHT]["aws-euc1"] == 1
        for _ in stream:
            pass
        g = _gauges(reader)
        assert g[tm.IN_FLIGHT]["aws-euc1"] == 0
        assert 0 < g[tm.TTFT_ESTIMATE]["aws-euc1"] < 5.0

        # drained; open breaker; cooling quota
        mc.drain("aws-euc1", reason="maintenance")
        clean.set_fault("gcp-euw4", mode="status", status=503)
        clean.set_fault("aws-use1", mode="status", status=429, retry_after="30")
        for _ in range(5):
            mc.explain(MODEL)  # (sends nothing)
            with contextlib.suppress(openai.APIStatusError):
                client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "x"}],
                    extra_headers={"x-llm-multicloud-residency": "EU"},
                )
        client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        g = _gauges(reader)
        assert g[tm.DRAINING] == {"aws-euc1": 1, "gcp-euw4": 0, "aws-use1": 0, "azure-jpe": 0}
        assert g[tm.BREAKER_STATE]["gcp-euw4"] == 2
        assert 25.0 < g[tm.COOLDOWN_REMAINING]["aws-use1"] <= 30.0
        assert g[tm.COOLDOWN_REMAINING]["azure-jpe"] == 0
        # a catalog update: the gauges follow the new endpoints
        cat = clean.catalog()
        cat["endpoints"] = [e for e in cat["endpoints"] if e["id"] != "azure-jpe"]
        mc.update_catalog(cat)
        assert "azure-jpe" not in _gauges(reader)[tm.IN_FLIGHT]
        assert tel is not None
    # a closed MultiCloud reports nothing
    assert _gauges(reader).get(tm.IN_FLIGHT, {}) == {}


def test_prometheus_exporter_names(clean: Fleet) -> None:
    """The recipe of docs/telemetry.md: the OTel Prometheus exporter, scraped."""
    prom = pytest.importorskip("opentelemetry.exporter.prometheus")
    import prometheus_client

    reader = prom.PrometheusMetricReader()  # registers with prometheus_client's REGISTRY
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    try:
        with make_mc(clean, telemetry=False) as mc:
            _attach(mc, mp)
            client = mc.wrap(openai.OpenAI(api_key="sk-placeholder"))
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
            mc.drain("gcp-euw4", reason="x")
            text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    finally:
        mp.shutdown()  # unregisters the exporter's collector
    lines: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("llm_multicloud_"):
            name, _, value = line.rpartition(" ")
            lines[name] = float(value)

    def value(metric: str, endpoint: str) -> float:
        (v,) = [
            v for k, v in lines.items() if k.startswith(metric + "{") and f'llm_multicloud_endpoint="{endpoint}"' in k
        ]
        return float(v)

    # the names docs/telemetry.md lists
    assert value("llm_multicloud_endpoint_draining", "gcp-euw4") == 1.0
    assert value("llm_multicloud_endpoint_breaker_state", "aws-euc1") == 0.0
    assert value("llm_multicloud_endpoint_in_flight", "aws-euc1") == 0.0
    assert value("llm_multicloud_endpoint_ttft_estimate_seconds", "aws-euc1") > 0
    assert value("llm_multicloud_endpoint_cooldown_remaining_seconds", "aws-euc1") == 0.0
    assert any(k.startswith('llm_multicloud_budget_balance{llm_multicloud_budget="hedge"') for k in lines)
    assert any(k.startswith('llm_multicloud_budget_balance{llm_multicloud_budget="retry"') for k in lines)
