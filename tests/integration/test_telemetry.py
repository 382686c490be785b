"""OpenTelemetry spans and metrics, through the real openai SDK against the fleet.

Each test builds its own SDK providers with in-memory exporters and registers a
:class:`Telemetry` on a MultiCloud made with ``telemetry=False``, so no test
touches the global providers. Values are judged against what the fleet's servers
received (usage, which region served) and against the response headers.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from typing import Any

import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet
from llm_multicloud.telemetry import DURATION_BUCKETS, TOKEN_BUCKETS, Telemetry, _bench_record

from .conftest import MODEL, SERVED, chat_records, make_mc
from .drive import PLACEHOLDER_KEY, chat

pytestmark = pytest.mark.integration
KINDS = ["sync", "async"]
EU = {"x-llm-multicloud-residency": "EU"}
WHERE = {
    "aws-euc1": ("aws", "eu-central-1"),
    "gcp-euw4": ("gcp", "europe-west4"),
    "aws-use1": ("aws", "us-east-1"),
    "azure-jpe": ("azure", "japaneast"),
}


class Otel:
    """SDK providers with in-memory exporters, and a Telemetry that uses them."""

    def __init__(self, *processors: SpanProcessor) -> None:
        self.spans = InMemorySpanExporter()
        self.tp = TracerProvider()
        self.tp.add_span_processor(SimpleSpanProcessor(self.spans))
        for p in processors:
            self.tp.add_span_processor(p)
        self.reader = InMemoryMetricReader()
        self.mp = MeterProvider(metric_readers=[self.reader])
        self.telemetry = Telemetry(tracer_provider=self.tp, meter_provider=self.mp)

    def attach(self, mc: lmc.MultiCloud) -> lmc.MultiCloud:
        assert mc.telemetry is None
        mc.request_hooks.append(self.telemetry.on_request)
        mc.health.listeners.append(self.telemetry.on_transition)
        self.telemetry.bind_catalog(mc.catalog)
        return mc

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def request_spans(self) -> list[ReadableSpan]:
        return [s for s in self.finished() if not s.name.startswith("attempt ")]

    def attempts_of(self, parent: ReadableSpan) -> list[ReadableSpan]:
        assert parent.context is not None
        out = [s for s in self.finished() if s.parent is not None and s.parent.span_id == parent.context.span_id]
        return sorted(out, key=lambda s: int(_attrs(s)["llm_multicloud.attempt"]))

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        out: list[Any] = []
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        out.extend(m.data.data_points)
        return out

    def unit(self, name: str) -> str | None:
        data = self.reader.get_metrics_data()
        assert data is not None
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        return m.unit
        return None

    def close(self) -> None:
        self.tp.shutdown()
        self.mp.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    yield o
    o.close()


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# -- request and attempt spans ---------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_request_span_names_served_endpoint_with_genai_attributes(
    clean: Fleet, otel: Otel, kind: str, stream: bool
) -> None:
    with otel.attach(make_mc(clean, telemetry=False)) as mc:
        ans = chat(mc, kind, stream=stream, extra_headers=EU)
    [received] = chat_records(clean)
    [span] = otel.request_spans()
    assert span.name == f"chat {MODEL}"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    a = _attrs(span)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == MODEL
    assert a["gen_ai.response.model"] == SERVED["aws-euc1"]  # the served name, not the logical one
    assert received.usage is not None
    assert a["gen_ai.usage.input_tokens"] == received.usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == received.usage["completion_tokens"]
    assert a["server.address"] == "127.0.0.1"
    assert a["server.port"] == clean.port("aws-euc1")
    assert (a["cloud.provider"], a["cloud.region"]) == WHERE["aws-euc1"]
    assert a["llm_multicloud.endpoint"] == ans.headers["x-llm-multicloud-endpoint"] == "aws-euc1"
    assert a["llm_multicloud.attempts"] == 1
    assert a["llm_multicloud.hedged"] is False
    assert a["llm_multicloud.outcome"] == "ok"
    assert a["llm_multicloud.residency"] == "EU"
    assert a["llm_multicloud.request_id"] == ans.headers["x-llm-multicloud-request-id"]
    assert a["llm_multicloud.stream"] is stream
    assert a["llm_multicloud.cost_usd"] > 0 and a["llm_multicloud.cost_estimated"] is False
    if not stream:
        assert a["llm_multicloud.cost_usd"] == pytest.approx(float(ans.headers["x-llm-multicloud-cost-usd"]))
    assert "error.type" not in a
    assert span.start_time is not None and span.end_time is not None and span.start_time < span.end_time

    [att] = otel.attempts_of(span)
    assert att.context is not None and span.context is not None
    assert att.context.trace_id == span.context.trace_id
    assert att.name == "attempt primary aws-euc1"
    assert att.kind is SpanKind.CLIENT
    b = _attrs(att)
    assert b["llm_multicloud.attempt.kind"] == "primary"
    assert b["llm_multicloud.attempt.outcome"] == "won"
    assert b["llm_multicloud.endpoint"] == "aws-euc1"
    assert (b["cloud.provider"], b["cloud.region"]) == WHERE["aws-euc1"]
    assert b["server.port"] == clean.port("aws-euc1")
    assert b["http.response.status_code"] == 200
    assert b["gen_ai.usage.output_tokens"] == received.usage["completion_tokens"]
    assert b["llm_multicloud.cost_usd"] == pytest.approx(a["llm_multicloud.cost_usd"])
    assert "error.type" not in b
    assert att.start_time is not None and att.end_time is not None
    assert span.start_time <= att.start_time <= att.end_time <= span.end_time


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_request_span_is_child_of_callers_span(clean: Fleet, otel: Otel, kind: str, stream: bool) -> None:
    """The record is emitted later (sync: in the portal thread), yet the span joins the
    caller's trace: the portal runs the engine in a copy of the caller's context."""
    caller = otel.tp.get_tracer("app")
    with otel.attach(make_mc(clean, telemetry=False)) as mc, caller.start_as_current_span("handler") as parent:
        chat(mc, kind, stream=stream)
    [span] = otel.request_spans()[:1]
    assert span.name == f"chat {MODEL}"
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context is not None and span.context.trace_id == parent.get_span_context().trace_id


def test_explicit_parent_context_on_the_record_wins(otel: Otel) -> None:
    """A record carrying ``otel_context`` (captured at request start) is parented there,
    whatever is current when the record arrives."""
    caller = otel.tp.get_tracer("app")
    with caller.start_as_current_span("at-start") as start_span:
        captured = trace.set_span_in_context(start_span)
    rec = dataclasses.replace(_bench_record(), otel_context=captured)
    with caller.start_as_current_span("unrelated"):
        otel.telemetry.on_request(rec)
    [span] = [s for s in otel.finished() if s.name == f"chat {MODEL}"]
    assert span.parent is not None and span.parent.span_id == start_span.get_span_context().span_id


def test_without_caller_span_request_span_is_a_root(clean: Fleet, otel: Otel) -> None:
    with otel.attach(make_mc(clean, telemetry=False)) as mc:
        chat(mc, "sync", stream=False)
    [span] = otel.request_spans()
    assert span.parent is None


def test_embeddings_span(clean: Fleet, otel: Otel) -> None:
    with otel.attach(make_mc(clean, telemetry=False)) as mc:
        mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY)).embeddings.create(model="embed-small", input=["a", "b"])
    [span] = otel.request_spans()
    assert span.name == "embeddings embed-small"
    a = _attrs(span)
    assert a["gen_ai.operation.name"] == "embeddings"
    assert a["gen_ai.response.model"] == "aws-euc1-embed"
    assert otel.points("gen_ai.client.operation.time_to_first_chunk") == []  # not a stream


# -- failover, hedging, errors ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_failover_gives_failed_and_won_attempts_and_counts_it(clean: Fleet, otel: Otel, kind: str) -> None:
    clean.set_fault("aws-euc1", mode="status", status=503)
    with otel.attach(make_mc(clean, telemetry=False)) as mc:
        ans = chat(mc, kind, stream=False)
    assert ans.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
    [span] = otel.request_spans()
    a = _attrs(span)
    assert a["llm_multicloud.endpoint"] == "gcp-euw4"  # the final attributes name who served
    assert (a["cloud.provider"], a["cloud.region"]) == WHERE["gcp-euw4"]
    assert a["gen_ai.response.model"] == SERVED["gcp-euw4"]
    assert a["server.port"] == clean.port("gcp-euw4")
    assert a["llm_multicloud.attempts"] == 2
    assert span.status.status_code is StatusCode.UNSET and "error.type" not in a
    failed, won = otel.attempts_of(span)
    assert failed.name == "attempt primary aws-euc1"
    assert _attrs(failed)["llm_multicloud.attempt.outcome"] == "failed"
    assert _attrs(failed)["error.type"] == "503"
    assert _attrs(failed)["http.response.status_code"] == 503
    assert failed.status.status_code is StatusCode.ERROR
    assert won.name == "attempt retry gcp-euw4"
    assert _attrs(won)["llm_multicloud.attempt.outcome"] == "won"
    assert won.status.status_code is StatusCode.UNSET
    [p] = otel.points("llm_multicloud.failovers")
    assert p.value == 1
    assert p.attributes["cloud.provider"] == "gcp" and p.attributes["cloud.region"] == "europe-west4"
    assert p.attributes["llm_multicloud.endpoint"] == "gcp-euw4"
    assert p.attributes["gen_ai.request.model"] == MODEL
    assert otel.points("llm_multicloud.hedges") == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_hedge_gives_cancelled_attempt_and_hedge_counter(clean: Fleet, otel: Otel, stream: bool) -> None:
    clean.set_latency("aws-euc1", ttft_ms=500, ttft_jitter=0)
    policy = {"hedge": {"enabled": True, "delay_ms": 20, "budget": 1.0}}
    with otel.attach(make_mc(clean, policy, telemetry=False)) as mc:
        ans = chat(mc, "sync", stream=stream)
    assert ans.headers["x-llm-multicloud-hedged"] == "true"
    [span] = otel.request_spans()
    a = _attrs(span)
    assert a["llm_multicloud.hedged"] is True
    assert a["llm_multicloud.endpoint"] == "gcp-euw4"
    primary, hedge = otel.attempts_of(span)
    assert primary.name == "attempt primary aws-euc1"
    assert _attrs(primary)["llm_multicloud.attempt.outcome"] == "cancelled"
    assert primary.status.status_code is StatusCode.UNSET  # losing a race is not an error
    assert "error.type" not in _attrs(primary)
    assert hedge.name == "attempt hedge gcp-euw4"
    assert _attrs(hedge)["llm_multicloud.attempt.outcome"] == "won"
    [p] = otel.points("llm_multicloud.hedges")
    assert p.value == 1
    assert (p.attributes["cloud.provider"], p.attributes["cloud.region"]) == WHERE["gcp-euw4"]
    assert p.attributes["llm_multicloud.attempt.outcome"] == "won"


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_compliant_is_an_error_span(clean: Fleet, otel: Otel, kind: str) -> None:
    for rid in ("aws-euc1", "gcp-euw4"):
        clean.set_fault(rid, mode="down")
    with otel.attach(make_mc(clean, telemetry=False)) as mc, pytest.raises(openai.InternalServerError) as ei:
        chat(mc, kind, stream=False, extra_headers=EU)
    assert ei.value.status_code == 503
    [span] = otel.request_spans()
    assert span.status.status_code is StatusCode.ERROR
    a = _attrs(span)
    assert a["error.type"] == "all_attempts_failed"
    assert a["llm_multicloud.outcome"] == "failed"
    assert a["llm_multicloud.residency"] == "EU"
    assert "llm_multicloud.endpoint" not in a and "cloud.region" not in a  # nobody served
    attempts = otel.attempts_of(span)
    assert {_attrs(s)["llm_multicloud.endpoint"] for s in attempts} == {"aws-euc1", "gcp-euw4"}
    assert all(_attrs(s)["error.type"] == "connect" for s in attempts)
    assert all(s.status.status_code is StatusCode.ERROR for s in attempts)
    [d] = otel.points("gen_ai.client.operation.duration")
    assert d.attributes["error.type"] == "all_attempts_failed"
    assert otel.points("gen_ai.client.token.usage") == []


def test_no_candidate_at_all_is_an_error_span_without_attempts(clean: Fleet, otel: Otel) -> None:
    with otel.attach(make_mc(clean, telemetry=False)) as mc, pytest.raises(openai.InternalServerError):
        chat(mc, "sync", stream=False, extra_headers={"x-llm-multicloud-residency": "UK"})
    assert not any(clean.counts().values())
    [span] = otel.request_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert _attrs(span)["error.type"] == "no_endpoint_available"
    assert otel.attempts_of(span) == []


# -- metrics ---------------------------------------------------------------------------------


def test_histograms_and_cost_carry_cloud_attributes(clean: Fleet, otel: Otel) -> None:
    with otel.attach(make_mc(clean, telemetry=False)) as mc:
        chat(mc, "sync", stream=False)
        chat(mc, "async", stream=True)
        cost = mc.snapshot()["cost_usd"]
    usage = [r.usage for r in chat_records(clean)]
    assert all(u is not None for u in usage)

    [dur] = otel.points("gen_ai.client.operation.duration")  # same attributes: one series
    assert dur.count == 2
    assert tuple(dur.explicit_bounds) == DURATION_BUCKETS
    assert otel.unit("gen_ai.client.operation.duration") == "s"
    attrs = dict(dur.attributes)
    assert (attrs["cloud.provider"], attrs["cloud.region"]) == WHERE["aws-euc1"]
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.response.model"] == SERVED["aws-euc1"]
    assert attrs["server.port"] == clean.port("aws-euc1")
    assert "error.type" not in attrs

    tokens = {p.attributes["gen_ai.token.type"]: p for p in otel.points("gen_ai.client.token.usage")}
    assert set(tokens) == {"input", "output"}
    assert otel.unit("gen_ai.client.token.usage") == "{token}"
    assert tokens["input"].sum == sum(u["prompt_tokens"] for u in usage if u)
    assert tokens["output"].sum == sum(u["completion_tokens"] for u in usage if u)
    assert tuple(tokens["output"].explicit_bounds) == TOKEN_BUCKETS
    assert tokens["output"].attributes["cloud.region"] == "eu-central-1"

    [ttfc] = otel.points("gen_ai.client.operation.time_to_first_chunk")
    assert ttfc.count == 1  # the stream only
    assert 0 < ttfc.sum < dur.sum
    assert ttfc.attributes["cloud.provider"] == "aws"

    [c] = otel.points("llm_multicloud.cost")
    assert otel.unit("llm_multicloud.cost") == "USD"
    assert c.value == pytest.approx(cost)
    assert (c.attributes["cloud.provider"], c.attributes["cloud.region"]) == WHERE["aws-euc1"]


def test_breaker_transition_increments_transitions_counter(clean: Fleet, otel: Otel) -> None:
    clean.set_fault("aws-euc1", mode="status", status=503)
    with otel.attach(make_mc(clean, {"breaker": {"consecutive_failures": 1}}, telemetry=False)) as mc:
        chat(mc, "sync", stream=False)
        assert {e["id"]: e for e in mc.snapshot()["endpoints"]}["aws-euc1"]["state"] == "open"
    [p] = [
        p for p in otel.points("llm_multicloud.breaker.transitions") if p.attributes["llm_multicloud.state"] == "open"
    ]
    assert p.value == 1
    assert p.attributes["llm_multicloud.endpoint"] == "aws-euc1"
    assert p.attributes["llm_multicloud.previous_state"] == "closed"
    assert (p.attributes["cloud.provider"], p.attributes["cloud.region"]) == WHERE["aws-euc1"]


def test_cooldown_transition_is_counted(clean: Fleet, otel: Otel) -> None:
    clean.set_fault("aws-euc1", mode="status", status=429, retry_after="30")
    with otel.attach(make_mc(clean, telemetry=False)) as mc:
        chat(mc, "sync", stream=False)
    states = {p.attributes["llm_multicloud.state"]: p.value for p in otel.points("llm_multicloud.breaker.transitions")}
    assert states.get("cooling") == 1
    [failed, _] = otel.attempts_of(otel.request_spans()[0])
    assert _attrs(failed)["error.type"] == "429"


# -- robustness and cost when nothing is configured --------------------------------------------


class _RaisingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise RuntimeError("exporter is broken")

    def shutdown(self) -> None:
        return None


class _RaisingProcessor(SpanProcessor):
    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("processor is broken")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_broken_exporter_or_processor_never_fails_a_request(clean: Fleet, kind: str, stream: bool) -> None:
    o = Otel(SimpleSpanProcessor(_RaisingExporter()), _RaisingProcessor())
    try:
        with o.attach(make_mc(clean, telemetry=False)) as mc:
            for _ in range(2):
                ans = chat(mc, kind, stream=stream)
                assert ans.headers["x-llm-multicloud-endpoint"] == "aws-euc1" and ans.text
        assert len(o.request_spans()) == 2  # the healthy exporter still got them...
        assert len(o.finished()) == 4  # ...and every attempt span, despite the raising processor
        [dur] = o.points("gen_ai.client.operation.duration")  # metrics still recorded
        assert dur.count == 2
    finally:
        o.close()


def test_broken_meter_never_fails_a_request(clean: Fleet, otel: Otel) -> None:
    class Broken:
        def record(self, *a: Any, **k: Any) -> None:
            raise RuntimeError("meter is broken")

        add = record

    with otel.attach(make_mc(clean, telemetry=False)) as mc:
        chat(mc, "sync", stream=False)  # resolves the instruments
        inst = otel.telemetry._inst
        assert inst is not None
        for name in inst.__slots__:
            setattr(inst, name, Broken())
        ans = chat(mc, "sync", stream=True)
    assert ans.text
    assert len(otel.request_spans()) == 2  # spans unaffected by the broken meter


def _require_unset_globals() -> None:
    from opentelemetry import metrics

    if (
        not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        or type(metrics.get_meter_provider()).__name__ != "_ProxyMeterProvider"
    ):
        pytest.skip("another test configured the global OpenTelemetry providers in this process")


def test_provider_that_cannot_hand_out_a_tracer_is_survived() -> None:
    class Broken(TracerProvider):
        def get_tracer(self, *a: Any, **k: Any) -> Any:
            raise RuntimeError("no tracer for you")

    t = Telemetry(tracer_provider=Broken())
    t.on_request(_bench_record())  # logged, not raised


def test_default_global_noop_providers_record_nothing() -> None:
    """Unit level: with no SDK configured (this test process never sets the global
    providers), the hooks work and nothing records (no tracer, no instruments)."""
    _require_unset_globals()
    t = Telemetry()
    assert not t.recording
    t.on_request(_bench_record(3))
    t.on_transition(lmc.Transition("aws-euc1", "closed", "open", "x", 0.0, 30.0))
    assert t._tracer is None and t._inst is None
    # explicit no-op providers behave the same
    t2 = Telemetry(tracer_provider=trace.NoOpTracerProvider(), meter_provider=_noop_meter_provider())
    t2.on_request(_bench_record())
    assert not t2.recording


def _noop_meter_provider() -> Any:
    from opentelemetry.metrics import NoOpMeterProvider

    return NoOpMeterProvider()


def test_default_multicloud_telemetry_is_inert_without_sdk(clean: Fleet) -> None:
    _require_unset_globals()
    with make_mc(clean) as mc:
        assert mc.telemetry is not None
        chat(mc, "sync", stream=True)
        assert not mc.telemetry.recording


def test_sdk_configured_after_creation_is_picked_up() -> None:
    """Late configuration of the *global* providers (in a subprocess: they can be set
    once per process)."""
    script = textwrap.dedent(
        """
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from llm_multicloud.telemetry import Telemetry, _bench_record

        t = Telemetry(tracer_provider=trace.get_tracer_provider())  # a proxy: keeps following the global
        t.on_request(_bench_record())
        assert not t.recording
        spans = InMemorySpanExporter()
        tp = TracerProvider()
        tp.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(tp)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        assert t.recording
        t.on_request(_bench_record())
        names = [s.name for s in spans.get_finished_spans()]
        assert names == ["attempt primary aws-euc1", "chat llama-3.1-8b"], names
        data = reader.get_metrics_data()
        got = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        assert "gen_ai.client.operation.duration" in got, got
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
