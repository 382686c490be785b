"""OpenTelemetry from llm_multicloud: spans and metrics for three requests over the demo fleet.

    python examples/telemetry_console.py            # a short summary of spans and metrics
    python examples/telemetry_console.py --console  # also the SDK's console exporters (JSON)

What it shows:

* telemetry needs no llm_multicloud setting: configure an OpenTelemetry SDK (here
  *after* the MultiCloud was created, which works too) and every logical request
  becomes a ``chat <model>`` CLIENT span with one child span per attempt, plus the
  GenAI client metrics and llm_multicloud's counters (hedges, failovers, cost,
  breaker transitions);
* request 1 is a plain call, request 2 a stream pinned to the EU, request 3 an EU
  call whose first choice answers 503: its span shows the failed attempt, the retry
  that won, and names the endpoint that actually served.

Prerequisites: the ``fleet`` extra and ``opentelemetry-sdk`` — ``pip install '.[telemetry]'``
(both are in the ``dev`` extra too). Without the SDK it says so in one line and exits 3.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry import metrics, trace

try:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        HistogramDataPoint,
        InMemoryMetricReader,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.metrics.export import MetricReader as _MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError:
    print("examples/telemetry_console.py needs opentelemetry-sdk: pip install '.[telemetry]'", file=sys.stderr)
    raise SystemExit(3) from None  # 3: a prerequisite is missing

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec

MODEL = "llama-3.1-8b"
POLICY = {"strategy": "ordered", "probe": {"enabled": False}, "hedge": {"enabled": False}}


def configure_otel(console: bool) -> tuple[TracerProvider, MeterProvider, InMemorySpanExporter, InMemoryMetricReader]:
    """What an application does once at start-up (normally with OTLP exporters)."""
    resource = Resource.create({"service.name": "telemetry-console-example"})
    spans = InMemorySpanExporter()
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    readers: list[_MetricReader] = [reader]
    if console:
        tp.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000))
    mp = MeterProvider(resource=resource, metric_readers=readers)
    trace.set_tracer_provider(tp)
    metrics.set_meter_provider(mp)
    return tp, mp, spans, reader


def run_requests(fleet: Fleet, mc: lmc.MultiCloud) -> None:
    client = mc.wrap(openai.OpenAI(api_key="unused-placeholder"))
    app = trace.get_tracer("example-app")
    msg: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello from the cloud."}]
    with app.start_as_current_span("handle-user-request"):  # the request spans become its children
        client.chat.completions.create(model=MODEL, messages=msg, max_tokens=12)
        with lmc.routing(residency="EU"):
            stream = client.chat.completions.create(model=MODEL, messages=msg, max_tokens=12, stream=True)
            for _ in stream:
                pass
            fleet.set_fault("aws-euc1", mode="status", status=503)  # the first EU choice fails now
            client.chat.completions.create(model=MODEL, messages=msg, max_tokens=12)
            fleet.set_fault("aws-euc1")


def _ms(span: ReadableSpan) -> float:
    return ((span.end_time or 0) - (span.start_time or 0)) / 1e6


def print_spans(spans: list[ReadableSpan]) -> None:
    print("spans:")
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    for s in spans:
        by_parent.setdefault(s.parent.span_id if s.parent else None, []).append(s)

    def show(s: ReadableSpan, depth: int) -> None:
        a: dict[str, Any] = dict(s.attributes or {})
        bits = []
        if "llm_multicloud.endpoint" in a:
            bits.append(f"endpoint={a['llm_multicloud.endpoint']} ({a.get('cloud.provider')} {a.get('cloud.region')})")
        if "llm_multicloud.attempt.outcome" in a:
            bits.append(f"outcome={a['llm_multicloud.attempt.outcome']}")
        elif "llm_multicloud.outcome" in a:
            bits.append(f"outcome={a['llm_multicloud.outcome']} attempts={a['llm_multicloud.attempts']}")
        if "error.type" in a:
            bits.append(f"error.type={a['error.type']}")
        if "gen_ai.usage.output_tokens" in a and depth == 1:
            bits.append(f"tokens={a.get('gen_ai.usage.input_tokens')}+{a['gen_ai.usage.output_tokens']}")
            bits.append(f"cost=${a.get('llm_multicloud.cost_usd', 0):.8f}")
        print(f"  {'  ' * depth}{s.name} [{s.kind.name}] {_ms(s):.1f} ms  {' '.join(bits)}")
        assert s.context is not None
        for c in sorted(by_parent.get(s.context.span_id, []), key=lambda c: c.start_time or 0):
            show(c, depth + 1)

    for root in by_parent.get(None, []):
        show(root, 0)


def print_metrics(reader: InMemoryMetricReader) -> None:
    print("metrics:")
    data = reader.get_metrics_data()
    if data is None:
        return
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            if sm.scope.name != "llm_multicloud":
                continue
            for m in sm.metrics:
                print(f"  {m.name} ({m.unit})")
                for p in m.data.data_points:
                    a = dict(p.attributes or {})
                    where = f"{a.get('cloud.provider', '-')}/{a.get('cloud.region', '-')}"
                    extra = "".join(
                        f" {k.split('.')[-1]}={a[k]}"
                        for k in ("gen_ai.token.type", "error.type", "llm_multicloud.state")
                        if k in a
                    )
                    if isinstance(p, HistogramDataPoint):
                        value = f"count={p.count} sum={p.sum:.4g}"
                    else:
                        value = f"value={getattr(p, 'value', 0):.6g}"
                    print(f"    {where:<22}{extra:<18} {value}")


def main(argv: list[str]) -> int:
    console = "--console" in argv
    t0 = time.monotonic()
    # The MultiCloud exists before the SDK is configured: telemetry picks it up anyway.
    with Fleet(demo_spec()) as fleet, lmc.MultiCloud(fleet.catalog(), POLICY) as mc:
        tp, mp, spans, reader = configure_otel(console)
        run_requests(fleet, mc)
        print_spans(list(spans.get_finished_spans()))
        print_metrics(reader)
    tp.shutdown()
    mp.shutdown()
    print(f"done in {time.monotonic() - t0:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
