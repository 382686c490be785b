"""``lmc.auth.provider(fn)``: whatever a team already has that returns a key or token.

``fn`` is a plain or async callable (an async one runs on the event loop, so it must
not block; a plain one runs in a daemon thread, so it may). It returns a string, a
``(token, expires_at)`` pair (Unix time), a :class:`~llm_multicloud.auth.Token`, or
anything shaped like azure-core's ``AccessToken`` (``.token``, ``.expires_on``). A
bare string is reused for ``ttl_s`` seconds (default 300) and refreshed ahead of
that in the background; a 401 calls ``fn`` again at once.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

from .base import CredentialUnavailable, Token, TokenCredential, call_provider


def to_token(out: Any, *, default_ttl_s: float | None, now: float, what: str) -> Token:
    """Normalise what a provider returned into a Token."""
    if isinstance(out, Token):
        return out
    if isinstance(out, str):
        return Token(out, None if default_ttl_s is None else now + default_ttl_s)
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], str):
        exp = out[1]
        return Token(out[0], None if exp is None else float(exp))
    value = getattr(out, "token", None)
    exp = getattr(out, "expires_on", None)
    if isinstance(value, str):
        return Token(value, None if exp is None else float(exp))
    raise CredentialUnavailable(
        f"{what} returned {type(out).__name__}; return a str, (token, expires_at) or an object with .token/.expires_on"
    )


class ProviderCredential(TokenCredential):
    """A user's callable, with the shared refresh rules (single flight, ahead of expiry)."""

    kind = "provider"

    def __init__(
        self,
        fn: Callable[[], Any],
        *,
        ttl_s: float | None = 300.0,
        header: str = "authorization",
        scheme: str | None = "Bearer",
        name: str | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"lmc.auth.provider() takes a callable, got {type(fn).__name__}")
        self._fn = fn
        self._name = name or getattr(fn, "__qualname__", None) or type(fn).__name__
        super().__init__(f"provider:{id(fn):x}")
        self.header = header.lower()
        self.scheme = scheme if self.header == "authorization" else None
        self.ttl_s = ttl_s
        call = getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
        self.blocking = not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call))

    def fetch(self) -> Token:
        return to_token(self._fn(), default_ttl_s=self.ttl_s, now=time.time(), what=self.describe())

    async def afetch(self) -> Token:
        out = await call_provider(self._fn)
        return to_token(out, default_ttl_s=self.ttl_s, now=time.time(), what=self.describe())

    def describe(self) -> str:
        return f"provider ({self._name})"


def provider(
    fn: Callable[[], Any],
    *,
    ttl_s: float | None = 300.0,
    header: str = "authorization",
    scheme: str | None = "Bearer",
) -> ProviderCredential:
    """A credential from any sync or async callable returning a key or token.

    ``header``/``scheme``: where the value goes (default ``Authorization: Bearer``;
    ``header="api-key"`` sends the bare value). ``ttl_s``: how long a bare string is
    reused (``None``: until a 401)."""
    return ProviderCredential(fn, ttl_s=ttl_s, header=header, scheme=scheme)
