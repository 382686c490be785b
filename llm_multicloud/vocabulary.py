"""The library's typed vocabulary: the words its records and states are made of.

Outcomes, attempt kinds, breaker states and exclusion kinds used to be bare strings
written in several modules and parsed back out of reason text by telemetry. They are
enums here, written once, and carried as data from where they happen (the engine,
health, the router) to the records the hooks and telemetry receive.

Every enum is a :class:`enum.StrEnum`: a member *is* its string (``AttemptKind.HEDGE
== "hedge"``, ``json.dumps`` writes ``"hedge"``, an f-string prints ``hedge``), so
code, tests and dashboards that compare with the strings keep working, and records
stay serialisable to the same JSON. This module imports nothing of the library: every
other module may depend on it.
"""

from __future__ import annotations

import enum


class AttemptKind(enum.StrEnum):
    """Why an attempt was started (``AttemptRecord.kind``)."""

    #: the first attempt of a request
    PRIMARY = "primary"
    #: a second attempt started because the first token was late (another failure domain)
    HEDGE = "hedge"
    #: started because an attempt failed before the commit point: a failover
    RETRY = "retry"


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended (``AttemptRecord.outcome``)."""

    #: its answer went to the caller (for a stream: it ended normally)
    WON = "won"
    #: an endpoint or quota fault before the commit point (it failed over, or the request failed)
    FAILED = "failed"
    #: it lost the race (another attempt won, the caller went away): closed, never handed over
    CANCELLED = "cancelled"
    #: the endpoint refused the request itself (400/404/413/422): handed back unchanged
    REQUEST_ERROR = "request_error"
    #: this process failed it (a bug, a closed event loop): nobody's fault upstream
    LOCAL_ERROR = "local_error"
    #: its committed stream broke and the caller got ``StreamInterrupted``
    INTERRUPTED = "interrupted"
    #: its committed stream broke and another endpoint continued it (opt-in resume)
    RESUMED = "resumed"
    #: the caller closed its committed stream before the end
    CLOSED_BY_CALLER = "closed_by_caller"


class RequestOutcome(enum.StrEnum):
    """How one logical request ended (``RequestRecord.outcome``)."""

    #: an answer was delivered in full
    OK = "ok"
    #: the caller's request was refused (an HTTP 4xx handed back, or a routing error before any attempt)
    REQUEST_ERROR = "request_error"
    #: every attempt failed, or nothing could serve it (HTTP 503)
    FAILED = "failed"
    #: the caller's deadline passed before any endpoint answered
    TIMEOUT = "timeout"
    #: the committed stream broke and the caller got ``StreamInterrupted``
    INTERRUPTED = "interrupted"
    #: the committed stream broke and a continuation (a new request ``-rN``) took over
    RESUMED = "resumed"
    #: the caller closed the stream early (their choice: not an error)
    CLOSED_BY_CALLER = "closed_by_caller"
    #: the caller's task was cancelled (or the library failed) before an answer
    CANCELLED = "cancelled"


#: Request outcomes that are not errors (the caller closing a stream early is their choice).
OK_REQUEST_OUTCOMES = frozenset({RequestOutcome.OK, RequestOutcome.CLOSED_BY_CALLER})
#: Attempt outcomes that are errors of that attempt.
FAILED_ATTEMPT_OUTCOMES = frozenset({AttemptOutcome.FAILED, AttemptOutcome.REQUEST_ERROR, AttemptOutcome.INTERRUPTED})


class BreakerState(enum.StrEnum):
    """A circuit breaker's state (and the state an attempt was admitted under)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class ErrorType(enum.StrEnum):
    """Low-cardinality ``error.type`` of a failed attempt that has no HTTP status
    (``AttemptRecord.error_type``; an HTTP failure carries its status, ``"503"``)."""

    #: no first token (or no complete answer) within the attempt's deadline
    TIMEOUT = "timeout"
    #: the committed stream broke
    STREAM_INTERRUPTED = "stream_interrupted"
    #: the credential could not be obtained
    CREDENTIAL = "credential"
    #: this process failed the attempt
    LOCAL = "local"
    #: the transport's error kinds (``upstream.UpstreamError.kind``)
    CONNECT = "connect"
    READ = "read"
    PROTOCOL = "protocol"
    TRANSPORT = "transport"
    #: a redirect (never followed)
    REDIRECT = "redirect"


class ExclusionKind(enum.StrEnum):
    """Why the router left an endpoint out of a plan (``Exclusion.kind``)."""

    RESIDENCY = "residency"
    TAGS = "tags"
    MISSING_MODEL = "missing_model"
    COOLING = "cooling"
    EJECTED = "ejected"
    FULL = "full"
    DRAINED = "drained"
    LIMITED = "limited"
    CREDENTIAL = "credential"


#: Exclusions that mean "this endpoint is out for its health or load right now" (the
#: fleet is saturated when they outnumber the candidates: hedging would only add load).
UNAVAILABLE_EXCLUSIONS = frozenset({ExclusionKind.COOLING, ExclusionKind.EJECTED, ExclusionKind.LIMITED})
