"""Shared health across app replicas, through Redis (or Valkey).

Why: a team that runs many replicas of its app has one wrapped client per replica.
Without sharing, each replica rediscovers every outage and every 429 on its own
(each one sacrifices ``consecutive_failures`` requests to a dead region), a new
replica routes blind until its own samples arrive, and ``max_concurrency`` holds
per replica only. With ``policy.state.backend: redis`` the replicas share one
picture through a Redis they already run.

**The hot path never waits for Redis.** The router reads only the local
:class:`~llm_multicloud.health.Health`; this module keeps it in step from a
background task (one per MultiCloud, in its background event loop, like the
prober). Every ``refresh_s`` — jittered *downward*, so that the period is a bound
and a fleet does not hit Redis in lock-step — a *round* makes **one** pipelined
round trip, bounded by ``timeout_s``:

* PUSH this replica's new facts: breaker ejections and quota-domain cooldowns
  that it found itself (not those it adopted: no echo), and a heartbeat entry with
  its in-flight count per endpoint and its own TTFT estimates;
* PULL everyone's: the ejection and cooldown keys of every endpoint / quota domain
  of the catalog (one ``MGET`` each: no ``SCAN``), and the heartbeat hash;
* MERGE into local health: ejections and cooldowns forward-only (they can make an
  endpoint unusable for longer, never shorter), the sum of the *other* live
  replicas' in-flight counts into ``remote_inflight`` (global ``max_concurrency``),
  and remote TTFT estimates for endpoints this replica has no fresh sample of.

A local breaker opening or cooldown starting wakes the loop at once, so other
replicas learn it within one refresh period, not two.

**Keys** (``P`` is ``policy.state.prefix``; the schema version is in every key and
in every value's ``v``, so two versions of the library never read each other's data)::

    P:v2:{d:<domain>}:eject:<endpoint id>  {"v":2,"until":ms,"reason":..,"ejections":n,"by":replica}  PXAT until
    P:v2:{d:<domain>}:cool                 {"v":2,"until":ms,"reason":..,"by":replica}                PXAT until
    P:v2:{d:<domain>}:bucket               hash: the shared capacity bucket (shared_limits.py)
    P:v2:replicas                          hash  replica id -> {"v":2,"at":ms,"ttl":ms,"inflight":{..},"ttft":{..}}
    P:v2:drains                            hash  endpoint id -> {"v":2,"reason":..,"by":replica,"at":ms}

**Redis Cluster** (``policy.state.cluster: true``; Valkey cluster and the managed
offerings in cluster mode alike): every key of one quota domain carries the hash tag
``{d:<domain>}``, so each atomic update (one Lua script on one key) stays in one slot
and the reads of a round are one ``MGET`` per slot, sent by redis-py's cluster
pipeline to each node at once. The URL names one node or the configuration
endpoint; the nodes seen by the last good round are startup nodes of the next
client, so a failover of that very node does not lose the cluster. The few keys
written by one script live on one master: its clock (``TIME``) is the one used;
cluster nodes' clocks differ by their NTP error only.

Deadlines live in the key's own TTL (``SET .. PXAT``: a rewrite can never lose it)
and are written by a tiny Lua script that keeps the later of the stored and the new
deadline, atomically. Every time stored is on the **Redis server's clock** (``TIME``),
so clock skew between replica hosts does not matter: a replica converts "ends in
*r* ms by Redis' clock" into its own monotonic clock on merge.

**Redis is not a new single point of failure.** When a round fails (down, slow,
auth, ...) the replica runs on its local state at once — remote in-flight counts are
dropped, adopted ejections and cooldowns run out on their own deadlines — logs one
warning (one info when Redis is back, not one per round), shows ``degraded`` in
``snapshot()["shared_state"]``, and retries each period with a fresh connection.
On reconnect it re-publishes its still-running ejections and cooldowns (a
restarted Redis has lost them). Bad data in Redis (garbage, another schema, wrong
types) is skipped with one warning per key.

**Secrets never go to Redis**: only endpoint ids, quota-domain names, numbers,
and short reasons the library wrote, passed through :func:`errors.redact` with the
catalog's keys. The hedge and retry budgets stay per replica: they are ratios of
each replica's own traffic, so they bound the fleet's extra load just as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import anyio

from .errors import redact
from .shared_limits import LEASE, SharedLimits, domain_tag

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .health import EndpointState, Transition
    from .runtime import SharedRuntime

log = logging.getLogger("llm_multicloud.shared")
_T = TypeVar("_T")

#: Schema version: in every key (``{prefix}:v2:...``) and in every value (``"v": 2``).
#: 2: keys hash-tagged per quota domain (Redis Cluster), buckets shared.
SCHEMA = 2
#: Longest reason shared (upstream error text is cut: short, and never a prompt).
MAX_REASON = 160
#: Longest value read (anything larger is not ours).
MAX_VALUE = 1 << 20
#: A deadline less than this far ahead is not worth a write.
MIN_PUSH_S = 0.05
#: Sample weight cap when blending other replicas' TTFT estimates.
MAX_SAMPLE_WEIGHT = 100
#: Least time allowed to set up a connection (TCP, TLS, AUTH); rounds get ``timeout_s``.
CONNECT_S = 1.0
#: At most this many distinct keys get their own bad-data warning.
MAX_WARNED = 1000

#: Forward-only deadline write. KEYS[1]: the key; ARGV[1]: remaining ms; ARGV[2]: the
#: JSON value without its closing brace (the script appends ``"until"``, on Redis'
#: clock); ARGV[3]: the schema version. A stored value of this schema whose deadline
#: is not earlier wins; anything else (missing, expired, garbage, older schema) is
#: replaced. The deadline is the key's TTL (PXAT), set on every write.
_FORWARD_ONLY = """
local t = redis.call('TIME')
local u = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, obj = pcall(cjson.decode, cur)
  if ok and type(obj) == 'table' and obj['v'] == tonumber(ARGV[3])
      and type(obj['until']) == 'number' and obj['until'] >= u then
    if redis.call('PTTL', KEYS[1]) == -1 then
      redis.call('PEXPIREAT', KEYS[1], string.format('%d', obj['until']))
    end
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2] .. ',"until":' .. string.format('%d', u) .. '}', 'PXAT', string.format('%d', u))
return 1
"""


#: Redis' clock on the master of KEYS[1] (a cluster pipeline cannot send TIME itself).
_TIME = "return redis.call('TIME')"


@dataclass(slots=True)
class _Push:
    """One deadline to publish (an ejection or a cooldown) and what to remember once done."""

    key: str
    remaining_ms: int
    body: str
    kind: str  # "eject" | "cool"
    ref: int | str  # endpoint index | quota domain name
    until: float  # the local monotonic deadline pushed


class SharedState:
    """The Redis side of one MultiCloud's health (see the module docs).

    Created by :class:`~llm_multicloud.client.MultiCloud` when ``policy.state.backend``
    is ``"redis"``; :meth:`run` runs in its background loop until :meth:`stop`.
    """

    def __init__(self, mc: SharedRuntime) -> None:
        self.mc = mc
        self.policy = mc.policy.state
        host = socket.gethostname()[:48] or "host"
        #: This replica's id in Redis: readable by operators, unique per process and instance.
        self.id = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        p = self._p = f"{self.policy.prefix}:v{SCHEMA}"
        self._k_replicas = f"{p}:replicas"
        self._k_drains = f"{p}:drains"
        self._states: tuple[EndpointState, ...] = ()
        self._bind()
        url = self.policy.url or ""
        self._url_safe, password = _safe_url(url)
        self._secrets = [*mc.catalog.secrets(), *([password] if password else [])]
        # A heartbeat lives a few periods: a replica that died stops counting soon,
        # one that missed a round (GC pause, slow Redis) does not flicker.
        self._connect_s = max(self.policy.timeout_s, CONNECT_S)
        self._ttl_ms = int((3.0 * self.policy.refresh_s + 2.0 * self.policy.timeout_s) * 1000)
        # What was pushed / adopted, by deadline value: a fact is pushed once, and a
        # fact adopted from another replica is never pushed back (no echo, no creep).
        self._pushed_eject: dict[int, float] = {}
        self._adopted_eject: dict[int, float] = {}
        self._pushed_cool: dict[str, float] = {}
        self._adopted_cool: dict[str, float] = {}
        self._adopted_ttft: dict[int, tuple[float, float]] = {}
        self._prune: set[bytes | str] = set()
        self._warned: set[str] = set()
        self._offset_ms = 0.0  # Redis server clock minus this host's wall clock (ms)
        #: Redis Cluster: the nodes seen by the last good round (startup nodes next time)
        self._cluster_nodes: list[tuple[str, int]] = []
        self._rand = random.Random()
        self._scope: anyio.CancelScope | None = None
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._merging = False
        self._wake: anyio.Event | None = None
        # status
        self._ok: bool | None = None
        self._last_ok: float | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._replicas = 0
        self.rounds = 0
        self.failed_rounds = 0
        # Live operations: drains to publish (id -> reason, None: undrain), and the
        # catalog versions other replicas announce.
        self._drain_lock = threading.Lock()
        self._drain_ops: dict[str, str | None] = dict(mc.ops.pending_drains)
        mc.ops.pending_drains.clear()
        self._versions: dict[str, str] = {}
        self._mismatch_logged: frozenset[tuple[str, str]] = frozenset()
        mc.ops.listeners.append(self._on_catalog)
        #: capacity buckets shared as leases (see shared_limits.py)
        self._asks: list[Any] = []
        self._limits: SharedLimits | None = SharedLimits(
            lambda: mc.health.buckets,
            p,
            self.policy.refresh_s,
            mc.clock(),
            replica=self.id,
            live_s=self._ttl_ms / 1000.0,
            on_starved=self._poke,
            expected_replicas=self.policy.expected_replicas,
        )

    def _bind(self) -> None:
        """Keys and indexes for the current catalog (again after a live catalog update).
        Facts remembered by index move with their endpoint id."""
        old = self._states
        states = self.mc.health.states
        p = self._p
        # Every key of one quota domain carries its hash tag: on Redis Cluster an
        # endpoint's ejection, its domain's cooldown and capacity bucket share a slot,
        # and the reads of a round are one MGET per slot.
        self._k_eject = [f"{p}:{domain_tag(st.quota.name)}:eject:{st.endpoint.id}" for st in states]
        self._domains = list(self.mc.health.domains)
        self._k_cool = [f"{p}:{domain_tag(name)}:cool" for name in self._domains]
        self._reads = [*self._k_eject, *self._k_cool]
        n = len(self._reads)
        self._read_groups = _slot_groups(self._reads) if self.policy.cluster else ([list(range(n))] if n else [])
        self._index = {st.endpoint.id: i for i, st in enumerate(states)}
        #: one endpoint per quota domain, to apply a remote cooldown through
        self._domain_st: dict[str, EndpointState] = {}
        for st in states:
            self._domain_st.setdefault(st.quota.name, st)
        if old:
            ids = [st.endpoint.id for st in old]
            self._pushed_eject = _remap(self._pushed_eject, ids, self._index)
            self._adopted_eject = _remap(self._adopted_eject, ids, self._index)
            self._adopted_ttft = _remap(self._adopted_ttft, ids, self._index)
        self._states = states

    # -- lifecycle ------------------------------------------------------------------
    async def run(self) -> None:
        """Push, pull and merge every ``refresh_s`` until :meth:`stop`; never raises."""
        try:
            import redis.asyncio as aioredis
        except ImportError:
            self._failed("redis-py is not installed: pip install 'llm-multicloud[redis]'", level=logging.ERROR)
            return
        # redis.asyncio needs asyncio; the wake-up from other threads goes through it.
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.mc.health.listeners.append(self._on_transition)
        client: Redis | None = None
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._stopped:
                    scope.cancel()
                while True:
                    self._wake = anyio.Event()
                    started = self.mc.clock()
                    try:
                        if client is None:
                            client = self._connect(aioredis)
                            # A new connection (TCP, TLS, AUTH) gets a bound of its own: set-up
                            # to a managed Redis can take longer than a round trip, and nothing
                            # but this background loop waits for it.
                            with anyio.fail_after(self._connect_s):
                                await client.ping()
                        await self._round(client)
                    except Exception as exc:  # down, slow, auth, bad URL...: never raise
                        self._failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                        if client is not None:
                            await _aclose(client, self.policy.timeout_s)
                            client = None
                    delay = self.policy.refresh_s * (0.9 + 0.1 * self._rand.random())
                    with anyio.move_on_after(delay):
                        await self._wake.wait()
                    # Woken by a local transition: go at once, yet never spin.
                    gap = min(0.02, self.policy.refresh_s) - (self.mc.clock() - started)
                    if gap > 0:
                        await anyio.sleep(gap)
        finally:
            self._scope = None
            with contextlib.suppress(ValueError):
                self.mc.health.listeners.remove(self._on_transition)
            self._drop_remote_inflight()
            if client is not None:
                await _aclose(client, self.policy.timeout_s)

    async def stop(self) -> None:
        """End :meth:`run` promptly (its cancel scope); it closes the Redis client."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    def status(self) -> dict[str, Any]:
        """For ``snapshot()["shared_state"]``: ``ok`` while the last round succeeded,
        ``degraded`` (running on local state) otherwise, including before the first round."""
        return {
            "backend": "redis",
            "status": "ok" if self._ok else "degraded",
            "last_ok": self._last_ok,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
            "replicas": self._replicas,
            "staleness_bound_s": self.staleness_bound_s,
            "replica_id": self.id,
            "url": self._url_safe,
            "prefix": self.policy.prefix,
            "schema": SCHEMA,
            "rounds": self.rounds,
            "failed_rounds": self.failed_rounds,
            "catalog_version": self.mc.catalog_version,
            "catalog_versions": dict(sorted(self._versions.items())),
            "catalog_mismatch": self.catalog_mismatch(),
            "pending_drains": len(self._drain_ops),
        }

    @property
    def staleness_bound_s(self) -> float:
        """How old this replica's shared view can be while ``ok``: the round that read
        it took at most ``timeout_s``, the next one starts at most ``refresh_s`` after
        it ended and reads within ``timeout_s``."""
        return round(self.policy.refresh_s + 2.0 * self.policy.timeout_s, 3)

    def _connect(self, aioredis: Any) -> Redis:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        t = self._connect_s
        # No client-side retries: the next round is the retry. The anyio deadlines
        # around the connection and each round are the bounds; socket timeouts are a
        # second line.
        if self.policy.cluster:
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            # The URL names one node (or a managed offering's configuration endpoint);
            # the nodes seen in earlier rounds are startup nodes too, so a client made
            # after that node failed still finds the cluster.
            cluster: Any = RedisCluster.from_url(
                self.policy.url or "",
                startup_nodes=[ClusterNode(h, p) for h, p in self._cluster_nodes],
                socket_timeout=t,
                socket_connect_timeout=t,
                retry=Retry(NoBackoff(), 0),
                require_full_coverage=False,  # during a failover, the other slots still work
                health_check_interval=0,
            )
            return cast("Redis", cluster)
        client: Redis = aioredis.from_url(
            self.policy.url,
            socket_timeout=t,
            socket_connect_timeout=t,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        return client

    # -- one round ---------------------------------------------------------------------
    async def _round(self, client: Redis) -> None:
        mc = self.mc
        if mc.health.states is not self._states:
            self._bind()  # a live catalog update since the last round
        now = mc.clock()
        with self._drain_lock:
            drain_ops = dict(self._drain_ops)
        pushes = self._pushes(now)
        entry = self._entry(now)
        w0 = time.time()
        with anyio.fail_after(self.policy.timeout_s):
            async with client.pipeline(transaction=False) as pipe:
                if self.policy.cluster:
                    # A cluster pipeline refuses keyless commands: Redis' clock is read
                    # by a script on a key instead (the master of the replicas hash).
                    pipe.eval(_TIME, 1, self._k_replicas)
                else:
                    pipe.time()
                for p in pushes:
                    pipe.eval(_FORWARD_ONLY, 1, p.key, str(p.remaining_ms), p.body, str(SCHEMA))
                pipe.hset(self._k_replicas, self.id, entry)
                pipe.pexpire(self._k_replicas, 4 * self._ttl_ms)
                prune = list(self._prune)
                if prune:
                    pipe.hdel(self._k_replicas, *prune)
                for group in self._read_groups:
                    # One MGET per slot. (redis-py's cluster pipeline refuses pipe.mget,
                    # any multi-key command, though one whose keys share a slot is fine.)
                    pipe.execute_command("MGET", *[self._reads[k] for k in group])
                pipe.hgetall(self._k_replicas)
                # Drains: this replica's new ones first, then everyone's (the hash is the truth).
                for eid, reason in drain_ops.items():
                    if reason is None:
                        pipe.hdel(self._k_drains, eid)
                    else:
                        body = {"v": SCHEMA, "reason": self._reason(reason), "by": self.id, "at": int(w0 * 1000)}
                        pipe.hset(self._k_drains, eid, json.dumps(body, separators=(",", ":")))
                pipe.hgetall(self._k_drains)
                asks = self._limits.asks(self._replicas, now) if self._limits is not None else []
                self._asks = asks
                for ask in asks:
                    assert self._limits is not None
                    pipe.eval(LEASE, 1, ask.key, *self._limits.args(ask))
                res: list[Any] = await pipe.execute(raise_on_error=False)
        t1 = mc.clock()
        w1 = time.time()
        errors = [r for r in res if isinstance(r, Exception)]
        if isinstance(res[0], Exception):
            raise res[0]
        secs, usecs = res[0]
        server_ms = int(secs) * 1000 + int(usecs) / 1000.0
        self._offset_ms = server_ms - (w0 + w1) * 500.0
        i = 1
        for p in pushes:
            if not isinstance(res[i], Exception):
                if p.kind == "eject":
                    self._pushed_eject[int(p.ref)] = p.until
                else:
                    self._pushed_cool[str(p.ref)] = p.until
            i += 1
        i += 3 if prune else 2
        if prune and not isinstance(res[i - 1], Exception):
            self._prune.difference_update(prune)
        # The MGETs (one per slot on a cluster) back into key order; a key whose read
        # failed counts as missing (merges only ever move deadlines forward).
        values: list[Any] = [None] * len(self._reads)
        for group, got in zip(self._read_groups, res[i : i + len(self._read_groups)], strict=True):
            if not isinstance(got, Exception):
                for k, v in zip(group, got, strict=True):
                    values[k] = v
        i += len(self._read_groups)
        n_eject = len(self._k_eject)
        ejects, cools, replicas = values[:n_eject], values[n_eject:], res[i]
        d = i + 1 + len(drain_ops)  # the drains hash, after this replica's drain writes
        drains = res[d]
        if not any(isinstance(r, Exception) for r in res[i + 1 : d]):
            with self._drain_lock:  # published: forget them, unless changed meanwhile
                for eid, reason in drain_ops.items():
                    if eid in self._drain_ops and self._drain_ops[eid] == reason:
                        del self._drain_ops[eid]
        if self._limits is not None:
            self._limits.merge(asks, res[d + 1 :], t1)
            self._asks = []
        self._merging = True
        try:
            self._merge_ejections(ejects, server_ms, t1)
            self._merge_cooldowns(cools, server_ms, t1)
            if not isinstance(replicas, Exception):
                self._merge_replicas(replicas, server_ms, t1)
            if not isinstance(drains, Exception):
                self._merge_drains(drains)
        finally:
            self._merging = False
        self.rounds += 1
        if self.policy.cluster:
            self._remember_nodes(client)
        if errors:
            # Partly refused (e.g. an ACL without EVAL): what worked is merged, the
            # status says what did not.
            raise errors[0]
        self._succeeded()

    def _remember_nodes(self, client: Any) -> None:
        with contextlib.suppress(Exception):  # best effort: only ever more startup nodes
            seen = [(n.host, int(n.port)) for n in client.get_nodes()]
            if seen:
                self._cluster_nodes = seen[:32]

    def _pushes(self, now: float) -> list[_Push]:
        """New local facts: ejections and cooldowns this replica found itself."""
        out: list[_Push] = []
        for i, st in enumerate(self._states):
            until = st.open_until
            if (
                st.breaker == "open"
                and until - now > MIN_PUSH_S
                and until != self._pushed_eject.get(i)
                and until != self._adopted_eject.get(i)
            ):
                body = {"v": SCHEMA, "reason": self._reason(st.last_error), "ejections": st.ejections, "by": self.id}
                out.append(_Push(self._k_eject[i], _ms(until - now), _open_json(body), "eject", i, until))
        for key, name in zip(self._k_cool, self._domains, strict=True):
            dom = self.mc.health.domains.get(name)
            if dom is None:  # removed by a catalog update during this round
                continue
            until = dom.until
            known = (self._pushed_cool.get(name), self._adopted_cool.get(name))
            if until - now > MIN_PUSH_S and until not in known:
                body = {"v": SCHEMA, "reason": self._reason(dom.reason), "by": self.id}
                out.append(_Push(key, _ms(until - now), _open_json(body), "cool", name, until))
        return out

    def _entry(self, now: float) -> str:
        """This replica's heartbeat: its in-flight counts and its own TTFT estimates."""
        server_now = time.time() * 1000.0 + self._offset_ms
        inflight: dict[str, int] = {}
        ttft: dict[str, list[float]] = {}
        for i, st in enumerate(self._states):
            if st.inflight > 0:
                inflight[st.endpoint.id] = st.inflight
            est, at = st.ttft_ms, st.ttft_at
            if st.ttft_samples > 0 and est is not None and (est, at) != self._adopted_ttft.get(i):
                ttft[st.endpoint.id] = [round(est, 3), st.ttft_samples, int(server_now - (now - at) * 1000.0)]
        obj = {
            "v": SCHEMA,
            "at": int(server_now),
            "ttl": self._ttl_ms,
            "inflight": inflight,
            "ttft": ttft,
            "catalog": self.mc.catalog_version,
        }
        return json.dumps(obj, separators=(",", ":"))

    # -- merge -------------------------------------------------------------------------
    def _merge_ejections(self, values: list[bytes | None], server_ms: float, t1: float) -> None:
        h = self.mc.health
        bp = self.mc.policy.breaker
        longest = bp.max_ejection_s * (1.0 + bp.jitter)
        for i, (key, raw) in enumerate(zip(self._k_eject, values, strict=True)):
            obj = self._parse(key, raw)
            if obj is None:
                continue
            until, reason, by = _num(obj.get("until")), obj.get("reason", ""), obj.get("by")
            ejections = obj.get("ejections", 1)
            if until is None or not isinstance(reason, str) or not isinstance(by, str) or not _is_int(ejections):
                self._bad(key, "wrong field types")
                continue
            if by == self.id:
                continue
            remaining = (until - server_ms) / 1000.0
            if remaining <= 0:
                continue
            # A deadline absurdly far ahead (bad data, another policy) is capped.
            local_until = t1 + min(remaining, longest)
            st = self._states[i]
            h.apply_remote_ejection(st, local_until, self._reason(reason), max(0, min(int(ejections), 1000)))
            if st.open_until == local_until:
                self._adopted_eject[i] = local_until

    def _merge_cooldowns(self, values: list[bytes | None], server_ms: float, t1: float) -> None:
        h = self.mc.health
        for key, name, raw in zip(self._k_cool, self._domains, values, strict=True):
            obj = self._parse(key, raw)
            if obj is None:
                continue
            until, reason, by = _num(obj.get("until")), obj.get("reason", ""), obj.get("by")
            if until is None or not isinstance(reason, str) or not isinstance(by, str):
                self._bad(key, "wrong field types")
                continue
            if by == self.id:
                continue
            remaining = (until - server_ms) / 1000.0
            if remaining <= 0:
                continue
            dom = h.domains.get(name)
            if dom is None:
                continue
            before = dom.until
            # apply_remote_cooldown caps it (max_retry_after_s) and only moves forward.
            h.apply_remote_cooldown(self._domain_st[name], t1 + remaining, self._reason(reason))
            if dom.until != before:
                self._adopted_cool[name] = dom.until

    def _merge_replicas(self, entries: dict[bytes | str, bytes | str], server_ms: float, t1: float) -> None:
        states = self._states
        n = len(states)
        remote = [0] * n
        versions: dict[str, str] = {}
        ttft: list[list[tuple[float, float, float]]] = [[] for _ in range(n)]
        live = 0
        for field, raw in entries.items():
            rid = field.decode("utf-8", "replace") if isinstance(field, bytes) else str(field)
            key = f"{self._k_replicas}[{rid[:80]}]"
            obj = self._parse(key, raw)
            if obj is None:
                continue
            at, ttl = _num(obj.get("at")), _num(obj.get("ttl"))
            inflight, lat = obj.get("inflight", {}), obj.get("ttft", {})
            if at is None or ttl is None or not isinstance(inflight, dict) or not isinstance(lat, dict):
                self._bad(key, "wrong field types")
                continue
            ttl = min(max(ttl, 0.0), 3_600_000.0)
            age = server_ms - at
            if age > ttl:
                if age > max(10.0 * ttl, 60_000.0):
                    self._prune.add(field)  # long dead: tidy the hash
                continue
            live += 1
            if isinstance(obj.get("catalog"), str):
                versions[rid] = obj["catalog"][:64]
            if rid == self.id:
                continue
            invalid = False  # endpoints we do not know are fine (another catalog version)
            for eid, v in inflight.items():
                i = self._index.get(eid)
                if i is None:
                    continue
                if _is_int(v) and 0 <= v <= 1_000_000:
                    remote[i] += int(v)
                else:
                    invalid = True
            for eid, v in lat.items():
                i = self._index.get(eid)
                if i is None:
                    continue
                est, samples, sample_at = (_num(x) for x in v) if isinstance(v, list) and len(v) == 3 else (None,) * 3
                if est is None or samples is None or sample_at is None or not 0 < est < 3_600_000 or samples < 1:
                    invalid = True
                    continue
                ttft[i].append((est, samples, min(sample_at, server_ms)))
            if invalid:
                self._bad(key, "invalid in-flight or TTFT values (the valid ones are used)")
        self._replicas = live
        self._versions = versions
        self._check_versions()
        for st, r in zip(states, remote, strict=True):
            st.remote_inflight = r
        decay = self.mc.policy.decay_s
        for i, items in enumerate(ttft):
            if items:
                self._adopt_ttft(states[i], i, items, server_ms, t1, decay)

    def _adopt_ttft(
        self,
        st: EndpointState,
        i: int,
        items: list[tuple[float, float, float]],
        server_ms: float,
        t1: float,
        decay: float,
    ) -> None:
        """Adopt the other replicas' TTFT estimate (sample- and freshness-weighted) where
        this replica knows nothing fresher: no sample of its own, or none within
        ``decay_s`` while theirs is newer. A fresh replica so routes well at once; one
        with its own recent samples trusts them (replicas in other places see other
        latencies)."""
        acc = wsum = 0.0
        newest = -math.inf
        for est, samples, at in items:
            w = min(samples, MAX_SAMPLE_WEIGHT) * math.exp(-max(server_ms - at, 0.0) / 1000.0 / decay)
            acc += w * est
            wsum += w
            newest = max(newest, at)
        if wsum <= 1e-9:
            return
        value = acc / wsum
        at_local = min(t1 - max(server_ms - newest, 0.0) / 1000.0, t1)
        with st._lock:  # observe_ttft writes these from request threads
            if st.ttft_samples > 0 and not (t1 - st.ttft_at > decay and at_local > st.ttft_at):
                return
            st.ttft_ms = value
            st.ttft_at = at_local
        self._adopted_ttft[i] = (value, at_local)

    # -- live operations: drains and catalog versions --------------------------------
    def announce_drain(self, ids: list[str], reason: str | None) -> None:
        """Publish a local drain (``reason``) or undrain (None) at the next round, which
        starts at once. Called from any thread; never blocks."""
        with self._drain_lock:
            for eid in ids:
                self._drain_ops[eid] = reason
        self._poke()

    def _on_catalog(self, _version: str) -> None:
        """A live catalog update: announce the new version now, not next period."""
        self._poke()

    def _poke(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: we are shutting down
                loop.call_soon_threadsafe(self._wake_up)

    def _merge_drains(self, entries: dict[bytes | str, bytes | str]) -> None:
        """Make local drains match the shared hash (what operators set on any replica),
        except for ids with a local change not yet published."""
        want: dict[str, str] = {}
        for field, raw in entries.items():
            eid = field.decode("utf-8", "replace") if isinstance(field, bytes) else str(field)
            obj = self._parse(f"{self._k_drains}[{eid[:80]}]", raw)
            if obj is None:
                continue
            reason = obj.get("reason")
            if not isinstance(reason, str):
                self._bad(f"{self._k_drains}[{eid[:80]}]", "wrong field types")
                continue
            want[eid] = reason
        with self._drain_lock:
            pending = set(self._drain_ops)
        ops = self.mc.ops
        for st in self._states:
            eid = st.endpoint.id
            if eid in pending:
                continue
            if eid in want and st.drained != want[eid]:
                ops.drain([eid], want[eid], remote=True)
            elif eid not in want and st.drained is not None:
                ops.undrain([eid], remote=True)

    def _check_versions(self) -> None:
        """Warn (once per distinct disagreement) when live replicas run other catalogs."""
        mine = self.mc.catalog_version
        other = frozenset((rid, v) for rid, v in self._versions.items() if v != mine and rid != self.id)
        if other == self._mismatch_logged:
            return
        self._mismatch_logged = other
        if other:
            shown = ", ".join(f"{rid} runs {v}" for rid, v in sorted(other)[:10])
            log.warning(
                "shared state: replicas disagree on the catalog: this replica (%s) runs %s; %s",
                self.id,
                mine,
                shown,
                extra={"catalog_version": mine, "catalog_mismatch": sorted(other)},
            )
        else:
            log.info("shared state: every replica runs catalog %s again", mine, extra={"catalog_version": mine})

    def catalog_mismatch(self) -> list[dict[str, str]]:
        mine = self.mc.catalog_version
        return [{"replica": r, "catalog_version": v} for r, v in sorted(self._versions.items()) if v != mine]

    # -- helpers -----------------------------------------------------------------------
    def _parse(self, key: str, raw: object) -> dict[str, Any] | None:
        """A value of our schema, or None (missing; or bad: warned once per key)."""
        if raw is None:
            return None
        if not isinstance(raw, bytes | str) or len(raw) > MAX_VALUE:
            self._bad(key, "not a small string value")
            return None
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            self._bad(key, "not JSON")
            return None
        if not isinstance(obj, dict):
            self._bad(key, "not a JSON object")
            return None
        v = obj.get("v")
        if v != SCHEMA or isinstance(v, bool):
            self._bad(key, f"schema version {str(v)[:20]!r}, expected {SCHEMA}")
            return None
        return obj

    def _bad(self, key: str, why: str) -> None:
        if key in self._warned or len(self._warned) >= MAX_WARNED:
            return
        self._warned.add(key)
        log.warning("shared state: ignoring Redis key %s: %s (warned once per key)", key, why)

    def _reason(self, text: str | None) -> str:
        """Short, secret-free: strips our own ``shared:`` prefixes, control characters and keys."""
        s = text or ""
        while s.startswith("shared: "):
            s = s[8:]
        s = "".join(c if c.isprintable() else " " for c in s[: MAX_REASON * 2])
        s = redact(s, self._secrets)
        return s if len(s) <= MAX_REASON else s[: MAX_REASON - 1] + "…"

    def _on_transition(self, t: Transition) -> None:
        """A local breaker opened or a cooldown began: push it now, not next period.
        Called from whatever thread saw it; only schedules, never blocks."""
        if t.new not in ("open", "cooling"):
            return
        if self._merging and threading.get_ident() == self._thread:
            return  # our own merge adopting a remote fact
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed: we are shutting down
            loop.call_soon_threadsafe(self._wake_up)

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _succeeded(self) -> None:
        if self._ok is False:
            log.info("shared state: Redis at %s is reachable again; shared health resumed", self._url_safe)
            # A restarted Redis has lost our facts: publish the ones still running.
            self._pushed_eject.clear()
            self._pushed_cool.clear()
        self._ok = True
        self._last_ok = round(time.time(), 3)

    def _failed(self, error: str, *, level: int = logging.WARNING) -> None:
        error = redact(error, self._secrets)[:300]
        self._last_error = error
        self._last_error_at = round(time.time(), 3)
        self.failed_rounds += 1
        self._drop_remote_inflight()
        if self._limits is not None:
            self._limits.failed(self.mc.clock(), self._asks)
        self._asks = []
        if self._ok is not False:
            log.log(
                level,
                "shared state: Redis at %s unavailable (%s); this replica routes on its local health until it is back",
                self._url_safe,
                error,
            )
        self._ok = False

    def _drop_remote_inflight(self) -> None:
        # Without a fresh view, other replicas' load is unknown: limits fall back to local.
        for st in self.mc.health.states:
            st.remote_inflight = 0


async def _aclose(client: Redis, limit_s: float) -> None:
    """Close a client without waiting long on a dead or stuck server."""
    with anyio.move_on_after(limit_s, shield=True):
        try:
            # aclose() since redis-py 5.0.1; close() before (the extra allows any 5.x).
            closer = getattr(client, "aclose", None) or client.close
            await closer()
        except Exception:
            log.debug("closing the Redis client failed", exc_info=True)


def _safe_url(url: str) -> tuple[str, str | None]:
    """The URL for logs and status (password masked), and the password (a secret)."""
    try:
        u = urlsplit(url)
        password = unquote(u.password) if u.password else None
        host = u.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{u.port}" if u.port else ""
        user = f"{u.username or ''}:***@" if u.password else (f"{u.username}@" if u.username else "")
        return f"{u.scheme}://{user}{host}{port}{u.path}", password
    except ValueError:
        return "<unparsable url>", None


def _slot_groups(keys: list[str]) -> list[list[int]]:
    """Indexes of ``keys`` grouped by Redis Cluster hash slot (an MGET may not span
    slots), in first-seen order."""
    from redis.crc import key_slot

    groups: dict[int, list[int]] = {}
    for k, key in enumerate(keys):
        groups.setdefault(key_slot(key.encode()), []).append(k)
    return list(groups.values())


def _remap(d: dict[int, _T], old_ids: list[str], index: dict[str, int]) -> dict[int, _T]:
    """Facts kept by endpoint index, moved to the indexes of a new catalog (by id)."""
    out: dict[int, _T] = {}
    for i, v in d.items():
        j = index.get(old_ids[i]) if i < len(old_ids) else None
        if j is not None:
            out[j] = v
    return out


def _open_json(obj: dict[str, Any]) -> str:
    """JSON text without its closing brace: the Lua script appends ``"until"``."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True)
    return text[:-1]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000.0))


def _num(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
