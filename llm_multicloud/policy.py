"""Routing policy: every knob, with firm defaults.

A policy comes from the catalog's ``policy:`` section and/or the ``policy=``
argument of :func:`llm_multicloud.wrap` / :class:`MultiCloud` (a dict merged over
the catalog's, key by key). Every field has a default that is safe in production,
so an empty policy is a good policy. Unknown keys are errors (a typo must not
silently fall back to a default).
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import DEFAULT_FAILOVER_ON, FailoverStatus

Strategy = Literal["latency", "cost", "balanced", "weighted", "ordered"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HedgePolicy(_Strict):
    """When to race a second endpoint because the first token is late."""

    enabled: bool = True
    #: Hedge after this quantile of the primary endpoint's recent TTFT, times
    #: ``headroom``... Hedging exactly at p90 fires for 10 % of requests before any
    #: tail shows — the whole default budget — so tails then find it spent;
    #: 1.5 × p90 keeps the budget for the tail (measured: benchmarks/b4_hedging).
    quantile: float = Field(0.9, gt=0.0, lt=1.0)
    headroom: float = Field(1.5, ge=1.0, le=10.0)
    #: ...but never sooner than this (hedging a 5 ms TTFT just doubles load)...
    min_delay_ms: float = Field(30.0, ge=0.0)
    #: ...nor later than this.
    max_delay_ms: float = Field(2000.0, gt=0.0)
    #: A fixed delay instead of the adaptive one.
    delay_ms: float | None = Field(None, ge=0.0)
    #: The adaptive delay trusts the histogram only after this many samples; before,
    #: it uses the endpoint's predicted TTFT times ``cold_factor``.
    min_samples: int = Field(20, ge=1)
    cold_factor: float = Field(3.0, ge=1.0)
    #: At most this share of extra upstream requests (token bucket).
    budget: float = Field(0.1, ge=0.0, le=1.0)
    #: Attempts in flight at once for one request (primary included).
    max_in_flight: int = Field(2, ge=1, le=8)


class RetryPolicy(_Strict):
    """Retries and failovers before commit."""

    max_attempts: int = Field(3, ge=1, le=20)
    #: Retries may add at most this share of recent requests (plus the floor below),
    #: as in Finagle's RetryBudget: a wide outage must not multiply load.
    budget: float = Field(0.2, ge=0.0, le=10.0)
    min_per_s: float = Field(10.0, ge=0.0)
    #: The window over which the budget counts requests.
    window_s: float = Field(10.0, gt=0.0)


class BreakerPolicy(_Strict):
    """Per-endpoint circuit breaker (outlier ejection, as in Envoy)."""

    consecutive_failures: int = Field(5, ge=1)
    #: Also open when the failure rate over ``window_s`` exceeds this, given volume.
    failure_rate: float = Field(0.5, gt=0.0, le=1.0)
    min_requests: int = Field(20, ge=1)
    window_s: float = Field(30.0, gt=0.0)
    #: Ejection time = base × number of ejections so far, capped, ±jitter.
    base_ejection_s: float = Field(30.0, gt=0.0)
    max_ejection_s: float = Field(300.0, gt=0.0)
    jitter: float = Field(0.1, ge=0.0, lt=1.0)
    #: Trial requests admitted at once while half-open.
    half_open_permits: int = Field(1, ge=1)
    #: Never eject more than this share of the compliant candidates of a request.
    max_ejection_fraction: float = Field(0.5, ge=0.0, le=1.0)


class ProbePolicy(_Strict):
    """Background probes (``GET /models``; never generates tokens)."""

    enabled: bool = True
    interval_s: float = Field(10.0, gt=0.0)
    timeout_s: float = Field(2.0, gt=0.0)
    concurrency: int = Field(8, ge=1)
    path: str = "/models"
    #: Also read Prometheus ``/metrics`` (vLLM/SGLang queue depth) where endpoints opt in.
    metrics: bool = False


class Timeouts(_Strict):
    """Deadlines, each separate. The caller's openai ``timeout`` is the overall deadline."""

    #: TCP (and TLS) connect. The timer runs on the event loop, so it also counts the
    #: time our own loop takes to notice that the connect completed: 512 requests
    #: started at once on one loop measured 0.4-1.4 s for a loopback connect on a quiet
    #: 2-core machine, beyond 2 s under load (docs/health.md#deadlines). 5 s is the openai SDK's
    #: own connect timeout.
    connect_s: float = Field(5.0, gt=0.0)
    #: Streams: the first content event must arrive within this.
    first_token_s: float = Field(10.0, gt=0.0)
    #: Non-streamed answers arrive whole, after the whole generation: the longest one
    #: may take (raise it per model for long generations).
    response_s: float = Field(120.0, gt=0.0)
    #: After the first token: longest wait for the next *data event* of a stream.
    #: Bytes that carry no data — keep-alive comments, an event dripped a byte at a
    #: time — do not reset it, so a server that only keeps the connection busy is
    #: still caught. Past it the stream breaks (``StreamInterrupted``).
    chunk_gap_s: float = Field(30.0, gt=0.0)
    #: Longest a committed stream may last from the request's start, however steadily
    #: it sends data (a generation that never ends); past it the stream breaks
    #: (``StreamInterrupted``). None: no limit but the caller's own.
    stream_total_s: float | None = Field(1800.0, gt=0.0)
    #: Overall deadline when the caller gives none.
    total_s: float | None = Field(None, gt=0.0)


class ReadLimits(_Strict):
    """Most bytes read from an endpoint for one thing; each enforced while reading (the
    connection is dropped the moment a limit is crossed, never after the whole body)."""

    #: An error reply (4xx/5xx/3xx): kept up to this, the rest is not read.
    error_body_bytes: int = Field(1 << 20, ge=1024)
    #: A complete (non-streamed) answer; a longer one is an endpoint fault.
    answer_body_bytes: int = Field(64 << 20, ge=1024)
    #: A probe's ``/models`` or ``/metrics`` reply; a longer one fails the probe.
    probe_body_bytes: int = Field(4 << 20, ge=1024)
    #: One streamed event; a longer one breaks the stream (an endpoint fault).
    event_bytes: int = Field(16 << 20, ge=1024)


class ResumePolicy(_Strict):
    """Continue a stream that broke after commit on another endpoint (opt-in)."""

    enabled: bool = False
    #: How endpoints continue a partial assistant message unless the catalog says
    #: otherwise per endpoint: vllm (continue_final_message) or prefix (prefix: true).
    style: Literal["vllm", "prefix"] = "vllm"
    max_resumes: int = Field(1, ge=1, le=5)


class AffinityPolicy(_Strict):
    """Prompt-cache affinity: requests of one session (or one prompt prefix) prefer one
    endpoint, chosen by rendezvous hashing among the compliant, healthy candidates
    near the strategy's best. See docs/affinity.md."""

    enabled: bool = True
    #: Without an explicit session, key on a hash of the prompt's stable prefix
    #: (system prompt and first user message)...
    prefix: bool = True
    #: ...when that prefix is long enough for a cache to matter (estimated tokens).
    prefix_min_tokens: int = Field(256, ge=0)
    #: The pin is eligible while its predicted TTFT is within ``slack`` (a fraction)
    #: plus ``slack_ms`` of the strategy's first choice. Wide on purpose: one cache
    #: miss (a long prefill) lifts an endpoint's TTFT estimate several-fold, and a pin
    #: that moved for that would miss again; a region on another continent, or a
    #: degraded one, is still far outside...
    slack: float = Field(1.0, ge=0.0)
    slack_ms: float = Field(250.0, ge=0.0)
    #: ...its expected cost within ``cost_slack`` of the first choice's...
    cost_slack: float = Field(0.25, ge=0.0)
    #: ...and its load factor (1 + in-flight + queue depth) at most ``overload`` times
    #: the first choice's plus one: past that it counts as overloaded.
    overload: float = Field(3.0, ge=1.0)


class LimitsPolicy(_Strict):
    """How the catalog's ``limits:`` (rpm/tpm per quota domain) are applied."""

    #: Refill at this share of each limit. The server counts a request when it
    #: arrives, a little after the client reserved it, and that delay varies: a few
    #: percent of headroom absorbs the variation, so the 429s do not happen.
    headroom: float = Field(0.95, gt=0.0, le=1.0)


class StatePolicy(_Strict):
    """Where health state lives: in this process (default) or shared through Redis."""

    backend: Literal["memory", "redis"] = "memory"
    #: redis://host:port/db (rediss:// for TLS); required for backend redis.
    url: str | None = None
    prefix: str = "llm_multicloud"
    #: How often the shared view is pushed and pulled: the staleness bound.
    refresh_s: float = Field(1.0, gt=0.0)
    #: Timeout of each Redis operation; past it, this replica runs on local state.
    timeout_s: float = Field(0.25, gt=0.0)
    #: Redis Cluster (or Valkey cluster; managed offerings in cluster mode): the URL
    #: names one node or the configuration endpoint; keys are hash-tagged per quota
    #: domain and reads are batched per slot.
    cluster: bool = False
    #: How many replicas share each quota until this replica has seen the live count
    #: in Redis: the share a capacity bucket falls back to (1 / replicas) when Redis
    #: is unreachable from the start. Afterwards the last live count seen is used.
    expected_replicas: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _url(self) -> StatePolicy:
        if self.backend == "redis" and not self.url:
            raise ValueError("state.url is required with backend: redis (e.g. redis://127.0.0.1:6379/0)")
        if self.cluster and self.url:
            db = urlsplit(self.url).path.strip("/")
            if db not in ("", "0"):
                raise ValueError(
                    f"state.url selects database {db!r}, but a Redis Cluster has only database 0: "
                    "drop the /db part of the URL, or set state.cluster: false"
                )
        return self


class Policy(_Strict):
    """Everything that decides how requests are routed."""

    strategy: Strategy = "balanced"
    #: ``balanced``: candidates whose predicted TTFT is within ``slack`` (a fraction)
    #: plus ``slack_ms`` of the fastest count as "near the fastest"; the cheapest of
    #: them wins. ``slo_ms`` replaces that window by an absolute TTFT target.
    slack: float = Field(0.25, ge=0.0)
    slack_ms: float = Field(20.0, ge=0.0)
    slo_ms: float | None = Field(None, gt=0.0)
    #: Candidates whose score is within this fraction of the best are "near-equal";
    #: the choice among them uses power of two choices, so that a fleet of clients
    #: does not herd onto one endpoint.
    near_equal: float = Field(0.1, ge=0.0)
    #: Share of requests sent to an endpoint with no recent TTFT sample (none, or
    #: older than 3 × decay_s), so that new and recovered endpoints get measured.
    explore: float = Field(0.01, ge=0.0, le=1.0)
    #: Share of requests sent to an endpoint whose TTFT estimate jumped on one sample
    #: (more than twice its estimate), one request at a time, so that the next sample
    #: can refute an outlier: the fastest region wins its traffic back within a few
    #: requests instead of waiting for the estimate to decay.
    recheck: float = Field(0.2, ge=0.0, le=1.0)
    #: TTFT assumed for an endpoint with no measurement and no location (ms).
    default_ttft_ms: float = Field(200.0, gt=0.0)
    #: Time constant τ of the latency estimates' decay (weight exp(-Δt/τ)), seconds.
    decay_s: float = Field(10.0, gt=0.0)
    #: Longest Retry-After honoured; longer values are capped (absurd values happen).
    max_retry_after_s: float = Field(300.0, gt=0.0)
    #: Cooldown after a 429/401/403 without a Retry-After.
    default_cooldown_s: float = Field(5.0, ge=0.0)
    #: Upstream statuses that are the endpoint's (or its account's) fault: penalty
    #: and failover. ``"5xx"`` stands for 500-599. Every other 4xx is the caller's
    #: request: handed back as is, no penalty, no failover (a 404 for a path or a
    #: model a server does not have would otherwise eject the whole fleet).
    failover_on: tuple[FailoverStatus, ...] = DEFAULT_FAILOVER_ON
    hedge: HedgePolicy = HedgePolicy()
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    probe: ProbePolicy = ProbePolicy()
    timeouts: Timeouts = Timeouts()
    read_limits: ReadLimits = ReadLimits()
    state: StatePolicy = StatePolicy()
    resume: ResumePolicy = ResumePolicy()
    affinity: AffinityPolicy = AffinityPolicy()
    limits: LimitsPolicy = LimitsPolicy()

    @field_validator("failover_on")
    @classmethod
    def _statuses(cls, v: tuple[FailoverStatus, ...]) -> tuple[FailoverStatus, ...]:
        bad = [s for s in v if isinstance(s, int) and not 400 <= s <= 599]
        if bad:
            raise ValueError(f"failover_on: {bad} are not error statuses; give codes 400-599 or '5xx'")
        return v

    @model_validator(mode="after")
    def _check(self) -> Policy:
        if self.hedge.min_delay_ms > self.hedge.max_delay_ms:
            raise ValueError("hedge.min_delay_ms must not exceed hedge.max_delay_ms")
        return self


def merge_dicts(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out
