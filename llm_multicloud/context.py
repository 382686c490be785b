"""Per-user routing constraints, carried by :mod:`contextvars`.

``with lmc.routing(residency="EU", near="eu-west-1"):`` sets constraints for every
request made inside the block, in this thread or task and in every asyncio task or
anyio task group started from it (they copy the context). Thread pools do not copy
contexts by themselves: use ``contextvars.copy_context().run`` or
``anyio.to_thread.run_sync`` (which does), see docs/residency.md.

Scopes nest by **intersection**: an inner scope can narrow what an outer scope
allows, never widen it, and an empty intersection raises :class:`ResidencyError`
*before* any request is sent. ``near`` is a preference, not a constraint: the
innermost one wins. Per-call ``x-llm-multicloud-*`` headers are one more, innermost
scope, with the same rules.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar, cast

from . import regions
from .errors import ResidencyError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Constraints:
    """What a request requires of an endpoint. Immutable; hashable (router cache key)."""

    #: Countries where the request's data may be processed; None = anywhere.
    residency: frozenset[str] | None = None
    #: Human-readable form of the residency constraint, e.g. "EU ∩ DE".
    residency_label: str = ""
    #: The user's location (lat, lon) and how it was given, for the latency prior.
    near: tuple[float, float] | None = None
    near_label: str | None = None
    #: Endpoint tags the request requires (all must match).
    tags: tuple[tuple[str, str], ...] = field(default=())
    #: Session key for prompt-cache affinity (a preference, like ``near``: the
    #: innermost wins). Never a constraint: it cannot override residency or health.
    session: str | None = None

    def narrow(
        self,
        residency: str | Iterable[str] | None = None,
        near: str | None = None,
        tags: Mapping[str, str] | None = None,
        session: str | None = None,
    ) -> Constraints:
        """This scope narrowed by another one (intersection; raises on an empty one)."""
        res, label = self.residency, self.residency_label
        if residency is not None:
            allowed, new_label = parse_residency(residency)
            res = allowed if res is None else res & allowed
            label = f"{label} ∩ {new_label}" if label else new_label
            if not res:
                raise ResidencyError(
                    f"residency scopes do not intersect: {label} allows no country at all. An inner "
                    "scope can only narrow an outer one; check the nesting of routing()/residency()."
                )
        near_xy, near_label = self.near, self.near_label
        if near is not None:
            near_xy = locate(near)
            near_label = near
        merged = dict(self.tags)
        for k, v in (tags or {}).items():
            if k in merged and merged[k] != v:
                raise ResidencyError(f"routing tags do not intersect: {k}={merged[k]!r} (outer) vs {k}={v!r} (inner)")
            merged[k] = v
        if session is not None:
            session = check_session(session)
        return Constraints(
            res,
            label,
            near_xy,
            near_label,
            tuple(sorted(merged.items())),
            self.session if session is None else session,
        )


UNCONSTRAINED = Constraints()
_current: ContextVar[Constraints] = ContextVar("llm_multicloud_routing", default=UNCONSTRAINED)


def current() -> Constraints:
    """The constraints in force here."""
    return _current.get()


def parse_residency(value: str | Iterable[str]) -> tuple[frozenset[str], str]:
    """``"EU"``, ``"DE,FR"`` or ``["DE", "FR"]`` → (allowed countries, label). A list is a
    union (data may go to any of them); unknown codes are errors, never a silent no-match."""
    items = value.split(",") if isinstance(value, str) else list(value)
    tags = [t.strip().upper() for t in items if t and t.strip()]
    if not tags:
        raise ResidencyError("empty residency constraint; give a country code (DE) or a bloc (EU)")
    allowed: set[str] = set()
    for t in tags:
        if not regions.is_known_tag(t):
            raise ResidencyError(
                f"unknown residency code {t!r}: use an ISO 3166-1 alpha-2 country code (DE, IE, US) "
                f"or a bloc ({', '.join(sorted(regions.BLOCS))})"
            )
        allowed |= regions.expand_tag(t)
    return frozenset(allowed), "|".join(tags)


#: Longest session key accepted (it is hashed, never sent anywhere).
MAX_SESSION = 512


def check_session(value: object) -> str:
    """A session key as given to ``routing(session=...)`` or the session header."""
    if not isinstance(value, str) or not value.strip():
        raise ResidencyError(f"session must be a non-empty string (got {value!r}), e.g. a conversation id")
    if len(value) > MAX_SESSION:
        raise ResidencyError(f"session key is {len(value)} characters; at most {MAX_SESSION} (hash longer ids)")
    return value


def locate(place: str) -> tuple[float, float]:
    xy = regions.locate(place.strip())
    if xy is None:
        raise ResidencyError(
            f"unknown location {place!r} for near=: give a cloud region code (eu-west-1, europe-west4, "
            "westeurope), provider:code, or an ISO country code (DE)"
        )
    return xy


@contextmanager
def routing(
    *,
    residency: str | Iterable[str] | None = None,
    near: str | None = None,
    tags: Mapping[str, str] | None = None,
    session: str | None = None,
) -> Iterator[Constraints]:
    """Constrain every request made inside the block (see the module docs).

    ``session``: a conversation or user id; requests with the same key prefer the
    same endpoint (prompt-cache affinity, see docs/affinity.md) among those that are
    compliant, healthy and near the best. The innermost session wins."""
    narrowed = _current.get().narrow(residency, near, tags, session)
    token = _current.set(narrowed)
    try:
        yield narrowed
    finally:
        _current.reset(token)


async def _pinned(awaitable: Any, enter: Callable[[], Token[Constraints]]) -> Any:
    token = enter()
    try:
        return await awaitable
    finally:
        _current.reset(token)


class residency:
    """Pin calls to a residency: a decorator (sync, async, generator and async
    generator functions) and a context manager.

    For generators the scope applies while the generator's own code runs, resumption
    by resumption, and never leaks into the consumer between two ``yield``.
    """

    def __init__(self, *codes: str, near: str | None = None, tags: Mapping[str, str] | None = None) -> None:
        if not codes:
            raise ResidencyError("residency() needs at least one code, e.g. residency('EU')")
        parse_residency(codes)  # fail at decoration time on a bad code
        self._codes = codes
        self._near = near
        self._tags = dict(tags or {})
        # Tokens per context (task/thread), so that one shared instance can be entered
        # by concurrent tasks without one resetting another's scope.
        self._tokens: ContextVar[tuple[Token[Constraints], ...]] = ContextVar(f"llm_multicloud_residency_{id(self)}")

    def _enter(self) -> Token[Constraints]:
        return _current.set(_current.get().narrow(self._codes, self._near, self._tags))

    def __enter__(self) -> Constraints:
        token = self._enter()
        self._tokens.set((*self._tokens.get(()), token))
        return _current.get()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        stack = self._tokens.get()
        self._tokens.set(stack[:-1])
        _current.reset(stack[-1])

    def __call__(self, fn: F) -> F:
        enter = self._enter
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
                agen = fn(*args, **kwargs)
                sent: Any = None
                exc: BaseException | None = None
                try:
                    while True:
                        token = enter()
                        try:
                            value = await (agen.athrow(exc) if exc is not None else agen.asend(sent))
                        except StopAsyncIteration:
                            return
                        finally:
                            _current.reset(token)
                        exc = None
                        try:
                            sent = yield value
                        except GeneratorExit:
                            raise
                        except BaseException as e:
                            exc = e
                finally:
                    token = enter()  # the generator's own cleanup runs inside the scope too
                    try:
                        await agen.aclose()
                    finally:
                        _current.reset(token)

            return cast(F, agen_wrapper)
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
                gen = fn(*args, **kwargs)
                sent: Any = None
                exc: BaseException | None = None
                try:
                    while True:
                        token = enter()
                        try:
                            value = gen.throw(exc) if exc is not None else gen.send(sent)
                        except StopIteration as stop:
                            return stop.value
                        finally:
                            _current.reset(token)
                        exc = None
                        try:
                            sent = yield value
                        except GeneratorExit:
                            raise
                        except BaseException as e:
                            exc = e
                finally:
                    token = enter()  # the generator's own cleanup runs inside the scope too
                    try:
                        gen.close()
                    finally:
                        _current.reset(token)

            return cast(F, gen_wrapper)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = enter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _current.reset(token)

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            token = enter()
            try:
                result = fn(*args, **kwargs)
            finally:
                _current.reset(token)
            if inspect.isawaitable(result):
                # A plain function (or an object with an async __call__) that returns
                # an awaitable: the work happens when it is awaited, so the scope must
                # be in force then, not only while the function returned it.
                return _pinned(result, enter)
            return result

        return cast(F, sync_wrapper)
