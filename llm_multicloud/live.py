"""Live operations: change the catalog, drain endpoints and move weights at run time.

A long-lived service must not restart (and so forget every latency estimate and
breaker state) to drain a region, add one, or shift traffic. This module holds
the mechanism behind :meth:`MultiCloud.update_catalog`, :meth:`~MultiCloud.drain`,
:meth:`~MultiCloud.undrain`, :meth:`~MultiCloud.set_weight` and the catalog file
watcher (``MultiCloud(catalog="catalog.yaml", watch=True)``).

**One swap, validated first.** An update loads and validates the whole new catalog
and policy (the usual field-path errors) before anything changes; a bad one raises
and changes nothing. Then one short critical section publishes a new *generation*:
the router and the health states, as one ``(router, states)`` pair that the
executor reads together, so no request ever ranks one catalog's endpoints with
another's health. Wrapped clients hold the ``MultiCloud``, not the generation:
they pick the change up with no re-wrap.

**History by id.** An endpoint keeps its state (estimates, breaker, counters,
drain) across updates by ``id``. If its *target* changed (URL, key, residency,
tags, timeouts...), it gets a new state that inherits the history, so an attempt
already running never has its destination changed under it.

**Nothing lost, nothing misrouted.** Requests that were planned before the swap
keep their plan, but every new attempt (failover, hedge, retry) asks
:meth:`Health.live` first: an endpoint that was removed, redefined or drained since
gets no new attempt. Attempts and streams already running on it finish normally
(``snapshot()["retired"]`` lists removed endpoints until they have nothing in
flight).

**Operator state survives updates.** Drains and weight overrides are kept by id
and re-applied to every new catalog (a drained region stays drained when the file
is edited), until :meth:`~MultiCloud.undrain` / ``set_weight(id, None)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import Catalog
from .errors import CatalogError
from .health import log_fields, same_target
from .policy import Policy, merge_dicts
from .router import Router

if TYPE_CHECKING:
    from .catalog import CatalogSource
    from .runtime import LiveRuntime

log = logging.getLogger("llm_multicloud.live")


@dataclass(frozen=True, slots=True)
class CatalogUpdate:
    """What :meth:`MultiCloud.update_catalog` changed."""

    version: str
    previous_version: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    #: same id, another target (URL, key, residency...): a new state inheriting the history
    redefined: tuple[str, ...]
    #: same target, other routing weights (weight, max_concurrency, price) or position
    adjusted: tuple[str, ...]
    policy_changed: bool

    @property
    def changed(self) -> bool:
        """Anything at all: content, endpoints or policy."""
        moved = self.added or self.removed or self.redefined or self.adjusted
        return bool(moved) or self.policy_changed or self.version != self.previous_version

    def describe(self) -> str:
        parts = [f"catalog {self.previous_version} -> {self.version}"]
        for name in ("added", "removed", "redefined", "adjusted"):
            ids = getattr(self, name)
            if ids:
                parts.append(f"{name}: {', '.join(ids)}")
        if self.policy_changed:
            parts.append("policy changed")
        return "; ".join(parts)


def catalog_version(cat: Catalog) -> str:
    """A short fingerprint of a catalog's content (never of its secrets: keys are
    masked by the spec's dump, environment variable names are included). Replicas
    that loaded the same file report the same version."""
    data = cat.spec.model_dump(mode="json")
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def with_weights(cat: Catalog, weights: Mapping[str, float]) -> Catalog:
    """The catalog with run-time weight overrides applied (ids it does not have are ignored)."""
    if not any(e.id in weights and weights[e.id] != e.weight for e in cat.endpoints):
        return cat
    eps = [dataclasses.replace(e, weight=weights[e.id]) if e.id in weights else e for e in cat.endpoints]
    return Catalog(cat.spec, eps)


#: Policy sections that are wired at start (background tasks, connections): changing
#: them needs a new MultiCloud, and an update that tries says so instead of ignoring it.
_FIXED = (("state", "policy.state (the shared-state backend)"), ("probe.enabled", "policy.probe.enabled"))


def _fixed_problem(old: Policy, new: Policy) -> str | None:
    for path, label in _FIXED:
        a: Any = old
        b: Any = new
        for part in path.split("."):
            a, b = getattr(a, part), getattr(b, part)
        if a != b:
            return f"{label} cannot change at run time (it starts background tasks); create a new MultiCloud"
    return None


class Operations:
    """The live-operations state of one MultiCloud: catalog source, drains, weights."""

    def __init__(self, mc: LiveRuntime, source: CatalogSource, policy: Mapping[str, Any] | Policy | None) -> None:
        self.mc = mc
        self.path: Path | None = Path(source) if isinstance(source, str | os.PathLike) else None
        self.policy_arg = policy
        self.raw = mc.catalog  # as loaded, before weight overrides
        self.version = catalog_version(mc.catalog)
        self.weights: dict[str, float] = {}
        self.lock = threading.RLock()
        self.updates = 0
        #: Drains done before the shared state started: handed to it when it starts.
        self.pending_drains: dict[str, str | None] = {}
        #: called with the new version after each update (shared state announces it)
        self.listeners: list[Any] = []

    # -- catalog --------------------------------------------------------------------
    def update(self, source: CatalogSource | None, policy: Any, *, keep_policy: bool) -> CatalogUpdate:
        mc = self.mc
        with self.lock:
            # 1. Load and validate everything: nothing below may fail on user input.
            if source is None and not keep_policy:
                source = self.raw  # a policy change alone: the catalog stays
            elif source is None:
                if self.path is None:
                    raise CatalogError("update_catalog() needs a source: this MultiCloud was not built from a file")
                source = self.path
            raw = Catalog.load(source)
            policy_arg = self.policy_arg if keep_policy else _merged(self.policy_arg, policy)
            new_policy = raw.policy(policy_arg)
            problem = _fixed_problem(mc.policy, new_policy)
            if problem:
                raise CatalogError(problem)
            cat = with_weights(raw, self.weights)
            router = Router(cat, new_policy)
            # 2. Publish: health states (history by id), then the (router, states) pair.
            old_cat, old_policy, old_version = mc.catalog, mc.policy, self.version
            by_id = {e.id: e for e in old_cat.endpoints}
            states = mc.health.retarget(cat, new_policy)
            mc.executor.reconfigure(cat, new_policy, router, states)
            mc.catalog, mc.policy, mc.router = cat, new_policy, router
            if isinstance(source, str | os.PathLike):
                self.path = Path(source)
            if not keep_policy:
                self.policy_arg = policy_arg
            self.raw = raw
            self.version = catalog_version(raw)
            self.updates += 1
            if mc.telemetry is not None:
                mc.telemetry.bind_catalog(cat)
            prober = mc.prober
            if prober is not None:
                prober.policy = new_policy.probe
            new_ids = {e.id for e in cat.endpoints}
            change = CatalogUpdate(
                version=self.version,
                previous_version=old_version,
                added=tuple(e.id for e in cat.endpoints if e.id not in by_id),
                removed=tuple(e.id for e in old_cat.endpoints if e.id not in new_ids),
                redefined=tuple(e.id for e in cat.endpoints if e.id in by_id and not same_target(by_id[e.id], e)),
                adjusted=tuple(
                    e.id
                    for e in cat.endpoints
                    if e.id in by_id and same_target(by_id[e.id], e) and _weights_of(by_id[e.id]) != _weights_of(e)
                ),
                policy_changed=old_policy != new_policy,
            )
        for e in cat.endpoints:
            if e.id not in by_id:
                log.info(
                    "endpoint %s: added by a catalog update",
                    e.id,
                    extra=log_fields(e, "absent", "serving", "added by a catalog update"),
                )
        log.info("catalog updated: %s", change.describe(), extra={"catalog_version": self.version})
        for fn in list(self.listeners):
            try:
                fn(self.version)
            except Exception:
                log.exception("catalog update listener failed")
        return change

    # -- drains and weights -----------------------------------------------------------
    def select(self, endpoint_id: str | None, region: str | None, provider: str | None) -> list[str]:
        """Endpoint ids named by an id, or by a region and/or provider."""
        cat = self.mc.catalog
        if endpoint_id is not None:
            if region is not None or provider is not None:
                raise ValueError("name an endpoint id, or region=/provider=, not both")
            if endpoint_id not in self.mc.health.by_id:
                known = ", ".join(e.id for e in cat.endpoints)
                raise ValueError(f"unknown endpoint id {endpoint_id!r}; this catalog has: {known}")
            return [endpoint_id]
        if region is None and provider is None:
            raise ValueError("name an endpoint id, or region= and/or provider=")
        ids = [
            e.id
            for e in cat.endpoints
            if (region is None or e.region == region) and (provider is None or e.provider == provider.lower())
        ]
        if not ids:
            where = " ".join(x for x in (provider, region) if x)
            regions = ", ".join(sorted({f"{e.provider} {e.region}" for e in cat.endpoints}))
            raise ValueError(f"no endpoint in {where}; this catalog has: {regions}")
        return ids

    def drain(self, ids: list[str], reason: str, *, remote: bool = False) -> list[str]:
        h = self.mc.health
        done = []
        for eid in ids:
            st = h.by_id.get(eid)
            if st is not None and h.drain(st, reason):
                done.append(eid)
        if done and not remote:
            self._announce_drains(done, reason)
        return done

    def undrain(self, ids: list[str], *, remote: bool = False) -> list[str]:
        h = self.mc.health
        done = []
        for eid in ids:
            st = h.by_id.get(eid)
            if st is not None and h.undrain(st, "undrained by another replica" if remote else "undrained"):
                done.append(eid)
        if done and not remote:
            self._announce_drains(done, None)
        return done

    def _announce_drains(self, ids: list[str], reason: str | None) -> None:
        shared = self.mc.shared_state
        if shared is not None:
            shared.announce_drain(ids, reason)
        elif self.mc.policy.state.backend == "redis":  # published once the shared state starts
            self.pending_drains.update(dict.fromkeys(ids, reason))

    def set_weight(self, endpoint_id: str, weight: float | None) -> CatalogUpdate:
        if weight is not None and not (isinstance(weight, int | float) and weight > 0 and weight < float("inf")):
            raise ValueError(f"weight must be a positive finite number (got {weight!r}); None removes the override")
        with self.lock:
            self.select(endpoint_id, None, None)
            if weight is None:
                self.weights.pop(endpoint_id, None)
            else:
                self.weights[endpoint_id] = float(weight)
            return self.update(self.raw, None, keep_policy=True)


def _merged(current: Mapping[str, Any] | Policy | None, new: Mapping[str, Any] | Policy | None) -> Any:
    """A dict merges key by key onto the current override; a Policy (or None) replaces it."""
    if isinstance(new, Mapping):
        base = current.model_dump() if isinstance(current, Policy) else dict(current or {})
        return merge_dicts(base, dict(new))
    return new


def _weights_of(e: Any) -> tuple[Any, ...]:
    return (e.weight, e.max_concurrency, e.price, e.index)


class CatalogWatcher:
    """Reloads a catalog file when it changes (watchfiles, in a daemon thread).

    The directory is watched, not the file: editors and config managers replace a
    file by renaming a new one over it. A broken edit logs one error naming the
    problem and keeps the last good catalog; the next good edit is picked up.
    """

    def __init__(self, ops: Operations, path: Path, *, debounce_ms: int = 200) -> None:
        try:
            import watchfiles
        except ImportError:
            raise CatalogError("watch=True needs watchfiles: pip install 'llm-multicloud[watch]'") from None
        self._watchfiles = watchfiles
        self.ops = ops
        self.path = path.resolve()
        self.debounce_ms = debounce_ms
        self._stop = threading.Event()
        self.reloads = 0
        self.errors = 0
        self.last_error: str | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-multicloud-catalog-watch", daemon=True)
        self._thread.start()
        # watchfiles sets up its watch in the thread: until then an edit could be missed.
        self._ready.wait(5.0)

    def _run(self) -> None:
        wf = self._watchfiles
        target = self.path

        def only_target(_change: Any, p: str) -> bool:
            return Path(p).resolve() == target

        try:
            gen = wf.watch(
                target.parent,
                watch_filter=only_target,
                debounce=self.debounce_ms,
                step=50,
                stop_event=self._stop,
                rust_timeout=200,
                yield_on_timeout=True,
                recursive=False,
            )
            for changes in gen:
                self._ready.set()
                if self._stop.is_set():
                    break
                if changes:
                    self._reload()
        except Exception:  # the watcher must never take the service down
            log.exception("catalog watcher for %s stopped", target)
        finally:
            self._ready.set()

    def _reload(self) -> None:
        if not self.path.exists():
            self._error(f"{self.path} was removed; keeping the last good catalog")
            return
        try:
            change = self.ops.update(self.path, None, keep_policy=True)
        except CatalogError as exc:
            self._error(f"catalog reload failed; keeping the last good catalog (version {self.ops.version}):\n{exc}")
            return
        except Exception as exc:  # never kill the watcher on our own bug
            log.exception("catalog reload failed unexpectedly")
            self._error(f"catalog reload failed: {type(exc).__name__}: {exc}", logged=True)
            return
        self.reloads += 1
        self.last_error = None
        log.debug("catalog %s reloaded: %s", self.path, change.describe())

    def _error(self, msg: str, *, logged: bool = False) -> None:
        self.errors += 1
        self.last_error = msg
        if not logged:
            log.error("%s", msg, extra={"catalog_path": str(self.path)})

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(2.0)
