"""The ledger: the one owner of a request's bookkeeping, stream and non-stream alike.

One :class:`Ledger` per logical request records what happened to it and tells
everyone who must know, exactly once per fact:

* **attempts** started (primary, hedge, retry: the endpoint's counters), and how
  each ended — won, failed, cancelled, request/local error, interrupted, resumed,
  closed by the caller — with its slot released, its capacity reservation settled
  with the tokens it really used, its cost added to the endpoint's ledger, and one
  :class:`AttemptRecord` given to the audit hooks;
* **health feedback** of those outcomes (the blame rule of
  :class:`~llm_multicloud.errors.FaultKind`: only endpoint and quota faults cost an
  endpoint anything; a cancelled loser's TTFT is a censored sample);
* **the request**: its response headers (endpoint, attempts, hedged, cost) and one
  :class:`RequestRecord` for the request hooks (telemetry), emitted once whatever
  the path — an answer, an error, a deadline, a cancellation, a stream's end.

The race (:mod:`.race`) and the committed stream (:mod:`.stream`) report to the
ledger; neither touches counters, buckets or hooks itself. Usage reported by an
endpoint (chat/completions ``prompt_tokens``/``completion_tokens``, Responses
``input_tokens``/``output_tokens``, cached-prompt details) is normalised once, by
:meth:`Usage.of`, and read in that form by cost, capacity and records.

Cost follows the OpenAI usage accounting: ``(input - cached) × input price + cached
× cached price + output × output price``; without usage, an estimate (the prompt
estimate plus one token per delivered content event), flagged as such.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from opentelemetry.context import get_current as _otel_current

from ..errors import FaultKind
from ..vocabulary import AttemptKind, AttemptOutcome, ErrorType, RequestOutcome

if TYPE_CHECKING:
    from ..health import Health
    from ..intent import Intent
    from ..upstream import Upstream
    from .attempt import Attempt

log = logging.getLogger("llm_multicloud.executor")


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt, as given to audit hooks: where the request's data went and what happened."""

    request_id: str
    attempt: int
    kind: AttemptKind  # primary | hedge | retry
    endpoint: str
    provider: str
    region: str
    residency: str  # the request's residency constraint ("any" when unconstrained)
    model: str
    outcome: AttemptOutcome  # won | failed | cancelled | request_error | local_error | interrupted | ...
    status: int | None
    reason: str | None
    ttft_ms: float | None
    duration_ms: float
    cost_usd: float
    cost_estimated: bool
    server_address: str = ""
    server_port: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    start_unix_nano: int = 0
    end_unix_nano: int = 0
    #: who was at fault when it did not win (None: nobody, or it won)
    fault: FaultKind | None = None
    #: low-cardinality error type of an unsuccessful attempt: its HTTP status ("503"),
    #: or an :class:`~llm_multicloud.vocabulary.ErrorType` ("timeout", "connect", ...)
    error_type: str | None = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One logical request, end to end (given to request hooks; telemetry builds its
    spans and metrics from it). Emitted once, when the answer is complete: for a
    stream, at its end (or break)."""

    request_id: str
    operation: str  # chat | text_completion | embeddings | responses | ...
    model: str  # the logical model the caller asked for
    stream: bool
    outcome: RequestOutcome  # ok | request_error | failed | timeout | interrupted | closed_by_caller | ...
    status: int | None
    error_type: str | None
    endpoint: str | None  # who served (None: nobody)
    provider: str | None
    region: str | None
    response_model: str | None  # the served model name of the endpoint that answered
    server_address: str | None
    server_port: int | None
    residency: str
    hedged: bool
    attempts: tuple[AttemptRecord, ...]
    start_unix_nano: int
    end_unix_nano: int
    ttft_ms: float | None  # from the request's start to the first content
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float
    cost_estimated: bool
    #: the OpenTelemetry context current when the request started (span parent)
    otel_context: Any = None


Hook = Callable[[AttemptRecord], None]
RequestHook = Callable[[RequestRecord], None]


class Usage(NamedTuple):
    """An endpoint's reported usage, normalised once (chat/completions and Responses names)."""

    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int
    total_tokens: int | None

    @classmethod
    def of(cls, usage: dict[str, Any] | None) -> Usage | None:
        """The usage object of an answer or event (None: none reported). Values that are
        not non-negative integers count as not reported."""
        if not usage:
            return None
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
        return cls(
            _first(usage, "prompt_tokens", "input_tokens"),
            _first(usage, "completion_tokens", "output_tokens"),
            cached or 0,
            _count(usage.get("total_tokens")),
        )


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _first(usage: dict[str, Any], *names: str) -> int | None:
    for n in names:
        v = _count(usage.get(n))
        if v is not None:
            return v
    return None


def _listening(hook: Callable[[Any], None]) -> bool:
    """Does a request hook want records now? A hook bound to an object with a boolean
    ``recording`` (:class:`~llm_multicloud.telemetry.Telemetry`: an OpenTelemetry SDK is
    configured) is asked; any other hook always listens."""
    recording = getattr(getattr(hook, "__self__", None), "recording", True)
    return recording if isinstance(recording, bool) else True


def notify(hooks: list[Callable[[Any], None]], rec: Any) -> None:
    """Give a record to every hook; a broken hook must not break a request."""
    for hook in list(hooks):
        try:
            hook(rec)
        except Exception:
            log.exception("hook %r failed", hook)


class Ledger:
    """The bookkeeping of one logical request across its attempts (see the module docs)."""

    __slots__ = (
        "_clock",
        "_cooldown_s",
        "_cost",
        "_cost_estimated",
        "_health",
        "_hooks",
        "_request_hooks",
        "_wants_records",
        "attempts",
        "done",
        "hedged",
        "intent",
        "otel_context",
        "records",
        "t0",
        "upstream",
        "wall0",
    )

    def __init__(
        self,
        intent: Intent,
        t0: float,
        *,
        health: Health,
        clock: Callable[[], float],
        hooks: list[Hook],
        request_hooks: list[RequestHook],
        default_cooldown_s: float,
        upstream: Upstream | None = None,
    ) -> None:
        self.intent = intent
        self.t0 = t0
        self.wall0 = time.time_ns()
        self.attempts: list[Attempt] = []
        self.records: list[AttemptRecord] = []
        self.hedged = False
        self.done = False
        self.upstream = upstream
        self._health = health
        self._clock = clock
        self._hooks = hooks
        self._cooldown_s = default_cooldown_s
        # Records only when someone listens: request hooks that say they record nothing
        # now (telemetry without an OpenTelemetry SDK) are left out for this request,
        # and without any hook no record is built at all. The totals (cost, usage,
        # capacity, the endpoints' counters) never depend on records.
        self._request_hooks = [h for h in request_hooks if _listening(h)] if request_hooks else request_hooks
        self._wants_records = bool(hooks) or bool(self._request_hooks)
        self._cost = 0.0
        self._cost_estimated = False
        # Created in the caller's context (async: its task; sync: the portal runs the
        # coroutine in a copy of the caller's context): the parent of its spans.
        self.otel_context = _otel_current() if self._request_hooks else None

    def wall(self, t: float) -> int:
        """Wall-clock nanoseconds of a monotonic instant of this request."""
        return self.wall0 + int((t - self.t0) * 1e9)

    # -- attempts -------------------------------------------------------------------
    def started(self, a: Attempt) -> None:
        """An attempt was admitted and is about to send its first byte."""
        self.attempts.append(a)
        if a.kind is AttemptKind.HEDGE:
            with a.st._lock:  # endpoint counters: requests on many threads add to them
                a.st.hedges += 1
            self.hedged = True
        elif a.kind is AttemptKind.RETRY:
            with a.st._lock:
                a.st.retries += 1

    def failed(self, a: Attempt) -> None:
        """An attempt failed before commit: blame its endpoint (or quota) for its own fault only."""
        if not a.credential_failed:
            if a.fault is FaultKind.QUOTA:
                secs = a.retry_after if a.retry_after is not None else self._cooldown_s
                self._health.cooldown(a.st, secs, a.reason or "quota")
            elif a.fault is FaultKind.ENDPOINT:
                self._health.endpoint_fault(a.st, a.reason or "endpoint fault")
        self.finish(a, AttemptOutcome.FAILED)

    def cancelled(self, a: Attempt) -> None:
        """An attempt lost the race (its connection is closed by now)."""
        if a.ttft is None:
            # Cancelled before its first token: a lower bound of its TTFT.
            now = self._clock()
            a.st.observe_ttft((now - a.t0) * 1000.0, now, censored=True)
        self.finish(a, AttemptOutcome.CANCELLED)

    def committed(self, a: Attempt) -> None:
        """An attempt won the race: its first token is a TTFT sample of its endpoint."""
        if a.ttft is not None:
            a.st.observe_ttft(a.ttft * 1000.0, self._clock())
        if a.kind is AttemptKind.HEDGE:
            with a.st._lock:
                a.st.hedge_wins += 1

    def succeeded(self, a: Attempt, fallback_tokens: int, *, stream_ttft: bool, delivered_tokens: int = 0) -> None:
        """The winner's answer was delivered in full: a success of its endpoint, and a
        throughput sample (its reported output tokens, else ``fallback_tokens``)."""
        self._health.success(a.st, trial=a.trial)
        usage = Usage.of(a.usage)
        out = usage.output_tokens if usage is not None and usage.output_tokens else fallback_tokens
        ttft = a.ttft * 1000.0 if stream_ttft and a.ttft is not None else None
        a.st.observe_stream((self._clock() - a.t0) * 1000.0, out, ttft)
        self._finish(a, AttemptOutcome.WON, delivered_tokens, usage)

    def broke(self, a: Attempt, reason: str) -> None:
        """The committed stream broke by the endpoint's fault."""
        self._health.endpoint_fault(a.st, f"stream broke after commit: {reason}")

    def finish(self, a: Attempt, outcome: AttemptOutcome, *, delivered_tokens: int = 0) -> None:
        """Release the attempt's slot, settle its capacity, account its cost, tell the
        audit hooks. Called once per attempt."""
        self._finish(a, outcome, delivered_tokens, Usage.of(a.usage))

    def _finish(self, a: Attempt, outcome: AttemptOutcome, delivered_tokens: int, usage: Usage | None) -> None:
        st = a.st
        st.release(a.permit)
        if a.reserved and st.bucket is not None:
            used = self._used_tokens(a, usage, outcome, delivered_tokens)
            st.bucket.settle(a.reserved, used, refund_request=not _maybe_counted(a))
            a.reserved = 0
        cost, estimated = self._attempt_cost(a, usage, outcome, delivered_tokens)
        with st._lock:  # exact totals: sync requests on many threads add to them at once
            st.cost_usd += cost
            st.cost_estimated = st.cost_estimated or (estimated and cost > 0)
            if outcome is AttemptOutcome.CANCELLED:
                st.wasted += 1
            if usage is not None:
                st.input_tokens += usage.input_tokens or 0
                st.output_tokens += usage.output_tokens or 0
        self._cost += cost
        self._cost_estimated = self._cost_estimated or (estimated and cost > 0)
        if not self._wants_records:
            return
        rec = self._attempt_record(a, outcome, usage, cost, estimated)
        self.records.append(rec)
        if self._hooks:
            notify(self._hooks, rec)

    def _attempt_record(
        self, a: Attempt, outcome: AttemptOutcome, usage: Usage | None, cost: float, estimated: bool
    ) -> AttemptRecord:
        intent, ep, now = self.intent, a.ep, self._clock()
        unsuccessful = outcome not in (AttemptOutcome.WON, AttemptOutcome.CANCELLED, AttemptOutcome.CLOSED_BY_CALLER)
        return AttemptRecord(
            request_id=intent.request_id,
            attempt=a.n,
            kind=a.kind,
            endpoint=ep.id,
            provider=ep.provider,
            region=ep.region,
            residency=intent.constraints.residency_label or "any",
            model=intent.model or "",
            outcome=outcome,
            status=a.status,
            reason=a.reason,
            ttft_ms=None if a.ttft is None else a.ttft * 1000.0,
            duration_ms=(now - a.t0) * 1000.0,
            cost_usd=cost,
            cost_estimated=estimated,
            server_address=ep.host,
            server_port=ep.port,
            input_tokens=None if usage is None else usage.input_tokens,
            output_tokens=None if usage is None else usage.output_tokens,
            start_unix_nano=self.wall(a.t0),
            end_unix_nano=self.wall(now),
            fault=a.fault if unsuccessful else None,
            error_type=a.error_type(outcome) if unsuccessful else None,
        )

    def _used_tokens(self, a: Attempt, usage: Usage | None, outcome: AttemptOutcome, delivered_tokens: int) -> int:
        """What an attempt consumed of its endpoint's token quota: the reported usage;
        the whole reservation if it was refused with 429; else nothing if it was
        refused or never reached the server; the prompt
        estimate if it was sent but never answered (a timeout before the status line,
        a hedge loser cancelled while waiting: the server may have counted it, and
        over-counting only costs a little room while under-counting costs a 429);
        else the prompt estimate plus the tokens delivered (a stream that ended early,
        broke or was cancelled); for a complete answer without usage, the whole
        reservation."""
        if usage is not None:
            if usage.total_tokens is not None:
                return usage.total_tokens
            return (usage.input_tokens or 0) + (usage.output_tokens or 0)
        if a.status is None:
            return self.intent.input_tokens if _maybe_counted(a) else 0
        if a.status == 429:
            # Refused for want of quota: the server's bucket had no room where ours
            # had, so ours runs ahead of it. Charged, the refusal brings ours down by
            # what the server refused, and a bucket can never send more than it
            # holds, refusals included; given back, every cooldown's end sent the
            # whole backlog again (a replica partitioned from Redis: 374 of 497
            # requests refused instead of 14 of 161).
            return a.reserved
        if outcome is AttemptOutcome.REQUEST_ERROR or a.status >= 300:
            return 0
        if outcome is AttemptOutcome.WON and not self.intent.stream:
            return a.reserved
        return self.intent.input_tokens + delivered_tokens

    def _attempt_cost(
        self, a: Attempt, usage: Usage | None, outcome: AttemptOutcome, delivered_tokens: int
    ) -> tuple[float, bool]:
        """USD of one attempt and whether it is an estimate. Tokens are counted even
        where the price is unknown (the cost is then reported as unknown, not zero)."""
        price = a.ep.price
        if price is None:
            return 0.0, True
        if usage is not None:
            inp, out, cached = usage.input_tokens or 0, usage.output_tokens or 0, usage.cached_tokens
            return ((inp - cached) * price[0] + cached * price[2] + out * price[1]) / 1e6, False
        if outcome in (AttemptOutcome.REQUEST_ERROR, AttemptOutcome.LOCAL_ERROR) or (
            outcome is AttemptOutcome.FAILED and a.fault is not FaultKind.ENDPOINT
        ):
            return 0.0, False  # refused (4xx, 429/401/403): not billed
        if outcome is AttemptOutcome.FAILED and a.ttft is None:
            return 0.0, True
        # Cancelled hedge losers and interrupted streams: the prompt was processed.
        return (self.intent.input_tokens * price[0] + delivered_tokens * price[1]) / 1e6, True

    # -- the request ------------------------------------------------------------------
    def cost_usd(self) -> float:
        """USD of every attempt finished so far (kept as a total: records may not be built)."""
        return self._cost

    def meta_headers(self, w: Attempt) -> list[tuple[str, str]]:
        """The ``x-llm-multicloud-*`` headers of the answer ``w`` gives."""
        return [
            ("x-llm-multicloud-endpoint", w.ep.id),
            ("x-llm-multicloud-provider", w.ep.provider),
            ("x-llm-multicloud-region", w.ep.region),
            ("x-llm-multicloud-attempts", str(len(self.attempts))),
            ("x-llm-multicloud-hedged", "true" if self.hedged else "false"),
            ("x-llm-multicloud-request-id", self.intent.request_id),
            ("x-llm-multicloud-winner", f"{w.n}:{w.kind}"),
        ]

    def cost_header(self) -> tuple[str, str]:
        """The cost of every attempt so far (a complete, non-streamed answer)."""
        priced = all(x.ep.price is not None for x in self.attempts)
        return ("x-llm-multicloud-cost-usd", f"{self.cost_usd():.8f}" if priced else "unknown")

    def request_done(
        self, w: Attempt | None, outcome: RequestOutcome, status: int | None, error_type: str | None
    ) -> None:
        """Emit the request's record (once) to the request hooks (telemetry)."""
        if self.done:
            return
        self.done = True
        if not self._request_hooks:
            return
        intent = self.intent
        ep = w.ep if w is not None else None
        usage = Usage.of(w.usage) if w is not None else None
        rec = RequestRecord(
            request_id=intent.request_id,
            operation=intent.operation,
            model=intent.model or "",
            stream=intent.stream,
            outcome=outcome,
            status=status,
            error_type=error_type,
            endpoint=ep.id if ep else None,
            provider=ep.provider if ep else None,
            region=ep.region if ep else None,
            response_model=ep.models.get(intent.model or "") if ep else None,
            server_address=ep.host if ep else None,
            server_port=ep.port if ep else None,
            residency=intent.constraints.residency_label or "any",
            hedged=self.hedged,
            attempts=tuple(self.records),
            start_unix_nano=self.wall0,
            end_unix_nano=self.wall(self._clock()),
            ttft_ms=None if w is None or w.ready_at is None or not intent.stream else (w.ready_at - self.t0) * 1000.0,
            input_tokens=None if usage is None else usage.input_tokens,
            output_tokens=None if usage is None else usage.output_tokens,
            cost_usd=self._cost,
            cost_estimated=self._cost_estimated,
            otel_context=self.otel_context,
        )
        notify(self._request_hooks, rec)


#: failures that happen before a request reaches the server: it cannot have counted them
_NEVER_SENT = frozenset({ErrorType.CONNECT, ErrorType.CREDENTIAL, ErrorType.LOCAL})


def _maybe_counted(a: Attempt) -> bool:
    """May the endpoint's quota have counted this attempt? Yes once it answered, and
    whenever it may have been sent: only a failure to connect, to get a credential, or
    a local one (our own pool full, a bug of ours) is known to precede the request."""
    return a.status is not None or a.error_kind not in _NEVER_SENT
