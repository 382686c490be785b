"""In-process fleet: every region server on one background event loop thread.

One thread for all regions (rather than one per region) keeps start/stop cheap
for a test module and makes cross-region bookkeeping trivially consistent.
The public methods are synchronous and thread-safe: they hop onto the fleet's
loop and wait for the change to be applied, so "set_fault(...); call()" is
never racy. They are quick (sub-millisecond) and therefore also acceptable
from async code running on another loop; ``async with Fleet(...)`` starts and
stops the fleet off the caller's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from .records import Received
from .server import AuthCheck, ControlServer, RegionRuntime, uvicorn_config_kwargs
from .spec import DEFAULT_CONTEXT_WINDOW, Fault, FleetSpec, Latency, RegionSpec

__all__ = ["Fleet", "FleetBase"]

T = TypeVar("T")


def _coerce_spec(spec: FleetSpec | Sequence[RegionSpec | dict[str, Any]]) -> FleetSpec:
    if isinstance(spec, FleetSpec):
        return spec
    return FleetSpec.from_data(list(spec))


def _build_fault(fault: Fault | None, kw: dict[str, Any]) -> Fault:
    """``set_fault(id)`` clears; ``set_fault(id, mode=...)`` builds; ``set_fault(id, f, probability=...)`` tweaks."""
    if fault is None:
        return Fault.model_validate(kw)
    return Fault.model_validate({**fault.model_dump(), **kw}) if kw else fault


def _build_latency(latency: Latency | None, kw: dict[str, Any]) -> Latency:
    if latency is None:
        return Latency.model_validate(kw)
    return Latency.model_validate({**latency.model_dump(), **kw}) if kw else latency


class FleetBase:
    """What in-process :class:`Fleet` and out-of-process ``FleetProcess`` have in common.

    Tests, the demo and the benchmarks are written against this surface so the
    same scenario can run with the servers in-process (easy debugging) or in a
    separate process (no GIL sharing with the client under test).
    """

    spec: FleetSpec

    # -- addresses ------------------------------------------------------------------

    def port(self, region_id: str) -> int:
        raise NotImplementedError

    @property
    def url_host(self) -> str:
        host = self.spec.host
        if host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if host == "::":
            return "[::1]"
        return f"[{host}]" if ":" in host else host

    def url(self, region_id: str) -> str:
        """Base URL including ``/v1``, ready for ``openai.OpenAI(base_url=...)``."""
        return f"http://{self.url_host}:{self.port(region_id)}/v1"

    def api_key(self, region_id: str) -> str:
        return self.spec.region(region_id).api_key

    @property
    def region_ids(self) -> list[str]:
        return [r.id for r in self.spec.regions]

    # -- catalog -----------------------------------------------------------------------

    def catalog(
        self, *, models: dict[str, dict[str, Any]] | None = None, policy: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A catalog dict for llm_multicloud pointing at this fleet.

        Endpoints carry the *configured* models of each region (not the ones
        changed later with ``set_models``): the catalog is what a client is
        deployed with, and tests use ``set_models`` precisely to make reality
        drift from it.
        """
        logical: dict[str, dict[str, Any]] = {}
        for region in self.spec.regions:
            for name in region.models:
                logical.setdefault(name, {"context_window": DEFAULT_CONTEXT_WINDOW})
        for name, extra in (models or {}).items():
            logical[name] = {**logical.get(name, {"context_window": DEFAULT_CONTEXT_WINDOW}), **extra}
        endpoints: list[dict[str, Any]] = []
        for region in self.spec.regions:
            endpoint: dict[str, Any] = {
                "id": region.id,
                "provider": region.provider,
                "region": region.region,
                "base_url": self.url(region.id),
                "api_key": region.api_key,
                "models": dict(region.models),
            }
            if region.pricing is not None:
                endpoint["pricing"] = dict(region.pricing)
            if region.catalog:
                endpoint.update(region.catalog)
            endpoints.append(endpoint)
        result: dict[str, Any] = {"models": logical, "endpoints": endpoints}
        if policy is not None:
            result["policy"] = policy
        return result

    # -- waiting -----------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.005) -> None:
        """Poll ``predicate`` until it is true; TimeoutError after ``timeout`` seconds.

        The replacement for "sleep and hope" in tests: it returns as soon as the
        server-side condition holds and fails loudly (not flakily) otherwise.
        """
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(interval)

    # -- control surface (implemented by subclasses) ------------------------------------

    def set_fault(self, region_id: str, fault: Fault | None = None, **kw: Any) -> None:
        raise NotImplementedError

    def set_latency(self, region_id: str, latency: Latency | None = None, **kw: Any) -> None:
        raise NotImplementedError

    def set_models(self, region_id: str, models: dict[str, str]) -> None:
        raise NotImplementedError

    def set_waiting(self, region_id: str, n: int) -> None:
        raise NotImplementedError

    def received(self, region_id: str | None = None) -> list[Received]:
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


class Fleet(FleetBase):
    """A simulated multi-region fleet served from a background thread of this process.

    >>> with Fleet(demo_spec()) as fleet:          # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=fleet.url("aws-use1"), api_key=fleet.api_key("aws-use1"))
    ...     fleet.set_fault("aws-use1", mode="status", status=429, retry_after="2")
    """

    def __init__(
        self,
        spec: FleetSpec | Sequence[RegionSpec | dict[str, Any]],
        *,
        max_records: int = 10_000,
        configure_logging: bool = False,
        control: bool = True,
    ) -> None:
        self.spec = _coerce_spec(spec)
        kwargs = uvicorn_config_kwargs(configure_logging=configure_logging)
        self._regions: dict[str, RegionRuntime] = {
            r.id: RegionRuntime(r, host=self.spec.host, max_records=max_records, uvicorn_kwargs=kwargs)
            for r in self.spec.regions
        }
        self._control: ControlServer | None = (
            ControlServer(self._regions, host=self.spec.host, port=self.spec.control_port, uvicorn_kwargs=kwargs)
            if control
            else None
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._stopped = False

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Start every server on one background loop; return once all are accepting.

        Idempotent while running. A stopped fleet cannot be restarted (ports
        were released); build a new one.
        """
        with self._lock:
            if self._thread is not None:
                return self
            if self._stopped:
                raise RuntimeError("this Fleet was stopped; create a new one")
            ready = threading.Event()
            errors: list[BaseException] = []
            thread = threading.Thread(
                target=self._thread_main, args=(ready, errors), name="llm-multicloud-fleet", daemon=True
            )
            self._thread = thread
            thread.start()
        if not ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"fleet did not start within {timeout} s")
        if errors:
            thread.join(timeout)
            with self._lock:
                self._thread = None
                self._stopped = True
            raise errors[0]
        return self

    def _thread_main(self, ready: threading.Event, errors: list[BaseException]) -> None:
        try:
            asyncio.run(self._main(ready, errors))
        except BaseException as exc:  # pragma: no cover - defensive: surface, don't hang start()
            if not ready.is_set():
                errors.append(exc)
                ready.set()

    async def _main(self, ready: threading.Event, errors: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            for region in self._regions.values():
                await region.start()
            if self._control is not None:
                await self._control.start()
        except BaseException as exc:
            errors.append(exc)
            await self._shutdown_all()
            ready.set()
            return
        ready.set()
        await self._stop_event.wait()
        await self._shutdown_all()

    async def _shutdown_all(self) -> None:
        await asyncio.gather(*(r.shutdown() for r in self._regions.values()), return_exceptions=True)
        if self._control is not None:
            await self._control.shutdown()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every server (in-flight requests see their connection drop) and join the thread."""
        with self._lock:
            thread, loop, event = self._thread, self._loop, self._stop_event
            self._thread = None
            self._stopped = True
        if thread is None:
            return
        if loop is not None and event is not None and not loop.is_closed():
            # The loop may close concurrently (startup failure); then there is nothing to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        if threading.current_thread() is not thread:
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- loop hopping ------------------------------------------------------------------

    def _on_loop(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T | None:
        """Run ``fn()`` on the fleet loop and wait for it (or just schedule it when called from that loop)."""
        loop = self._loop
        if loop is None or not self.running:
            raise RuntimeError("the fleet is not running")
        if _running_loop() is loop:
            loop.create_task(fn())
            return None
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(fn(), loop)
        return future.result(timeout=10.0)

    def _region(self, region_id: str) -> RegionRuntime:
        try:
            return self._regions[region_id]
        except KeyError:
            raise KeyError(f"unknown region {region_id!r}; known: {list(self._regions)}") from None

    def _apply(self, region_id: str, change: Callable[[RegionRuntime], Awaitable[None] | None]) -> None:
        region = self._region(region_id)

        async def run() -> None:
            result = change(region)
            if result is not None:
                await result

        if self.running:
            self._on_loop(run)
        else:  # not started yet: plain state, applied when the servers start
            result = change(region)
            if result is not None:
                raise RuntimeError("internal: async change before start")  # pragma: no cover

    # -- public control ------------------------------------------------------------------

    def port(self, region_id: str) -> int:
        region = self._region(region_id)
        if not region.port:
            raise RuntimeError("ports are assigned when the fleet starts")
        return region.port

    @property
    def control_url(self) -> str:
        """Base URL of the fleet-wide control server (``.../_fleet/state`` etc.)."""
        if self._control is None:
            raise RuntimeError("this fleet was built with control=False")
        return f"http://{self.url_host}:{self._control.port}"

    def set_fault(self, region_id: str, fault: Fault | None = None, **kw: Any) -> None:
        """Install a fault for the next request (``set_fault(id)`` alone clears it).

        Switching to ``down`` returns only once the port refuses connections and
        existing connections are closed; leaving ``down`` returns once the
        region listens again on the same port.
        """
        new = _build_fault(fault, kw)
        if self.running:
            self._apply(region_id, lambda r: r.apply_fault(new))
        else:
            self._region(region_id).fault = new

    def set_authorizer(self, region_id: str, authorizer: Callable[[AuthCheck], bool] | None) -> None:
        """Replace a region's API-key check by ``authorizer(check) -> bool`` (in-process
        fleets only: SigV4 verification, short-lived tokens...); ``None`` restores it.
        It runs on the fleet's loop: keep it quick and non-blocking."""
        self._region(region_id).authorizer = authorizer

    def set_latency(self, region_id: str, latency: Latency | None = None, **kw: Any) -> None:
        """Replace the latency profile (keywords build a fresh ``Latency``, or tweak the one given)."""
        new = _build_latency(latency, kw)

        def change(region: RegionRuntime) -> None:
            region.latency = new

        self._apply(region_id, change)

    def set_models(self, region_id: str, models: dict[str, str]) -> None:
        """Change what the region serves and lists in ``/v1/models`` (logical -> served name)."""
        new = dict(models)
        self._apply(region_id, lambda r: r.apply_models(new))

    def set_waiting(self, region_id: str, n: int) -> None:
        """Set the ``vllm:num_requests_waiting`` gauge reported by ``/metrics``."""
        if n < 0:
            raise ValueError("n must be >= 0")

        def change(region: RegionRuntime) -> None:
            region.waiting = n

        self._apply(region_id, change)

    def received(self, region_id: str | None = None) -> list[Received]:
        """Snapshot (shallow copies) of recorded requests, oldest first; all regions when None."""
        regions = [self._region(region_id)] if region_id is not None else list(self._regions.values())
        records = [rec.copy() for region in regions for rec in region.records.copy()]
        if region_id is None:
            records.sort(key=lambda rec: rec.time)
        return records

    def counts(self) -> dict[str, int]:
        """Chat + embeddings requests received per region since start/clear."""
        return {rid: region.requests for rid, region in self._regions.items()}

    def in_flight(self, region_id: str) -> int:
        return self._region(region_id).in_flight

    def disconnects(self, region_id: str) -> int:
        return self._region(region_id).disconnects

    def state(self, region_id: str) -> dict[str, Any]:
        return self._region(region_id).state()

    def clear(self) -> None:
        """Forget records and counters of every region (faults and latency stay)."""
        if self.running:
            for rid in self._regions:
                self._apply(rid, lambda r: r.clear())
        else:
            for region in self._regions.values():
                region.clear()

    def reset(self) -> None:
        """Clear, and restore every region's configured fault, latency, models, waiting gauge and RNG."""
        for rid, region in self._regions.items():
            if self.running:
                self._apply(rid, lambda r: r.reset(config=True))
            else:
                region.clear()
                region.restore_config()
                region.fault = region.spec.fault


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
