"""The committed stream, and what happens when it breaks.

It owns the bytes after the commit point; every outcome (the end, a break, a
resume, the caller closing early) is reported to the request's
:class:`~.ledger.Ledger`, which does the bookkeeping. The read loop follows the
shape of h11's receive loop: feed bytes to the splitter (:mod:`llm_multicloud.sse`),
look at each complete event once.

Once a streamed attempt has won the race (its first content-bearing event
arrived), :class:`Passthrough` hands its bytes to the caller's HTTP library chunk by
chunk — in the caller's task for async clients, on the caller's thread over
blocking I/O for sync ones: the same code. Events pass through byte for byte, except the usage-only
chunk the library requested on the caller's behalf.

After commit, nothing can be silently lost: an upstream error, a malformed event
(anything the SDK could not parse: each data event must be a JSON object), an event
over ``read_limits.event_bytes``, no *data event* for ``chunk_gap_s``, a stream
still running ``stream_total_s`` after the request started, an end without
``[DONE]``, or a chat/completions ``[DONE]`` before any choice had a
``finish_reason`` (a server that stopped mid-answer) is a *break*. By default a break raises
:class:`~llm_multicloud.errors.StreamInterrupted`, which carries what was delivered
and the usage known so far; its message is redacted (keys masked).

At the speed of the wire: after commit an event is parsed only when its bytes carry
a marker the library acts on (a non-null usage, error or finish_reason, a Responses
end) or fail a byte-level check that it is one JSON object (``sse.needs_parse``);
plain content chunks pass on a few C-level byte scans.

Deadlines without a cancel scope per chunk: while data events keep coming, a read
is bounded by the connection's read timeout (``chunk_gap_s``). Bytes that carry no
data — keep-alive comments, an event dripped a byte at a time — do not count as
progress: from the first such read on, reads run under a deadline measured from
the start of that quiet spell, until a data event arrives. The total deadline
switches to the same bounded reads when it is nearer than one gap.

**Resume** (opt-in, ``policy.resume.enabled``): a broken chat stream is continued
on another compliant endpoint by resending the conversation with the partial
answer as an assistant prefix — vLLM/SGLang's ``continue_final_message`` (style
``vllm``) or the ``prefix: true`` assistant message of Mistral/DeepSeek (style
``prefix``), chosen per endpoint (``resume:`` in the catalog; ``none`` opts an
endpoint out). The new stream's role-only preamble is dropped, so the caller sees
one unbroken stream. Refused for tool calls, JSON mode and ``n > 1``, where a
spliced answer could be wrong rather than merely late. The continuation is a new
routed request: residency, health and hedging apply to it as to any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .. import sse
from ..errors import DeadlineExceeded, LLMMulticloudError, StreamInterrupted
from ..upstream import ASYNC_IO, UpstreamError
from ..vocabulary import AttemptOutcome, RequestOutcome

if TYPE_CHECKING:
    from ..catalog import Endpoint
    from ..intent import Intent
    from ..policy import Policy, Timeouts
    from ..redaction import Redactor
    from ..upstream import Upstream
    from .attempt import Attempt
    from .ledger import Ledger


#: How long closing a stream that sent its end waits for the body's end (seconds).
DRAIN_S = 0.05


@dataclass(slots=True)
class Result:
    """What the transport hands to the SDK: a full body, or a stream to pull from."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | None
    stream: Passthrough | None


class StreamEnv(Protocol):
    """What the committed stream needs from the engine (the executor provides it;
    ``execute`` serves a resume, which is a new routed request)."""

    policy: Policy
    clock: Callable[[], float]

    @property
    def redact(self) -> Redactor: ...
    def message(self, body: bytes) -> str: ...
    def excerpt(self, data: bytes, n: int = 80) -> str: ...
    def timeouts_for(self, ep: Endpoint, model: str | None) -> Timeouts: ...
    async def execute(self, intent: Intent, upstream: Upstream) -> Result: ...


class Passthrough:
    """The winning attempt's stream, as seen by the caller (see the module docs)."""

    def __init__(self, ex: StreamEnv, a: Attempt, ledger: Ledger, strip_usage: bool) -> None:
        intent = ledger.intent
        self._ex = ex
        self._a = a
        self._ledger = ledger
        self._intent = intent
        self._strip = strip_usage
        self._pending: list[bytes] = a.buffered
        a.buffered = []
        self._done = False
        self._finished = False
        #: chat and legacy completions end each choice with a finish_reason; a
        #: ``[DONE]`` without one is a server that stopped mid-answer (llama.cpp's
        #: ``interrupt_requests``, a killed worker behind a proxy): a break, not an end
        self._needs_finish = intent.operation in ("chat", "text_completion")
        self._finish_seen = False
        self._delivered: list[bytes] = []
        to = a.timeouts if a.timeouts is not None else ex.timeouts_for(a.ep, intent.model)
        self._gap = to.chunk_gap_s
        self._total_s = to.stream_total_s
        #: the committed stream must end by then (monotonic clock of the executor)
        self._end = ledger.t0 + to.stream_total_s if to.stream_total_s is not None else math.inf
        #: start of the current spell without a data event (None: data is flowing)
        self._quiet_since: float | None = None
        #: the continuation after a resume, which serves the rest of the stream
        self._next: Passthrough | None = None
        #: the deadlines of the upstream's I/O (anyio, or blocking on a sync caller's thread)
        self._io = ledger.upstream.io if ledger.upstream is not None else ASYNC_IO
        #: text delivered by the streams this one continues (resume)
        self.prefix_text = ""

    @property
    def endpoint(self) -> str:
        return self._next.endpoint if self._next is not None else self._a.ep.id

    async def next_chunk(self) -> bytes | None:
        """The next bytes for the caller, or None at the end of the stream."""
        while True:
            if self._next is not None:
                return await self._next.next_chunk()
            if self._finished:
                return None
            if self._pending:
                events, self._pending = self._pending, []
            else:
                chunk = await self._read()
                if chunk is None:
                    continue  # ended, or broke and resumed elsewhere
                if self._plain(chunk):
                    # The common chunk: one complete content event with no marker
                    # (issue 14: passed on after one scan, no split, no per-event work).
                    self._quiet_since = None
                    self._delivered.append(chunk)
                    return chunk
                got = await self._split(chunk)
                if got is None:
                    continue  # broke and resumed elsewhere
                events = got
            out = await self._scan(events)
            if out:
                return out

    def _plain(self, chunk: bytes) -> bool:
        """Is this read exactly one complete ``data: {...}`` event (nothing pending
        before it) that :meth:`_scan` would pass on untouched — no marker the library
        acts on, the shape of one JSON object (``sse.needs_parse`` is false), not
        larger than the event cap? The same decision as the event-by-event path, made
        on the read as a whole with a few C-level scans."""
        splitter = self._a.splitter
        return not splitter.has_pending and len(chunk) <= splitter.max_event_bytes and sse.plain_event(chunk)

    async def _read(self) -> bytes | None:
        """The next upstream read; None when the stream ended (normally, or by a break
        that was resumed elsewhere). A break that is not resumed raises."""
        a = self._a
        assert a.iter is not None
        problem = None
        blame = True  # False: the break is this process's fault (see upstream.translate)
        chunk = b""
        clock = self._ex.clock
        now = clock()
        try:
            if self._quiet_since is None and now + self._gap < self._end:
                # Data is flowing: the connection's read timeout (chunk_gap_s, set when
                # the attempt opened) bounds the wait.
                self._quiet_since = now  # reset when a data event arrives
                chunk = await a.iter.__anext__()
            else:
                if self._quiet_since is None:
                    self._quiet_since = now
                wake = min(self._quiet_since + self._gap, self._end)
                with self._io.move_on_after(max(wake - now, 0.0)):
                    chunk = await a.iter.__anext__()
                if not chunk:
                    problem = self._late(clock())
        except StopAsyncIteration:
            if self._done and not a.splitter.pending.strip():
                await self._finish(AttemptOutcome.WON)
                return None
            problem = "the stream ended without [DONE]"
        except UpstreamError as exc:
            if exc.kind == "timeout":
                problem = f"no data for {self._gap:.1f}s"
            else:
                problem = f"{exc.kind} error: {self._ex.redact(str(exc))}"
                blame = exc.endpoint_fault
        if problem is None:
            return chunk
        await self._broken(problem, blame=blame)  # raises, or resumed on another endpoint
        return None

    async def _split(self, chunk: bytes) -> list[bytes] | None:
        """The complete events a read finished; None after an oversized event broke
        the stream and it was resumed elsewhere (not resumed: it raises)."""
        try:
            return self._a.splitter.feed(chunk)
        except sse.EventTooLarge as exc:
            await self._broken(str(exc))
        return None

    async def _scan(self, events: list[bytes]) -> bytes | None:
        """Pass events on, looking at each once: the end, usage, in-band errors, events
        the SDK could not parse (a break). None: nothing to deliver now."""
        out: list[bytes] = []
        for ev in events:
            d = sse.data_of(ev)
            if d is None:
                out.append(ev)  # a comment or keep-alive: passed on, but not progress
                continue
            self._quiet_since = None
            if d.strip() == sse.DONE:
                if not self._needs_finish or self._finish_seen:
                    self._done = True
                    out.append(ev)
                    continue
                problem: str | None = (
                    "the stream sent [DONE] before any choice had a finish_reason (stopped mid-answer)"
                )
                drop = False
            else:
                problem, drop = self._look(ev, d)
            if problem is not None:
                if out:
                    # Deliver what came before the bad event first; the break is
                    # handled on the next call, when nothing is pending.
                    self._pending = [ev]
                    return b"".join(out)
                await self._broken(problem)
                return None
            if drop:
                continue
            self._delivered.append(ev)
            out.append(ev)
        return b"".join(out) if out else None

    def _look(self, ev: bytes, d: bytes) -> tuple[str | None, bool]:
        """One data event: (why it breaks the stream, or None; whether to drop it)."""
        # Parsed only when its bytes say it matters (usage, an error, a finish_reason,
        # a Responses end) or may not be one JSON object: see sse.needs_parse. A plain
        # content chunk passes on a few byte scans; the SDK parses it anyway.
        if not sse.needs_parse(d):
            return None, False
        try:
            obj = json.loads(d)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            return f"malformed event mid-stream: {self._ex.excerpt(ev)}", False
        if b'"usage"' in d or b'"error"' in d or b'"response.' in d:
            kind = sse.kind_of(obj)
            if kind is sse.EventKind.ERROR:
                return f"error event mid-stream: {self._ex.message(ev)}", False
            if kind is sse.EventKind.MALFORMED:
                return f"malformed event mid-stream: {self._ex.excerpt(ev)}", False
            usage = obj.get("usage")
            inner = obj.get("response")
            if not isinstance(usage, dict) and isinstance(inner, dict):
                usage = inner.get("usage")  # Responses API: in response.completed
            if isinstance(usage, dict):
                self._a.usage = usage
            if kind is sse.EventKind.DONE:
                self._done = True  # response.completed ends a Responses stream
            if kind is sse.EventKind.USAGE and self._strip:
                return None, True
        if not self._finish_seen and b'"finish_reason"' in d:
            self._finish_seen = _finished_choice(obj)
        return None, False

    def _late(self, now: float) -> str:
        """Why a bounded read gave up: the total deadline, or no data event in time."""
        if now >= self._end and self._total_s is not None:
            return f"the stream was still running {self._total_s:.1f}s after the request started (stream_total_s)"
        return f"no data for {self._gap:.1f}s (only keep-alives or partial bytes arrived)"

    async def _finish(self, outcome: AttemptOutcome) -> None:
        """The stream ended (``outcome``): close it and report to the ledger, once."""
        if self._finished:
            return
        self._finished = True
        a = self._a
        ledger = self._ledger
        await a.close()
        # Without usage, the tokens delivered are the content events (one token each on
        # OpenAI-compatible servers): what a stream that ended early, broke or was
        # closed cost, for the cost ledger and the capacity bucket alike.
        delivered = len(self._delivered) if a.usage else _content_events(self._delivered)
        if outcome is AttemptOutcome.WON:
            ledger.succeeded(a, len(self._delivered), stream_ttft=True, delivered_tokens=delivered)
        else:
            ledger.finish(a, outcome, delivered_tokens=delivered)
        broke = outcome is AttemptOutcome.INTERRUPTED or outcome is AttemptOutcome.RESUMED
        ledger.request_done(
            a,
            RequestOutcome.OK if outcome is AttemptOutcome.WON else RequestOutcome(outcome),
            a.status,
            "stream_interrupted" if broke else None,
        )

    async def _broken(self, reason: str, *, blame: bool = True) -> None:
        """The stream broke after commit: resume it elsewhere, or raise StreamInterrupted.

        ``blame=False``: the break is this process's own fault (a bug, a closed event
        loop: ``upstream.translate``'s "local"). The endpoint is not penalised, and the
        stream is not resumed elsewhere, where the same fault would strike again."""
        a = self._a
        a.reason = reason
        text = self.prefix_text + sse.text_of(self._delivered)
        if not self._finished:
            if blame:
                self._ledger.broke(a, reason)
            nxt = await self._resume(text) if blame and _resumable(self) else None
            if nxt is not None:
                await self._finish(AttemptOutcome.RESUMED)
                self._next = nxt
                return
            await self._finish(AttemptOutcome.INTERRUPTED)
        raise StreamInterrupted(
            self._ex.redact(f"the stream from {a.ep.id} broke after {len(self._delivered)} chunks: {reason}"),
            endpoint=a.ep.id,
            delivered_text=text,
            usage=a.usage,
            chunks=len(self._delivered),
        )

    async def _resume(self, text: str) -> Passthrough | None:
        """Continue the answer on another compliant endpoint (a new routed request)."""
        ex = self._ex
        intent = self._intent
        # Tokens already delivered (content events; one token each on OpenAI-compatible
        # servers) come off max_tokens, so the whole answer keeps the caller's limit.
        delivered = _content_events(self._delivered)
        cont = dataclasses.replace(
            intent,
            resume_prefix=text,
            avoid=intent.avoid | {self._a.ep.id},
            resumes=intent.resumes + 1,
            max_tokens=None if intent.max_tokens is None else max(intent.max_tokens - delivered, 1),
            request_id=f"{intent.request_id}-r{intent.resumes + 1}",
        )
        upstream = self._ledger.upstream
        if upstream is None:
            return None
        try:
            result = await ex.execute(cont, upstream)
        except (LLMMulticloudError, DeadlineExceeded):
            return None  # nothing compliant could continue it: the caller gets the break
        if result.stream is None or result.status >= 300:
            return None
        nxt = result.stream
        # The continuation starts with its own role-only preamble: the caller already
        # had one. Everything else (content, finish, usage, [DONE]) goes through.
        nxt._pending = [ev for ev in nxt._pending if sse.classify(sse.data_of(ev))[0] is not sse.EventKind.PREAMBLE]
        nxt.prefix_text = text
        return nxt

    async def aclose(self) -> None:
        """The caller closed the stream (possibly early): close the upstream connection."""
        if self._next is not None:
            await self._next.aclose()
        if not self._finished:
            if self._done:
                await self._drain()
            await self._finish(AttemptOutcome.WON if self._done else AttemptOutcome.CLOSED_BY_CALLER)

    async def _drain(self) -> None:
        """The SDK closes a stream as soon as it sees its end (``[DONE]``), before the
        body's own end (the chunked terminator, in flight right behind it) was read:
        closing then would close the connection — a new connection for every stream.
        Read that end, briefly (shielded, bounded in time and chunks), so the
        connection goes back to its pool; anything else is closed as before."""
        it = self._a.iter
        if it is None:
            return
        with self._io.shield(), self._io.move_on_after(DRAIN_S), contextlib.suppress(Exception):
            for _ in range(4):
                await it.__anext__()  # StopAsyncIteration (the end) leaves the loop


def _finished_choice(obj: object) -> bool:
    """Whether a chat/completions chunk ends a choice (a non-null finish_reason)."""
    choices = obj.get("choices") if isinstance(obj, dict) else None
    return isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices)


def _content_events(events: list[bytes]) -> int:
    return sum(1 for ev in events if sse.classify(sse.data_of(ev))[0] is sse.EventKind.CONTENT)


def _resumable(pt: Passthrough) -> bool:
    """Is continuing this stream on another endpoint safe? Only plain chat text."""
    intent = pt._intent
    policy = pt._ex.policy.resume
    if not policy.enabled or intent.resumes >= policy.max_resumes or intent.operation != "chat":
        return False
    body = intent.body or {}
    if body.get("tools") or body.get("functions") or (body.get("n") or 1) != 1:
        return False
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        return False
    # A tool call that already started cannot be spliced either.
    return not any(b'"tool_calls"' in ev for ev in pt._delivered)
