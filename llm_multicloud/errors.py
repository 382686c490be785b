"""Errors, and the one place where upstream outcomes are classified.

Two kinds of things live here:

* Exceptions the library raises in the caller's code (a broken catalog, an
  empty residency intersection, a stream that broke after it was committed).
* :func:`classify_status` / :class:`FaultKind`: every upstream outcome (an HTTP
  status, a transport exception, a malformed reply) is sorted *once* into request
  faults (the caller's fault: returned as is, no health penalty), endpoint faults
  (penalty and failover) and account/quota faults (cooldown and failover). Every
  other module asks this module instead of looking at status codes itself, so the
  taxonomy cannot drift between the executor, health and telemetry.

Routing failures that the caller should see as an HTTP error (unknown model, bad
routing header, nothing usable) are :class:`RoutingError` values; the transport
turns them into real HTTP responses so that the ``openai`` SDK raises its own
exception types (``NotFoundError``, ``BadRequestError``, ``InternalServerError``).
"""

from __future__ import annotations

import enum
import json
import math
import time
from collections.abc import Iterable
from email.utils import parsedate_to_datetime
from typing import Any, Literal


class LLMMulticloudError(Exception):
    """Base class of every exception raised by llm_multicloud."""


class CatalogError(LLMMulticloudError, ValueError):
    """The catalog (or policy) is invalid. The message names each field path, the bad
    value and what is allowed, one problem per line."""


class ResidencyError(LLMMulticloudError, ValueError):
    """A routing constraint is invalid: an unknown residency code, or nested scopes
    whose intersection is empty. Raised before any byte is sent."""


class StreamInterrupted(LLMMulticloudError):
    """A stream broke after it was committed to the caller.

    The library never truncates an answer silently: the caller sees this exception
    while iterating. It carries what was delivered so far, so that an application can
    show or store the partial answer, and the usage known at that point (``None`` when
    the endpoint had not reported any).
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        delivered_text: str,
        usage: dict[str, Any] | None,
        chunks: int,
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.delivered_text = delivered_text
        self.usage = usage
        self.chunks = chunks


class DeadlineExceeded(LLMMulticloudError):
    """The caller's overall deadline passed before any endpoint answered (the transport
    turns it into the HTTP library's ``ReadTimeout``: ``openai.APITimeoutError``)."""


class FaultKind(enum.Enum):
    """Who is at fault for an unsuccessful attempt, which decides what happens next.

    The blame rule, written once: an endpoint's health changes only for faults of
    that endpoint (:attr:`ENDPOINT`) or of its account (:attr:`QUOTA`). The caller's
    own faults (:attr:`REQUEST`) and faults of this process (:attr:`LOCAL`) never
    penalise an endpoint and never fail over.
    """

    #: The request itself is wrong (400, 404, 413, 422...): hand the reply to the
    #: caller unchanged; the endpoint is healthy, another one would say the same.
    #: A 404 is one too — a path or served name the server does not have (legacy
    #: completions on a chat-only server, an SDK that doubles ``/v1``): blaming the
    #: endpoint would eject the whole fleet for one caller's mistake. A model the
    #: probes show missing is excluded by the router before any request is sent.
    REQUEST = "request"
    #: The endpoint failed (connect error, timeout, 5xx, broken or malformed reply
    #: in a format we parse): health penalty and failover.
    ENDPOINT = "endpoint"
    #: The account or quota behind the endpoint refused (401, 403, 429): cool the
    #: endpoint (and its quota domain) down and fail over; no breaker penalty, the
    #: endpoint itself is fine.
    QUOTA = "quota"
    #: Nothing the endpoint did: a bug of this library, an exception that is not the
    #: HTTP library's (``RuntimeError: Event loop is closed``), an invalid request
    #: our HTTP library refused to send. No penalty, no failover (every endpoint
    #: would fail the same way): the caller gets a clear error at once.
    LOCAL = "local"


#: The statuses that fail over by default (``policy.failover_on``): timeouts and
#: "busy" answers of a server (408, 409 from some gateways, 425), account and quota
#: refusals (401, 403, 429) and every 5xx. Every other 4xx is the caller's request.
#: An entry of ``policy.failover_on``: a status code, or ``"5xx"`` for 500-599.
FailoverStatus = int | Literal["5xx"]
DEFAULT_FAILOVER_ON: tuple[FailoverStatus, ...] = (401, 403, 408, 409, 425, 429, "5xx")

_QUOTA_STATUSES = frozenset({401, 403, 429})


def failover_statuses(failover_on: tuple[FailoverStatus, ...] = DEFAULT_FAILOVER_ON) -> frozenset[int]:
    """The set of statuses ``failover_on`` names (``"5xx"`` expands to 500-599)."""
    out: set[int] = set()
    for s in failover_on:
        if s == "5xx":
            out.update(range(500, 600))
        elif isinstance(s, int):
            out.add(s)
        else:
            raise ValueError(f"failover_on: {s!r} is neither a status code (400-599) nor '5xx'")
    return frozenset(out)


_DEFAULT_FAILOVER = failover_statuses()


def classify_status(status: int, failover: frozenset[int] = _DEFAULT_FAILOVER) -> FaultKind | None:
    """Classify an HTTP status; ``None`` means success (2xx/3xx).

    ``failover`` is the policy's set of statuses that fail over (see
    :data:`DEFAULT_FAILOVER_ON`): 401/403/429 among them are account or quota
    faults, the others endpoint faults; any other status of 400 and above is the
    caller's request fault. Statuses above 599 (nonsense) are the endpoint's.
    """
    if status < 400:
        return None
    if status in failover or status >= 600:
        return FaultKind.QUOTA if status in _QUOTA_STATUSES else FaultKind.ENDPOINT
    return FaultKind.REQUEST


def local_fault_message(exc: BaseException) -> str:
    """What the caller reads when a request failed in this process, not at an endpoint."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    hint = ""
    if type(exc).__name__ == "PoolTimeout":
        hint = (
            " Every connection of this process's pool toward the endpoint stayed busy until the "
            "attempt's deadline: raise http_options['limits'] (max_connections, per endpoint) "
            "or send fewer requests at once."
        )
    elif isinstance(exc, RuntimeError) and "event loop" in str(exc).lower():
        hint = (
            " An async client's connections belong to the event loop that opened them; "
            "a loop that is closed or stopped cannot run them."
        )
    return (
        f"llm_multicloud could not complete the request because of a problem in this process, "
        f"not at any endpoint ({text}); no endpoint was penalised and nothing was retried.{hint} "
        "If this persists, it is a bug: please report it with this message."
    )


class RoutingError(LLMMulticloudError):
    """A request that cannot be routed; rendered as an HTTP error response.

    ``status`` is the HTTP status the caller's SDK sees; ``code`` a stable machine
    readable string; the message says what to do about it.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> bytes:
        """An OpenAI-style error body, so SDKs show the message as they show any API error."""
        err = {"error": {"message": self.message, "type": "llm_multicloud_error", "code": self.code}}
        return json.dumps(err).encode()

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", b"application/json"),
            # The openai SDK would otherwise retry 5xx on its own; routing already did
            # everything that made sense, so a retry would only add load.
            (b"x-should-retry", b"false"),
            (b"x-llm-multicloud-error", self.code.encode()),
        ]


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every printed form of a secret by ``***`` (for messages that echo upstream
    text; see :mod:`llm_multicloud.redaction`)."""
    from .redaction import redactor

    return redactor(secrets)(text)


def error_message(body: bytes, limit: int = 200) -> str:
    """The human part of an upstream error body (OpenAI-style JSON or text), shortened
    to ``limit`` characters (the CLI shows errors whole: a larger limit)."""
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("data:"):
        text = text[5:].strip()
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            err = obj.get("error", obj)
            msg = err.get("message") if isinstance(err, dict) else err
            if msg:
                text = str(msg)
    except ValueError:
        pass
    return text[:limit] or "(empty body)"


def readable_status_errors(client: Any) -> Any:
    """Make ``client`` (a wrapped openai client) word the library's own error responses
    as text on every openai line.

    openai 1.x/2.x format an error whose body is JSON as ``Error code: 503 -
    {'error': {'message': "...\\n  ..."}}`` — a dict repr with escaped newlines, so
    the per-candidate lines of a 503 are unreadable; openai 3.x prints the message.
    This hooks the client's own error factory (and its copies') so that responses
    carrying ``x-llm-multicloud-error`` read ``Error code: 503 - <message>`` while
    ``.body``, ``.code`` and the exception class stay the SDK's.
    """
    make = getattr(client, "_make_status_error_from_response", None)
    copy = getattr(client, "copy", None)
    if make is None or copy is None:
        return client

    def make_readable(response: Any) -> Any:
        err = make(response)
        body = getattr(err, "body", None)
        message = body.get("message") if isinstance(body, dict) else None
        if isinstance(message, str) and "x-llm-multicloud-error" in response.headers:
            text = f"Error code: {response.status_code} - {message}"
            err.message = text
            err.args = (text,)
        return err

    def copy_readable(*args: Any, **kwargs: Any) -> Any:
        return readable_status_errors(copy(*args, **kwargs))

    client._make_status_error_from_response = make_readable
    client.copy = client.with_options = copy_readable
    return client


# -- Retry-After: parsed once, capped once ----------------------------------------------
def parse_retry_after(headers: list[tuple[str, str]], now_wall: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``x-ms-retry-after-ms`` or ``Retry-After``
    (seconds or an HTTP date), in that order of precedence. Garbage and negative values
    are ignored (None). Absurd values are not capped here but where they are used:
    :func:`cooldown_s`, with the policy's ``max_retry_after_s``."""
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


def cooldown_s(retry_after: float | None, *, default_s: float, cap_s: float) -> float:
    """How long a quota refusal (429, or 401/403 after a refresh) cools its quota domain:
    the server's Retry-After (:func:`parse_retry_after`) or ``default_s`` when it sent
    none, never negative, never more than ``cap_s`` (``policy.max_retry_after_s``: a
    server asking for a day must not take an endpoint out for a day; NaN is no
    cooldown). The one rule;
    :meth:`~llm_multicloud.health.Health.cooldown` applies it."""
    if retry_after is None:
        return min(max(default_s, 0.0), cap_s)
    if math.isnan(retry_after):
        return 0.0
    return min(max(retry_after, 0.0), cap_s)
