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


class EventSplitter:
    """Incrementally split bytes into complete events (each ending with a blank line)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # Normalise after joining: a CRLF may be split across two chunks. A lone
            # trailing CR stays pending until the next chunk says what it is.
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 2 :]
        return [e + b"\n\n" for e in buf[:end].split(b"\n\n") if e]

    @property
    def pending(self) -> bytes:
        """Bytes of an incomplete event (non-empty at the end of a stream means truncation)."""
        return self._buf


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
    t = obj.get("type")
    if isinstance(t, str) and (t.startswith("response.") or t == "error"):
        # The Responses API: typed events, no [DONE]. Deltas carry content; the
        # response.completed/incomplete event ends the stream (usage inside it).
        if t in ("response.completed", "response.incomplete"):
            return EventKind.DONE, obj
        if t in ("response.failed", "error"):
            return EventKind.ERROR, obj
        return (EventKind.CONTENT if t.endswith(".delta") else EventKind.PREAMBLE), obj
    if "error" in obj and not obj.get("choices"):
        return EventKind.ERROR, obj
    choices = obj.get("choices")
    if isinstance(choices, list) and choices:
        for ch in choices:
            if not isinstance(ch, dict):
                return EventKind.MALFORMED, obj
            if ch.get("finish_reason") or ch.get("text"):
                return EventKind.CONTENT, obj
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
                return EventKind.CONTENT, obj
        return EventKind.PREAMBLE, obj
    if obj.get("usage"):
        return EventKind.USAGE, obj
    return EventKind.PREAMBLE, obj


def looks_like_json_object(data: bytes) -> bool:
    """A cheap shape check for events after commit (full parsing is the SDK's job)."""
    d = data.strip()
    return (d[:1] == b"{" and d[-1:] == b"}") or d == DONE


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
