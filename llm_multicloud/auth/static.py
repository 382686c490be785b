"""Static keys: a literal, an environment variable (read on each use, so a rotated
value is picked up), or a file (re-read when it changes: Kubernetes secret mounts
rotate by swapping a symlink, which changes the file's inode and mtime).

The file is ``stat``-ed at most once a second on the request path (a couple of
microseconds), and at once after a 401: polling is what survives symlink swaps,
and a refused key is re-read immediately instead of waiting for a watcher.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable

from .base import Credential, CredentialUnavailable, OutgoingRequest, key_identity

FILE_CHECK_S = 1.0


def _rendered(header: str, key: str) -> str:
    return f"Bearer {key}" if header == "authorization" else key


def _render(req: OutgoingRequest, header: str, key: str) -> None:
    req.set_header(header, _rendered(header, key))


class StaticKey(Credential):
    """A key given in the catalog or from code (never re-read: nothing to re-read)."""

    never_suspends = True

    kind = "static"

    def __init__(self, key: str, *, header: str = "authorization") -> None:
        super().__init__(key_identity("key", key))
        self._key = key
        self.header = header.lower()
        #: the header's value, prepared once per endpoint (issue 14, point 4)
        self._value = _rendered(self.header, key)

    async def apply(self, req: OutgoingRequest) -> object:
        req.set_header(self.header, self._value)
        return self._key

    def secrets(self) -> Iterable[str]:
        return (self._key,)

    def describe(self) -> str:
        return "static (api_key)"


class EnvKey(Credential):
    """A key in an environment variable, read on every use (a dict lookup): a value
    rotated in the process environment is used by the next request, and a 401 is
    retried once if the value changed since it was sent."""

    never_suspends = True

    kind = "static"
    refreshable = True

    def __init__(self, name: str, *, header: str = "authorization") -> None:
        value = os.environ.get(name) or ""
        super().__init__(key_identity("key", value) if value else f"env:{name}")
        self.name = name
        self.header = header.lower()
        self._last = value

    async def apply(self, req: OutgoingRequest) -> object:
        key = (os.environ.get(self.name) or "").strip()
        if not key:
            self.unavailable = f"static (api_key_env): environment variable {self.name!r} is not set or empty"
            raise CredentialUnavailable(self.unavailable)
        self.unavailable = None
        self._last = key
        _render(req, self.header, key)
        return key

    def invalidate(self, used: object) -> None:
        pass  # the next apply() reads the variable again

    def secrets(self) -> Iterable[str]:
        return (self._last,) if self._last else ()

    def describe(self) -> str:
        return f"static (api_key_env {self.name})"


class FileKey(Credential):
    """A key in a file (whitespace-stripped), re-read when the file changes."""

    never_suspends = True

    kind = "static"
    refreshable = True

    def __init__(self, path: str | os.PathLike[str], *, header: str = "authorization") -> None:
        self.path = os.fspath(path)
        super().__init__(f"file:{os.path.abspath(self.path)}")
        self.header = header.lower()
        self._lock = threading.Lock()
        self._key: str | None = None
        self._sig: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.reads = 0
        self._read(force=True)

    def _read(self, *, force: bool = False) -> str:
        now = time.monotonic()
        with self._lock:
            if not force and self._key is not None and now - self._checked < FILE_CHECK_S:
                return self._key
            self._checked = now
            try:
                st = os.stat(self.path)
                sig = (st.st_ino, st.st_mtime_ns, st.st_size)
                if self._key is not None and sig == self._sig and not force:
                    return self._key
                with open(self.path, encoding="utf-8") as fh:
                    key = fh.read().strip()
            except OSError as exc:
                self.unavailable = f"static (api_key_file {self.path}): cannot read the file: {exc.strerror or exc}"
                self._key = None
                raise CredentialUnavailable(self.unavailable) from None
            if not key:
                self.unavailable = f"static (api_key_file {self.path}): the file is empty"
                self._key = None
                raise CredentialUnavailable(self.unavailable)
            self._key, self._sig = key, sig
            self.reads += 1
            self.unavailable = None
            return key

    async def apply(self, req: OutgoingRequest) -> object:
        key = self._read()
        _render(req, self.header, key)
        return key

    def invalidate(self, used: object) -> None:
        with self._lock:
            self._checked = 0.0
            self._sig = None  # the next apply() reads the file again, changed or not

    def secrets(self) -> Iterable[str]:
        return (self._key,) if self._key else ()

    def next_refresh(self, now: float) -> float | None:
        # Only while the file cannot be read: the router excludes the endpoint meanwhile,
        # so no request would notice that the file is back.
        return now + FILE_CHECK_S if self.unavailable is not None else None

    def refresh_soon(self) -> None:
        with contextlib.suppress(CredentialUnavailable):
            self._read(force=True)

    def describe(self) -> str:
        return f"static (api_key_file {self.path})"


class NoAuth(Credential):
    """No credential (a local server that needs none)."""

    never_suspends = True

    kind = "none"

    def __init__(self) -> None:
        super().__init__(None)

    async def apply(self, req: OutgoingRequest) -> object:
        return None

    def describe(self) -> str:
        return "none"
