"""The narrow interfaces the layers below the composition root are given.

:class:`~llm_multicloud.client.MultiCloud` (``client.py``) is the composition root: it
builds the catalog, the policy, health, the router, the engine and the background
loop, and wires them together. Nothing below it imports ``client.py`` or takes a
``MultiCloud``: the prober, the shared-state task, the transports and the live
operations each receive one of the :class:`typing.Protocol` objects below — what
they may use, and nothing else. Dependencies point one way (down), there is no
import cycle (``tools/check_imports.py`` checks it in the tests and in ``nox -s
lint``), and each of these parts can be driven alone by a small object of its own
in a test.

The protocols are structural: ``MultiCloud`` satisfies them by having the members;
it does not subclass them. Reading one of them tells what a part depends on:

* :class:`Runtime` — what every background part reads: the current catalog and
  policy (both replaced as a whole by a live catalog update, so read them at the
  point of use), endpoint health, the monotonic clock, and a factory for upstream
  connection pools (with the ``http_options`` the user gave).
* :class:`SharedRuntime` — the shared-state task also needs the catalog version
  (announced to other replicas) and the drain operations it replays.
* :class:`TransportRuntime` — the transports hand requests to the engine, drive it
  through the background loop for sync clients, register sync streams to close at
  shutdown, and close the runtime when the wrapped client owns it.
* :class:`LiveRuntime` — live operations (``live.py``) publish a new catalog,
  policy and router and reconfigure the engine, the prober and telemetry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .background import Background
    from .catalog import Catalog
    from .executor import Result
    from .health import Health
    from .intent import Intent
    from .policy import Policy
    from .router import Router
    from .upstream import Upstream

T = TypeVar("T")

#: A monotonic clock in seconds (``time.monotonic`` or a test's controlled clock).
Clock = Callable[[], float]


class Runtime(Protocol):
    """What background parts (prober, shared state) may use of the composition root."""

    @property
    def catalog(self) -> Catalog:
        """The current catalog (replaced as a whole by a live update)."""
        ...

    @property
    def policy(self) -> Policy:
        """The current policy (replaced as a whole by a live update)."""
        ...

    @property
    def health(self) -> Health:
        """Every endpoint's health (states, quota domains, listeners)."""
        ...

    @property
    def clock(self) -> Clock:
        """The monotonic clock every deadline and estimate is measured with."""
        ...

    def upstream(self, lib: ModuleType | None = None, **options: Any) -> Upstream:
        """A new upstream connection pool on ``lib`` (``None``: the HTTP library of the
        installed openai SDK) with the user's ``http_options`` (overridden by ``options``).
        The caller owns it and closes it."""
        ...


class DrainOps(Protocol):
    """The live drain operations the shared-state task replays and publishes."""

    #: drains and undrains made before the shared state started (id -> reason, None: undrain)
    pending_drains: dict[str, str | None]
    #: called with the drain operations made from now on
    listeners: list[Callable[..., None]]

    def drain(self, ids: list[str], reason: str, *, remote: bool = False) -> list[str]: ...

    def undrain(self, ids: list[str], *, remote: bool = False) -> list[str]: ...


class SharedRuntime(Runtime, Protocol):
    """What the shared-state task (``shared.py``) may use."""

    @property
    def catalog_version(self) -> str:
        """The catalog's content fingerprint, announced to the other replicas."""
        ...

    @property
    def ops(self) -> DrainOps:
        """The live drain operations (remote drains are applied through them)."""
        ...


class TransportRuntime(Runtime, Protocol):
    """What the transports (``transport.py``) may use."""

    @property
    def http_options(self) -> dict[str, Any]:
        """Options for every endpoint connection pool (TLS, proxy, limits)."""
        ...

    @property
    def streams(self) -> set[Any]:
        """Sync streams not closed yet: closed at :meth:`close` and at exit."""
        ...

    @property
    def background(self) -> Background | None:
        """The background loop if it is running (None before the first use or after close)."""
        ...

    def execute(self, intent: Intent, upstream: Upstream) -> Awaitable[Result]:
        """Route and run one request (the engine's entry point)."""
        ...

    def run_sync(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the background loop and wait for it (sync clients)."""
        ...

    def needs_loop(self, intent: Intent) -> bool:
        """Must this sync request run on the background loop (a credential of an
        endpoint it may use may suspend)? Otherwise it runs on the caller's thread."""
        ...

    def started(self) -> None:
        """Called on each async request: starts background work lazily; raises
        ``RuntimeError`` once closed."""
        ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


class LiveRuntime(Protocol):
    """What live operations (``live.py``) may use: they publish a new catalog, policy
    and router (attributes replaced as a whole) and reconfigure the parts that keep
    a copy (the engine, the prober's policy, telemetry's catalog, shared drains)."""

    catalog: Catalog
    policy: Policy
    router: Router

    @property
    def health(self) -> Health: ...

    @property
    def executor(self) -> Any:
        """The engine: ``reconfigure(catalog, policy, router, states)``."""
        ...

    @property
    def telemetry(self) -> Any:
        """Telemetry (``bind_catalog(catalog)``), or None when it is off."""
        ...

    @property
    def prober(self) -> Any:
        """The running prober (its ``policy`` is replaced), or None."""
        ...

    @property
    def shared_state(self) -> Any:
        """The running shared-state task (``announce_drain(ids, reason)``), or None."""
        ...
