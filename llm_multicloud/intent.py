"""Intent: what one request wants, parsed once from the SDK's HTTP request (sans-I/O).

The transport hands over method, path, headers, body and the caller's timeout;
this module turns them into an :class:`Intent` — logical model, stream flag,
routing constraints (context + ``x-llm-multicloud-*`` headers), token estimates
and the headers that may be forwarded — and builds each attempt's body with the
endpoint's served model name. Everything else in the pipeline reads the intent,
never the raw request, so parsing (and its error messages) lives here only.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from . import context, hrw
from .context import Constraints
from .errors import LLMMulticloudError, RoutingError

HEADER_PREFIX = "x-llm-multicloud-"
#: Characters no HTTP header value may hold (tab is allowed).
_CTL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_MAX_HEADER = 512

# Request headers never forwarded upstream: credentials of the wrapped client
# (each endpoint gets only its own), hop-by-hop headers, and account headers that
# mean something only to api.openai.com.
_DROP = frozenset(
    {
        "authorization",
        "api-key",
        "x-api-key",
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authorization",
        "openai-organization",
        "openai-project",
        "cookie",
        "accept-encoding",
    }
)

OPERATIONS = {
    "chat/completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "responses": "responses",
}

#: The stream formats the executor parses (commit point, in-band errors, end, usage).
#: A stream in any other format could never be judged — its first token, its errors,
#: its end — so it is refused before any byte is sent instead of being blamed on
#: endpoints (e.g. Anthropic Messages through ``httpx_client()``).
STREAMED_OPERATIONS = frozenset({"chat", "text_completion", "responses"})


@dataclass(slots=True)
class Intent:
    method: str
    path: str  # API path relative to the base URL, without leading slash: "chat/completions"
    query: str
    operation: str
    model: str | None
    stream: bool
    wants_usage: bool  # the caller asked for stream usage itself
    body: dict[str, Any] | None
    raw_body: bytes
    headers: list[tuple[str, str]]  # forwardable
    constraints: Constraints
    timeout_s: float | None
    max_tokens: int | None
    input_tokens: int  # estimate: ~4 bytes per token of the prompt
    request_id: str = field(default_factory=lambda: os.urandom(6).hex())
    #: resume: the partial answer to continue, endpoints to avoid, resumes so far
    resume_prefix: str | None = None
    avoid: frozenset[str] = frozenset()
    resumes: int = 0
    #: attempt bodies already built, per (served name, add_usage, resume style): every
    #: attempt to an endpoint with the same served name sends the same bytes. Not an
    #: init field, so a resume's ``dataclasses.replace`` starts with an empty memo.
    _bodies: dict[tuple[str, bool, str], bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    def affinity_key(self, *, prefix: bool, min_tokens: int) -> tuple[int, str] | None:
        """The prompt-cache affinity key: (64-bit hash, source). An explicit session
        (``routing(session=)`` or the session header) wins; else, with ``prefix``, a
        hash of the prompt's stable prefix — the instructions/system messages and
        the first user message, which every later turn of a conversation repeats —
        when it is at least ``min_tokens`` long (estimated). None: no affinity."""
        s = self.constraints.session
        if s is not None:
            return hrw.key_hash("session:" + s), "session"
        if not prefix or self.body is None:
            return None
        parts = _stable_prefix(self.body)
        if not parts or sum(len(x) for x in parts) // 4 < min_tokens:
            return None
        return hrw.key_hash("\x1e".join(parts)), "prefix"

    def body_for(self, served_model: str, *, add_usage: bool, resume_style: str = "vllm") -> bytes:
        """The body to send to an endpoint that serves the model as ``served_model``
        (and, when resuming a broken stream, continues ``resume_prefix`` in that
        endpoint's style). Built once per served name (memoised); without a resume, the
        caller's bytes with the model's value replaced in place (:func:`_splice_model`),
        else re-serialised."""
        if self.body is None:
            return self.raw_body
        key = (served_model, add_usage, resume_style if self.resume_prefix is not None else "")
        out = self._bodies.get(key)
        if out is None:
            out = self._bodies[key] = self._build_body(served_model, add_usage, resume_style)
        return out

    def _build_body(self, served_model: str, add_usage: bool, resume_style: str) -> bytes:
        assert self.body is not None
        usage = add_usage and self.stream and not self.wants_usage and self.operation in ("chat", "text_completion")
        if self.resume_prefix is None and isinstance(self.model, str):
            spliced = _splice_model(self.raw_body, self.model, served_model, add_usage=usage)
            if spliced is not None:
                return spliced
        body = dict(self.body)
        body["model"] = served_model
        if self.resume_prefix is not None:
            msgs = list(body.get("messages") or [])
            if resume_style == "prefix":
                msgs.append({"role": "assistant", "content": self.resume_prefix, "prefix": True})
            else:  # vllm / sglang
                msgs.append({"role": "assistant", "content": self.resume_prefix})
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
            body["messages"] = msgs
            if self.max_tokens is not None:
                for k in ("max_completion_tokens", "max_tokens"):
                    if k in body:
                        body[k] = self.max_tokens
        if usage:
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True
            body["stream_options"] = opts
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def parse(
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    timeout_s: float | None,
) -> Intent:
    """Parse one SDK request. Raises :class:`RoutingError` (400) on bad input."""
    fwd: list[tuple[str, str]] = []
    scopes: list[tuple[str, str]] = []  # routing headers, in order: each one narrows
    for h in headers:
        # (the HTTP libraries hand names over lowercased: keep those pairs as they are,
        # a request in flight holds its headers twice already — the SDK's and ours)
        k, v = h
        lk = k if k.islower() else k.lower()
        if lk.startswith(HEADER_PREFIX):
            if len(v) > _MAX_HEADER or any(ord(ch) < 32 for ch in v):
                raise RoutingError(
                    400, "bad_routing_header", f"header {lk}: value is too long or has control characters"
                )
            name = lk[len(HEADER_PREFIX) :]
            if name in ("residency", "near", "tags", "session"):
                scopes.append((name, v))
            else:
                raise RoutingError(
                    400,
                    "bad_routing_header",
                    f"unknown routing header {lk}; known: {HEADER_PREFIX}residency, {HEADER_PREFIX}near, "
                    f"{HEADER_PREFIX}tags, {HEADER_PREFIX}session",
                )
            continue
        if lk in _DROP:
            continue
        if not v.isprintable() and _CTL.search(v) is not None:  # isprintable: the fast, C-level check
            # h11 would refuse to send it, on every endpoint in turn: the caller's fault.
            raise RoutingError(
                400, "bad_request", f"header {lk}: the value has control characters (CR, LF...); remove them"
            )
        fwd.append(h if lk is k else (lk, v))
    constraints = context.current()
    try:
        # A repeated header narrows again (intersection), never replaces: a second
        # residency header can only make a request more constrained.
        for name, v in scopes:
            if name == "residency":
                constraints = constraints.narrow(residency=v)
            elif name == "near":
                constraints = constraints.narrow(near=v)
            elif name == "session":
                constraints = constraints.narrow(session=v)
            else:
                constraints = constraints.narrow(tags=_parse_tags(v))
    except LLMMulticloudError as exc:
        raise RoutingError(400, "bad_routing_header", str(exc)) from None
    path = path.strip("/")
    obj: dict[str, Any] | None = None
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            obj = parsed
    model = obj.get("model") if obj is not None else None
    if model is not None and not isinstance(model, str):
        raise RoutingError(400, "bad_request", f"'model' must be a string (got {type(model).__name__})")
    stream = bool(obj.get("stream")) if obj is not None else False
    so = obj.get("stream_options") if obj is not None else None
    wants_usage = bool(isinstance(so, dict) and so.get("include_usage"))
    mt = None
    if obj is not None:
        for k in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            n = obj.get(k)
            if isinstance(n, int) and n > 0:
                mt = n
                break
    operation = OPERATIONS.get(path, path)
    if stream and operation == "embeddings":
        stream = False  # embeddings never stream: the flag means nothing there
    if stream and operation not in STREAMED_OPERATIONS:
        raise RoutingError(
            400,
            "stream_not_supported",
            f"streaming POST /{path} is not supported: llm_multicloud parses the streams of Chat Completions, "
            "legacy Completions and the Responses API only (Anthropic Messages streams are not supported). "
            "Send it without stream, or use one of those APIs. Nothing was sent.",
        )
    return Intent(
        method=method.upper(),
        path=path,
        query=query,
        operation=operation,
        model=model,
        stream=stream,
        wants_usage=wants_usage,
        body=obj,
        raw_body=body,
        headers=fwd,
        constraints=constraints,
        timeout_s=timeout_s,
        max_tokens=mt,
        input_tokens=_estimate_input_tokens(obj, body),
    )


_MODEL_KEY = re.compile(rb'"model"\s*:\s*')


def _splice_model(raw: bytes, model: str, served: str, *, add_usage: bool) -> bytes | None:
    """The caller's body with the top-level ``model`` value replaced by ``served`` (and
    ``stream_options.include_usage`` added when asked), without re-serialising the rest
    — a JSON string cannot hold an unescaped ``"``, so ``"model":`` in the bytes is
    always a key. None (re-serialise instead) unless ``"model"`` occurs exactly once in
    the bytes, as a key whose value is ``model`` as written by ``json.dumps``, and, with
    ``add_usage``, no ``stream_options`` key at all."""
    first = raw.find(b'"model"')
    if first < 0 or raw.find(b'"model"', first + 7) >= 0:
        return None  # no such key, or nested ones too (or in a string value): re-serialise
    key = _MODEL_KEY.match(raw, first)
    if key is None:
        return None
    at = key.end()
    for old in (json.dumps(model).encode(), json.dumps(model, ensure_ascii=False).encode()):
        if raw.startswith(old, at):
            break
    else:
        return None
    out = raw[:at] + json.dumps(served, ensure_ascii=False).encode() + raw[at + len(old) :]
    if add_usage:
        if b'"stream_options"' in out:
            return None
        end = out.rstrip()
        if not end.endswith(b"}"):
            return None
        out = end[:-1] + b',"stream_options":{"include_usage":true}}'
    return out


def _parse_tags(v: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in v.split(","):
        part = part.strip()
        if not part:
            continue
        k, sep, val = part.partition("=")
        if not sep or not k.strip() or not val.strip():
            raise RoutingError(
                400, "bad_routing_header", f"{HEADER_PREFIX}tags: {part!r} is not key=value (e.g. tier=gold)"
            )
        out[k.strip()] = val.strip()
    return out


def _stable_prefix(obj: dict[str, Any]) -> list[str]:
    """The part of a prompt that later turns of the same conversation repeat
    verbatim: system/developer messages and instructions up to and including the
    first user message (chat, Responses), else the start of a plain prompt."""
    out: list[str] = []
    msgs = obj.get("messages")
    if not isinstance(msgs, list):
        msgs = obj.get("input") if isinstance(obj.get("input"), list) else None
        ins = obj.get("instructions")
        if isinstance(ins, str):
            out.append("instructions\x1f" + ins)
    if isinstance(msgs, list):
        for m in msgs:
            if not isinstance(m, dict):
                break
            role = m.get("role")
            c = m.get("content")
            out.append(f"{role}\x1f" + (c if isinstance(c, str) else json.dumps(c, sort_keys=True)))
            if role == "user":
                break
        return out
    p = obj.get("prompt", obj.get("input"))
    if isinstance(p, str):
        out.append("prompt\x1f" + p[:4096])
    return out


def _estimate_input_tokens(obj: dict[str, Any] | None, raw: bytes) -> int:
    if obj is None:
        return len(raw) // 4
    msgs = obj.get("messages")
    if isinstance(msgs, list):
        n = 0
        for m in msgs:
            if isinstance(m, dict):
                c = m.get("content")
                if isinstance(c, str):
                    n += len(c)
                elif c is not None:
                    n += len(json.dumps(c))
        return n // 4 + 4 * len(msgs)
    inp = obj.get("input", obj.get("prompt"))
    if isinstance(inp, str):
        return len(inp) // 4 + 1
    return len(raw) // 4
