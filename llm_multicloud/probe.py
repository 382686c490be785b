"""Active probes: RTT, model presence and (optionally) queue depth, in the background.

One :class:`Prober` per MultiCloud runs in its background event loop, started
lazily with the first request and stopped by ``close()``: nothing outlives it. Each
round (a jittered interval, so that a fleet of app replicas does not probe in
lock-step) sends ``GET {base_url}{probe_path}`` — ``/models`` by default — to every
endpoint with *that endpoint's own key*, at most ``concurrency`` at a time, each
with a timeout. Probes never generate tokens.

What a round feeds into health:

* the round-trip time (an RTT estimate: the router's baseline before any real
  traffic, and what a recovered endpoint's estimate decays toward);
* whether each logical model is still listed — an endpoint that stops listing a
  model it listed before is taken out for that model, with that reason, until it
  lists it again. A served name the endpoint has *never* listed is a naming
  mismatch, not an outage (llama.cpp lists its alias or the model file's path,
  some gateways list nothing): one warning names what it does list, and the
  endpoint keeps routing while its real requests succeed;
* a connect failure or 5xx counts as an endpoint fault (a dead region is detected
  without sacrificing user requests); 401/403 are recorded as the last error;
* with ``probe.metrics: true``, Prometheus ``/metrics`` of vLLM
  (``vllm:num_requests_waiting``) or SGLang (``sglang:num_queue_reqs``): the queue
  depth joins the router's load term.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from . import auth
from .errors import FaultKind, classify_status
from .upstream import Upstream, UpstreamError

if TYPE_CHECKING:
    from .catalog import Endpoint
    from .health import EndpointState
    from .runtime import Runtime

log = logging.getLogger("llm_multicloud.probe")

_QUEUE_METRICS = re.compile(
    rb"^(?:vllm:num_requests_waiting|sglang:num_queue_reqs)(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.M
)


@dataclass(slots=True)
class ProbeResult:
    endpoint: str
    ok: bool
    rtt_ms: float | None
    status: int | None
    models_listed: list[str] | None
    missing: list[str]
    queue_waiting: float | None
    error: str | None
    #: logical models whose served name this endpoint has never listed (still routed)
    unlisted: list[str] = field(default_factory=list)


class Prober:
    """Probes every endpoint of a MultiCloud periodically (see the module docs)."""

    def __init__(self, mc: Runtime) -> None:
        self.mc = mc
        self.policy = mc.policy.probe
        self._scope: anyio.CancelScope | None = None
        self._stopped = False
        self._rand = random.Random()
        self.rounds = 0

    async def run(self) -> None:
        """Probe forever (until :meth:`stop`), the first round at once."""
        up = self.mc.upstream(max_connections=self.policy.concurrency * 2)
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._stopped:
                    scope.cancel()
                while True:
                    await self.probe_all(up)
                    self.rounds += 1
                    jitter = 1.0 + 0.2 * (2.0 * self._rand.random() - 1.0)
                    await anyio.sleep(self.policy.interval_s * jitter)
        finally:
            with anyio.CancelScope(shield=True):
                await up.aclose()

    async def stop(self) -> None:
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def probe_all(self, up: Upstream) -> list[ProbeResult]:
        """One round over every endpoint, bounded concurrency."""
        limiter = anyio.CapacityLimiter(self.policy.concurrency)
        results: list[ProbeResult] = []

        async def one(st: EndpointState) -> None:
            async with limiter:
                results.append(await self.probe(up, st))

        async with anyio.create_task_group() as tg:
            for st in self.mc.health.states:
                tg.start_soon(one, st)
        return results

    async def probe(self, up: Upstream, st: EndpointState) -> ProbeResult:
        ep = st.endpoint
        health = self.mc.health
        clock = self.mc.clock
        path = ep.probe_path or self.policy.path
        t0 = clock()
        status = None
        try:
            with anyio.fail_after(self.policy.timeout_s):
                resp, _ = await auth.send(
                    up,
                    ep.credential,
                    "GET",
                    *self.mc.catalog.request_for(ep, path.lstrip("/"), "", []),
                    None,
                    connect_s=self.policy.timeout_s,
                    read_s=self.policy.timeout_s,
                )
                try:
                    status = resp.status
                    body = await resp.read(limit=self.mc.policy.read_limits.probe_body_bytes)
                finally:
                    await resp.aclose()
        except TimeoutError:
            return self._failed(st, f"probe timed out after {self.policy.timeout_s:g}s", None)
        except UpstreamError as exc:
            return self._failed(st, f"probe {exc.kind} error: {exc}", None)
        except auth.CredentialUnavailable as exc:
            return self._failed(st, f"probe: credential unavailable: {exc}", None, endpoint_fault=False)
        rtt = (clock() - t0) * 1000.0
        fault = classify_status(status)
        if status == 404:
            # No /models here (or elsewhere): the probe path is wrong, not the endpoint.
            return self._failed(st, f"probe got HTTP 404 for {path}: set probe_path", status, endpoint_fault=False)
        if fault is not None:
            return self._failed(st, f"probe got HTTP {status}", status, endpoint_fault=fault is FaultKind.ENDPOINT)
        st.observe_rtt(rtt)
        listed = _model_ids(body)
        missing: list[str] = []
        unlisted: list[str] = []
        if listed is not None:
            missing, unlisted = health.observe_listing(st, listed)
        queue = None
        if self.policy.metrics and ep.metrics_path is not None:
            queue = await self._queue_depth(up, ep)
            if queue is not None:
                st.queue_waiting = queue
        return ProbeResult(
            ep.id, True, rtt, status, None if listed is None else sorted(listed), missing, queue, None, unlisted
        )

    def _failed(
        self, st: EndpointState, reason: str, status: int | None, *, endpoint_fault: bool = True
    ) -> ProbeResult:
        reason = self.mc.health.redact(reason)
        if endpoint_fault:
            self.mc.health.endpoint_fault(st, reason)
        else:
            st.last_error = reason
        log.debug("probe %s failed: %s", st.endpoint.id, reason)
        return ProbeResult(st.endpoint.id, False, None, status, None, [], None, reason)

    async def _queue_depth(self, up: Upstream, ep: Endpoint) -> float | None:
        assert ep.metrics_path is not None
        root = f"{ep.scheme}://{ep.host}:{ep.port}"
        try:
            with anyio.fail_after(self.policy.timeout_s):
                resp, _ = await auth.send(
                    up,
                    ep.credential,
                    "GET",
                    root + ep.metrics_path,
                    ep.headers,
                    None,
                    connect_s=self.policy.timeout_s,
                    read_s=self.policy.timeout_s,
                )
                try:
                    body = (
                        await resp.read(limit=self.mc.policy.read_limits.probe_body_bytes)
                        if resp.status == 200
                        else b""
                    )
                finally:
                    await resp.aclose()
        except (TimeoutError, UpstreamError, auth.CredentialUnavailable):
            return None
        return parse_queue_depth(body)


def parse_queue_depth(text: bytes) -> float | None:
    """Waiting requests in a Prometheus exposition (vLLM or SGLang names): the largest
    series (servers repeat the engine-wide gauge per model label)."""
    vals = []
    for m in _QUEUE_METRICS.finditer(text):
        try:
            vals.append(float(m.group(1)))
        except ValueError:
            continue
    return max(vals) if vals else None


def _model_ids(body: bytes) -> set[str] | None:
    try:
        obj: Any = json.loads(body)
    except ValueError:
        return None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        return None
    return {d["id"] for d in data if isinstance(d, dict) and isinstance(d.get("id"), str)}
