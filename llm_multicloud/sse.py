"""Server-sent events, sans-I/O: split a byte stream into events and tell what each one is.

The executor needs two things from a streamed completion, and nothing more:

* **event boundaries**, to pass bytes through to the caller exactly as received
  (never re-encoding them), and to drop the usage-only chunk that the library asked
  for on the caller's behalf;
* **what an event means**: the *commit point* of a stream is its first
  *content-bearing* event — a token of text, a tool call, reasoning, or a finish
  reason — not the HTTP 200 and not the role-only preamble chunk (``delta:
  {"role": "assistant", "content": ""}``) that servers send before the model has
  produced anything. Until that event, the attempt can still be abandoned and
  another endpoint tried without the caller seeing anything.

This is a deliberately small parser (the ``data:`` field is all OpenAI-compatible
servers use); a general SSE library would still leave the OpenAI-specific part to
write, and would re-encode events instead of passing bytes through.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Any

DONE = b"[DONE]"


class EventKind(Enum):
    PREAMBLE = "preamble"  # role-only / empty delta: not a token yet
    CONTENT = "content"  # the model produced something: commit point
    USAGE = "usage"  # usage-only chunk (choices == [])
    DONE = "done"  # data: [DONE]
    ERROR = "error"  # {"error": ...} inside the stream
    MALFORMED = "malformed"  # not JSON, or not an object
    OTHER = "other"  # comments, keep-alives, events without data


#: Default cap on one event's size (``policy.read_limits.event_bytes``). Real chunks are
#: a few hundred bytes; the largest legitimate event, a Responses API
#: ``response.completed`` that repeats the whole answer, stays far below this.
MAX_EVENT_BYTES = 16 << 20


class EventTooLarge(ValueError):
    """One streamed event grew past the size cap without ending (a hostile or broken
    server, or a stream that is not SSE at all): the stream is not read any further."""


class EventSplitter:
    """Incrementally split bytes into complete events (each ending with a blank line).

    Linear in the bytes received, however the server cuts them: pending bytes live in
    one ``bytearray`` (appends are amortised O(1)), each chunk is searched for the end
    of an event only from where the previous search stopped, and CRLF is normalised
    only in the new bytes. ``work`` counts the bytes examined or copied, so that tests
    can check linearity by counting instead of timing.
    """

    __slots__ = ("_buf", "max_event_bytes", "work")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self.max_event_bytes = max_event_bytes
        #: bytes examined or copied so far (a work counter for the linearity test)
        self.work = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf
        if not buf and b"\r" not in chunk:
            # The common case: the chunk starts at an event boundary.
            end = chunk.rfind(b"\n\n")
            self.work += len(chunk)
            if end < 0:
                buf += chunk
                self._check(len(buf))
                return []
            if end + 2 < len(chunk):
                buf += chunk[end + 2 :]
                self._check(len(buf))
            return self._events(chunk[:end])
        old = len(buf)
        buf += chunk
        if b"\r" in chunk or (old and buf[old - 1] == 13):
            # Normalise only the new bytes (and a CR left pending at the end of the old
            # ones: a CRLF may be split across two chunks). A lone trailing CR stays
            # pending until the next chunk says what it is.
            at = max(old - 1, 0)
            buf[at:] = buf[at:].replace(b"\r\n", b"\n")
            self.work += len(buf) - at
        # No boundary lies wholly in the old bytes (they were searched already); a new
        # one may start on the last old byte (or the one before, after normalising).
        start = max(old - 2, 0)
        end = buf.rfind(b"\n\n", start)
        self.work += len(buf) - start
        if end < 0:
            self._check(len(buf))
            return []
        complete = bytes(buf[:end])
        del buf[: end + 2]
        self.work += end + len(buf)
        self._check(len(buf))
        return self._events(complete)

    def _events(self, complete: bytes) -> list[bytes]:
        events = [e + b"\n\n" for e in complete.split(b"\n\n") if e]
        self.work += len(complete)
        if len(complete) > self.max_event_bytes:
            for e in events:
                self._check(len(e) - 2)
        return events

    def _check(self, size: int) -> None:
        if size > self.max_event_bytes:
            self._buf = bytearray()  # nothing more is read from this stream
            raise EventTooLarge(
                f"a streamed event exceeded {self.max_event_bytes} bytes without ending "
                "(raise policy.read_limits.event_bytes if the endpoint really sends such events)"
            )

    @property
    def has_pending(self) -> bool:
        """Are bytes of an incomplete event waiting (without copying them)?"""
        return bool(self._buf)

    @property
    def pending(self) -> bytes:
        """Bytes of an incomplete event (non-empty at the end of a stream means truncation)."""
        return bytes(self._buf)


def data_of(event: bytes) -> bytes | None:
    """The event's ``data`` field (multi-line data joined by newlines), or None."""
    if event.startswith(b"data:") and event.count(b"\n") == 2:  # fast path: one data line
        d = event[5:-2]
        return d[1:] if d[:1] == b" " else d
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            d = line[5:]
            parts.append(d[1:] if d[:1] == b" " else d)
    return b"\n".join(parts) if parts else None


def classify(data: bytes | None) -> tuple[EventKind, dict[str, Any] | None]:
    """What an event's data means (parses JSON; used before commit and for usage)."""
    if data is None:
        return EventKind.OTHER, None
    if data.strip() == DONE:
        return EventKind.DONE, None
    try:
        obj = json.loads(data)
    except ValueError:
        return EventKind.MALFORMED, None
    if not isinstance(obj, dict):
        return EventKind.MALFORMED, None
    return kind_of(obj), obj


def kind_of(obj: dict[str, Any]) -> EventKind:
    """What a parsed event (a JSON object) means."""
    t = obj.get("type")
    if isinstance(t, str) and (t.startswith("response.") or t == "error"):
        # The Responses API: typed events, no [DONE]. Deltas carry content; the
        # response.completed/incomplete event ends the stream (usage inside it).
        if t in ("response.completed", "response.incomplete"):
            return EventKind.DONE
        if t in ("response.failed", "error"):
            return EventKind.ERROR
        return EventKind.CONTENT if t.endswith(".delta") else EventKind.PREAMBLE
    if obj.get("error") is not None and not obj.get("choices"):  # "error": null is none
        return EventKind.ERROR
    choices = obj.get("choices")
    if isinstance(choices, list) and choices:
        for ch in choices:
            if not isinstance(ch, dict):
                return EventKind.MALFORMED
            if ch.get("finish_reason") or ch.get("text"):
                return EventKind.CONTENT
            delta = ch.get("delta")
            if isinstance(delta, dict) and any(
                delta.get(k)
                for k in (
                    "content",
                    "tool_calls",
                    "function_call",
                    "reasoning_content",
                    "reasoning",
                    "refusal",
                    "audio",
                )
            ):
                return EventKind.CONTENT
        return EventKind.PREAMBLE
    if obj.get("usage"):
        return EventKind.USAGE
    return EventKind.PREAMBLE


def looks_like_json_object(data: bytes) -> bool:
    """A cheap shape check for events after commit (full parsing is the SDK's job)."""
    d = data.strip()
    return (d[:1] == b"{" and d[-1:] == b"}") or d == DONE


#: After commit, the keys whose *non-null* value the library acts on (usage: cost and
#: capacity; error: an in-band error; finish_reason: a chat ``[DONE]`` is an end only
#: after one), and the Responses API's terminal event types. A JSON string cannot hold
#: an unescaped ``"``, so these bytes never match inside text the model wrote.
_MARKERS = re.compile(
    rb'"(?:usage|error|finish_reason)"\s*+:\s*+(?!null\b)'  # possessive: "k": null never backtracks into a match
    rb'|"type"\s*:\s*"(?:error|response\.(?:completed|incomplete|failed))"'
)


def needs_parse(data: bytes) -> bool:
    """Must a data event after the commit point be parsed (one ``json.loads``)?

    Only when its bytes carry a marker the library acts on (:data:`_MARKERS`: a
    non-null ``usage``, ``error`` or ``finish_reason``, a Responses ``error`` /
    ``response.completed`` / ``.incomplete`` / ``.failed`` event), or when a byte-level
    check says it may not be one JSON object: it must start with ``{``, end with ``}``
    and hold as many ``{`` as ``}`` and as many ``[`` as ``]`` (brackets inside strings
    count too: a token such as ``{`` only costs a parse that then finds the event
    sound). Every other event — the plain content chunks, nearly all of a stream —
    passes on the strength of a few C-level scans, without a parse. What this does not
    see is an event malformed inside balanced brackets (``{"a": }``): the SDK's own
    parse then raises its JSON error to the caller, so it is not lost, only not
    reported as :class:`~llm_multicloud.errors.StreamInterrupted` (docs/errors.md)."""
    if data[:1] != b"{" or data[-1:] != b"}":
        return True
    if data.count(b"{") != data.count(b"}") or data.count(b"[") != data.count(b"]"):
        return True
    return _MARKERS.search(data) is not None


def plain_event(chunk: bytes) -> bool:
    """Is ``chunk`` exactly one complete ``data: {...}`` event that needs no parse
    (``not needs_parse(data_of(chunk))``)? The committed stream's fast path: the
    common read — one content chunk — passes on these few C-level scans of the read
    itself, with no split and no copy. The ``data: `` prefix and the blank line hold
    no bracket and cannot start a marker (every marker starts with ``"``), so scanning
    the whole read decides the same as scanning its data."""
    return (
        chunk[:7] == b"data: {"
        and chunk[-3:] == b"}\n\n"
        and chunk.count(b"\n") == 2
        and chunk.count(b"{") == chunk.count(b"}")
        and chunk.count(b"[") == chunk.count(b"]")
        and _MARKERS.search(chunk) is None
    )


def text_of(events: list[bytes]) -> str:
    """The text content carried by a list of delivered events (for StreamInterrupted)."""
    out = []
    for ev in events:
        kind, obj = classify(data_of(ev))
        if obj is None or kind is not EventKind.CONTENT:
            continue
        for ch in obj.get("choices") or ():
            if isinstance(ch, dict):
                delta = ch.get("delta") or {}
                piece = delta.get("content") if isinstance(delta, dict) else None
                piece = piece or ch.get("text")
                if isinstance(piece, str):
                    out.append(piece)
    return "".join(out)
