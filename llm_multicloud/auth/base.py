"""The credential abstraction: one object per endpoint that sees the final request.

Every attempt — primary, retry, hedge, stream resume and probe — builds its request
completely (method, URL, headers, body bytes) and hands it to the endpoint's
:class:`Credential` just before it is sent. The credential may add headers (a key,
a bearer token) or sign the exact bytes (SigV4). Nothing is sent after that point
that the credential has not seen.

Tokens that expire are kept by :class:`TokenCredential`, which owns the refresh
rules in one place:

* a request never waits while a valid token exists; once a token is inside its
  refresh window (half its lifetime, at most five minutes, with jitter), the next
  use — or the background refresher, whichever comes first — starts a refresh and
  keeps using the current token meanwhile;
* one refresh at a time per credential (single flight), however many requests or
  event loops are waiting: they all wait on one :class:`concurrent.futures.Future`;
* blocking credential libraries (google-auth, azure-identity, botocore) run in a
  daemon thread, never on an event loop (and never keep the process alive);
* a 401 invalidates the token that was refused — only that one, so that fifty
  concurrent 401s cause one refresh, not fifty;
* a credential that cannot be obtained records a secret-free reason
  (:attr:`Credential.unavailable`) that the router shows in ``explain()`` and in
  the 503, and the refresher retries with backoff.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import changes
from ..errors import LLMMulticloudError, redact

log = logging.getLogger("llm_multicloud.auth")

#: The longest a token is refreshed ahead of its expiry.
MAX_LEAD_S = 300.0
#: A token this close to its expiry is no longer sent (clock skew, transit).
MAX_SKEW_S = 10.0
#: Backoff between attempts to obtain a credential that failed (seconds).
RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0


class CredentialUnavailable(LLMMulticloudError):
    """A credential could not be obtained (no ADC, an expired role, a missing file...).

    The message is secret-free: it names the credential kind and what failed, never
    a key, a token or a library's raw error body."""


@dataclass(slots=True)
class OutgoingRequest:
    """The request as it will be sent. A credential may change ``headers``; it must
    not change ``method``, ``url`` or ``body`` (they are what was planned)."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes | None
    #: sent by a blocking driver (a sync client on its own thread): a credential
    #: waits by blocking the thread, never by awaiting an event loop (there is none)
    blocking: bool = False
    #: the most a blocking driver waits for a credential (its request's deadline)
    wait_s: float | None = None

    def set_header(self, name: str, value: str) -> None:
        """Set one header, replacing any header of that name (case-insensitive)."""
        low = name.lower()
        headers = self.headers
        if any(k.lower() == low for k, _ in headers):
            headers = self.headers = [(k, v) for k, v in headers if k.lower() != low]
        headers.append((low, value))


@dataclass(frozen=True, slots=True)
class Token:
    """A secret value and when it stops being valid (``expires_at``: Unix time; None: never)."""

    value: str = field(repr=False)
    expires_at: float | None = None

    def __repr__(self) -> str:
        return f"Token(expires_at={self.expires_at!r})"


class Credential:
    """Base class of every credential kind. Subclasses implement :meth:`apply`.

    ``identity`` is a secret-free name of *who* the credential authenticates as,
    known at load time: endpoints whose credentials share one identity share one
    quota domain unless the catalog says otherwise.
    """

    kind: str = "credential"
    #: whether a 401 is worth one retry after :meth:`invalidate`
    refreshable: bool = False
    #: cloud quotas are per identity *and region*: endpoints share a quota domain only
    #: when both match (a key's quota is the key's, wherever it is used)
    regional_quota: bool = False
    #: :meth:`apply` never suspends when ``req.blocking`` (True for every built-in
    #: kind): a sync client's request may then run on its caller's thread; a
    #: credential of your own defaults to False and is applied on the background loop
    never_suspends: bool = False

    def __init__(self, identity: str | None) -> None:
        #: None: no identity of its own (the endpoint is its own quota domain)
        self.identity = identity
        #: why the credential cannot be obtained now (secret-free), or None
        self.unavailable: str | None = None

    def __setattr__(self, name: str, value: object) -> None:
        # the router's index (changes.py) reads ``unavailable`` only when it changes
        if name == "unavailable" and getattr(self, name, None) != value:
            object.__setattr__(self, name, value)
            changes.everything_changed()
            return
        object.__setattr__(self, name, value)

    async def apply(self, req: OutgoingRequest) -> object:
        """Authenticate ``req`` (add headers or sign). Returns a marker of what was
        used, for :meth:`invalidate`. Raises :class:`CredentialUnavailable`."""
        raise NotImplementedError

    def invalidate(self, used: object) -> None:
        """The endpoint refused what ``apply`` returned as ``used`` (a 401)."""

    def secrets(self) -> Iterable[str]:
        """Current secret values, so that messages echoing upstream text can be redacted."""
        return ()

    def next_refresh(self, now: float) -> float | None:
        """Unix time at which the background refresher should call :meth:`refresh_soon`."""
        return None

    def refresh_soon(self) -> None:
        """Start a refresh in the background if one is due (never waits)."""

    def describe(self) -> str:
        """Secret-free description for messages: the kind and non-secret settings."""
        return self.kind

    def signature(self) -> tuple[object, ...]:
        """What makes two credentials the same (a reloaded catalog builds new objects
        for unchanged endpoints): kind, identity and settings, secret-free."""
        return (type(self).__name__, self.kind, self.identity, self.describe(), getattr(self, "header", None))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credential) and self.signature() == other.signature()

    def __hash__(self) -> int:
        return hash(self.signature())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    __str__ = __repr__


def key_identity(prefix: str, secret: str) -> str:
    """A secret-free identity for a key: a short digest (same key, same identity)."""
    return f"{prefix}:{hashlib.sha256(secret.encode()).hexdigest()[:12]}"


def safe_reason(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """A short, secret-free description of a credential library's exception: its type
    and the first line of its first argument when that is a short string (libraries
    may put request bodies or keys in long messages; those are dropped)."""
    name = type(exc).__name__
    arg = exc.args[0] if exc.args else None
    if isinstance(arg, str) and arg.strip():
        line = arg.strip().splitlines()[0]
        if len(line) <= 160 and "-----BEGIN" not in line:
            return f"{name}: {redact(line, list(secrets))}"
    return name


Fetch = Callable[[], "Token | Awaitable[Token]"]


class TokenCredential(Credential):
    """A credential whose secret is a token that expires and is fetched again.

    Subclasses implement :meth:`fetch` (blocking, run in a daemon thread) or
    :meth:`afetch` (async, run on an event loop), returning a :class:`Token`;
    :meth:`render` turns the token into headers (default: ``Authorization: Bearer``).
    """

    refreshable = True
    header = "authorization"
    scheme: str | None = "Bearer"
    #: fetch() blocks (run in a thread); False: afetch() is a coroutine
    blocking = True
    never_suspends = True

    def __init__(self, identity: str | None, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(identity)
        self._clock = clock
        self._token: Token | None = None
        self._refresh_at = math.inf
        self._life = 0.0
        self._lock = threading.Lock()
        self._inflight: concurrent.futures.Future[Token] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._rand = random.Random()
        self.refreshes = 0  # successful fetches (for tests and snapshot)

    # -- what subclasses provide -------------------------------------------------------
    def fetch(self) -> Token:
        raise NotImplementedError

    async def afetch(self) -> Token:
        raise NotImplementedError

    def render(self, req: OutgoingRequest, token: Token) -> None:
        req.set_header(self.header, f"{self.scheme} {token.value}" if self.scheme else token.value)

    # -- the refresh rules -------------------------------------------------------------
    def _valid(self, t: Token | None, now: float) -> bool:
        if t is None:
            return False
        if t.expires_at is None:
            return True
        return now < t.expires_at - self._skew(t)

    def _skew(self, t: Token) -> float:
        # A fraction of the lifetime for short tokens (seconds-long in tests), 10 s for real ones.
        return min(MAX_SKEW_S, 0.1 * self._life) if t is self._token and self._life else MAX_SKEW_S

    async def token(self, *, blocking: bool = False, wait_s: float | None = None) -> Token:
        """A valid token: the current one (refreshing it in the background if due),
        or the result of the one refresh in flight. ``blocking``: wait for it by
        blocking this thread (a sync caller's; the future is thread-safe) instead of
        awaiting the running loop."""
        now = self._clock()
        t = self._token
        if self._valid(t, now):
            assert t is not None
            if now >= self._refresh_at:
                self._start(blocking=blocking)
            return t
        fut = self._start(blocking=blocking)
        if blocking:
            return fut.result(wait_s)  # TimeoutError past the deadline, as anyio's would be
        return await asyncio.wrap_future(fut)

    def _start(self, *, blocking: bool = False) -> concurrent.futures.Future[Token]:
        """The refresh in flight, started if there is none (single flight)."""
        with self._lock:
            fut = self._inflight
            if fut is not None:
                return fut
            fut = self._inflight = concurrent.futures.Future()
        if self.blocking:
            threading.Thread(target=self._run_blocking, args=(fut,), name=f"lmc-auth-{self.kind}", daemon=True).start()
        else:
            try:
                # A blocking caller's thread may run a loop (a sync client called from
                # async code): a task there would wait for the very thread we block.
                loop = asyncio.get_running_loop()
                if blocking:
                    raise RuntimeError("blocking caller")
            except RuntimeError:
                # No loop here (a background scheduler in a thread): run it in one of our own.
                threading.Thread(target=lambda: asyncio.run(self._run_async(fut)), daemon=True).start()
            else:
                task = loop.create_task(self._run_async(fut))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return fut

    def _run_blocking(self, fut: concurrent.futures.Future[Token]) -> None:
        try:
            tok = self.fetch()
        except BaseException as exc:
            self._failed(fut, exc)
        else:
            self._succeeded(fut, tok)

    async def _run_async(self, fut: concurrent.futures.Future[Token]) -> None:
        try:
            tok = await self.afetch()
        except BaseException as exc:
            self._failed(fut, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._succeeded(fut, tok)

    def _succeeded(self, fut: concurrent.futures.Future[Token], tok: Token) -> None:
        if not isinstance(tok, Token) or not tok.value or any(ord(c) < 33 or ord(c) > 126 for c in tok.value):
            self._failed(fut, CredentialUnavailable(f"{self.describe()}: the token is empty or not a header value"))
            return
        now = self._clock()
        if tok.expires_at is not None:
            life = max(tok.expires_at - now, 0.0)
            lead = min(MAX_LEAD_S, 0.5 * life) * (1.0 + 0.2 * self._rand.random())
            refresh_at = tok.expires_at - min(lead, 0.9 * life)
        else:
            life = 0.0
            refresh_at = math.inf
        with self._lock:
            self._token = tok
            self._life = life
            self._refresh_at = refresh_at
            self._inflight = None
            self._failures = 0
            self.refreshes += 1
        self.unavailable = None
        fut.set_result(tok)

    def _failed(self, fut: concurrent.futures.Future[Token], exc: BaseException) -> None:
        if isinstance(exc, CredentialUnavailable):
            reason = str(exc)
        else:
            reason = f"{self.describe()}: {safe_reason(exc, self.secrets())}"
        with self._lock:
            self._inflight = None
            self._failures += 1
            backoff = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (self._failures - 1))
            self._retry_at = self._clock() + backoff * (0.5 + 0.5 * self._rand.random())
        if not self._valid(self._token, self._clock()):
            self.unavailable = reason
        log.warning("credential %s could not be refreshed: %s", self.describe(), reason)
        fut.set_exception(CredentialUnavailable(reason))

    # -- Credential interface ----------------------------------------------------------
    async def apply(self, req: OutgoingRequest) -> object:
        tok = await self.token(blocking=req.blocking, wait_s=req.wait_s)
        self.render(req, tok)
        return tok

    def invalidate(self, used: object) -> None:
        with self._lock:
            if self._token is used:  # only the refused token: concurrent 401s refresh once
                self._token = None
                self._refresh_at = math.inf

    def secrets(self) -> Iterable[str]:
        t = self._token
        return (t.value,) if t is not None else ()

    def next_refresh(self, now: float) -> float | None:
        if self._inflight is not None:
            return now  # a refresh is running: look again soon
        if self._token is None or not self._valid(self._token, now):
            return max(self._retry_at, now) if self._failures else now
        return self._refresh_at if math.isfinite(self._refresh_at) else None

    def refresh_soon(self) -> None:
        now = self._clock()
        due = self.next_refresh(now)
        if due is not None and due <= now:
            self._start()


async def call_provider(fn: Callable[[], Any]) -> Any:
    """Call a sync or async callable; an awaitable result is awaited."""
    out = fn()
    if inspect.isawaitable(out):
        out = await out
    return out
