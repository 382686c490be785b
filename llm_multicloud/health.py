"""Endpoint health: latency estimates, circuit breakers, cooldowns, load.

One :class:`EndpointState` per endpoint, fed by real traffic (the executor reports
every attempt's outcome) and by the prober; read by the router on every request.
All times are ``time.monotonic()`` seconds from an injected clock, so the
breaker and the estimators are tested with a controlled clock and no sleeping.

**Latency: peak-EWMA** (after tower's ``load::PeakEwma`` and Finagle's
``PeakEwma`` balancer). A sample above the estimate replaces it at once (a region
that got slow is noticed on its first slow answer); a sample below it is blended
in with weight ``1 - exp(-Δt/τ)``. When no sample arrives the estimate decays
toward the endpoint's *baseline* (probe RTT or the geographic prior), not toward
zero, so a recovered endpoint is tried again without a long-unused one ever
looking faster than what is known about it.

**One sample is not a verdict.** A sample more than twice the estimate still
raises it at once (the fast reaction stays), but provisionally: the estimate
before the jump is kept, and the *next* sample decides — it is blended with the
estimate from before the jump, as if the outlier had never been. So one 1.5 s
first token on a 10 ms region costs it one sample, not a minute of traffic; a
region that stays slow shows it on the deciding sample too. That next sample
comes from real traffic: the router sends a small share of requests
(``policy.recheck``) to an endpoint whose estimate jumped on one sample, one at a
time (:attr:`EndpointState.ttft_before_jump`).

**Hedge delays** read a rolling TTFT window (the last 256 first-token times) and
take a quantile of it; the sorted copy is cached and refreshed every 16 samples.

**Circuit breaker** (closed → open → half-open → closed), after Envoy's outlier
detection: it opens on N consecutive endpoint faults or on a failure rate over a
minimum volume; ejection time is ``base × ejections`` capped at a maximum, with
jitter; half-open admits a bounded number of trial requests; a success closes it,
a failure re-opens it for longer. Quota faults (429/401/403) never touch the
breaker: they set a *cooldown* on the endpoint's quota domain, an absolute deadline
that only moves forward.

State transitions are logged (``logging.getLogger("llm_multicloud.health")``) and
sent to listeners (hooks).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, overload

from . import changes
from .catalog import Catalog, Endpoint
from .errors import cooldown_s
from .limits import Bucket
from .policy import BreakerPolicy, Policy
from .redaction import redactor
from .vocabulary import BreakerState

if TYPE_CHECKING:
    from .snapshot import EndpointRecord

log = logging.getLogger("llm_multicloud.health")

Clock = Callable[[], float]
T = TypeVar("T")

_RING = 256
#: A sample above this multiple of the estimate is a jump: applied at once, but
#: provisionally, until the next sample confirms or refutes it.
_JUMP = 2.0


class QuotaDomain:
    """Endpoints that share one upstream quota cool down together."""

    __slots__ = ("name", "reason", "until")

    def __init__(self, name: str) -> None:
        self.name = name
        self.until = 0.0
        self.reason = ""

    def __setattr__(self, name: str, value: object) -> None:
        # a cooldown changes every endpoint of the domain: logged as the domain (the
        # router's index re-reads the domain's endpoints)
        _setattr(self, name, value)
        if name == "until":
            _ENTRIES.append(self)
            if len(_ENTRIES) > changes.LIMIT:
                changes.everything_changed()


@dataclass(frozen=True, slots=True)
class Transition:
    """A breaker or cooldown transition, as given to hooks."""

    endpoint: str
    old: str
    new: str
    reason: str
    at: float
    until: float | None


# -- the breaker and the admission policy ---------------------------------------------


class BreakerFields(Protocol):
    """The breaker's data on an endpoint's state (plain attributes: the router reads
    ``breaker`` and ``open_until`` for every endpoint of every plan)."""

    breaker: BreakerState
    consecutive: int
    ejections: int
    opened_at: float
    open_until: float
    #: trial attempts in flight while half-open
    half_open_inflight: int
    #: (time, ok) of recent outcomes, for the failure rate
    window: deque[tuple[float, bool]]


@dataclass(frozen=True, slots=True)
class Change:
    """A breaker state change (it becomes a :class:`Transition` with the endpoint's id)."""

    old: BreakerState
    new: BreakerState
    reason: str
    until: float | None = None


class Breaker:
    """The circuit breaker's rules: every transition, in one class.

    After h11: each event is one method, and each method changes the state only
    through :meth:`_move`, which checks the move against :attr:`MOVES` — a move that
    is not in the table is a bug and raises. Envoy's outlier detection decides
    *when*: open on ``consecutive_failures`` endpoint faults in a row, or on a failure
    rate over ``window_s`` given ``min_requests``; the ejection lasts
    ``base_ejection_s × ejections`` capped at ``max_ejection_s``, ±jitter; once it is
    over the breaker is half-open and the :class:`Admission` policy bounds the trial
    attempts; a trial's success closes it, a trial's failure re-opens it for longer.

    Stateless: the data is the endpoint state's (:class:`BreakerFields`), so one
    breaker serves every endpoint, and the configuration
    (:class:`~llm_multicloud.policy.BreakerPolicy`) is passed to each event, so a live
    policy change applies at once. The caller holds the state's lock. Replace it from
    code with ``Health(..., breaker=MyBreaker())`` (a subclass, or any object with these
    methods); ``tests/unit/test_breaker.py`` tests it alone.
    """

    #: (state, event) -> new state: every move a breaker can make.
    MOVES: ClassVar[Mapping[tuple[BreakerState, str], BreakerState]] = {
        (BreakerState.CLOSED, "trip"): BreakerState.OPEN,
        (BreakerState.OPEN, "ejection_over"): BreakerState.HALF_OPEN,
        (BreakerState.HALF_OPEN, "trial_failed"): BreakerState.OPEN,
        (BreakerState.HALF_OPEN, "trial_succeeded"): BreakerState.CLOSED,
        # a re-admitted attempt (ejection cap or panic) succeeded during the ejection
        (BreakerState.OPEN, "trial_succeeded"): BreakerState.CLOSED,
        (BreakerState.CLOSED, "remote_ejection"): BreakerState.OPEN,
        (BreakerState.HALF_OPEN, "remote_ejection"): BreakerState.OPEN,
        (BreakerState.OPEN, "remote_ejection"): BreakerState.OPEN,  # extended: another replica ejected it for longer
    }

    def _move(self, s: BreakerFields, event: str) -> BreakerState:
        old = s.breaker
        new = self.MOVES.get((old, event))
        if new is None:
            raise RuntimeError(f"breaker bug: no move for event {event!r} in state {old!r}")
        s.breaker = new
        return old

    @staticmethod
    def view(s: BreakerFields, now: float) -> BreakerState:
        """The state as seen at ``now``: an ejection that is over reads half-open."""
        return BreakerState.HALF_OPEN if s.breaker == BreakerState.OPEN and now >= s.open_until else s.breaker

    # -- events ------------------------------------------------------------------------
    def ready(self, s: BreakerFields, now: float) -> Change | None:
        """Time passed: an ejection that is over becomes half-open (trials admitted)."""
        if s.breaker == BreakerState.OPEN and now >= s.open_until:
            self._move(s, "ejection_over")
            s.half_open_inflight = 0
            return Change(BreakerState.OPEN, BreakerState.HALF_OPEN, "ejection over: trial requests admitted")
        return None

    def success(self, s: BreakerFields, now: float, bp: BreakerPolicy, *, trial: bool) -> Change | None:
        """A success. Only a *trial* (admitted while the breaker was not closed) closes
        it: a long stream that started before the ejection and ends during it proves
        nothing about the endpoint now."""
        if s.consecutive:  # (a write of an endpoint state's field costs ~0.3 µs: see EndpointState.__setattr__)
            s.consecutive = 0
        self._record(s, now, True, bp)
        if s.breaker != BreakerState.CLOSED and trial:
            old = self._move(s, "trial_succeeded")
            s.half_open_inflight = 0
            return Change(old, BreakerState.CLOSED, "trial request succeeded")
        if s.ejections and now - s.opened_at > bp.max_ejection_s:
            s.ejections = 0  # healthy for long: the next ejection starts short again
        return None

    def failure(self, s: BreakerFields, now: float, reason: str, rand: float, bp: BreakerPolicy) -> Change | None:
        """An endpoint fault (``rand`` in [0, 1) draws the jitter). Returns the change
        when the breaker opened."""
        s.consecutive += 1
        self._record(s, now, False, bp)
        if s.breaker == BreakerState.HALF_OPEN:
            trip, event = f"trial request failed: {reason}", "trial_failed"
        elif s.breaker != BreakerState.CLOSED:
            return None  # already open: a re-admitted attempt failed
        elif s.consecutive >= bp.consecutive_failures:
            trip, event = f"{s.consecutive} consecutive failures, last: {reason}", "trip"
        else:
            n = len(s.window)
            bad = sum(1 for _, ok in s.window if not ok)
            if n < bp.min_requests or bad / n < bp.failure_rate:
                return None
            trip, event = f"failure rate {bad}/{n} over {bp.window_s:g}s, last: {reason}", "trip"
        s.ejections += 1
        span = min(bp.base_ejection_s * s.ejections, bp.max_ejection_s)
        span *= 1.0 + bp.jitter * (2.0 * rand - 1.0)
        old = self._move(s, event)
        s.opened_at = now
        s.open_until = now + span
        s.half_open_inflight = 0
        return Change(old, BreakerState.OPEN, trip, s.open_until)

    def remote_ejection(
        self, s: BreakerFields, now: float, until: float, ejections: int, reason: str
    ) -> tuple[bool, Change | None]:
        """Another replica ejected the endpoint until ``until``: adopted when it ends
        later than what is known here (forward-only). Returns (adopted, the change when
        the breaker was not open already)."""
        if until <= now or (s.breaker == BreakerState.OPEN and s.open_until >= until):
            return False, None
        old = self._move(s, "remote_ejection")
        s.open_until = until
        s.opened_at = s.opened_at if old == BreakerState.OPEN else now
        s.ejections = max(s.ejections, ejections)
        s.half_open_inflight = 0
        return True, (
            None
            if old == BreakerState.OPEN
            else Change(old, BreakerState.OPEN, f"ejected by another replica: {reason}", until)
        )

    @staticmethod
    def _record(s: BreakerFields, now: float, ok: bool, bp: BreakerPolicy) -> None:
        w = s.window
        w.append((now, ok))
        cutoff = now - bp.window_s
        while w and (w[0][0] < cutoff or len(w) > 1000):
            w.popleft()


class AdmissionPolicy(Protocol):
    """What :class:`EndpointState.admit` asks before each attempt (see :class:`Admission`)."""

    def allows(self, st: EndpointState, bp: BreakerPolicy) -> bool: ...


class Admission:
    """Whether a new attempt may start on an endpoint now: the policy the engine asks
    (through :meth:`EndpointState.admit`) right before it sends.

    After tower's ``poll_ready`` and Envoy's circuit-breaker thresholds: the breaker
    says which state the endpoint is in, this says how much may go there. While
    half-open, at most ``half_open_permits`` trial attempts at once (default:
    ``policy.breaker.half_open_permits``). ``enforce_max_concurrency``: also refuse an
    endpoint at its catalog ``max_concurrency`` (in-flight attempts here and on other
    replicas) — off by default, because the router already ranks full endpoints last
    and sends to them only when everything is full (their own queue or 429 then
    decides). A refused endpoint is skipped for the next candidate. Replace it from
    code with ``Health(..., admission=...)``: any object with this ``allows`` method.
    """

    __slots__ = ("enforce_max_concurrency", "half_open_permits")

    def __init__(self, *, half_open_permits: int | None = None, enforce_max_concurrency: bool = False) -> None:
        if half_open_permits is not None and half_open_permits < 1:
            raise ValueError(f"half_open_permits must be at least 1 (got {half_open_permits})")
        self.half_open_permits = half_open_permits
        self.enforce_max_concurrency = enforce_max_concurrency

    def allows(self, st: EndpointState, bp: BreakerPolicy) -> bool:
        """May one more attempt start on ``st``? Called under ``st``'s lock, after the
        breaker moved to half-open if its ejection was over."""
        if st.breaker == BreakerState.HALF_OPEN:
            permits = self.half_open_permits if self.half_open_permits is not None else bp.half_open_permits
            if st.half_open_inflight >= permits:
                return False
        cap = st.endpoint.max_concurrency
        return not (self.enforce_max_concurrency and cap is not None and st.inflight + st.remote_inflight >= cap)


# -- an endpoint's state ---------------------------------------------------------------


@dataclass(slots=True)
class Counters:
    """What one endpoint has done: attempts, outcomes, hedges, tokens, cost."""

    requests: int = 0
    successes: int = 0
    failures: int = 0
    retries: int = 0
    hedges: int = 0
    hedge_wins: int = 0
    wasted: int = 0
    cost_usd: float = 0.0
    cost_estimated: bool = False
    input_tokens: int = 0
    output_tokens: int = 0


class _Counter(Generic[T]):
    """A flat name kept for code written before :class:`Counters` (``st.retries`` is
    ``st.counters.retries``); reads and writes go to the counters."""

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> _Counter[T]: ...
    @overload
    def __get__(self, obj: EndpointState, owner: type) -> T: ...
    def __get__(self, obj: EndpointState | None, owner: type) -> T | _Counter[T]:
        if obj is None:
            return self
        return getattr(obj.counters, self.name)  # type: ignore[no-any-return]

    def __set__(self, obj: EndpointState, value: T) -> None:
        setattr(obj.counters, self.name, value)


class EndpointState:
    """The health of one endpoint. The router only reads it; every change goes through
    one of its methods or :class:`Health`, under its lock.

    Its parts: the **latency estimates** (``ttft_*``, ``tpot_ms``, ``total_ms``,
    ``rtt_ms``, ``baseline_ms`` and the TTFT window), the **breaker's data**
    (:class:`BreakerFields`; the rules are the injected :class:`Breaker`), the
    **admission policy** (:class:`Admission`), the **quota domain**'s cooldown
    (``quota``, shared with the endpoints of the domain) and capacity bucket
    (``bucket``), the **load** (``inflight``, ``remote_inflight``, ``queue_waiting``),
    **model presence** (``*_models``, ``listing``), the operator's **drain**, and the
    **counters** (:class:`Counters`). The fields the router reads for every endpoint
    of every plan are plain slots, not properties or sub-objects: at 10,000 endpoints
    the router has ~100 ns per endpoint. The counters (not read by the router) are a
    sub-object; their flat names (``st.requests``...) still work.
    """

    __slots__ = (
        "_admission",
        "_breaker_rules",
        "_lock",
        "_policy",
        "_ring",
        "_ring_n",
        "_sorted",
        "_sorted_at",
        "baseline_ms",
        "breaker",
        "bucket",
        "consecutive",
        "counters",
        "drained",
        "drained_at",
        "ejections",
        "endpoint",
        "half_open_inflight",
        "inflight",
        "last_error",
        "listed_models",
        "listing",
        "missing_models",
        "on_half_open",
        "open_until",
        "opened_at",
        "queue_waiting",
        "quota",
        "refused_models",
        "remote_inflight",
        "retired",
        "rtt_ms",
        "total_ms",
        "tpot_ms",
        "ttft_at",
        "ttft_before_jump",
        "ttft_ms",
        "ttft_samples",
        "unlisted_models",
        "window",
    )

    #: every write of a field the router reads is logged (see ``__setattr__``): the
    #: router may index these states (router._Index)
    tracked: ClassVar[bool] = True

    # the counters' flat names (see the class docs)
    requests: _Counter[int] = _Counter()
    successes: _Counter[int] = _Counter()
    failures: _Counter[int] = _Counter()
    retries: _Counter[int] = _Counter()
    hedges: _Counter[int] = _Counter()
    hedge_wins: _Counter[int] = _Counter()
    wasted: _Counter[int] = _Counter()
    cost_usd: _Counter[float] = _Counter()
    cost_estimated: _Counter[bool] = _Counter()
    input_tokens: _Counter[int] = _Counter()
    output_tokens: _Counter[int] = _Counter()

    def __init__(
        self,
        endpoint: Endpoint,
        quota: QuotaDomain,
        policy: Policy,
        *,
        breaker: Breaker | None = None,
        admission: AdmissionPolicy | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.quota = quota
        self._policy = policy
        self._breaker_rules: Breaker = breaker if breaker is not None else _BREAKER
        self._admission: AdmissionPolicy = admission if admission is not None else _ADMISSION
        self._lock = threading.Lock()
        # latency estimates
        self.ttft_ms: float | None = None
        self.ttft_at = 0.0
        self.ttft_samples = 0
        #: the estimate before a one-sample jump (None: no jump waiting for its verdict)
        self.ttft_before_jump: float | None = None
        self.tpot_ms: float | None = None
        self.total_ms: float | None = None
        self.rtt_ms: float | None = None
        self.baseline_ms: float | None = None
        self._ring: list[float] = []
        self._ring_n = 0
        self._sorted: list[float] = []
        self._sorted_at = -1
        # load
        self.inflight = 0
        #: in-flight requests of other replicas (shared state), for global limits
        self.remote_inflight = 0
        self.queue_waiting = 0.0
        # the breaker's data (BreakerFields)
        self.breaker: BreakerState = BreakerState.CLOSED
        self.consecutive = 0
        self.ejections = 0
        self.opened_at = 0.0
        self.open_until = 0.0
        self.half_open_inflight = 0
        self.window: deque[tuple[float, bool]] = deque()
        # model presence
        self.missing_models: frozenset[str] = frozenset()
        #: logical models a probe has seen listed at least once: only these can go
        #: "missing" (a served name never listed is a naming mismatch, not an outage)
        self.listed_models: set[str] = set()
        #: logical models whose served name the endpoint has never listed (warned once)
        self.unlisted_models: frozenset[str] = frozenset()
        #: unlisted models whose served name a real request found missing (404): out
        #: until a listing shows the name (see Health.served_name_refused)
        self.refused_models: frozenset[str] = frozenset()
        #: the model ids the endpoint's /models listed last (None before a listing)
        self.listing: tuple[str, ...] | None = None
        #: Health.emit, so that the half-open transition reaches logs and hooks too
        self.on_half_open: list[Callable[[Transition], None]] = []
        self.counters = Counters()
        self.last_error: str | None = None
        #: An operator drained it (``MultiCloud.drain``): the reason. No new attempt of
        #: any kind goes to a drained endpoint; attempts already running finish.
        self.drained: str | None = None
        self.drained_at = 0.0
        #: Removed from the catalog (or replaced by a redefinition): only its in-flight
        #: attempts still use it.
        self.retired = False
        #: rpm/tpm bucket of its quota domain (catalog ``limits:``), shared by the domain
        self.bucket: Bucket | None = None

    def __setattr__(self, name: str, value: object) -> None:
        # Every write of a field the router reads is logged (changes.py), so that the
        # router's index re-reads only the endpoints whose health moved; measured at
        # ~0.3-0.6 µs per write on the 2-core VM (B1's notes), a dozen per request.
        _setattr(self, name, value)
        if name in _ROUTED:
            _ENTRIES.append(self)
            if len(_ENTRIES) > changes.LIMIT:
                changes.everything_changed()

    def _logged(self) -> None:
        """Log this state as changed (what __setattr__ does for one routed field)."""
        _ENTRIES.append(self)
        if len(_ENTRIES) > changes.LIMIT:
            changes.everything_changed()

    def inherit(self, old: EndpointState) -> None:
        """Take over the health history of ``old`` (same endpoint id, redefined by a
        catalog update): estimates, breaker, counters, drain. In-flight attempts stay
        with ``old``, which they release."""
        with old._lock:
            for name in _HISTORY:
                setattr(self, name, getattr(old, name))
            self._ring = list(old._ring)
            self.window = deque(old.window)
            self.counters = dataclasses.replace(old.counters)
        self._sorted_at = -1

    def _change(self, c: Change | None, now: float) -> Transition | None:
        return None if c is None else Transition(self.endpoint.id, c.old, c.new, c.reason, now, c.until)

    # -- estimates --------------------------------------------------------------
    def observe_ttft(self, ms: float, now: float, *, censored: bool = False) -> None:
        """Record a time to first token. ``censored``: a lower bound (the attempt was
        cancelled before its first token); it can raise the estimate, never lower it."""
        # (the hot writers set their fields with ``put`` and log the change once: see
        # __setattr__, ~0.3-0.6 µs per hooked write)
        put = _setattr
        with self._lock:
            cur = self.ttft_ms
            before = self.ttft_before_jump
            if censored:
                if cur is None or ms > cur:
                    if before is None and cur is not None and ms > cur * _JUMP:
                        put(self, "ttft_before_jump", cur)
                    put(self, "ttft_ms", ms)
                    put(self, "ttft_at", now)
                    self._logged()
                return
            if before is not None:
                # The sample after a one-sample jump decides: judged against the
                # estimate from before the jump, as if the outlier had not happened.
                # A region that really got slow raises it again right here.
                put(self, "ttft_before_jump", None)
                cur = before
            elif cur is not None and ms > cur * _JUMP:
                put(self, "ttft_before_jump", cur)  # provisional: the next sample decides
            if cur is None or ms >= cur:
                put(self, "ttft_ms", ms)  # the peak: a slowdown shows at once
            else:
                w = math.exp(-max(now - self.ttft_at, 0.0) / self._policy.decay_s)
                put(self, "ttft_ms", cur * w + ms * (1.0 - w))
            put(self, "ttft_at", now)
            put(self, "ttft_samples", self.ttft_samples + 1)
            if len(self._ring) < _RING:
                self._ring.append(ms)
            else:
                self._ring[self._ring_n % _RING] = ms
            put(self, "_ring_n", self._ring_n + 1)
            self._logged()

    def observe_stream(self, total_ms: float, output_tokens: int, ttft_ms: float | None) -> None:
        """Record a finished answer: total time and time per output token."""
        with self._lock:  # (fields the router does not read: no log entry)
            _setattr(self, "total_ms", total_ms if self.total_ms is None else 0.8 * self.total_ms + 0.2 * total_ms)
            if ttft_ms is not None and output_tokens > 1:
                tpot = max(total_ms - ttft_ms, 0.0) / (output_tokens - 1)
                _setattr(self, "tpot_ms", tpot if self.tpot_ms is None else 0.8 * self.tpot_ms + 0.2 * tpot)

    def observe_rtt(self, ms: float) -> None:
        self.rtt_ms = ms if self.rtt_ms is None else 0.7 * self.rtt_ms + 0.3 * ms

    def ttft_quantile(self, q: float) -> float | None:
        """A quantile of the recent TTFT window (None before any sample)."""
        with self._lock:
            if not self._ring:
                return None
            if self._ring_n - self._sorted_at >= 16 or self._sorted_at < 0:
                self._sorted = sorted(self._ring)
                self._sorted_at = self._ring_n
            s = self._sorted
        return s[min(len(s) - 1, int(q * len(s)))]

    # -- breaker and admission ----------------------------------------------------
    def admit(self, now: float) -> str | None:
        """Take a slot for an attempt: the breaker state it was admitted under ("closed",
        "half_open": holding one of the bounded trial permits, or "open": re-admitted by
        the ejection cap or panic), or None when the admission policy refuses (half-open
        permits all taken)."""
        with self._lock:
            t = self._change(self._breaker_rules.ready(self, now), now)
            if self._admission.allows(self, self._policy.breaker):
                if self.breaker == BreakerState.HALF_OPEN:
                    _setattr(self, "half_open_inflight", self.half_open_inflight + 1)
                _setattr(self, "inflight", self.inflight + 1)
                self._logged()
                self.counters.requests += 1
                admitted: str | None = self.breaker
            else:
                admitted = None
        if t is not None:  # outside the lock: hooks may read this state
            for fn in self.on_half_open:
                fn(t)
        return admitted

    def release(self, permit: bool) -> None:
        """Give the slot back (``permit``: it held a half-open trial permit)."""
        with self._lock:
            _setattr(self, "inflight", max(0, self.inflight - 1))
            if permit:
                _setattr(self, "half_open_inflight", max(0, self.half_open_inflight - 1))
            self._logged()

    def record_success(self, now: float, *, trial: bool) -> Transition | None:
        """A success (see :meth:`Breaker.success`)."""
        with self._lock:
            self.counters.successes += 1
            return self._change(self._breaker_rules.success(self, now, self._policy.breaker, trial=trial), now)

    def record_failure(self, now: float, reason: str, rand: float) -> Transition | None:
        """An endpoint fault. Returns the transition if the breaker opened."""
        with self._lock:
            self.counters.failures += 1
            self.last_error = reason
            return self._change(self._breaker_rules.failure(self, now, reason, rand, self._policy.breaker), now)

    # -- views --------------------------------------------------------------------
    def state_name(self, now: float) -> str:
        """One word for operators: drained, open, half_open, cooling or closed."""
        if self.drained is not None:
            return "drained"
        if self.breaker == "open":
            return "open" if now < self.open_until else "half_open"
        if self.quota.until > now:
            return "cooling"
        return self.breaker

    def record(self, now: float, wall: float) -> EndpointRecord:
        """This endpoint's row of ``snapshot()`` (a typed, documented record)."""
        ep = self.endpoint
        c = self.counters

        def at(t: float) -> float | None:
            return round(wall + (t - now), 3) if t else None

        state = self.state_name(now)
        reason = None
        until = None
        if state == "open":
            reason, until = self.last_error, at(self.open_until)
        elif state == "cooling":
            reason, until = self.quota.reason, at(self.quota.until)
        elif state == "drained":
            reason = self.drained
        return {
            "id": ep.id,
            "provider": ep.provider,
            "region": ep.region,
            "residency": list(ep.residency),
            "state": state,
            "reason": reason,
            "breaker": Breaker.view(self, now),
            "drained": self.drained is not None,
            "drained_reason": self.drained,
            "drained_at": at(self.drained_at) if self.drained is not None else None,
            "cooldown_remaining_s": round(max(self.quota.until - now, 0.0), 3),
            "weight": ep.weight,
            "opened_at": at(self.opened_at) if self.ejections else None,
            "until": until,
            "ejections": self.ejections,
            "ttft_ms": _r(self.ttft_ms),
            "ttft_p50_ms": _r(self.ttft_quantile(0.5)),
            "ttft_p90_ms": _r(self.ttft_quantile(0.9)),
            "tpot_ms": _r(self.tpot_ms),
            "rtt_ms": _r(self.rtt_ms),
            "samples": self.ttft_samples,
            "in_flight": self.inflight,
            "remote_in_flight": self.remote_inflight,
            "queue_waiting": self.queue_waiting,
            "requests": c.requests,
            "successes": c.successes,
            "failures": c.failures,
            "retries": c.retries,
            "hedges": c.hedges,
            "hedge_wins": c.hedge_wins,
            "wasted": c.wasted,
            "input_tokens": c.input_tokens,
            "output_tokens": c.output_tokens,
            # an endpoint without a price has an unknown cost, never a silent zero
            "cost_usd": round(c.cost_usd, 8) if ep.price is not None else None,
            "cost_estimated": c.cost_estimated,
            "price_known": ep.price is not None,
            "missing_models": sorted(self.missing_models),
            "unlisted_models": sorted(self.unlisted_models),
            "models_listed": None if self.listing is None else list(self.listing),
            "last_error": self.last_error,
            "limits": None if self.bucket is None else self.bucket.to_dict(now),
        }

    def to_dict(self, now: float, wall: float) -> dict[str, Any]:
        """:meth:`record` as a plain dict (the same keys and values)."""
        return dict(self.record(now, wall))


_setattr = object.__setattr__
_ENTRIES = changes.ENTRIES
#: The fields of EndpointState that the router reads (unusable_now, predict_ttft_ms,
#: the load and capacity terms); a write of any of them is a change for its index.
_ROUTED = frozenset(
    {
        "endpoint",
        "drained",
        "missing_models",
        "quota",
        "breaker",
        "open_until",
        "bucket",
        "rtt_ms",
        "ttft_ms",
        "ttft_at",
        "ttft_before_jump",
        "inflight",
        "remote_inflight",
        "queue_waiting",
    }
)
_BREAKER = Breaker()
_ADMISSION = Admission()

#: What a redefined endpoint inherits from its previous state besides its TTFT
#: window, breaker window and counters (see EndpointState.inherit).
_HISTORY = (
    "ttft_ms", "ttft_at", "ttft_samples", "tpot_ms", "total_ms", "rtt_ms", "baseline_ms", "_ring_n",
    "queue_waiting", "breaker", "consecutive", "ejections", "opened_at", "open_until", "missing_models",
    "last_error", "drained", "drained_at",
)  # fmt: skip


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


class Health:
    """All endpoints' states, the quota domains, and the hooks.

    ``states`` is indexed like the current catalog's endpoints and replaced as a
    whole by :meth:`retarget` (a live catalog update): readers take the tuple once.
    """

    def __init__(
        self,
        catalog: Catalog,
        policy: Policy,
        *,
        clock: Clock = time.monotonic,
        breaker: Breaker | None = None,
        admission: AdmissionPolicy | None = None,
    ) -> None:
        self.clock = clock
        self.policy = policy
        #: the breaker's rules and the admission policy every endpoint uses (injected:
        #: replaceable from code, tested alone)
        self.breaker: Breaker = breaker if breaker is not None else _BREAKER
        self.admission: AdmissionPolicy = admission if admission is not None else _ADMISSION
        self.domains: dict[str, QuotaDomain] = {}
        self.states: tuple[EndpointState, ...] = tuple(
            self._new_state(e, self.domains.setdefault(e.quota_domain, QuotaDomain(e.quota_domain)), policy)
            for e in catalog.endpoints
        )
        #: The current state of each endpoint id (what new attempts may use).
        self.by_id: dict[str, EndpointState] = {st.endpoint.id: st for st in self.states}
        #: States no longer in the catalog that still have attempts in flight.
        self.retired: list[EndpointState] = []
        #: Removed endpoints' states, by id: an endpoint added back gets its history back.
        self._removed: dict[str, EndpointState] = {}
        self.listeners: list[Callable[[Transition], None]] = []
        for st in self.states:
            st.on_half_open.append(self.emit)
        #: capacity buckets per quota domain with ``limits:`` (see limits.py)
        self.buckets: dict[str, Bucket] = {}
        self._assign_buckets(self.states, policy)
        self._rand = random.Random()
        self._swap_lock = threading.Lock()
        #: quota-domain cooldowns are shared by endpoints: extended under this lock
        #: (sync requests run on many threads: forward-only must hold between them)
        self._cool_lock = threading.Lock()
        #: every reason stored or logged here may echo upstream text: keys are masked
        #: (those of every catalog this Health has served: old attempts may still run)
        self._secrets: set[str] = set(catalog.secrets())
        self.redact = redactor(self._secrets)
        #: rotating tokens seen since (the latest few: older ones no longer work anyway)
        self._rotated: dict[str, None] = {}

    def _new_state(self, e: Endpoint, dom: QuotaDomain, policy: Policy) -> EndpointState:
        return EndpointState(e, dom, policy, breaker=self.breaker, admission=self.admission)

    def learn_secrets(self, current: Iterable[str]) -> None:
        """Also mask these secrets (credentials' current tokens; called on error paths)."""
        new = [s for s in current if s not in self._secrets and s not in self._rotated]
        if not new:
            return
        for s in new:
            self._rotated[s] = None
        while len(self._rotated) > 32:
            del self._rotated[next(iter(self._rotated))]
        self.redact = redactor([*self._secrets, *self._rotated])

    def learn_secret(self, secret: str | None) -> None:
        """Mask this credential too from now on: one that is not in the catalog (a token
        a credential provider fetched at run time). Cheap when already known."""
        if secret:
            self.learn_secrets((secret,))

    def emit(self, t: Transition | None, ep: Endpoint | None = None) -> None:
        if t is None:
            return
        if self.redact:
            t = dataclasses.replace(t, reason=self.redact(t.reason))
        level = logging.WARNING if t.new in ("open", "drained", "removed") else logging.INFO
        if ep is None:
            st = self.by_id.get(t.endpoint)
            ep = st.endpoint if st is not None else None
        log.log(
            level,
            "endpoint %s: %s -> %s (%s)",
            t.endpoint,
            t.old,
            t.new,
            t.reason,
            extra=log_fields(ep if ep is not None else t.endpoint, t.old, t.new, t.reason),
        )
        for fn in list(self.listeners):
            try:
                fn(t)
            except Exception:  # a broken hook must not break routing
                log.exception("health listener failed")

    # -- live operations -------------------------------------------------------------
    def live(self, ep: Endpoint) -> EndpointState | None:
        """The state a *new* attempt to ``ep`` (from a plan, perhaps made before a catalog
        update) may use: the endpoint's current state if it is still in the catalog with
        the same target (URL, credentials, residency, tags...) and not drained; else None."""
        st = self.by_id.get(ep.id)
        if st is None or st.drained is not None:
            return None
        cur = st.endpoint
        if cur is not ep and not same_target(cur, ep):
            return None
        return st

    def drain(self, st: EndpointState, reason: str) -> bool:
        """Mark an endpoint drained (no new attempts). False if it already was, for that reason."""
        if st.drained == reason:
            return False
        old = st.drained
        st.drained = reason
        now = self.clock()
        st.drained_at = now
        self.emit(Transition(st.endpoint.id, "drained" if old is not None else "serving", "drained", reason, now, None))
        return True

    def undrain(self, st: EndpointState, reason: str = "") -> bool:
        if st.drained is None:
            return False
        st.drained = None
        self.emit(Transition(st.endpoint.id, "drained", "serving", reason or "undrained", self.clock(), None))
        return True

    def retarget(self, catalog: Catalog, policy: Policy) -> tuple[EndpointState, ...]:
        """States for a new catalog, keeping each endpoint's history by id.

        An endpoint whose definition differs only in routing weights (index, weight,
        max_concurrency, price) keeps its state object; one with another target
        (URL, key, residency, tags, timeouts...) gets a new state that inherits the
        history, so that an attempt already running never changes where it sends.
        Removed endpoints are retired: their in-flight attempts finish on them.
        Returns the new states tuple; the caller publishes it (with the router).
        """
        with self._swap_lock:
            domains: dict[str, QuotaDomain] = {}
            states: list[EndpointState] = []
            keep: set[str] = set()
            for e in catalog.endpoints:
                dom = domains.get(e.quota_domain) or self.domains.get(e.quota_domain) or QuotaDomain(e.quota_domain)
                domains[e.quota_domain] = dom
                old = self.by_id.get(e.id) or self._removed.pop(e.id, None)
                if old is not None and same_target(old.endpoint, e):
                    old.retired = False
                    old.endpoint = e
                    old.quota = dom
                    old._policy = policy
                    st = old
                else:
                    st = self._new_state(e, dom, policy)
                    st.on_half_open.append(self.emit)
                    if old is not None:
                        st.inherit(old)
                        old.retired = True
                        self.retired.append(old)
                states.append(st)
                keep.add(e.id)
            now = self.clock()
            removed = [st for eid, st in self.by_id.items() if eid not in keep]
            for st in removed:
                st.retired = True
                self.retired.append(st)
                self._removed[st.endpoint.id] = st
            while len(self._removed) > 1000:  # bounded: ids come and go in a long life
                del self._removed[next(iter(self._removed))]
            self.policy = policy
            self.domains = domains
            self._assign_buckets(states, policy)
            self._secrets.update(catalog.secrets())
            self.redact = redactor([*self._secrets, *self._rotated])
            new = tuple(states)
            self.by_id = {st.endpoint.id: st for st in new}
            self.states = new
            self.retired = [st for st in self.retired if st.inflight > 0 and st.retired]
        for st in removed:
            t = Transition(st.endpoint.id, st.state_name(now), "removed", "removed from the catalog", now, None)
            self.emit(t, st.endpoint)
        return new

    def _assign_buckets(self, states: list[EndpointState] | tuple[EndpointState, ...], policy: Policy) -> None:
        """One capacity bucket per quota domain with ``limits:``; a domain whose limits
        did not change keeps its bucket (and what it holds) across catalog updates."""
        now = self.clock()
        buckets: dict[str, Bucket] = {}
        for st in states:
            lim = st.endpoint.limits
            name = st.quota.name
            if lim is not None and name not in buckets:
                old = self.buckets.get(name)
                same = old is not None and old.limits == lim and old.headroom == policy.limits.headroom
                buckets[name] = (
                    old if same and old is not None else Bucket(name, lim, now, headroom=policy.limits.headroom)
                )
        for st in states:
            st.bucket = buckets.get(st.quota.name)
        self.buckets = buckets

    def endpoint_fault(self, st: EndpointState, reason: str) -> None:
        reason = self.redact(reason)
        self.emit(st.record_failure(self.clock(), reason, self._rand.random()))

    def success(self, st: EndpointState, *, trial: bool) -> None:
        self.emit(st.record_success(self.clock(), trial=trial))

    def cooldown(self, st: EndpointState, seconds: float | None, reason: str) -> None:
        """Cool the endpoint's quota domain down for ``seconds`` — the server's
        Retry-After (:func:`~llm_multicloud.errors.parse_retry_after`), or None for
        ``policy.default_cooldown_s`` — capped at ``policy.max_retry_after_s``
        (:func:`~llm_multicloud.errors.cooldown_s`: the one rule); forward-only."""
        reason = self.redact(reason)
        seconds = cooldown_s(seconds, default_s=self.policy.default_cooldown_s, cap_s=self.policy.max_retry_after_s)
        now = self.clock()
        dom = st.quota
        until = now + seconds
        with self._cool_lock:
            extend = until > dom.until
            if extend:
                was = dom.until > now
                dom.until = until
                dom.reason = reason
                st.last_error = reason
        if extend and not was:
            self.emit(Transition(st.endpoint.id, st.breaker, "cooling", reason, now, until))

    def apply_remote_ejection(self, st: EndpointState, until: float, reason: str, ejections: int) -> None:
        """Another replica ejected this endpoint until ``until`` (this process's monotonic
        clock): adopt it if it ends later than what we know (forward-only)."""
        now = self.clock()
        with st._lock:
            adopted, c = self.breaker.remote_ejection(st, now, until, ejections, reason)
            if adopted:
                st.last_error = f"shared: {reason}"
        self.emit(st._change(c, now))

    def apply_remote_cooldown(self, st: EndpointState, until: float, reason: str) -> None:
        """Another replica saw a 429: cool this endpoint's quota domain until ``until``
        (monotonic; forward-only, capped like a local cooldown)."""
        self.cooldown(st, until - self.clock(), f"shared: {reason}")

    def observe_listing(self, st: EndpointState, listing: Iterable[str]) -> tuple[list[str], list[str]]:
        """Fold one ``/models`` listing into the endpoint's model presence.

        A logical model counts as listed when its served name (or its logical name)
        is in ``listing``. One that was listed before and is not now is *missing*:
        the endpoint is taken out for it, as a deployment that dropped the model. One
        that has never been listed is *unlisted*: servers list under names of their
        own (llama.cpp: its alias or the model file's path; gateways: nothing at all)
        and still answer the served name, so the endpoint keeps routing — real
        requests decide — and one warning names what the endpoint does list.
        Returns ``(missing, unlisted)``, sorted.
        """
        ids = tuple(sorted(set(listing)))
        present = {m for m, served in st.endpoint.models.items() if served in ids or m in ids}
        with st._lock:
            st.listing = ids
            st.listed_models |= present
            gone = frozenset(m for m in st.endpoint.models if m not in present and m in st.listed_models)
            unlisted = frozenset(m for m in st.endpoint.models if m not in st.listed_models)
            new = unlisted - st.unlisted_models
            st.unlisted_models = unlisted
            st.refused_models -= present  # the server lists the name now: real requests decide again
            gone |= st.refused_models
        for m in sorted(new):
            shown = ", ".join(repr(i) for i in ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
            log.warning(
                "endpoint %s: /models has never listed %r (the served name of %r); it lists %s. Routing to it "
                "continues while its requests succeed. To silence this, make the server list that name (llama.cpp: "
                "--alias / model_alias; vLLM: --served-model-name) or use a listed id as the served name",
                st.endpoint.id,
                st.endpoint.models[m],
                m,
                shown or "nothing",
            )
        self.set_model_presence(st, gone)
        return sorted(gone), sorted(unlisted)

    def served_name_refused(self, st: EndpointState, model: str) -> bool:
        """A real request for ``model`` got a 404 from ``st``. When its served name is
        one the endpoint's ``/models`` has never listed, that 404 settles the doubt the
        probe left open: the server does not have the name. The endpoint is taken out
        for that model (until a listing shows the name) and the request may fail over —
        without a breaker penalty: the endpoint is up, the catalog names the wrong model.
        Returns whether it did; a 404 for a listed name stays the caller's own fault."""
        if model not in st.unlisted_models:
            return False
        with st._lock:
            st.refused_models |= {model}
        served = st.endpoint.models.get(model, model)
        self.set_model_presence(
            st,
            st.missing_models | {model},
            f"a request for {served!r}, which /models has never listed, got 404: the server does not have that name",
        )
        return True

    def set_model_presence(self, st: EndpointState, missing: frozenset[str], reason: str | None = None) -> None:
        if missing != st.missing_models:
            st.missing_models = missing
            now = self.clock()
            if missing:
                why = reason or f"/models no longer lists {sorted(missing)}"
                self.emit(Transition(st.endpoint.id, "serving", "missing", why, now, None))
            else:
                self.emit(Transition(st.endpoint.id, "missing", "serving", "/models lists the model again", now, None))


def same_target(a: Endpoint, b: Endpoint) -> bool:
    """Do two definitions of an endpoint send the same bytes to the same place under the
    same rules? Everything but the routing weights (index, weight, max_concurrency, price)."""
    if a is b:
        return True
    return all(getattr(a, f) == getattr(b, f) for f in _TARGET_FIELDS)


_TARGET_FIELDS = tuple(
    f.name for f in dataclasses.fields(Endpoint) if f.name not in ("index", "weight", "max_concurrency", "price")
)


def log_fields(ep: Endpoint | str, old: str, new: str, reason: str) -> dict[str, Any]:
    """The structured fields of a state-change log record (``extra=``): JSON log
    formatters (python-json-logger, structlog's stdlib bridge) show them as keys."""
    if isinstance(ep, str):
        return {"endpoint": ep, "provider": None, "region": None, "from": old, "to": new, "reason": reason}
    return {"endpoint": ep.id, "provider": ep.provider, "region": ep.region, "from": old, "to": new, "reason": reason}
