r"""OpenTelemetry spans and metrics for every logical request (OpenTelemetry **API** only).

:class:`MultiCloud` registers :meth:`Telemetry.on_request` as a request hook (one
:class:`~llm_multicloud.executor.RequestRecord` per logical request, once it is
complete: for a stream at its end or break) and :meth:`Telemetry.on_transition`
as a health listener. From them this module emits:

* one ``CLIENT`` span per request, ``"{gen_ai.operation.name} {gen_ai.request.model}"``,
  with the GenAI semantic-convention attributes plus ``cloud.*`` and
  ``llm_multicloud.*`` ones; its final attributes name the endpoint that served;
* one ``CLIENT`` child span per attempt, ``"attempt {kind} {endpoint}"`` (primary,
  hedge, retry), with its outcome (won, failed, cancelled, ...);
* the GenAI client histograms ``gen_ai.client.operation.duration``,
  ``gen_ai.client.token.usage`` and ``gen_ai.client.operation.time_to_first_chunk``
  (streams only), with the semconv bucket boundaries as advisory, and the counters
  ``llm_multicloud.hedges``, ``llm_multicloud.failovers``, ``llm_multicloud.cost``
  and ``llm_multicloud.breaker.transitions``.

Spans are *retroactive*: created when the record arrives, with explicit start and
end times taken from the record's unix nanos. See ``docs/telemetry.md``.

Decisions
---------
* ``gen_ai.provider.name`` is always ``"openai"``. The semconv defines it as the
  discriminator of the *telemetry flavour / API* in use, "set based on the
  instrumentation's best knowledge", and notes that many hosts are reached through
  the OpenAI REST API. Every endpoint here is called through the OpenAI-compatible
  API, so values such as ``aws.bedrock`` (Bedrock's own API, with ``aws.bedrock.*``
  attributes) would be wrong; the cloud that served goes into ``cloud.provider`` /
  ``cloud.region`` instead, mapped to the semconv well-known values (``oci`` ->
  ``oracle_cloud``; other names pass through).
* Attempt spans are ``CLIENT`` too: each is one real remote call to one endpoint
  (like one try of an HTTP client under a logical operation span), and carries
  ``server.address``/``server.port``/``http.response.status_code``, so dependency
  views show every endpoint contacted, failed and cancelled ones included.
* Parenting: the request span's parent is ``rec.otel_context`` when the record
  carries one (a :class:`opentelemetry.context.Context` captured when the request
  started); otherwise the context current when the record is emitted. That is the
  caller's context in practice: async requests complete in the caller's task, and
  the sync client's blocking portal runs the engine in a copy of the caller's
  contextvars (stream ends happen inside the caller's ``next()``).

Cost when no SDK is configured
------------------------------
Each call resolves the tracer and the meter from the given providers or the global
ones (so an SDK configured after the MultiCloud was created is picked up), compares
them by identity with the last ones seen, and returns at once when neither records
(global proxy / no-op providers): no span, no attribute dict, no instrument call.
While no global provider is set, the API's public getters read ``os.environ`` on
every call (~2 us each here), so the fast path reads the API's own "provider set"
variable (what its proxies read) and falls back to the getters on API versions
without it or when ``OTEL_PYTHON_{TRACER,METER}_PROVIDER`` is set. Measured on the
development machine (CPython 3.11, opentelemetry-api 1.45, no SDK configured)::

    /tmp/v3/bin/python -m timeit -s "from llm_multicloud.telemetry import _bench_record, Telemetry; \
        t = Telemetry(); r = _bench_record()" "t.on_request(r)"
    500000 loops, best of 5: 416 nsec per loop

(0.4-0.6 us over several runs on an idle machine, ~1 us while it was loaded.)

``on_transition`` costs ~0.3 us. (With an SDK configured the cost is the SDK's: two
spans and five measurements, ~0.1-0.5 ms on the same machine.) A broken exporter,
processor or SDK never breaks a request: spans, each attempt span and metrics are
emitted in separate guarded blocks, and failures are logged (the first one as a
warning with its traceback, later ones at DEBUG).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._version import __version__ as _VERSION
from .executor import AttemptRecord, RequestRecord
from .health import Breaker, Transition
from .vocabulary import (
    FAILED_ATTEMPT_OUTCOMES,
    OK_REQUEST_OUTCOMES,
    AttemptKind,
    AttemptOutcome,
    BreakerState,
    RequestOutcome,
)

__all__ = [
    "BREAKER_STATE",
    "BUDGET_BALANCE",
    "COOLDOWN_REMAINING",
    "COST",
    "DRAINING",
    "DURATION_BUCKETS",
    "FAILOVERS",
    "GAUGES",
    "HEDGES",
    "IN_FLIGHT",
    "OPERATION_DURATION",
    "PROVIDER_NAME",
    "TIME_TO_FIRST_CHUNK",
    "TOKEN_BUCKETS",
    "TOKEN_USAGE",
    "TRANSITIONS",
    "TTFT_ESTIMATE",
    "Telemetry",
    "cloud_provider",
]

log = logging.getLogger("llm_multicloud.telemetry")

SCOPE = "llm_multicloud"

#: ``gen_ai.provider.name``: every endpoint is reached through the OpenAI-compatible API.
PROVIDER_NAME = "openai"

OPERATION_DURATION = "gen_ai.client.operation.duration"
TOKEN_USAGE = "gen_ai.client.token.usage"
TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
HEDGES = "llm_multicloud.hedges"
FAILOVERS = "llm_multicloud.failovers"
TRANSITIONS = "llm_multicloud.breaker.transitions"
COST = "llm_multicloud.cost"
CAPACITY_TOKENS = "llm_multicloud.capacity.remaining_tokens"
CAPACITY_REQUESTS = "llm_multicloud.capacity.remaining_requests"

# Observable gauges: the fleet's state now, read at each collection (scrape).
#: 0 closed, 1 half-open (trial requests admitted), 2 open (ejected)
BREAKER_STATE = "llm_multicloud.endpoint.breaker_state"
#: 1 while an operator drained the endpoint (``MultiCloud.drain``), else 0
DRAINING = "llm_multicloud.endpoint.draining"
IN_FLIGHT = "llm_multicloud.endpoint.in_flight"
#: the router's peak-EWMA time-to-first-token estimate (absent before any sample)
TTFT_ESTIMATE = "llm_multicloud.endpoint.ttft_estimate"
#: seconds left of the endpoint's quota-domain cooldown (429/401/403), 0 when none
COOLDOWN_REMAINING = "llm_multicloud.endpoint.cooldown_remaining"
#: extra requests the retry / hedge budget allows now (``llm_multicloud.budget``: retry | hedge)
BUDGET_BALANCE = "llm_multicloud.budget.balance"
GAUGES: tuple[str, ...] = (BREAKER_STATE, DRAINING, IN_FLIGHT, TTFT_ESTIMATE, COOLDOWN_REMAINING, BUDGET_BALANCE)
_BREAKER_CODES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

#: Semconv ExplicitBucketBoundaries for the GenAI client duration / TTFC histograms (s).
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
#: Semconv ExplicitBucketBoundaries for ``gen_ai.client.token.usage``.
TOKEN_BUCKETS: tuple[float, ...] = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip

_OPERATIONS = {"chat": "chat", "text_completion": "text_completion", "embeddings": "embeddings"}

#: Catalog provider names -> semconv ``cloud.provider`` well-known values.
_CLOUD_PROVIDERS = {
    "oci": "oracle_cloud",
    "oracle": "oracle_cloud",
    "ibm": "ibm_cloud",
    "alibaba": "alibaba_cloud",
    "alicloud": "alibaba_cloud",
    "tencent": "tencent_cloud",
    "scaleway": "scaleway_cloud",
    "akamai": "akamai_cloud",
    "linode": "akamai_cloud",
    "google": "gcp",
    "amazon": "aws",
    "microsoft": "azure",
}


try:  # the global proxy meter provider is private in the API; fall back to its name
    from opentelemetry.metrics import _internal as _metrics_internal
    from opentelemetry.metrics._internal import _ProxyMeterProvider as _ProxyMP

    _PROXY_METER_PROVIDERS: tuple[type, ...] = (_ProxyMP,)
except ImportError:  # pragma: no cover - other API versions
    _metrics_internal = None  # type: ignore[assignment]
    _PROXY_METER_PROVIDERS = ()

_NOOP_TRACER_PROVIDERS: tuple[type, ...] = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_UNKNOWN = object()
_TP_ENV = "OTEL_PYTHON_TRACER_PROVIDER"
_MP_ENV = "OTEL_PYTHON_METER_PROVIDER"


def cloud_provider(provider: str) -> str:
    """The semconv ``cloud.provider`` value for a catalog provider name."""
    p = provider.lower()
    return _CLOUD_PROVIDERS.get(p, p)


def operation_name(operation: str) -> str:
    """``gen_ai.operation.name`` for the record's operation (semconv values where they exist)."""
    return _OPERATIONS.get(operation, operation)


def _is_proxy_meter_provider(mp: object) -> bool:
    if _PROXY_METER_PROVIDERS:
        return isinstance(mp, _PROXY_METER_PROVIDERS)
    return type(mp).__name__ == "_ProxyMeterProvider"  # pragma: no cover


class _Instruments:
    __slots__ = ("capacity", "cost", "duration", "failovers", "hedges", "tokens", "transitions", "ttfc")

    def __init__(self, meter: metrics.Meter, capacity: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.duration = _histogram(meter, OPERATION_DURATION, "s", "GenAI operation duration.", DURATION_BUCKETS)
        self.tokens = _histogram(
            meter, TOKEN_USAGE, "{token}", "Number of input and output tokens used.", TOKEN_BUCKETS
        )
        self.ttfc = _histogram(
            meter,
            TIME_TO_FIRST_CHUNK,
            "s",
            "Time to receive the first chunk, measured from when the client issues the generation request "
            "to when the first chunk is received in the response stream.",
            DURATION_BUCKETS,
        )
        self.hedges = meter.create_counter(HEDGES, "{attempt}", "Hedged attempts started (by the hedge's endpoint).")
        self.failovers = meter.create_counter(
            FAILOVERS, "{attempt}", "Retry attempts after a failed attempt (by the retry's endpoint)."
        )
        self.transitions = meter.create_counter(
            TRANSITIONS, "{transition}", "Circuit-breaker and cooldown transitions (by new state)."
        )
        self.cost = meter.create_counter(COST, "USD", "Spend, from usage x pricing (by the attempt's endpoint).")
        self.capacity: list[Any] = []
        if capacity is not None:
            src = capacity

            def observe(field: str) -> Callable[[metrics.CallbackOptions], list[metrics.Observation]]:
                def cb(_: metrics.CallbackOptions) -> list[metrics.Observation]:
                    try:
                        rows = src()
                    except Exception:  # never break the SDK's collection
                        return []
                    return [
                        metrics.Observation(r[field], {"llm_multicloud.quota_domain": r["quota_domain"]})
                        for r in rows
                        if r.get(field) is not None
                    ]

                return cb

            self.capacity = [
                meter.create_observable_gauge(
                    CAPACITY_TOKENS,
                    [observe("remaining_tokens")],
                    "{token}",
                    "Tokens this replica may still send now under a quota domain's tpm limit.",
                ),
                meter.create_observable_gauge(
                    CAPACITY_REQUESTS,
                    [observe("remaining_requests")],
                    "{request}",
                    "Requests this replica may still send now under a quota domain's rpm limit.",
                ),
            ]


_GAUGE_LOCK = threading.Lock()
#: Meter providers that have the gauges (each gets them once; the key is the provider
#: object itself, kept alive here, so that its id cannot be reused).
_GAUGED: dict[int, object] = {}
#: Telemetry objects with a bound MultiCloud (weak: a dropped MultiCloud stops reporting).
_SOURCES: weakref.WeakSet[Telemetry] = weakref.WeakSet()

_GAUGE_SPECS: tuple[tuple[str, str, str], ...] = (
    (BREAKER_STATE, "{state}", "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open."),
    (DRAINING, "{endpoint}", "1 while an operator has drained the endpoint."),
    (IN_FLIGHT, "{request}", "Attempts in flight to the endpoint from this process."),
    (TTFT_ESTIMATE, "s", "The router's time-to-first-token estimate for the endpoint (peak-EWMA)."),
    (COOLDOWN_REMAINING, "s", "Seconds left of the endpoint's quota cooldown (429/401/403)."),
    (BUDGET_BALANCE, "{request}", "Extra requests (retries or hedges) the budget allows now."),
)


def _ensure_gauges(mp: object, meter: metrics.Meter) -> None:
    """Register the observable gauges with a meter provider, once: one set of instruments
    per provider reports every MultiCloud bound to it (an SDK keeps the first
    registration of a name, so per-MultiCloud instruments would be silently dropped)."""
    with _GAUGE_LOCK:
        if id(mp) in _GAUGED:
            return
        _GAUGED[id(mp)] = mp
    for name, unit, description in _GAUGE_SPECS:
        meter.create_observable_gauge(name, callbacks=[_gauge_callback(mp, name)], unit=unit, description=description)


def _gauge_callback(mp: object, name: str) -> Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]:
    def observe(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        out: list[metrics.Observation] = []
        with _GAUGE_LOCK:
            sources = list(_SOURCES)
        for tel in sources:
            if tel._mp_seen is not mp:
                continue
            try:
                out.extend(tel._observe(name))
            except Exception:  # a scrape must not fail because of one MultiCloud
                tel._failed(f"gauge {name}")
        return out

    return observe


def _histogram(meter: metrics.Meter, name: str, unit: str, description: str, buckets: Sequence[float]) -> Any:
    try:
        return meter.create_histogram(name, unit, description, explicit_bucket_boundaries_advisory=buckets)
    except TypeError:  # pragma: no cover - API without the advisory parameter
        return meter.create_histogram(name, unit, description)


class Telemetry:
    """Spans and metrics from request records and health transitions.

    ``tracer_provider`` / ``meter_provider`` default to the global ones, looked up
    on every call, so configuring the OpenTelemetry SDK after the MultiCloud was
    created still works. With nothing configured each call costs well under a
    microsecond and records nothing.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        # A proxy handed in explicitly (e.g. ``trace.get_tracer_provider()`` before any
        # SDK was set) means "the global one": keep following the global.
        self._tp_arg = None if isinstance(tracer_provider, trace.ProxyTracerProvider) else tracer_provider
        self._mp_arg = None if _is_proxy_meter_provider(meter_provider) else meter_provider
        self._tp_seen: object = None
        self._tracer: trace.Tracer | None = None
        self._mp_seen: object = None
        self._inst: _Instruments | None = None
        self._lock = threading.Lock()
        self._endpoints: dict[str, tuple[str, str]] = {}
        self._capacity: Callable[[], list[dict[str, Any]]] | None = None
        self._failures = 0
        self._tp_env = _TP_ENV in os.environ
        self._mp_env = _MP_ENV in os.environ
        self._fleet: weakref.ref[Any] | None = None

    # -- resolution -----------------------------------------------------------------
    # The public getters (trace.get_tracer_provider / metrics.get_meter_provider) test
    # ``os.environ`` on every call while no provider is set, which costs ~2 us each
    # (a KeyError raised and caught inside os.environ). The fast path reads the API's
    # "global provider set?" variable directly (the same one its proxies read) and
    # falls back to the public getter whenever that variable is missing (another API
    # version) or an environment variable asks the API to load a provider.
    def _global_tracer_provider(self) -> object:
        tp = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
        if tp is None and not self._tp_env:
            return None
        return trace.get_tracer_provider() if tp is None or tp is _UNKNOWN else tp

    def _global_meter_provider(self) -> object:
        mp = getattr(_metrics_internal, "_METER_PROVIDER", _UNKNOWN)
        if mp is None and not self._mp_env:
            return None
        return metrics.get_meter_provider() if mp is None or mp is _UNKNOWN else mp

    def _resolve_tracer(self) -> trace.Tracer | None:
        tp = self._tp_arg if self._tp_arg is not None else self._global_tracer_provider()
        if tp is self._tp_seen:
            return self._tracer
        with self._lock:
            if tp is not self._tp_seen:
                tracer = None
                if isinstance(tp, trace.TracerProvider) and not isinstance(tp, _NOOP_TRACER_PROVIDERS):
                    tracer = tp.get_tracer(SCOPE, _VERSION)
                    if isinstance(tracer, trace.NoOpTracer):
                        tracer = None
                self._tracer = tracer
                self._tp_seen = tp
            return self._tracer

    def _resolve_instruments(self) -> _Instruments | None:
        mp = self._mp_arg if self._mp_arg is not None else self._global_meter_provider()
        if mp is self._mp_seen:
            return self._inst
        with self._lock:
            if mp is not self._mp_seen:
                inst = None
                if (
                    isinstance(mp, metrics.MeterProvider)
                    and not isinstance(mp, metrics.NoOpMeterProvider)
                    and not _is_proxy_meter_provider(mp)
                ):
                    meter = mp.get_meter(SCOPE, _VERSION)
                    if not isinstance(meter, metrics.NoOpMeter):
                        inst = _Instruments(meter, self._capacity)
                        _ensure_gauges(mp, meter)
                self._inst = inst
                self._mp_seen = mp
            return self._inst

    @property
    def recording(self) -> bool:
        """Whether anything would be recorded now (an SDK tracer or meter provider is in use)."""
        return self._resolve_tracer() is not None or self._resolve_instruments() is not None

    def bind_catalog(self, catalog: Any) -> None:
        """Learn each endpoint's provider and region (for transitions, which carry only the
        endpoint id). Accepts a :class:`~llm_multicloud.catalog.Catalog` or any iterable of
        objects with ``id``, ``provider`` and ``region``. Endpoints seen in request records
        are learnt automatically."""
        eps: Iterable[Any] = getattr(catalog, "endpoints", catalog)
        for e in eps:
            self._endpoints[str(e.id)] = (cloud_provider(str(e.provider)), str(e.region))

    def bind_capacity(self, source: Callable[[], list[dict[str, Any]]]) -> None:
        """Where the capacity gauges read from: one dict per quota-domain bucket (as in
        ``snapshot()``), read when the SDK collects."""
        self._capacity = source

    def bind_fleet(self, mc: Any) -> None:
        """Export ``mc``'s state as observable gauges (breaker state, draining, in-flight,
        TTFT estimate, cooldown remaining per endpoint; retry and hedge budget levels).
        Registered with the meter provider now if one is configured, else as soon as
        one is seen (at the next request or transition). Holds ``mc`` weakly."""
        self._fleet = weakref.ref(mc)
        self.bind_catalog(mc.catalog)
        with _GAUGE_LOCK:
            _SOURCES.add(self)
        try:
            self._resolve_instruments()
        except Exception:
            self._failed("gauge registration")

    def _observe(self, name: str) -> list[metrics.Observation]:
        """The observations of one gauge for the bound MultiCloud (empty once it is gone
        or closed)."""
        mc = self._fleet() if self._fleet is not None else None
        if mc is None or getattr(mc, "_closed", False):
            return []
        if name == BUDGET_BALANCE:
            ex = mc.executor
            return [
                metrics.Observation(ex.retry_budget.balance(), {"llm_multicloud.budget": "retry"}),
                metrics.Observation(ex.hedge_budget.balance(), {"llm_multicloud.budget": "hedge"}),
            ]
        now = mc.clock()
        out = []
        for st in mc.health.states:
            ep = st.endpoint
            attrs = {
                "llm_multicloud.endpoint": ep.id,
                "cloud.provider": cloud_provider(ep.provider),
                "cloud.region": ep.region,
            }
            value: float
            if name == BREAKER_STATE:
                value = _BREAKER_CODES[Breaker.view(st, now)]
            elif name == DRAINING:
                value = 1 if st.drained is not None else 0
            elif name == IN_FLIGHT:
                value = st.inflight
            elif name == TTFT_ESTIMATE:
                if st.ttft_ms is None:
                    continue
                value = st.ttft_ms / 1000.0
            else:
                value = max(st.quota.until - now, 0.0)
            out.append(metrics.Observation(value, attrs))
        return out

    # -- hooks ----------------------------------------------------------------------
    def on_request(self, rec: RequestRecord) -> None:
        """Request hook: the request span, its attempt spans and the request metrics."""
        try:
            tracer = self._resolve_tracer()
            inst = self._resolve_instruments()
        except Exception:  # a provider that cannot hand out a tracer / meter
            self._failed("provider lookup")
            return
        if tracer is None and inst is None:
            return
        if tracer is not None:
            try:
                self._spans(tracer, rec)
            except Exception:
                self._failed("spans")
        if inst is not None:
            try:
                self._metrics(inst, rec)
            except Exception:
                self._failed("metrics")

    def on_transition(self, t: Transition) -> None:
        """Health listener: counts breaker / cooldown transitions by new state."""
        try:
            inst = self._resolve_instruments()
            if inst is None:
                return
            attrs: dict[str, Any] = {
                "llm_multicloud.endpoint": t.endpoint,
                "llm_multicloud.state": t.new,
                "llm_multicloud.previous_state": t.old,
            }
            where = self._endpoints.get(t.endpoint)
            if where is not None:
                attrs["cloud.provider"], attrs["cloud.region"] = where
            inst.transitions.add(1, attrs)
        except Exception:
            self._failed("transition metrics")

    def _failed(self, what: str) -> None:
        self._failures += 1
        if self._failures == 1:
            log.warning("telemetry: recording %s failed; the request is unaffected", what, exc_info=True)
        else:
            log.debug("telemetry: recording %s failed again (%d)", what, self._failures, exc_info=True)

    # -- spans ----------------------------------------------------------------------
    def _spans(self, tracer: trace.Tracer, rec: RequestRecord) -> None:
        op = operation_name(rec.operation)
        name = f"{op} {rec.model}" if rec.model else op
        parent = getattr(rec, "otel_context", None)
        if not isinstance(parent, otel_context.Context):
            parent = otel_context.get_current()
        failed = rec.outcome not in OK_REQUEST_OUTCOMES
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": PROVIDER_NAME,
            "gen_ai.request.model": rec.model,
            "llm_multicloud.attempts": len(rec.attempts),
            "llm_multicloud.hedged": rec.hedged,
            "llm_multicloud.outcome": rec.outcome,
            "llm_multicloud.cost_usd": rec.cost_usd,
            "llm_multicloud.cost_estimated": rec.cost_estimated,
            "llm_multicloud.residency": rec.residency,
            "llm_multicloud.request_id": rec.request_id,
            "llm_multicloud.stream": rec.stream,
        }
        if rec.endpoint is not None:
            attrs["llm_multicloud.endpoint"] = rec.endpoint
        if rec.provider is not None:
            attrs["cloud.provider"] = cloud_provider(rec.provider)
        if rec.region is not None:
            attrs["cloud.region"] = rec.region
        if rec.response_model is not None:
            attrs["gen_ai.response.model"] = rec.response_model
        _wire_attrs(attrs, rec.server_address, rec.server_port, rec.status, rec.input_tokens, rec.output_tokens)
        error_type = _request_error_type(rec) if failed else None
        if error_type is not None:
            attrs["error.type"] = error_type
        start = rec.start_unix_nano
        end = max(rec.end_unix_nano, start)
        span = tracer.start_span(name, context=parent, kind=SpanKind.CLIENT, attributes=attrs, start_time=start)
        try:
            if span.is_recording():
                child_ctx = trace.set_span_in_context(span, parent)
                for a in rec.attempts:
                    try:  # one failing span processor must not cost the other spans
                        self._attempt_span(tracer, child_ctx, a, op, start, end)
                    except Exception:
                        self._failed("an attempt span")
                if error_type is not None:
                    span.set_status(Status(StatusCode.ERROR, error_type))
        finally:
            span.end(end_time=end)

    def _attempt_span(
        self, tracer: trace.Tracer, ctx: otel_context.Context, a: AttemptRecord, op: str, r_start: int, r_end: int
    ) -> None:
        provider = cloud_provider(a.provider)
        self._endpoints[a.endpoint] = (provider, a.region)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": PROVIDER_NAME,
            "gen_ai.request.model": a.model,
            "llm_multicloud.attempt": a.attempt,
            "llm_multicloud.attempt.kind": a.kind,
            "llm_multicloud.attempt.outcome": a.outcome,
            "llm_multicloud.endpoint": a.endpoint,
            "llm_multicloud.cost_usd": a.cost_usd,
            "llm_multicloud.cost_estimated": a.cost_estimated,
            "cloud.provider": provider,
            "cloud.region": a.region,
        }
        _wire_attrs(attrs, a.server_address, a.server_port, a.status, a.input_tokens, a.output_tokens)
        if a.ttft_ms is not None:
            attrs["llm_multicloud.ttft_ms"] = a.ttft_ms
        error_type = _attempt_error_type(a) if a.outcome in FAILED_ATTEMPT_OUTCOMES else None
        if error_type is not None:
            attrs["error.type"] = error_type
        start = a.start_unix_nano or r_start
        end = max(a.end_unix_nano or r_end, start)
        span = tracer.start_span(
            f"attempt {a.kind} {a.endpoint}", context=ctx, kind=SpanKind.CLIENT, attributes=attrs, start_time=start
        )
        try:
            if error_type is not None:
                span.set_status(Status(StatusCode.ERROR, (a.reason or error_type)[:200]))
        finally:
            span.end(end_time=end)

    # -- metrics --------------------------------------------------------------------
    def _metrics(self, inst: _Instruments, rec: RequestRecord) -> None:
        op = operation_name(rec.operation)
        base: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": PROVIDER_NAME,
            "gen_ai.request.model": rec.model,
        }
        attrs = dict(base)
        if rec.response_model is not None:
            attrs["gen_ai.response.model"] = rec.response_model
        if rec.server_address:
            attrs["server.address"] = rec.server_address
            if rec.server_port:
                attrs["server.port"] = rec.server_port
        if rec.provider is not None:
            attrs["cloud.provider"] = cloud_provider(rec.provider)
        if rec.region is not None:
            attrs["cloud.region"] = rec.region
        if rec.endpoint is not None:
            attrs["llm_multicloud.endpoint"] = rec.endpoint
        ok = rec.outcome in OK_REQUEST_OUTCOMES
        duration = max(rec.end_unix_nano - rec.start_unix_nano, 0) / 1e9
        if ok:
            inst.duration.record(duration, attrs)
            if rec.input_tokens is not None:
                inst.tokens.record(rec.input_tokens, {**attrs, "gen_ai.token.type": "input"})
            if rec.output_tokens is not None:
                inst.tokens.record(rec.output_tokens, {**attrs, "gen_ai.token.type": "output"})
        else:
            inst.duration.record(duration, {**attrs, "error.type": _request_error_type(rec)})
        if rec.stream and rec.ttft_ms is not None:
            inst.ttfc.record(rec.ttft_ms / 1000.0, attrs)
        for a in rec.attempts:
            if a.kind != AttemptKind.PRIMARY or a.cost_usd > 0:
                provider = cloud_provider(a.provider)
                self._endpoints[a.endpoint] = (provider, a.region)
                aattrs = {
                    **base,
                    "cloud.provider": provider,
                    "cloud.region": a.region,
                    "llm_multicloud.endpoint": a.endpoint,
                }
                if a.kind == AttemptKind.HEDGE:
                    inst.hedges.add(1, {**aattrs, "llm_multicloud.attempt.outcome": a.outcome})
                elif a.kind == AttemptKind.RETRY:
                    inst.failovers.add(1, {**aattrs, "llm_multicloud.attempt.outcome": a.outcome})
                if a.cost_usd > 0:
                    inst.cost.add(a.cost_usd, {**aattrs, "llm_multicloud.cost_estimated": a.cost_estimated})


def _request_error_type(rec: RequestRecord) -> str:
    """Low-cardinality ``error.type`` of a failed request: the routing error code
    (``all_attempts_failed``, ``no_endpoint_available``, ``residency_violation_prevented``,
    ...), ``timeout``, ``cancelled``, ``stream_interrupted``, or the HTTP status of a
    request fault handed back unchanged (``"400"``)."""
    et = rec.error_type  # set by the engine where the request ended: never parsed here
    if et is None:
        return str(rec.status) if rec.status is not None and rec.status >= 400 else rec.outcome or "_OTHER"
    return et


def _attempt_error_type(a: AttemptRecord) -> str:
    """``error.type`` of a failed attempt, as the engine recorded it where the failure
    happened (``AttemptRecord.error_type``): its HTTP status (``"503"``, ``"429"``), or an
    :class:`~llm_multicloud.vocabulary.ErrorType` — ``timeout`` (no first token in time),
    the transport error kind (``connect``, ``read``, ``protocol``...), ``credential``,
    ``local``, ``redirect``, ``stream_interrupted``. Never parsed out of the reason text;
    ``_OTHER`` (the semantic conventions' fallback) when the engine gave none."""
    if a.error_type is not None:
        return a.error_type
    if a.status is not None and a.status >= 400:
        return str(a.status)
    return "_OTHER"


def _bench_record(attempts: int = 1) -> RequestRecord:
    """A representative record (for the micro-benchmark in the module docstring and tests)."""
    a = AttemptRecord(
        request_id="0123456789ab",
        attempt=1,
        kind=AttemptKind.PRIMARY,
        endpoint="aws-euc1",
        provider="aws",
        region="eu-central-1",
        residency="EU",
        model="llama-3.1-8b",
        outcome=AttemptOutcome.WON,
        status=200,
        reason=None,
        ttft_ms=21.0,
        duration_ms=80.0,
        cost_usd=1e-5,
        cost_estimated=False,
        server_address="127.0.0.1",
        server_port=8000,
        input_tokens=12,
        output_tokens=30,
        start_unix_nano=1_700_000_000_000_000_000,
        end_unix_nano=1_700_000_000_080_000_000,
    )
    return RequestRecord(
        request_id="0123456789ab",
        operation="chat",
        model="llama-3.1-8b",
        stream=True,
        outcome=RequestOutcome.OK,
        status=200,
        error_type=None,
        endpoint="aws-euc1",
        provider="aws",
        region="eu-central-1",
        response_model="meta-llama/Llama-3.1-8B-Instruct",
        server_address="127.0.0.1",
        server_port=8000,
        residency="EU",
        hedged=False,
        attempts=(a,) * attempts,
        start_unix_nano=a.start_unix_nano,
        end_unix_nano=a.end_unix_nano,
        ttft_ms=21.0,
        input_tokens=12,
        output_tokens=30,
        cost_usd=1e-5,
        cost_estimated=False,
    )


def _wire_attrs(
    attrs: dict[str, Any],
    address: str | None,
    port: int | None,
    status: int | None,
    input_tokens: int | None,
    output_tokens: int | None,
) -> None:
    """The server, status and token attributes a request span and an attempt span share."""
    if address:
        attrs["server.address"] = address
        if port:
            attrs["server.port"] = port
    if status is not None:
        attrs["http.response.status_code"] = status
    if input_tokens is not None:
        attrs["gen_ai.usage.input_tokens"] = input_tokens
    if output_tokens is not None:
        attrs["gen_ai.usage.output_tokens"] = output_tokens
