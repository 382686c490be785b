"""The executor: one async core that turns a plan into exactly one answer.

For each request it runs *attempts* against the plan's candidates inside one
anyio task group, and resolves them into a single result:

* **Commit point.** An attempt is *ready* when a streamed answer produced its first
  content-bearing event (not the HTTP 200, not the role-only chunk: see
  :mod:`llm_multicloud.sse`), or a non-streamed answer arrived complete and parsed.
  Until then nothing has reached the caller, so anything may still be retried.
* **Failover.** A failed attempt (endpoint or quota fault) starts the next
  candidate at once, within the retry budget, the attempt limit and the caller's
  deadline; a retry never returns to the endpoint that just failed while another is
  available. A request fault (400/404/413/422...) is the caller's problem: the reply
  is handed back unchanged, and no other endpoint is bothered.
* **Hedging.** If the primary is not ready after the hedge delay (a quantile of its
  recent TTFT, clamped), a second attempt starts on the best candidate in another
  *failure domain* (another region, preferably another provider), within the hedge
  budget. The first ready attempt wins.
* **Cancellation.** Losers are cancelled through the task group's cancel scope;
  their responses are closed (shielded), which closes their connections, so the
  provider stops generating. The race ends before the winner is handed to the
  SDK: nothing is ever raced across a ``yield``.

The winner's stream is then read by :class:`Passthrough`, chunk by chunk, in the
caller's task (async) or through the blocking portal (sync): the same code.

Residency is enforced twice: the router only plans compliant endpoints, and every
attempt re-checks compliance right before its first byte is sent.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from opentelemetry.context import get_current as _otel_current

from . import auth, sse
from .budget import Budget
from .catalog import Catalog, Endpoint
from .errors import (
    DeadlineExceeded,
    FaultKind,
    RoutingError,
    classify_status,
    error_message,
    failover_statuses,
    local_fault_message,
)
from .health import EndpointState, Health
from .intent import Intent
from .limits import estimate_tokens
from .policy import Policy, Timeouts
from .redaction import Redactor
from .router import Candidate, Plan, Router, complies
from .upstream import Upstream, UpstreamError, UpstreamResponse
from .vocabulary import AttemptKind, AttemptOutcome, RequestOutcome

if TYPE_CHECKING:
    from .stream import Passthrough

log = logging.getLogger("llm_multicloud.executor")

# Response headers that describe the upstream connection, not the answer: dropped
# (bodies are handed over decoded and re-framed by the caller's HTTP library).
_HOP = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive", "set-cookie", "server"}
)


class _AllFailed(Exception):
    """Every attempt of one race failed (internal: execute() decides what follows)."""

    def __init__(self, failures: list[_Attempt], note: str | None, *, starved: bool = False) -> None:
        super().__init__(f"{len(failures)} attempts failed")
        self.failures = failures
        self.note = note
        #: nothing could even start: every candidate's capacity was taken since the plan
        self.starved = starved


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt, as given to audit hooks: where the request's data went and what happened."""

    request_id: str
    attempt: int
    kind: str  # an AttemptKind: primary | hedge | retry
    endpoint: str
    provider: str
    region: str
    residency: str  # the request's residency constraint ("any" when unconstrained)
    model: str
    outcome: str  # an AttemptOutcome: won | failed | cancelled | request_error | local_error | interrupted | ...
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


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One logical request, end to end (given to request hooks; telemetry builds its
    spans and metrics from it). Emitted once, when the answer is complete: for a
    stream, at its end (or break)."""

    request_id: str
    operation: str  # chat | text_completion | embeddings | responses | ...
    model: str  # the logical model the caller asked for
    stream: bool
    outcome: str  # a RequestOutcome: ok | request_error | failed | timeout | interrupted | closed_by_caller | ...
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


class _Request:
    """Book-keeping of one logical request across its attempts and rounds."""

    __slots__ = ("attempts", "done", "hedged", "intent", "otel_context", "records", "t0", "upstream", "wall0")

    def __init__(self, intent: Intent, t0: float) -> None:
        self.intent = intent
        self.t0 = t0
        self.wall0 = time.time_ns()
        self.attempts: list[_Attempt] = []
        self.records: list[AttemptRecord] = []
        self.hedged = False
        self.done = False
        self.upstream: Upstream | None = None
        # execute() runs in the caller's context (async: its task; sync: the portal
        # runs the coroutine in a copy of the caller's context).
        self.otel_context = _otel_current()

    def wall(self, t: float) -> int:
        return self.wall0 + int((t - self.t0) * 1e9)


class _Attempt:
    __slots__ = (
        "body",
        "buffered",
        "credential_failed",
        "ep",
        "fault",
        "headers",
        "iter",
        "kind",
        "n",
        "permit",
        "ready_at",
        "reason",
        "reserved",
        "resp",
        "retry_after",
        "splitter",
        "st",
        "status",
        "t0",
        "trial",
        "ttft",
        "usage",
    )

    def __init__(
        self, n: int, kind: str, st: EndpointState, admitted: str, t0: float, event_bytes: int = sse.MAX_EVENT_BYTES
    ) -> None:
        self.n = n
        self.kind = kind
        self.st = st
        self.ep: Endpoint = st.endpoint
        #: admitted while the breaker was not closed: its success closes the breaker
        self.trial = admitted != "closed"
        #: holds one of the bounded half-open trial permits
        self.permit = admitted == "half_open"
        self.t0 = t0
        self.resp: UpstreamResponse | None = None
        self.iter: AsyncIterator[bytes] | None = None
        self.splitter = sse.EventSplitter(event_bytes)
        self.buffered: list[bytes] = []
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.body: bytes | None = None
        self.fault: FaultKind | None = None
        self.reason: str | None = None
        self.retry_after: float | None = None
        #: the credential could not be obtained: no cooldown, no penalty (the router
        #: excludes the endpoint while its credential is unavailable)
        self.credential_failed = False
        self.ttft: float | None = None
        self.ready_at: float | None = None
        self.usage: dict[str, Any] | None = None
        #: tokens reserved in the endpoint's capacity bucket, settled when it ends
        self.reserved = 0


@dataclass(slots=True)
class Result:
    """What the transport hands to the SDK: a full body, or a stream to pull from."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | None
    stream: Passthrough | None


Hook = Callable[[AttemptRecord], None]
RequestHook = Callable[[RequestRecord], None]


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
        self._secrets = catalog.secrets()
        self._failover = failover_statuses(policy.failover_on)
        r = policy.retry
        self.retry_budget = Budget(r.budget, min_per_s=r.min_per_s, window_s=r.window_s, clock=clock)
        self.hedge_budget = Budget(policy.hedge.budget, min_per_s=0.1, window_s=30.0, clock=clock)
        self._timeouts: dict[tuple[Endpoint, str | None], Timeouts] = {}
        self._rand = random.Random()
        #: (router, states) of one catalog generation, read together: a live catalog
        #: update (:meth:`reconfigure`) replaces both at once.
        self.view: tuple[Router, tuple[EndpointState, ...]] = (router, health.states)

    @property
    def redact(self) -> Redactor:
        """Masks keys in every string derived from upstream bytes (reasons, messages):
        Health's, which knows the keys of every catalog generation (and learns the
        tokens that credentials fetched since: they rotate)."""
        self.health.learn_secrets(self.catalog.live_secrets())
        return self.health.redact

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
        self._failover = failover_statuses(policy.failover_on)
        r = policy.retry
        self.retry_budget.ratio, self.retry_budget.min_per_s, self.retry_budget.window_s = (
            r.budget,
            r.min_per_s,
            r.window_s,
        )
        self.hedge_budget.ratio = policy.hedge.budget

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
            limit=self.policy.retry.max_attempts + self.policy.hedge.max_in_flight + 2,
            affinity=affinity,
        )

    # -- the core -----------------------------------------------------------------
    async def execute(self, intent: Intent, upstream: Upstream) -> Result:
        if intent.model is None:
            raise RoutingError(
                400,
                "not_routable",
                f"{intent.method} /{intent.path} names no 'model'; llm_multicloud routes model requests "
                "(chat, completions, embeddings, responses). Use a plain client for other APIs.",
            )
        clock = self.clock
        start = clock()
        req = _Request(intent, start)
        req.upstream = upstream
        try:
            return await self._execute(req, upstream)
        except RoutingError as err:
            self._request_done(req, None, "failed" if req.attempts else "request_error", err.status, err.code)
            raise
        except DeadlineExceeded:
            self._request_done(req, None, "timeout", None, "timeout")
            raise
        except BaseException:
            self._request_done(req, None, "cancelled", None, "cancelled")
            raise

    async def _execute(self, req: _Request, upstream: Upstream) -> Result:
        clock = self.clock
        intent = req.intent
        start = req.t0
        spec = self.catalog.models.get(intent.model or "")
        model_total = (spec.timeouts or {}).get("total_s") if spec is not None else None
        total = min(intent.timeout_s or math.inf, model_total or self.policy.timeouts.total_s or math.inf)
        deadline = start + (total if math.isfinite(total) else 600.0)
        self.retry_budget.deposit()
        self.hedge_budget.deposit()
        seed = self._rand.random()
        failures: list[_Attempt] = []
        attempts_left = self.policy.retry.max_attempts
        note: str | None = None
        aff = self.policy.affinity
        key = intent.affinity_key(prefix=aff.prefix, min_tokens=aff.prefix_min_tokens) if aff.enabled else None
        plan = self.plan(intent, start, seed, key)
        rounds = starved = 0
        while rounds < 16:  # bounded: races are counted; each wait ends before the deadline
            now = clock()
            if not plan.candidates:
                if plan.wait_until is not None and plan.wait_until + 0.001 < deadline and attempts_left > 0:
                    # Everything compliant is cooling down (429 + Retry-After) or out of
                    # capacity, but one comes back before the deadline: wait for it
                    # rather than fail.
                    await anyio.sleep(max(plan.wait_until - now, 0.0) + 0.001)
                    plan = self.plan(intent, clock(), seed, key)
                    continue
                break
            rounds += 1
            try:
                return await self._race(req, plan, upstream, deadline, attempts_left)
            except _AllFailed as exc:
                if exc.starved:
                    # Other requests took the planned endpoints' capacity between the
                    # plan and the attempt: plan again (it waits for room, or fails).
                    rounds -= 1
                    starved += 1
                    if starved <= 1000:
                        plan = self.plan(intent, clock(), seed, key)
                        continue
                failures.extend(exc.failures)
                attempts_left -= len(exc.failures)
                note = exc.note
                if (
                    exc.note is not None
                    or not exc.failures
                    or any(a.fault is not FaultKind.QUOTA for a in exc.failures)
                ):
                    break
                # Only quota refusals: their cooldowns may end within the deadline.
                plan = self.plan(intent, clock(), seed, key)
        code = "all_attempts_failed" if failures else "no_endpoint_available"
        raise RoutingError(503, code, self._unavailable(plan, failures, deadline, note, attempts_left))

    async def _race(self, req: _Request, plan: Plan, upstream: Upstream, deadline: float, attempts: int) -> Result:
        intent = req.intent
        start = req.t0
        clock = self.clock
        policy = self.policy
        send, recv = anyio.create_memory_object_stream[_Attempt](max_buffer_size=64)
        tried: set[int] = set()
        in_flight: list[_Attempt] = []
        failures: list[_Attempt] = []
        everyone = req.attempts
        winner: _Attempt | None = None
        local: _Attempt | None = None  # failed in this process: nobody's fault upstream
        retries_left = attempts - 1
        budget_refused = False
        # Revisiting an endpoint within one request is allowed only when it is the one
        # compliant endpoint there is (then retrying is the only way to ride out a blip).
        only_one = len(plan.candidates) == 1 and not any(x.kind in ("ejected", "cooling") for x in plan.excluded)
        need = estimate_tokens(intent.input_tokens, intent.max_tokens)
        refused = [0]  # reservations refused: capacity taken since the plan

        def pick(kind: str, last: _Attempt | None) -> tuple[Candidate, EndpointState, str] | None:
            now = clock()
            live = self.health.live
            pool = [c for c in plan.candidates if c.endpoint.index not in tried]
            if kind == "hedge":
                domains = {a.ep.failure_domain for a in in_flight}
                providers = {a.ep.provider for a in in_flight}
                pool = [c for c in pool if c.endpoint.failure_domain not in domains]
                pool.sort(key=lambda c: c.endpoint.provider in providers)  # stable: other providers first
            elif not pool and last is not None and only_one:
                pool = list(plan.candidates)
            for c in pool:
                st = live(c.endpoint)
                if st is None:
                    continue  # drained, removed or redefined since the plan was made
                if c.endpoint.id in intent.avoid or (
                    intent.resume_prefix is not None and self.resume_style(c.endpoint) == "none"
                ):
                    continue  # resuming: not the endpoint that broke, and one that can continue
                if st.quota.until > now:
                    continue  # cooled down during this request (e.g. its quota domain got a 429)
                if st.breaker == "open" and st.open_until > now and not c.readmitted:
                    continue  # ejected during this request
                if not complies(st.endpoint, intent.constraints):  # second lock; the router already filtered
                    raise RoutingError(500, "residency_violation_prevented", f"refused to send to {c.endpoint.id}")
                b = st.bucket
                if b is not None and not b.reserve(now, need):
                    refused[0] += 1
                    continue  # its quota is spent (by other requests since the plan)
                admitted = st.admit(now)
                if admitted is None:
                    if b is not None:
                        b.settle(need, 0, refund_request=True)
                    continue
                return c, st, admitted
            return None

        def has_hedge_target() -> bool:
            """Another failure domain to hedge to (checked before spending budget)."""
            domains = {a.ep.failure_domain for a in in_flight}
            return any(
                c.endpoint.index not in tried and c.endpoint.failure_domain not in domains for c in plan.candidates
            )

        def launch(tg: anyio.abc.TaskGroup, kind: str, last: _Attempt | None = None) -> _Attempt | None:
            got = pick(kind, last)
            if got is None:
                return None
            c, st, admitted = got
            a = _Attempt(len(everyone) + 1, kind, st, admitted, clock(), policy.read_limits.event_bytes)
            if st.bucket is not None:
                a.reserved = need
            tried.add(c.endpoint.index)
            everyone.append(a)
            in_flight.append(a)
            if kind == "hedge":
                st.hedges += 1
            elif kind == "retry":
                st.retries += 1
            tg.start_soon(self._attempt, a, intent, upstream, send.clone(), deadline)
            return a

        try:
            async with anyio.create_task_group() as tg:
                first = launch(tg, "primary")
                if first is None:
                    tg.cancel_scope.cancel()
                else:
                    next_hedge = self._hedge_at(first, plan, intent)
                    while in_flight:
                        wake = min(next_hedge, deadline)
                        a = None
                        with anyio.move_on_after(max(wake - clock(), 0.0)):
                            a = await recv.receive()
                        if a is None:
                            if clock() >= deadline:
                                break
                            next_hedge = math.inf
                            if (
                                len(in_flight) < policy.hedge.max_in_flight
                                and not self._saturated(plan)
                                and self.hedge_budget.try_withdraw()
                            ):
                                h = launch(tg, "hedge")
                                if h is not None:
                                    req.hedged = True
                                    next_hedge = self._hedge_at(h, plan, intent)
                            continue
                        in_flight.remove(a)
                        if a.fault is None or (a.fault is FaultKind.REQUEST and not self._name_refused(a, intent)):
                            winner = a
                            break
                        if a.fault is FaultKind.LOCAL:
                            # Every endpoint would fail the same way: no penalty, no
                            # failover, and the caller hears about it at once.
                            self._finish_attempt(a, req, "local_error")
                            local = a
                            break
                        failures.append(a)
                        self._penalize(a)
                        self._finish_attempt(a, req, "failed")
                        if retries_left > 0 and clock() < deadline:
                            if self.retry_budget.try_withdraw():
                                r = launch(tg, "retry", a)
                                if r is not None:
                                    retries_left -= 1
                                    if next_hedge == math.inf and len(in_flight) == 1:
                                        next_hedge = self._hedge_at(r, plan, intent)
                            else:
                                budget_refused = True
                    tg.cancel_scope.cancel()
        except BaseException:
            # The caller went away (cancellation) or something broke: nothing wins.
            if winner is not None:
                in_flight.append(winner)
                winner = None
            raise
        finally:
            # Attempts that became ready but lost the race, or were cancelled, are closed
            # and accounted for: no slot, task or connection outlives the request.
            with anyio.CancelScope(shield=True):
                send.close()
                while True:
                    try:
                        late = recv.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    if late is not winner and late in in_flight:
                        in_flight.remove(late)
                        if late.resp is not None:
                            await late.resp.aclose()
                        self._finish_attempt(late, req, "cancelled")
                for a in in_flight:
                    if a is winner:
                        continue
                    if a.resp is not None:
                        await a.resp.aclose()
                    if a.ttft is None:
                        # Cancelled before its first token: a lower bound of its TTFT.
                        a.st.observe_ttft((clock() - a.t0) * 1000.0, clock(), censored=True)
                    self._finish_attempt(a, req, "cancelled")
                recv.close()
        if local is not None:
            raise RoutingError(500, "local_error", local.reason or "local error")
        if winner is None:
            if everyone and clock() >= deadline and not failures:
                raise DeadlineExceeded(f"no endpoint answered within the deadline ({deadline - start:.1f}s)")
            note = "retry budget exhausted (a wide outage must not multiply load)" if budget_refused else None
            raise _AllFailed(failures, note, starved=not tried and refused[0] > 0)
        return self._commit(winner, req)

    # -- one attempt --------------------------------------------------------------
    async def _attempt(
        self,
        a: _Attempt,
        intent: Intent,
        upstream: Upstream,
        send: MemoryObjectSendStream[_Attempt],
        deadline: float,
    ) -> None:
        ep = a.ep
        to = self.timeouts_for(ep, intent.model)
        assert intent.model is not None
        url, headers = self.catalog.request_for(ep, intent.path, intent.query, intent.headers)
        body = (
            intent.body_for(ep.models[intent.model], add_usage=True, resume_style=self.resume_style(ep))
            if intent.body is not None
            else None
        )
        # Streams: until the first content event. Non-streamed answers arrive whole
        # (servers send no headers before the body), so they get the longer response_s.
        limit = to.first_token_s if intent.stream else to.response_s
        limits = self.policy.read_limits
        budget = max(min(limit, deadline - self.clock()), 0.001)
        handed = False
        try:
            with send:
                try:
                    with anyio.fail_after(budget):
                        # The credential sees the final request (and signs it); a 401 is
                        # refreshed and sent once more inside this attempt.
                        resp, reauth = await auth.send(
                            upstream,
                            ep.credential,
                            intent.method,
                            url,
                            headers,
                            body,
                            connect_s=min(to.connect_s, budget),
                            read_s=to.chunk_gap_s if intent.stream else budget,
                        )
                        a.resp = resp
                        a.status = resp.status
                        a.headers = resp.headers
                        a.fault = classify_status(resp.status, self._failover)
                        redirect = 300 <= resp.status < 400
                        if redirect:
                            # Never followed (the credential would go where the catalog
                            # does not say) and never an answer: the endpoint's fault.
                            a.fault = FaultKind.ENDPOINT
                        if a.fault is not None:
                            raw = await resp.read(limit=limits.error_body_bytes, truncate=True)
                            a.body = self.redact.bytes(raw)
                            if redirect:
                                where = self.redact(resp.header("location") or "nowhere")[:200]
                                a.reason = (
                                    f"HTTP {resp.status} redirect to {where} (redirects are not followed; "
                                    "fix the endpoint's base_url)"
                                )
                            elif resp.status in (401, 403):
                                a.reason = auth_refused(ep, resp.status, reauth, self.message(a.body))
                            else:
                                a.reason = f"HTTP {resp.status}: {self.message(a.body)}"
                            a.retry_after = parse_retry_after(resp.headers)
                            await resp.aclose()
                            a.resp = None
                        elif intent.stream:
                            ctype = resp.header("content-type") or ""
                            if "text/event-stream" not in ctype:
                                raise UpstreamError(
                                    "protocol", f"expected an event stream, got {ctype or 'no content-type'}"
                                )
                            await self._until_first_token(a)
                        else:
                            a.body = await resp.read(limit=limits.answer_body_bytes)
                            a.usage = self._answer_usage(intent.operation, a.body, resp.status)
                            await resp.aclose()
                            a.resp = None
                            a.ttft = self.clock() - a.t0
                except TimeoutError:
                    a.fault = FaultKind.ENDPOINT
                    a.reason = f"no first token within {budget:.2f}s"
                except UpstreamError as exc:
                    if exc.endpoint_fault:
                        a.fault = FaultKind.ENDPOINT
                        a.reason = f"{exc.kind} error: {self.redact(str(exc))}"
                    else:
                        a.fault = FaultKind.LOCAL
                        a.reason = self.redact(local_fault_message(exc.__cause__ or exc))
                except auth.CredentialUnavailable as exc:
                    # Not the endpoint's fault, nor a quota: the router now excludes it
                    # (with this reason) until the credential can be obtained again.
                    a.fault = FaultKind.QUOTA
                    a.reason = f"credential unavailable: {exc}"
                    a.credential_failed = True
                except Exception as exc:  # a bug of ours, never the endpoint's fault
                    a.fault = FaultKind.LOCAL
                    a.reason = self.redact(local_fault_message(exc))
                if a.fault is not None and a.resp is not None:
                    # Failed after the response opened (timeout, broken or malformed
                    # stream): close it now, so the endpoint stops generating.
                    await a.resp.aclose()
                    a.resp = None
                a.ready_at = self.clock()
                send.send_nowait(a)
                handed = True
        finally:
            if not handed and a.resp is not None:
                await a.resp.aclose()
                a.resp = None

    async def _until_first_token(self, a: _Attempt) -> None:
        assert a.resp is not None
        it = a.resp.chunks().__aiter__()
        a.iter = it
        while True:
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                raise UpstreamError("read", "stream ended before the first token") from None
            committed = False
            try:
                events = a.splitter.feed(chunk)
            except sse.EventTooLarge as exc:
                raise UpstreamError("protocol", f"before the first token: {exc}") from None
            for ev in events:
                kind, _ = sse.classify(sse.data_of(ev))
                if kind is sse.EventKind.ERROR:
                    raise UpstreamError("protocol", f"error event before the first token: {self.message(ev)}")
                if kind is sse.EventKind.MALFORMED:
                    raise UpstreamError("protocol", f"malformed event before the first token: {self.excerpt(ev)}")
                if kind is sse.EventKind.CONTENT or kind is sse.EventKind.DONE:
                    committed = True
                a.buffered.append(ev)
            if committed:
                a.ttft = self.clock() - a.t0
                return

    def message(self, body: bytes) -> str:
        """The human part of an upstream error body or event, keys masked (before the
        text is shortened, and again after JSON escapes are decoded)."""
        return self.redact(error_message(self.redact.bytes(body)))

    def excerpt(self, data: bytes, n: int = 80) -> str:
        """A short, key-free excerpt of upstream bytes, for a reason or a message."""
        return repr(self.redact.bytes(data[: 4 * n]))[:n]

    def _answer_usage(self, operation: str, body: bytes, status: int) -> dict[str, Any] | None:
        """Usage of a complete 2xx answer, which must be an answer of the routed API:
        anything else (an HTML page, ``{"error": ...}``, broken JSON) is the endpoint's
        fault, never a result for the caller."""
        try:
            obj = json.loads(body)
        except ValueError:
            raise UpstreamError("protocol", f"HTTP {status} is not JSON: {self.excerpt(body)}") from None
        problem = _not_an_answer(operation, obj)
        if problem is not None:
            if isinstance(obj, dict) and obj.get("error"):
                problem = f"{problem}; it carries an error: {self.message(body)}"
            raise UpstreamError("protocol", f"HTTP {status} is not a valid answer: {problem}")
        usage = obj.get("usage")
        return usage if isinstance(usage, dict) else None

    # -- outcome bookkeeping ----------------------------------------------------
    def _name_refused(self, a: _Attempt, intent: Intent) -> bool:
        """A 404 for a served name the endpoint has never listed: not the caller's
        fault after all, but the catalog's (see ``Health.served_name_refused``). The
        attempt then fails over like an endpoint fault, with no penalty."""
        if a.status != 404 or intent.model is None or not self.health.served_name_refused(a.st, intent.model):
            return False
        a.reason = f"HTTP 404 for {a.ep.models.get(intent.model)!r}, a served name its /models has never listed"
        return True

    def _penalize(self, a: _Attempt) -> None:
        st = a.st
        if a.credential_failed:
            return
        if a.fault is FaultKind.QUOTA:
            secs = a.retry_after if a.retry_after is not None else self.policy.default_cooldown_s
            self.health.cooldown(st, secs, a.reason or "quota")
        elif a.fault is FaultKind.ENDPOINT:
            self.health.endpoint_fault(st, a.reason or "endpoint fault")

    def _finish_attempt(self, a: _Attempt, req: _Request, outcome: str, *, delivered_tokens: int = 0) -> None:
        """Release the attempt's slot, account its cost, tell the hooks. Called once per attempt."""
        intent = req.intent
        a.st.release(a.permit)
        if a.reserved and a.st.bucket is not None:
            used = self._used_tokens(a, intent, outcome, delivered_tokens)
            a.st.bucket.settle(a.reserved, used, refund_request=a.status is None or a.status == 429)
            a.reserved = 0
        cost, estimated = self._cost(a, intent, a.usage, outcome, delivered_tokens)
        a.st.cost_usd += cost
        a.st.cost_estimated = a.st.cost_estimated or (estimated and cost > 0)
        if outcome == "cancelled":
            a.st.wasted += 1
        u = a.usage or {}
        now = self.clock()
        rec = AttemptRecord(
            request_id=intent.request_id,
            attempt=a.n,
            kind=AttemptKind(a.kind),
            endpoint=a.ep.id,
            provider=a.ep.provider,
            region=a.ep.region,
            residency=intent.constraints.residency_label or "any",
            model=intent.model or "",
            outcome=AttemptOutcome(outcome),
            status=a.status,
            reason=a.reason,
            ttft_ms=None if a.ttft is None else a.ttft * 1000.0,
            duration_ms=(now - a.t0) * 1000.0,
            cost_usd=cost,
            cost_estimated=estimated,
            server_address=a.ep.host,
            server_port=a.ep.port,
            input_tokens=_int(u.get("prompt_tokens", u.get("input_tokens"))),
            output_tokens=_int(u.get("completion_tokens", u.get("output_tokens"))),
            start_unix_nano=req.wall(a.t0),
            end_unix_nano=req.wall(now),
        )
        req.records.append(rec)
        _notify(self.hooks, rec)

    def _request_done(
        self, req: _Request, w: _Attempt | None, outcome: str, status: int | None, error_type: str | None
    ) -> None:
        """Emit the request's record (once) to the request hooks (telemetry)."""
        if req.done:
            return
        req.done = True
        if not self.request_hooks:
            return
        intent = req.intent
        ep = w.ep if w is not None else None
        u = (w.usage if w is not None else None) or {}
        rec = RequestRecord(
            request_id=intent.request_id,
            operation=intent.operation,
            model=intent.model or "",
            stream=intent.stream,
            outcome=RequestOutcome(outcome),
            status=status,
            error_type=error_type,
            endpoint=ep.id if ep else None,
            provider=ep.provider if ep else None,
            region=ep.region if ep else None,
            response_model=ep.models.get(intent.model or "") if ep else None,
            server_address=ep.host if ep else None,
            server_port=ep.port if ep else None,
            residency=intent.constraints.residency_label or "any",
            hedged=req.hedged,
            attempts=tuple(req.records),
            start_unix_nano=req.wall0,
            end_unix_nano=req.wall(self.clock()),
            ttft_ms=None if w is None or w.ready_at is None or not intent.stream else (w.ready_at - req.t0) * 1000.0,
            input_tokens=_int(u.get("prompt_tokens", u.get("input_tokens"))),
            output_tokens=_int(u.get("completion_tokens", u.get("output_tokens"))),
            cost_usd=sum(r.cost_usd for r in req.records),
            cost_estimated=any(r.cost_estimated and r.cost_usd > 0 for r in req.records),
            otel_context=req.otel_context,
        )
        _notify(self.request_hooks, rec)

    def _used_tokens(self, a: _Attempt, intent: Intent, outcome: str, delivered_tokens: int) -> int:
        """What an attempt consumed of its endpoint's token quota: the reported usage;
        else nothing if it was refused or never answered; else the prompt estimate
        plus the tokens delivered (a stream that ended early, broke or was
        cancelled); for a complete answer without usage, the whole reservation."""
        u = a.usage
        if u:
            total = u.get("total_tokens")
            if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
                return total
            inp = u.get("prompt_tokens", u.get("input_tokens")) or 0
            out = u.get("completion_tokens", u.get("output_tokens")) or 0
            return int(inp) + int(out) if isinstance(inp, int) and isinstance(out, int) else a.reserved
        if a.status is None or outcome == "request_error" or (a.status is not None and a.status >= 300):
            return 0
        if outcome == "won" and not intent.stream:
            return a.reserved
        return intent.input_tokens + delivered_tokens

    def _cost(
        self, a: _Attempt, intent: Intent, usage: dict[str, Any] | None, outcome: str, delivered_tokens: int
    ) -> tuple[float, bool]:
        """USD of one attempt and whether it is an estimate. Tokens are counted even
        where the price is unknown (the cost is then reported as unknown, not zero)."""
        price = a.ep.price
        if usage:
            inp = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
            out = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
            details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
            cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
            a.st.input_tokens += inp
            a.st.output_tokens += out
            if price is None:
                return 0.0, True
            return ((inp - cached) * price[0] + cached * price[2] + out * price[1]) / 1e6, False
        if price is None:
            return 0.0, True
        if outcome in ("request_error", "local_error") or (outcome == "failed" and a.fault is not FaultKind.ENDPOINT):
            return 0.0, False  # refused (4xx, 429/401/403): not billed
        if outcome == "failed" and a.ttft is None:
            return 0.0, True
        # Cancelled hedge losers and interrupted streams: the prompt was processed.
        return (intent.input_tokens * price[0] + delivered_tokens * price[1]) / 1e6, True

    def _commit(self, w: _Attempt, req: _Request) -> Result:
        intent = req.intent
        now = self.clock()
        st = w.st
        headers = [(k, v) for k, v in w.headers if k not in _HOP]
        meta = self._meta(w, req)
        if w.fault is FaultKind.REQUEST:
            self._finish_attempt(w, req, "request_error")
            self._request_done(req, w, "request_error", w.status, f"http_{w.status}")
            return Result(w.status or 400, headers + meta, w.body or b"", None)
        if w.ttft is not None:
            st.observe_ttft(w.ttft * 1000.0, now)
        if w.kind == "hedge":
            st.hedge_wins += 1
        if not intent.stream:
            self.health.success(st, trial=w.trial)
            st.observe_stream((now - w.t0) * 1000.0, int((w.usage or {}).get("completion_tokens") or 0), None)
            self._finish_attempt(w, req, "won")
            cost = sum(r.cost_usd for r in req.records)
            priced = all(x.ep.price is not None for x in req.attempts)
            meta.append(("x-llm-multicloud-cost-usd", f"{cost:.8f}" if priced else "unknown"))
            self._request_done(req, w, "ok", w.status, None)
            return Result(w.status or 200, headers + meta, w.body or b"", None)
        strip = not intent.wants_usage and intent.operation in ("chat", "text_completion")
        from .stream import Passthrough

        return Result(w.status or 200, headers + meta, None, Passthrough(self, w, req, strip))

    def _meta(self, w: _Attempt, req: _Request) -> list[tuple[str, str]]:
        return [
            ("x-llm-multicloud-endpoint", w.ep.id),
            ("x-llm-multicloud-provider", w.ep.provider),
            ("x-llm-multicloud-region", w.ep.region),
            ("x-llm-multicloud-attempts", str(len(req.attempts))),
            ("x-llm-multicloud-hedged", "true" if req.hedged else "false"),
            ("x-llm-multicloud-request-id", req.intent.request_id),
            ("x-llm-multicloud-winner", f"{w.n}:{w.kind}"),
        ]

    # -- hedging --------------------------------------------------------------------
    def _hedge_at(self, a: _Attempt, plan: Plan, intent: Intent) -> float:
        h = self.policy.hedge
        if not h.enabled or len(plan.candidates) < 2:
            return math.inf
        if h.delay_ms is not None:
            d = h.delay_ms
        else:
            st = a.st
            q = st.ttft_quantile(h.quantile) if st.ttft_samples >= h.min_samples else None
            q = None if q is None else q * h.headroom
            if q is None:
                pred = next(
                    (c.predicted_ms for c in plan.candidates if c.endpoint is a.ep), self.policy.default_ttft_ms
                )
                q = pred * h.cold_factor
            d = min(max(q, h.min_delay_ms), h.max_delay_ms)
        return a.t0 + d / 1000.0

    def _saturated(self, plan: Plan) -> bool:
        """Suppress hedging while the fleet is saturated: most compliant endpoints
        are cooling down (429s) or ejected. Hedges would only add load."""
        out = sum(1 for x in plan.excluded if x.kind in ("cooling", "ejected", "limited"))
        return plan.panic or out > len(plan.candidates)

    # -- messages -------------------------------------------------------------------
    def _unavailable(
        self, plan: Plan, failures: list[_Attempt], deadline: float, note: str | None, attempts_left: int
    ) -> str:
        now = self.clock()
        lines = [
            f"no endpoint could serve {plan.model!r} ({_constraint_text(plan)}); per candidate:",
        ]
        for a in failures:
            lines.append(f"  {a.ep.id} ({a.ep.provider} {a.ep.region}): attempt {a.n} ({a.kind}) failed: {a.reason}")
        # Why the request stopped, as it happened: the attempt limit, the deadline, the
        # retry budget, or a cooldown that outlasts the deadline.
        limit = self.policy.retry.max_attempts
        if attempts_left <= 0:
            why = f"all {limit} attempts were used (policy.retry.max_attempts)"
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


def auth_refused(ep: Endpoint, status: int, refreshed: bool, message: str) -> str:
    """The reason of a 401/403: which endpoint and credential kind, never the secret."""
    how = " after a refresh" if refreshed else ""
    return f"HTTP {status} from {ep.id}: credential {ep.credential.describe()} refused{how}: {message}"


def _constraint_text(plan: Plan) -> str:
    c = plan.constraints
    return f"residency {c.residency_label}" if c.residency is not None else "no residency constraint"


def parse_retry_after(headers: list[tuple[str, str]], now_wall: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``x-ms-retry-after-ms`` or ``Retry-After``
    (seconds or an HTTP date). Garbage and negative values are ignored (None)."""
    h = dict(headers)
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        v = h.get(name)
        if v is not None:
            try:
                ms = float(v)
            except ValueError:
                continue
            if math.isfinite(ms) and ms >= 0:
                return ms / 1000.0
    v = h.get("retry-after")
    if v is None:
        return None
    v = v.strip()
    try:
        s = float(v)
        return s if math.isfinite(s) and s >= 0 else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now_wall is None else now_wall
    return max(when.timestamp() - now, 0.0)


def _notify(hooks: list[Callable[[Any], None]], rec: Any) -> None:
    for hook in list(hooks):
        try:
            hook(rec)
        except Exception:  # a broken hook must not break a request
            log.exception("hook %r failed", hook)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) else None


#: What a complete answer of each routed API must carry (a list under this key).
_ANSWER_KEY = {"chat": "choices", "text_completion": "choices", "embeddings": "data", "responses": "output"}


def _not_an_answer(operation: str, obj: Any) -> str | None:
    """Why a parsed 2xx body is not an answer of ``operation`` (None: it is one)."""
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not an object"
    key = _ANSWER_KEY.get(operation)
    if key is None:
        return "a JSON object with only an 'error'" if set(obj) == {"error"} else None
    if isinstance(obj.get(key), list):
        return None
    return f"no {key!r} list in the JSON object (keys: {', '.join(sorted(obj)[:8]) or 'none'})"
