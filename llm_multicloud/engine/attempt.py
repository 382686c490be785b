"""One attempt: one HTTP request to one endpoint, up to the commit point.

:class:`Attempt` is the state of one attempt (which endpoint, why it was started,
what came back, whose fault a failure was); :func:`run` is its I/O. It sends the
request (the credential sees and signs the final request; a 401 refreshes the
credential once), then reads until the attempt is *ready* — the commit point:

* a stream: its first content-bearing event (not the HTTP 200, not the role-only
  preamble: :mod:`llm_multicloud.sse` decides), with every event before it kept for
  the caller;
* a non-streamed answer: the complete body, which must be an answer of the routed
  API (anything else — an HTML page, ``{"error": ...}``, broken JSON — is the
  endpoint's fault, never a result for the caller);
* or a failure, classified once into a :class:`~llm_multicloud.errors.FaultKind`
  (endpoint, quota, request, local) with a redacted reason and, where there is one,
  the server's Retry-After.

It never raises for an upstream outcome and never decides what happens next: the
race (:mod:`.race`) reads the attempt and decides. Whatever happens, a response that
is not handed on is closed here, which closes its connection (the provider stops
generating). The deadlines are the endpoint's (``connect_s``, ``first_token_s`` /
``response_s``, ``chunk_gap_s``), never beyond the request's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

from .. import auth, sse
from ..errors import FaultKind, classify_status, local_fault_message, parse_retry_after
from ..upstream import UpstreamError
from ..vocabulary import AttemptKind, AttemptOutcome, BreakerState, ErrorType

#: A wait for a free connection of our own pool ends this much before the attempt's
#: deadline, so that it fails as a pool timeout (local) and not as the endpoint's.
POOL_MARGIN_S = 0.05

if TYPE_CHECKING:
    from ..catalog import Catalog, Endpoint
    from ..health import EndpointState
    from ..intent import Intent
    from ..policy import Policy, Timeouts
    from ..redaction import Redactor
    from ..upstream import Upstream, UpstreamResponse


class AttemptEnv(Protocol):
    """What an attempt needs from the engine (the executor provides it)."""

    catalog: Catalog
    policy: Policy
    clock: Callable[[], float]

    @property
    def redact(self) -> Redactor: ...
    @property
    def failover(self) -> frozenset[int]: ...
    def timeouts_for(self, ep: Endpoint, model: str | None) -> Timeouts: ...
    def resume_style(self, ep: Endpoint) -> str: ...
    def message(self, body: bytes) -> str: ...
    def excerpt(self, data: bytes, n: int = 80) -> str: ...


class Attempt:
    """One attempt's state, from admission to its end (see the module docs)."""

    __slots__ = (
        "body",
        "buffered",
        "credential_failed",
        "ep",
        "error_kind",
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
        "timeouts",
        "trial",
        "ttft",
        "usage",
    )

    def __init__(
        self,
        n: int,
        kind: AttemptKind,
        st: EndpointState,
        admitted: str,
        t0: float,
        event_bytes: int = sse.MAX_EVENT_BYTES,
    ) -> None:
        self.n = n
        self.kind = kind
        self.st = st
        self.ep: Endpoint = st.endpoint
        #: admitted while the breaker was not closed: its success closes the breaker
        self.trial = admitted != BreakerState.CLOSED
        #: holds one of the bounded half-open trial permits
        self.permit = admitted == BreakerState.HALF_OPEN
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
        #: an ErrorType (or a transport error kind) for a failure without an HTTP status
        self.error_kind: str | None = None
        self.retry_after: float | None = None
        #: the credential could not be obtained: no cooldown, no penalty (the router
        #: excludes the endpoint while its credential is unavailable)
        self.credential_failed = False
        self.ttft: float | None = None
        self.ready_at: float | None = None
        self.usage: dict[str, Any] | None = None
        #: tokens reserved in the endpoint's capacity bucket, settled when it ends
        self.reserved = 0
        #: the endpoint's deadlines for this request's model, looked up once per attempt
        #: (:func:`run`; the committed stream reads them here)
        self.timeouts: Timeouts | None = None

    def error_type(self, outcome: AttemptOutcome) -> str | None:
        """Low-cardinality ``error.type`` of this attempt ending with ``outcome``."""
        if outcome is AttemptOutcome.INTERRUPTED or outcome is AttemptOutcome.RESUMED:
            return ErrorType.STREAM_INTERRUPTED
        if self.status is not None and self.status >= 400:
            return str(self.status)
        return self.error_kind

    def fail(self, fault: FaultKind, reason: str, kind: str | None) -> None:
        self.fault, self.reason, self.error_kind = fault, reason, kind

    async def close(self) -> None:
        """Close the response (and so the connection), if it is still open."""
        resp, self.resp = self.resp, None
        if resp is not None:
            await resp.aclose()


async def run(env: AttemptEnv, a: Attempt, intent: Intent, upstream: Upstream, deadline: float) -> None:
    """Send the attempt and read it up to its commit point or its failure (see the
    module docs). On return ``a`` is ready (``a.fault is None``) or failed; only a
    ready stream keeps its response open."""
    to = a.timeouts = env.timeouts_for(a.ep, intent.model)
    # Streams: until the first content event. Non-streamed answers arrive whole
    # (servers send no headers before the body), so they get the longer response_s.
    limit = to.first_token_s if intent.stream else to.response_s
    budget = max(min(limit, deadline - env.clock()), 0.001)
    io = upstream.io  # anyio's deadlines, or blocking ones on a sync caller's thread
    try:
        try:
            with io.fail_after(budget):
                await _exchange(env, a, intent, upstream, to, budget)
        except TimeoutError:
            a.fail(FaultKind.ENDPOINT, f"no first token within {budget:.2f}s", ErrorType.TIMEOUT)
        except UpstreamError as exc:
            if exc.endpoint_fault:
                a.fail(FaultKind.ENDPOINT, f"{exc.kind} error: {env.redact(str(exc))}", exc.kind)
            else:
                a.fail(FaultKind.LOCAL, env.redact(local_fault_message(exc.__cause__ or exc)), ErrorType.LOCAL)
        except auth.CredentialUnavailable as exc:
            # Not the endpoint's fault, nor a quota: the router now excludes it (with
            # this reason) until the credential can be obtained again.
            a.fail(FaultKind.QUOTA, f"credential unavailable: {exc}", ErrorType.CREDENTIAL)
            a.credential_failed = True
        except Exception as exc:  # a bug of ours, never the endpoint's fault
            a.fail(FaultKind.LOCAL, env.redact(local_fault_message(exc)), ErrorType.LOCAL)
        if a.fault is not None:
            # Failed after the response opened (timeout, broken or malformed stream):
            # close it now, so the endpoint stops generating.
            await a.close()
        a.ready_at = env.clock()
    except BaseException:
        with io.shield():
            await a.close()  # cancelled: no connection outlives the attempt
        raise


async def _exchange(
    env: AttemptEnv, a: Attempt, intent: Intent, upstream: Upstream, to: Timeouts, budget: float
) -> None:
    ep = a.ep
    assert intent.model is not None
    url, headers = env.catalog.request_for(ep, intent.path, intent.query, intent.headers)
    body = (
        intent.body_for(ep.models[intent.model], add_usage=True, resume_style=env.resume_style(ep))
        if intent.body is not None
        else None
    )
    # The credential sees the final request (and signs it); a 401 is refreshed and
    # sent once more inside this attempt.
    resp, reauth = await auth.send(
        upstream,
        ep.credential,
        intent.method,
        url,
        headers,
        body,
        connect_s=min(to.connect_s, budget),
        read_s=to.chunk_gap_s if intent.stream else budget,
        # Waiting for a free connection of our own pool is bounded by the attempt, not
        # by connect_s, and ends just before it (a pool timeout is local, never blamed).
        pool_s=max(budget - POOL_MARGIN_S, budget / 2),
    )
    a.resp, a.status, a.headers = resp, resp.status, resp.headers
    if a.reserved and a.st.bucket is not None:
        a.st.bucket.ack(env.clock())  # counted by the server: its refill runs from here
    a.fault = classify_status(resp.status, env.failover)
    if 300 <= resp.status < 400:
        # Never followed (the credential would go where the catalog does not say) and
        # never an answer: the endpoint's fault.
        a.fault = FaultKind.ENDPOINT
    if a.fault is not None:
        await _read_refusal(env, a, resp, reauth)
    elif intent.stream:
        ctype = resp.header("content-type") or ""
        if "text/event-stream" not in ctype:
            raise UpstreamError("protocol", f"expected an event stream, got {ctype or 'no content-type'}")
        await _until_first_token(env, a)
    else:
        a.body = await resp.read(limit=env.policy.read_limits.answer_body_bytes)
        a.usage = answer_usage(env, intent.operation, a.body, resp.status)
        await a.close()
        a.ttft = env.clock() - a.t0


async def _read_refusal(env: AttemptEnv, a: Attempt, resp: UpstreamResponse, reauth: bool) -> None:
    """The body, reason and Retry-After of a status that is not an answer."""
    raw = await resp.read(limit=env.policy.read_limits.error_body_bytes, truncate=True)
    a.body = env.redact.bytes(raw)
    status = resp.status
    if 300 <= status < 400:
        where = env.redact(resp.header("location") or "nowhere")[:200]
        a.reason = f"HTTP {status} redirect to {where} (redirects are not followed; fix the endpoint's base_url)"
        a.error_kind = ErrorType.REDIRECT
    elif status in (401, 403):
        a.reason = auth_refused(a.ep, status, reauth, env.message(a.body))
    else:
        a.reason = f"HTTP {status}: {env.message(a.body)}"
    a.retry_after = parse_retry_after(resp.headers)
    await a.close()


async def _until_first_token(env: AttemptEnv, a: Attempt) -> None:
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
                raise UpstreamError("protocol", f"error event before the first token: {env.message(ev)}")
            if kind is sse.EventKind.MALFORMED:
                raise UpstreamError("protocol", f"malformed event before the first token: {env.excerpt(ev)}")
            if kind is sse.EventKind.CONTENT or kind is sse.EventKind.DONE:
                committed = True
            a.buffered.append(ev)
        if committed:
            a.ttft = env.clock() - a.t0
            return


def answer_usage(env: AttemptEnv, operation: str, body: bytes, status: int) -> dict[str, Any] | None:
    """Usage of a complete 2xx answer, which must be an answer of the routed API."""
    try:
        obj = json.loads(body)
    except ValueError:
        raise UpstreamError("protocol", f"HTTP {status} is not JSON: {env.excerpt(body)}") from None
    problem = _not_an_answer(operation, obj)
    if problem is not None:
        if isinstance(obj, dict) and obj.get("error"):
            problem = f"{problem}; it carries an error: {env.message(body)}"
        raise UpstreamError("protocol", f"HTTP {status} is not a valid answer: {problem}")
    usage = obj.get("usage")
    return usage if isinstance(usage, dict) else None


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


def auth_refused(ep: Endpoint, status: int, refreshed: bool, message: str) -> str:
    """The reason of a 401/403: which endpoint and credential kind, never the secret."""
    how = " after a refresh" if refreshed else ""
    return f"HTTP {status} from {ep.id}: credential {ep.credential.describe()} refused{how}: {message}"
