"""Export the fleet's state to Prometheus through the OpenTelemetry Prometheus exporter.

    python examples/prometheus_metrics.py

Prerequisites: the simulated fleet and the OTel SDK with its Prometheus exporter,
``pip install '.[fleet,prometheus]'`` (without the exporter it says so and exits 0).

What an application does once at start-up: a ``MeterProvider`` with a
``PrometheusMetricReader``, and prometheus_client's HTTP server for Prometheus to
scrape (here on a free port of 127.0.0.1). Every MultiCloud then exports its
counters and histograms *and* its live state as gauges, per endpoint:
``llm_multicloud_endpoint_breaker_state`` (0 closed, 1 half-open, 2 open),
``llm_multicloud_endpoint_draining``, ``llm_multicloud_endpoint_in_flight``,
``llm_multicloud_endpoint_ttft_estimate_seconds``,
``llm_multicloud_endpoint_cooldown_remaining_seconds``, and
``llm_multicloud_budget_balance{llm_multicloud_budget="retry"|"hedge"}``.

The script sends traffic over a simulated fleet, drains a region, takes another
down, scrapes its own ``/metrics`` and checks the gauges say so.
"""

from __future__ import annotations

import contextlib
import re
import sys
import urllib.request

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec

MODEL = "llama-3.1-8b"


def scrape(port: int) -> dict[str, float]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("llm_multicloud_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def gauge(samples: dict[str, float], metric: str, endpoint: str) -> float:
    for name, value in samples.items():
        if name.startswith(metric + "{") and f'llm_multicloud_endpoint="{endpoint}"' in name:
            return value
    raise AssertionError(f"{metric} for {endpoint} not exported")


def main() -> int:
    try:
        import prometheus_client
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
    except ImportError as exc:
        print(f"skipped: {exc.name} is not installed (pip install 'llm-multicloud[prometheus]')")
        return 0

    # -- once at start-up --------------------------------------------------------------
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    server, _thread = prometheus_client.start_http_server(0, addr="127.0.0.1")
    port = server.server_port
    print(f"Prometheus endpoint: http://127.0.0.1:{port}/metrics")

    with Fleet(demo_spec()) as fleet:
        policy = {"strategy": "ordered", "probe": {"enabled": False}, "hedge": {"enabled": False}}
        with lmc.MultiCloud(fleet.catalog(), policy) as mc:
            client = mc.wrap(openai.OpenAI(api_key="unused"))
            for _ in range(3):
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            first = mc.catalog.endpoints[0].id
            mc.drain(first, reason="maintenance")
            second = mc.catalog.endpoints[1].id
            fleet.set_fault(second, mode="status", status=503)
            for _ in range(6):
                with contextlib.suppress(openai.APIError):
                    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])

            samples = scrape(port)
            for name in sorted(samples):
                m = re.search(r'llm_multicloud_(?:endpoint|budget)="([^"]+)"', name)
                if name.startswith(("llm_multicloud_endpoint_", "llm_multicloud_budget_")) and m:
                    print(f"{name.split('{')[0]:<52} {m.group(1):<12} {samples[name]:g}")
            assert gauge(samples, "llm_multicloud_endpoint_draining", first) == 1
            assert gauge(samples, "llm_multicloud_endpoint_breaker_state", second) == 2
            assert gauge(samples, "llm_multicloud_endpoint_ttft_estimate_seconds", first) > 0
            assert gauge(samples, "llm_multicloud_endpoint_in_flight", first) == 0
            assert gauge(samples, "llm_multicloud_endpoint_cooldown_remaining_seconds", first) == 0
            assert any(n.startswith("llm_multicloud_budget_balance{") for n in samples)
    server.shutdown()
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
