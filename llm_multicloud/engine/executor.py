"""The executor: the engine's composition, from an intent to exactly one answer.

For each request it builds the request's :class:`~.ledger.Ledger`, plans with the
router, and runs *rounds*: each round is one race (:mod:`.race`) over one plan,
driven by :mod:`.driver` — directly when no hedge can happen, in a task group when
one can — or, for a sync request over blocking I/O that may hedge, by :mod:`.threads`
(the primary on the caller's thread, a worker thread only for a hedge that fires).
Between rounds it re-plans: when everything compliant is cooling down or out of
capacity but comes back before the deadline (it waits for it), when other requests
took the planned capacity (starved), or when only quota refusals failed (their
cooldowns may end in time). It stops at the attempt limit, the deadline or
the retry budget, with a 503 that says, per candidate, why.

The winner becomes a :class:`Result`: a request fault handed back as it is, a
complete answer with its cost header, or a committed stream read by
:class:`~.stream.Passthrough` (in the caller's task — or thread, for sync clients
over blocking I/O: the same code).

The policies are attributes, replaceable from code: ``executor.hedge``
(:class:`~.hedge.HedgePolicy`) and ``executor.retry`` (:class:`~.retry.RetryPolicy`).
Residency is enforced twice: the router only plans compliant endpoints, and
placement (:mod:`.placement`) re-checks right before an attempt's first byte.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..budget import Budget
from ..errors import DeadlineExceeded, FaultKind, RoutingError, error_message, failover_statuses
from ..router import complies
from ..vocabulary import AttemptOutcome, RequestOutcome
from .attempt import run as run_attempt
from .driver import run_direct, run_racing
from .hedge import HedgePolicy
from .ledger import Hook, Ledger, RequestHook
from .placement import Placement
from .race import AllFailed, Race
from .retry import RetryPolicy
from .stream import Passthrough, Result
from .threads import run_threads

if TYPE_CHECKING:
    from ..catalog import Catalog, Endpoint
    from ..health import EndpointState, Health
    from ..intent import Intent
    from ..policy import Policy, Timeouts
    from ..redaction import Redactor
    from ..router import Plan, Router
    from ..upstream import Upstream
    from .attempt import Attempt

# Response headers that describe the upstream connection, not the answer: dropped
# (bodies are handed over decoded and re-framed by the caller's HTTP library).
_HOP = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive", "set-cookie", "server"}
)

#: Rounds (races) per request: bounded; each wait ends before the deadline.
MAX_ROUNDS = 16
#: Re-plans after capacity was taken between a plan and its attempt.
MAX_STARVED = 1000


class _Rounds:
    """The state carried from one race to the next within one request."""

    __slots__ = ("attempts_left", "deadline", "failures", "key", "note", "rounds", "seed", "starved")

    def __init__(self, deadline: float, attempts_left: int, seed: float, key: tuple[int, str] | None) -> None:
        self.deadline = deadline
        self.attempts_left = attempts_left
        self.seed = seed
        self.key = key
        self.failures: list[Attempt] = []
        self.note: str | None = None
        self.rounds = 0
        self.starved = 0


class Executor:
    """Runs requests for one MultiCloud: router, health, budgets and hooks are shared."""

    def __init__(
        self,
        catalog: Catalog,
        policy: Policy,
        router: Router,
        health: Health,
        *,
        hooks: list[Hook],
        request_hooks: list[RequestHook] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self.policy = policy
        self.router = router
        self.health = health
        self.hooks = hooks
        self.request_hooks: list[RequestHook] = request_hooks if request_hooks is not None else []
        self.clock = clock
        self._failover = failover_statuses(policy.failover_on)
        #: the retry policy (replaceable: any object with RetryPolicy's methods)
        self.retry = RetryPolicy.build(policy.retry, clock)
        #: the hedging policy (replaceable: any object with HedgePolicy's methods)
        self.hedge = HedgePolicy.build(policy.hedge, clock, default_ttft_ms=policy.default_ttft_ms)
        self._timeouts: dict[tuple[Endpoint, str | None], Timeouts] = {}
        #: (model, residency, tags) -> no credential of a compliant endpoint suspends
        self._safe: dict[tuple[str, frozenset[str] | None, tuple[tuple[str, str], ...]], bool] = {}
        self._rand = random.Random()
        #: (router, states) of one catalog generation, read together: a live catalog
        #: update (:meth:`reconfigure`) replaces both at once.
        self.view: tuple[Router, tuple[EndpointState, ...]] = (router, health.states)

    @property
    def retry_budget(self) -> Budget:
        return self.retry.budget

    @property
    def hedge_budget(self) -> Budget:
        return self.hedge.budget

    @property
    def failover(self) -> frozenset[int]:
        """The statuses that fail over (``policy.failover_on``)."""
        return self._failover

    @property
    def redact(self) -> Redactor:
        """Masks keys in every string derived from upstream bytes (reasons, messages):
        Health's, which knows the keys of every catalog generation (and learns the
        tokens that credentials fetched since: they rotate)."""
        self.health.learn_secrets(self.catalog.live_secrets())
        return self.health.redact

    def message(self, body: bytes) -> str:
        """The human part of an upstream error body or event, keys masked (before the
        text is shortened, and again after JSON escapes are decoded)."""
        return self.redact(error_message(self.redact.bytes(body)))

    def excerpt(self, data: bytes, n: int = 80) -> str:
        """A short, key-free excerpt of upstream bytes, for a reason or a message."""
        return repr(self.redact.bytes(data[: 4 * n]))[:n]

    def resume_style(self, ep: Endpoint) -> str:
        """How an endpoint continues a partial answer: its catalog setting, else the policy's."""
        return ep.resume or self.policy.resume.style

    def timeouts_for(self, ep: Endpoint, model: str | None) -> Timeouts:
        """Deadlines for one endpoint and model: the policy's, overridden by the model's
        (reasoning models need a long first token), overridden by the endpoint's."""
        key = (ep, model)
        t = self._timeouts.get(key)
        if t is None:
            spec = self.catalog.models.get(model) if model is not None else None
            update = {**((spec.timeouts or {}) if spec is not None else {}), **ep.timeouts}
            t = self.policy.timeouts.model_copy(update=update) if update else self.policy.timeouts
            self._timeouts[key] = t
        return t

    def reconfigure(self, catalog: Catalog, policy: Policy, router: Router, states: tuple[EndpointState, ...]) -> None:
        """Adopt a new catalog generation (``MultiCloud.update_catalog``). Requests
        already planned keep their plan; :meth:`Health.live` stops them from starting
        attempts on endpoints that are gone. Budgets keep their history."""
        self.view = (router, states)
        self.catalog, self.policy, self.router = catalog, policy, router
        self._timeouts = {}
        self._safe = {}
        self._failover = failover_statuses(policy.failover_on)
        self.retry.reconfigure(policy.retry)
        self.hedge.reconfigure(policy.hedge, default_ttft_ms=policy.default_ttft_ms)

    def needs_loop(self, intent: Intent) -> bool:
        """Does this sync request need the background event loop? Only when a
        credential of an endpoint that may serve it (the model's endpoints that
        comply with its residency and tags) may suspend — a user's own
        ``Credential`` (``never_suspends`` False). Everything else, hedges included
        (:mod:`.threads`), runs on the caller's thread over blocking I/O
        (``upstream.SyncIO``). Memoised per (model, residency, tags) and catalog
        generation (:meth:`reconfigure` empties it)."""
        model = intent.model
        if model is None:
            return False
        c = intent.constraints
        key = (model, c.residency, c.tags)
        safe = self._safe.get(key)
        if safe is None:
            if len(self._safe) >= 4096:
                self._safe.clear()  # bounded: tags come from request headers
            safe = self._safe[key] = all(
                e.credential.never_suspends for e in self.catalog.endpoints if model in e.models and complies(e, c)
            )
        return not safe

    # -- planning -----------------------------------------------------------------
    def plan(self, intent: Intent, now: float, seed: float, affinity: tuple[int, str] | None = None) -> Plan:
        assert intent.model is not None
        router, states = self.view
        return router.plan(
            intent.model,
            intent.constraints,
            states,
            now,
            input_tokens=intent.input_tokens,
            max_tokens=intent.max_tokens,
            seed=seed,
            # a request needs a handful of candidates: primary, hedges, failovers
            limit=self.retry.max_attempts + self.policy.hedge.max_in_flight + 2,
            affinity=affinity,
        )

    # -- the request ----------------------------------------------------------------
    def ledger(self, intent: Intent, upstream: Upstream | None = None) -> Ledger:
        """A new request's ledger, started now."""
        return Ledger(
            intent,
            self.clock(),
            health=self.health,
            clock=self.clock,
            hooks=self.hooks,
            request_hooks=self.request_hooks,
            default_cooldown_s=self.policy.default_cooldown_s,
            upstream=upstream,
        )

    async def execute(self, intent: Intent, upstream: Upstream) -> Result:
        if intent.model is None:
            raise RoutingError(
                400,
                "not_routable",
                f"{intent.method} /{intent.path} names no 'model'; llm_multicloud routes model requests "
                "(chat, completions, embeddings, responses). Use a plain client for other APIs.",
            )
        ledger = self.ledger(intent, upstream)
        try:
            return await self._execute(ledger, upstream)
        except RoutingError as err:
            outcome = RequestOutcome.FAILED if ledger.attempts else RequestOutcome.REQUEST_ERROR
            ledger.request_done(None, outcome, err.status, err.code)
            raise
        except DeadlineExceeded:
            ledger.request_done(None, RequestOutcome.TIMEOUT, None, "timeout")
            raise
        except BaseException:
            ledger.request_done(None, RequestOutcome.CANCELLED, None, "cancelled")
            raise

    def _deadline(self, intent: Intent, start: float) -> float:
        """The request's overall deadline: the caller's timeout, the model's, the policy's."""
        spec = self.catalog.models.get(intent.model or "")
        model_total = (spec.timeouts or {}).get("total_s") if spec is not None else None
        total = min(intent.timeout_s or math.inf, model_total or self.policy.timeouts.total_s or math.inf)
        return start + (total if math.isfinite(total) else 600.0)

    async def _execute(self, ledger: Ledger, upstream: Upstream) -> Result:
        intent = ledger.intent
        self.retry.budget.deposit()
        self.hedge.budget.deposit()
        aff = self.policy.affinity
        key = intent.affinity_key(prefix=aff.prefix, min_tokens=aff.prefix_min_tokens) if aff.enabled else None
        r = _Rounds(self._deadline(intent, ledger.t0), self.retry.max_attempts, self._rand.random(), key)
        plan = self.plan(intent, ledger.t0, r.seed, key)
        while r.rounds < MAX_ROUNDS:
            if not plan.candidates:
                if not await self._wait_for_room(plan, r, upstream):
                    break
            else:
                r.rounds += 1
                try:
                    return await self._race(ledger, plan, upstream, r.deadline, r.attempts_left)
                except AllFailed as exc:
                    if not self._next_round(exc, r):
                        break
            plan = self.plan(intent, self.clock(), r.seed, key)
        code = "all_attempts_failed" if r.failures else "no_endpoint_available"
        raise RoutingError(503, code, self._unavailable(plan, r.failures, r.deadline, r.note, r.attempts_left))

    async def _wait_for_room(self, plan: Plan, r: _Rounds, upstream: Upstream) -> bool:
        """Everything compliant is cooling down (429 + Retry-After) or out of capacity:
        wait if one comes back before the deadline (True: plan again), else stop."""
        if plan.wait_until is None or plan.wait_until + 0.001 >= r.deadline or r.attempts_left <= 0:
            return False
        _ask_for_capacity(plan, self.view[1])
        await upstream.io.sleep(max(plan.wait_until - self.clock(), 0.0) + 0.001)
        return True

    def _next_round(self, exc: AllFailed, r: _Rounds) -> bool:
        """After a race without a winner: True to plan again and race once more."""
        if exc.starved:
            # Other requests took the planned endpoints' capacity between the plan and
            # the attempt: plan again (it waits for room, or fails).
            r.rounds -= 1
            r.starved += 1
            if r.starved <= MAX_STARVED:
                return True
        r.failures.extend(exc.failures)
        r.attempts_left -= len(exc.failures)
        r.note = exc.note
        # Only quota refusals: their cooldowns may end within the deadline.
        return exc.note is None and bool(exc.failures) and all(a.fault is FaultKind.QUOTA for a in exc.failures)

    async def _race(self, ledger: Ledger, plan: Plan, upstream: Upstream, deadline: float, attempts: int) -> Result:
        # A hedge needs two attempts at once; when none can happen (this plan's
        # compliant candidates, the policy, the budget), no race machinery at all.
        # When one can: a task group over async I/O, and over blocking I/O (a sync
        # caller's thread) the thread driver, which starts a thread only for an
        # attempt that really starts beside another one.
        io_ = upstream.io
        hedging = self.hedge.possible(plan) and self.hedge.budget.balance() >= 1.0
        race = Race(
            plan,
            ledger,
            hedge=self.hedge,
            retry=self.retry,
            placement=Placement(self.health, ledger.intent, self.resume_style),
            health=self.health,
            deadline=deadline,
            attempts_left=attempts,
            clock=self.clock,
            hedging=hedging,
            event_bytes=self.policy.read_limits.event_bytes,
        )
        io = functools.partial(self._attempt, intent=ledger.intent, upstream=upstream, deadline=deadline)
        if not hedging:
            winner = await run_direct(race, io, io_.shield)
        elif io_.concurrent:
            winner = await run_racing(race, io, self.clock)
        else:
            winner = await run_threads(race, io, self.clock)
        return self._result(winner, ledger)

    async def _attempt(self, a: Attempt, *, intent: Intent, upstream: Upstream, deadline: float) -> None:
        await run_attempt(self, a, intent, upstream, deadline)

    def _result(self, w: Attempt, ledger: Ledger) -> Result:
        """The winner, as the transport hands it to the SDK."""
        intent = ledger.intent
        headers = [(k, v) for k, v in w.headers if k not in _HOP]
        meta = ledger.meta_headers(w)
        if w.fault is FaultKind.REQUEST:
            ledger.finish(w, AttemptOutcome.REQUEST_ERROR)
            ledger.request_done(w, RequestOutcome.REQUEST_ERROR, w.status, str(w.status))
            return Result(w.status or 400, headers + meta, w.body or b"", None)
        ledger.committed(w)
        if not intent.stream:
            ledger.succeeded(w, 0, stream_ttft=False)
            meta.append(ledger.cost_header())
            ledger.request_done(w, RequestOutcome.OK, w.status, None)
            return Result(w.status or 200, headers + meta, w.body or b"", None)
        strip = not intent.wants_usage and intent.operation in ("chat", "text_completion")
        return Result(w.status or 200, headers + meta, None, Passthrough(self, w, ledger, strip))

    # -- messages -------------------------------------------------------------------
    def _unavailable(
        self, plan: Plan, failures: list[Attempt], deadline: float, note: str | None, attempts_left: int
    ) -> str:
        """The 503's text: per candidate, why it did not answer; why the request stopped."""
        now = self.clock()
        lines = [f"no endpoint could serve {plan.model!r} ({_constraint_text(plan)}); per candidate:"]
        for a in failures:
            lines.append(f"  {a.ep.id} ({a.ep.provider} {a.ep.region}): attempt {a.n} ({a.kind}) failed: {a.reason}")
        # Why the request stopped, as it happened: the attempt limit, the deadline, the
        # retry budget, or a cooldown that outlasts the deadline.
        if attempts_left <= 0:
            why: str | None = f"all {self.retry.max_attempts} attempts were used (policy.retry.max_attempts)"
        elif now >= deadline:
            why = "the request's deadline passed"
        else:
            why = None
        failed = {a.ep.index for a in failures}
        for c in plan.candidates:
            if c.endpoint.index not in failed:
                lines.append(
                    f"  {c.endpoint.id} ({c.endpoint.provider} {c.endpoint.region}): not tried "
                    f"({why or ('retry budget exhausted' if note else 'the request stopped first')})"
                )
        for x in plan.excluded:
            lines.append(f"  {x.endpoint.id} ({x.endpoint.provider} {x.endpoint.region}): {x.reason}")
        if why:
            lines.append(f"  stopped: {why}")
        if note:
            lines.append(f"  note: {note}")
        if plan.wait_until is not None:
            ends = f"the first cooldown ends in {max(plan.wait_until - now, 0.0):.1f}s"
            if attempts_left > 0 and plan.wait_until + 0.001 >= deadline:
                lines.append(f"  {ends}, after the request's deadline ({max(deadline - now, 0.0):.1f}s left)")
            else:
                lines.append(f"  {ends}")
        return "\n".join(lines)


def _constraint_text(plan: Plan) -> str:
    c = plan.constraints
    return f"residency {c.residency_label}" if c.residency is not None else "no residency constraint"


def _ask_for_capacity(plan: Plan, states: tuple[EndpointState, ...]) -> None:
    """A request waits for capacity: leased buckets (shared state) ask for a lease now."""
    for x in plan.excluded:
        if x.kind == "limited":
            b = states[x.endpoint.index].bucket
            if b is not None and b.leased and b.on_starved is not None:
                b.on_starved()
