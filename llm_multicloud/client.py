"""The public entry points: :class:`MultiCloud`, :func:`wrap`, :func:`httpx_client`.

A :class:`MultiCloud` owns everything that outlives one request: the catalog, the
policy, the router, endpoint health, budgets, hooks, the prober, and (lazily) one
background event-loop thread (:mod:`llm_multicloud.background`) that runs the probes,
the shared state, credential refresh, and those sync requests whose credentials may
suspend (a user's own ``Credential``); every other sync request, hedges included,
runs on its caller's thread (:mod:`llm_multicloud.transport`,
:mod:`llm_multicloud.engine.threads`). Several wrapped clients — sync and
async, openai 3.x on httpx2 and openai 2.x on httpx — can share one MultiCloud and
so one picture of the fleet.

``wrap(client)`` returns a client *of the same class* whose HTTP client routes
through the MultiCloud: the SDK's own retries are turned off (one layer owns
retries), its base URL becomes a placeholder, and its API key is never sent
anywhere (each endpoint receives only its own credentials).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import import_module
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from . import hrw
from .background import Background
from .catalog import Catalog, CatalogSource
from .context import UNCONSTRAINED, Constraints
from .errors import CatalogError, readable_status_errors
from .executor import AttemptRecord, Executor, RequestRecord, Result
from .health import AdmissionPolicy, Breaker, Health, Transition
from .intent import Intent
from .live import CatalogUpdate, Operations
from .policy import Policy
from .router import Plan, Router
from .snapshot import RetiredRecord, Snapshot, Totals, TotalsRecord
from .upstream import Upstream

if TYPE_CHECKING:
    from .runtime import LiveRuntime, SharedRuntime, TransportRuntime

T = TypeVar("T")

#: ``update_catalog(policy=...)`` default: keep the policy override given at construction.
_KEEP: Any = object()

#: Base URL given to wrapped clients. ``.invalid`` is reserved (RFC 2606): should a
#: request ever bypass the transport, it cannot reach anything.
PLACEHOLDER_BASE_URL = "http://llm-multicloud.invalid/v1"
#: The same without ``/v1``: the base URL for SDKs whose paths carry ``/v1`` themselves
#: (Anthropic's ``/v1/messages``...), so that the path is not doubled.
PLACEHOLDER_ROOT_URL = "http://llm-multicloud.invalid"

#: Why ``wrap()`` refuses ``openai.AzureOpenAI`` and what to do instead (one place).
AZURE_CLIENT_REFUSED = (
    "wrap() cannot route {cls}: it rewrites every path to /openai/deployments/<deployment>/... and adds its "
    "own api-version, which no endpoint of a catalog serves (every request would end in a 404). Wrap "
    "openai.OpenAI / openai.AsyncOpenAI instead and reach Azure OpenAI through the catalog's preset: "
    "{{preset: azure-openai, resource: <resource>, region: <azure region>, models: {{<model>: <deployment>}}}} "
    "(Entra ID by default, or api_key_env for a key; see docs/auth.md#presets)."
)


class MultiCloud:
    """Shared routing state for any number of wrapped clients.

    The composition root: the parts below it (transports, prober, shared state, live
    operations) are given it as one of the narrow protocols of
    :mod:`llm_multicloud.runtime`, never as a ``MultiCloud``.

    ``on_attempt`` hooks receive one :class:`AttemptRecord` per attempt (audit: where
    each request's data went); ``on_transition`` hooks receive breaker/cooldown
    transitions. ``breaker`` and ``admission`` replace the circuit breaker's rules
    (:class:`~llm_multicloud.health.Breaker`) and the admission policy
    (:class:`~llm_multicloud.health.Admission`: half-open permits, concurrency) from
    code. Use as a context manager, or call :meth:`close` / :meth:`aclose`.
    """

    def __init__(
        self,
        catalog: CatalogSource,
        policy: Mapping[str, Any] | Policy | None = None,
        *,
        on_attempt: Callable[[AttemptRecord], None] | None = None,
        on_request: Callable[[RequestRecord], None] | None = None,
        on_transition: Callable[[Transition], None] | None = None,
        telemetry: bool = True,
        http_options: Mapping[str, Any] | None = None,
        watch: bool = False,
        clock: Callable[[], float] = time.monotonic,
        breaker: Breaker | None = None,
        admission: AdmissionPolicy | None = None,
    ) -> None:
        self.catalog = Catalog.load(catalog)
        #: Passed to the HTTP library's transport for every endpoint connection:
        #: ``verify`` (CA bundle path or ssl.SSLContext; TLS verification is on by
        #: default), ``cert``, ``proxy``, ``http2``, ``limits``...
        self.http_options: dict[str, Any] = dict(http_options or {})
        #: HTTP/2 connections are multiplexed safely only by one event loop (needs_loop)
        self._sync_via_loop = bool(self.http_options.get("http2"))
        self.policy = self.catalog.policy(policy)
        self.clock = clock
        self.router = Router(self.catalog, self.policy)
        self.health = Health(self.catalog, self.policy, clock=clock, breaker=breaker, admission=admission)
        self.hooks: list[Callable[[AttemptRecord], None]] = [on_attempt] if on_attempt else []
        self.request_hooks: list[Callable[[RequestRecord], None]] = [on_request] if on_request else []
        if on_transition:
            self.health.listeners.append(on_transition)
        if telemetry:
            # OpenTelemetry API only: without an SDK installed and configured, the
            # tracer and meter are no-ops and this costs one check per request.
            from .telemetry import Telemetry

            self.telemetry: Telemetry | None = Telemetry()
            self.telemetry.bind_capacity(self.capacity)
            self.request_hooks.append(self.telemetry.on_request)
            self.health.listeners.append(self.telemetry.on_transition)
        else:
            self.telemetry = None
        self.executor = Executor(
            self.catalog,
            self.policy,
            self.router,
            self.health,
            hooks=self.hooks,
            request_hooks=self.request_hooks,
            clock=clock,
        )
        self._lock = threading.Lock()
        #: the background event loop (see :mod:`llm_multicloud.background`), lazily
        self._portal_obj: Background | None = None
        self._closed = False
        self._prober: Any = None
        self._shared: Any = None
        #: Committed streams of sync clients not closed yet, closed at close() and at
        #: exit. Strong references: an abandoned stream is closed in order by its own
        #: close (scheduled when the SDK's stream object is collected), never by the
        #: garbage collector finalising its async generators all at once.
        self._streams: set[Any] = set()
        from .auth import Refresher

        #: background refresh of expiring credentials (started with the background loop)
        self._refresher = Refresher(lambda: [e.credential for e in self.catalog.endpoints])
        # Live operations (live.py): catalog updates, drains, weights, the file watcher.
        self._ops = Operations(self, catalog, policy)
        if self.telemetry is not None:
            self.telemetry.bind_fleet(self)  # observable gauges of this fleet's state
        self._watcher: Any = None
        if watch:
            self._start_watch()

    # -- what the parts below may use (llm_multicloud.runtime's protocols) -----------
    def upstream(self, lib: ModuleType | None = None, **options: Any) -> Upstream:
        """A new upstream connection pool on ``lib`` (default: the installed openai SDK's
        HTTP library) with this MultiCloud's ``http_options``, overridden by ``options``."""
        return Upstream(lib if lib is not None else _lib(None), **{**self.http_options, **options})

    def execute(self, intent: Intent, upstream: Upstream) -> Awaitable[Result]:
        """Route and run one request (the transports' entry into the engine)."""
        return self.executor.execute(intent, upstream)

    def needs_loop(self, intent: Intent) -> bool:
        """Must this sync request run on the background loop? (See ``Executor.needs_loop``.)

        Always with ``http_options={"http2": True}``: the sync HTTP libraries' HTTP/2
        connections are not safe for concurrent threads (httpcore and httpcore2 allocate
        a stream id outside any lock, so two threads can open the same stream; seen as
        ``StreamClosedError``/``KeyError`` in about one round of eight concurrent
        requests in a hundred, tests/integration/test_http2.py), while one event loop
        multiplexes a connection safely."""
        return self._sync_via_loop or self.executor.needs_loop(intent)

    @property
    def streams(self) -> set[Any]:
        """Sync streams not closed yet (closed at :meth:`close` and at exit)."""
        return self._streams

    @property
    def background(self) -> Background | None:
        """The background loop while it runs, else None (it is started lazily)."""
        return self._portal_obj

    @property
    def ops(self) -> Operations:
        """Live operations (drains, weights, catalog updates): their mechanism."""
        return self._ops

    @property
    def prober(self) -> Any:
        """The running prober, or None."""
        return self._prober

    @property
    def shared_state(self) -> Any:
        """The running shared-state task (Redis), or None."""
        return self._shared

    def started(self) -> None:
        """Called on each async request: starts background work lazily (see _started)."""
        self._started()

    # -- wrapping -------------------------------------------------------------------
    def wrap(self, client: T) -> T:
        """A copy of an ``openai`` client (sync or async, any version) that routes here."""
        return _wrap(self, client, owns=False)

    def httpx_client(self, *, lib: str | None = None, _owns: bool = False, **kwargs: Any) -> Any:
        """A sync ``httpx2.Client`` (or ``httpx.Client`` with ``lib="httpx"``) that routes here,
        for SDKs other than openai. Use base URL ``http://llm-multicloud.invalid/v1``."""
        mod = _lib(lib)
        sync_cls, _ = _transport_classes(mod)
        kwargs.setdefault("base_url", PLACEHOLDER_BASE_URL)
        return mod.Client(transport=sync_cls(self, owns=_owns), **kwargs)

    def async_httpx_client(self, *, lib: str | None = None, _owns: bool = False, **kwargs: Any) -> Any:
        """The async counterpart of :meth:`httpx_client`."""
        mod = _lib(lib)
        _, async_cls = _transport_classes(mod)
        kwargs.setdefault("base_url", PLACEHOLDER_BASE_URL)
        return mod.AsyncClient(transport=async_cls(self, owns=_owns), **kwargs)

    # -- live operations (mechanism in live.py) --------------------------------------
    def update_catalog(
        self, source: CatalogSource | None = None, *, policy: Mapping[str, Any] | Policy | None = _KEEP
    ) -> CatalogUpdate:
        """Swap in a new catalog (and/or policy) without a restart.

        The new catalog is validated fully first: a bad one raises :class:`CatalogError`
        and changes nothing. Endpoints keep their health history by id; removed ones
        take no new attempts while their in-flight requests and streams finish;
        wrapped clients see the change at once. ``source=None`` reloads the file this
        MultiCloud was built from (or, with ``policy=``, keeps the catalog);
        ``policy=`` changes the policy override given at construction: a dict merges
        onto it key by key, a :class:`Policy` replaces it (the catalog's own
        ``policy:`` section still applies under it)."""
        keep = policy is _KEEP
        return self._ops.update(source, None if keep else policy, keep_policy=keep)

    def drain(
        self,
        endpoint_id: str | None = None,
        *,
        region: str | None = None,
        provider: str | None = None,
        reason: str = "drained by an operator",
    ) -> list[str]:
        """Send no new attempt (primary, hedge, retry, panic) to an endpoint, or to every
        endpoint of a ``region`` / ``provider``; running ones finish. Shown with its
        reason in ``snapshot()``, ``explain()`` and 503 messages; kept across catalog
        updates; shared with other replicas when Redis shared state is on. Returns
        the ids newly drained."""
        return self._ops.drain(self._ops.select(endpoint_id, region, provider), reason)

    def undrain(
        self, endpoint_id: str | None = None, *, region: str | None = None, provider: str | None = None
    ) -> list[str]:
        """Undo :meth:`drain`. Returns the ids that were drained."""
        return self._ops.undrain(self._ops.select(endpoint_id, region, provider))

    def set_weight(self, endpoint_id: str, weight: float | None) -> CatalogUpdate:
        """Override an endpoint's ``weight`` (strategy ``weighted``) at run time; kept
        across catalog updates until ``set_weight(id, None)``."""
        return self._ops.set_weight(endpoint_id, weight)

    @property
    def catalog_version(self) -> str:
        """Fingerprint of the catalog's content (no secrets): equal on replicas that
        loaded the same file."""
        return self._ops.version

    def _start_watch(self) -> None:
        from .live import CatalogWatcher

        if self._ops.path is None:
            raise CatalogError("watch=True needs a catalog file path (got a mapping or a Catalog)")
        self._watcher = CatalogWatcher(self._ops, self._ops.path)

    # -- views --------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Per endpoint: id, provider, region, residency, state (closed/open/half_open/
        cooling/drained), reason, until, latency estimates, in-flight, requests,
        failures, hedges, cost; plus totals per region and provider. Typed records
        (:mod:`llm_multicloud.snapshot`, each field documented) that are plain dicts:
        ``json.dumps`` writes them as they are."""
        now = self.clock()
        wall = time.time()
        eps = [st.record(now, wall) for st in self.health.states]
        totals: Totals = {"region": {}, "provider": {}}
        for e in eps:
            for t in (
                totals["region"].setdefault(f"{e['provider']}/{e['region']}", _zero_totals()),
                totals["provider"].setdefault(e["provider"], _zero_totals()),
            ):
                t["requests"] += e["requests"]
                t["failures"] += e["failures"]
                if e["cost_usd"] is None:
                    t["unpriced_requests"] += e["requests"]
                else:
                    t["cost_usd"] = round(t["cost_usd"] + e["cost_usd"], 8)
        retired: list[RetiredRecord] = [
            {
                "id": st.endpoint.id,
                "provider": st.endpoint.provider,
                "region": st.endpoint.region,
                "in_flight": st.inflight,
            }
            for st in self.health.retired
            if st.inflight > 0
        ]
        return {
            "catalog_version": self._ops.version,
            "endpoints": eps,
            "retired": retired,
            "totals": totals,
            "cost_usd": round(sum(e["cost_usd"] or 0.0 for e in eps), 8),
            "unpriced_requests": sum(e["requests"] for e in eps if e["cost_usd"] is None),
            "shared_state": (
                self._shared.status()
                if self._shared is not None
                else {
                    "backend": self.policy.state.backend,
                    "status": "local"
                    if self.policy.state.backend == "memory"
                    else "not started (starts with the first request)",
                }
            ),
            "budgets": {
                "retry_balance": round(self.executor.retry_budget.balance(), 2),
                "hedge_balance": round(self.executor.hedge_budget.balance(), 2),
            },
            "limits": self.capacity(),
        }

    def capacity(self) -> list[dict[str, Any]]:
        """Per quota domain with ``limits:``: the limits and what this replica may still
        send now (``remaining_requests``/``remaining_tokens``), tokens reserved by
        requests in flight, tokens settled, and the bucket's mode (``local``,
        ``local 1/N`` while Redis is unreachable, ``shared``)."""
        now = self.clock()
        return [b.to_dict(now) for b in self.health.buckets.values()]

    def explain(
        self,
        model: str,
        *,
        residency: str | list[str] | None = None,
        near: str | None = None,
        tags: Mapping[str, str] | None = None,
        input_tokens: int = 0,
        max_tokens: int | None = None,
        session: str | None = None,
    ) -> Plan:
        """The plan a request with these properties would get now, with reasons.
        ``session``: the affinity key (``plan.affinity`` says whether it decided).
        ``print(mc.explain(...).describe())`` for people, ``.to_dict()`` for scripts."""
        c: Constraints = UNCONSTRAINED.narrow(residency, near, tags, session)
        key = None
        if session is not None and self.policy.affinity.enabled:
            key = (hrw.key_hash("session:" + session), "session")
        router, states = self.executor.view
        return router.plan(
            model,
            c,
            states,
            self.clock(),
            input_tokens=input_tokens,
            max_tokens=max_tokens,
            affinity=key,
        )

    # -- lifecycle ------------------------------------------------------------------
    def _portal(self) -> Background:
        """The background event loop (started on first use) that runs the sync
        requests that need concurrency, the probes and the shared-state task."""
        p = self._portal_obj
        if p is not None:
            return p
        with self._lock:
            if self._closed:
                raise RuntimeError("this MultiCloud is closed")
            if self._portal_obj is None:
                bg = Background()
                bg.on_stop = self._shutdown
                self._start_probes(bg)
                self._start_shared(bg)
                self._portal_obj = bg
                if self._refresher:
                    bg.start_task(self._refresher.run)
            return self._portal_obj

    def _portal_alive(self) -> bool:
        return self._portal_obj is not None

    def _in_loop_thread(self) -> bool:
        """Is this the background loop's own thread? (Then nothing may wait on it.)"""
        p = self._portal_obj
        return p is not None and p.in_loop_thread()

    def run_sync(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` in the background loop and wait for it: how sync clients
        drive the engine when a request needs the loop (a credential that may suspend).

        ``asyncio.run_coroutine_threadsafe`` rather than anyio's ``portal.call``: the
        same hand-over at a quarter of the cost (~35 µs instead of ~140 µs here),
        which matters per request. The task runs in a copy of the caller's context
        (``call_soon_threadsafe`` captures it), so contextvars such as the
        OpenTelemetry span follow the request. If the caller is interrupted while
        waiting, the task is cancelled, which closes its connections.

        Refused (``RuntimeError``) from the background loop's own thread: it would
        wait for itself for ever and freeze every request of this MultiCloud.
        """
        return self._portal().run(fn, *args)

    def _started(self) -> None:
        """Called on each async request: make sure background probes run (lazily)."""
        if self._closed:
            raise RuntimeError("this MultiCloud is closed: requests through its clients are refused")
        if (
            self._portal_obj is None
            and not self._closed
            and (
                (self.policy.probe.enabled and _has_probe_targets(self))
                or self.policy.state.backend == "redis"
                or self._refresher
            )
        ):
            self._portal()

    def _start_shared(self, portal: Background) -> None:
        """Shared health across replicas (Redis), if configured: a background task in
        the same loop as the probes; the hot path never waits for Redis."""
        if self.policy.state.backend != "redis":
            return
        from .shared import SharedState

        self._shared = SharedState(self)
        portal.start_task(self._shared.run)

    def _start_probes(self, portal: Background) -> None:
        if not self.policy.probe.enabled or not _has_probe_targets(self):
            return
        try:
            from .probe import Prober
        except ImportError:  # pragma: no cover - prober ships with the package
            return
        self._prober = Prober(self)
        portal.start_task(self._prober.run)

    def close(self) -> None:
        """Stop probes, shared state and the background loop; sync streams not read to
        their end are closed (their connections too). Idempotent; nothing keeps
        running after. Safe from any thread, also from the background loop's own
        (then it schedules the stop instead of waiting for it)."""
        if self._watcher is not None:
            self._watcher.stop()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            bg, self._portal_obj = self._portal_obj, None
        if bg is not None:
            bg.stop()  # runs _shutdown first (unless called on the loop's own thread)
        for s in list(self._streams):
            # Streams read on their callers' threads need no loop to close (those
            # of the background loop were closed by its shutdown, or die with it).
            if not getattr(s, "loop_bound", True):
                with contextlib.suppress(Exception):
                    s.close()
        self._streams.clear()

    async def _shutdown(self) -> None:
        """On the background loop: end the background tasks and unfinished sync streams."""
        if self._prober is not None:
            await self._prober.stop()
        if self._shared is not None:
            await self._shared.stop()
        if self._refresher:
            await self._refresher.stop()
        for s in list(self._streams):
            with contextlib.suppress(Exception):
                await s._stop()
        self._streams.clear()

    async def aclose(self) -> None:
        """:meth:`close` from async code (the blocking part runs in a worker thread)."""
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> MultiCloud:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> MultiCloud:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"MultiCloud({self.catalog!r}, strategy={self.policy.strategy!r})"


def _zero_totals() -> TotalsRecord:
    return {"requests": 0, "failures": 0, "cost_usd": 0.0, "unpriced_requests": 0}


def _has_probe_targets(mc: MultiCloud) -> bool:
    return bool(mc.catalog.endpoints)


def _lib(name: str | None) -> ModuleType:
    if name is not None:
        if name not in ("httpx", "httpx2"):
            raise ValueError("lib must be 'httpx2' or 'httpx'")
        return import_module(name)
    # The library the installed openai SDK runs on (3.x: httpx2, 1.x/2.x: httpx), since
    # frameworks hand these clients to an openai client; else httpx2 when installed.
    # (Frameworks such as langsmith install httpx2 beside an openai 2.x on httpx.)
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("openai").split(".")[0])
    except (PackageNotFoundError, ValueError):
        major = None
    if major is not None and major < 3:
        return import_module("httpx")
    try:
        return import_module("httpx2")
    except ImportError:
        return import_module("httpx")


def _transport_classes(mod: ModuleType) -> tuple[type[Any], type[Any]]:
    from .transport import transport_classes

    return transport_classes(mod)


def _refuse_unroutable(client: Any) -> None:
    """Clients whose URLs the router cannot map onto catalog endpoints are refused
    with what to do, before anything is sent (they would only produce 404s)."""
    names = {k.__name__ for k in type(client).__mro__}
    if names & {"AzureOpenAI", "AsyncAzureOpenAI", "BaseAzureClient"}:
        raise TypeError(AZURE_CLIENT_REFUSED.format(cls=f"{type(client).__module__}.{type(client).__name__}"))


def _wrap(mc: MultiCloud, client: T, *, owns: bool) -> T:
    _refuse_unroutable(client)
    inner = getattr(client, "_client", None)
    copy = getattr(client, "with_options", None)
    if inner is None or copy is None:
        raise TypeError(
            f"wrap() takes an openai client (openai.OpenAI, openai.AsyncOpenAI, ...), got {type(client).__name__}; "
            "for other SDKs use MultiCloud.httpx_client()"
        )
    # The SDK subclasses the library's client (SyncHttpxClientWrapper...): find the
    # library in the MRO.
    modname = next((m for k in type(inner).__mro__ if (m := k.__module__.split(".")[0]) in ("httpx", "httpx2")), None)
    if modname is None:
        raise TypeError(f"unsupported HTTP client {type(inner).__module__}.{type(inner).__name__}")
    mod = import_module(modname)
    sync_cls, async_cls = _transport_classes(mod)
    is_async = isinstance(inner, mod.AsyncClient)
    transport = async_cls(mc, owns=owns) if is_async else sync_cls(mc, owns=owns)
    http = (mod.AsyncClient if is_async else mod.Client)(transport=transport, timeout=inner.timeout)
    wrapped = copy(http_client=http, max_retries=0, base_url=PLACEHOLDER_BASE_URL)
    return readable_status_errors(wrapped)  # type: ignore[no-any-return]


def wrap(
    client: T,
    *,
    catalog: CatalogSource | MultiCloud,
    policy: Mapping[str, Any] | Policy | None = None,
    on_attempt: Callable[[AttemptRecord], None] | None = None,
    http_options: Mapping[str, Any] | None = None,
) -> T:
    """Wrap an ``openai`` client so that every request is routed over ``catalog``.

    With a catalog (path, dict or :class:`Catalog`) the wrapped client owns a new
    :class:`MultiCloud`, closed with the client; pass a ``MultiCloud`` to share state
    between clients (then close it yourself). ``http_options`` go to the endpoint
    connections' transport as in :class:`MultiCloud` (CA bundle, client cert, proxy).
    """
    if isinstance(catalog, MultiCloud):
        if policy is not None or on_attempt is not None or http_options is not None:
            raise ValueError(
                "policy=, on_attempt= and http_options= apply to a new MultiCloud; set them on the MultiCloud you pass"
            )
        return _wrap(catalog, client, owns=False)
    _refuse_unroutable(client)  # before a MultiCloud is built for it
    mc = MultiCloud(catalog, policy, on_attempt=on_attempt, http_options=http_options)
    return _wrap(mc, client, owns=True)


def multicloud_of(client: Any) -> MultiCloud:
    """The MultiCloud behind a wrapped client (for ``snapshot()`` / ``explain()``)."""
    inner = getattr(client, "_client", client)
    transport = getattr(inner, "_transport", None)
    mc = getattr(transport, "multicloud", None)
    if not isinstance(mc, MultiCloud):
        raise TypeError("not a client wrapped by llm_multicloud")
    return mc


def httpx_client(
    catalog: CatalogSource | MultiCloud,
    *,
    lib: str | None = None,
    policy: Mapping[str, Any] | Policy | None = None,
    http_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """A sync httpx2/httpx client that routes over ``catalog`` (for other SDKs).
    ``policy`` and ``http_options`` as in :func:`wrap`; other keywords go to the client."""
    return _own(catalog, policy, http_options).httpx_client(
        lib=lib, _owns=not isinstance(catalog, MultiCloud), **kwargs
    )


def async_httpx_client(
    catalog: CatalogSource | MultiCloud,
    *,
    lib: str | None = None,
    policy: Mapping[str, Any] | Policy | None = None,
    http_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """An async httpx2/httpx client that routes over ``catalog`` (for other SDKs)."""
    mc = _own(catalog, policy, http_options)
    return mc.async_httpx_client(lib=lib, _owns=not isinstance(catalog, MultiCloud), **kwargs)


def _own(
    catalog: CatalogSource | MultiCloud,
    policy: Mapping[str, Any] | Policy | None,
    http_options: Mapping[str, Any] | None,
) -> MultiCloud:
    """The MultiCloud a module-level helper uses: the one passed, or a new one that the
    returned client owns (closed with it)."""
    if isinstance(catalog, MultiCloud):
        if policy is not None or http_options is not None:
            raise ValueError("policy= and http_options= apply to a new MultiCloud; set them on the MultiCloud you pass")
        return catalog
    return MultiCloud(catalog, policy, http_options=http_options)


if TYPE_CHECKING:  # mypy checks that MultiCloud provides every narrow interface it hands out

    def _provides(mc: MultiCloud) -> tuple[TransportRuntime, SharedRuntime, LiveRuntime]:
        return mc, mc, mc
