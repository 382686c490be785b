"""Capacity limits shared across app replicas: one bucket per quota domain in Redis,
handed out to the replicas as *leases*.

Why leases: the hot path must never wait for Redis, yet N replicas must together
stay under one quota. So each replica's local :class:`~llm_multicloud.limits.Bucket`
stops refilling by itself and is fed instead by grants from the shared bucket, taken
in the background by :class:`~llm_multicloud.shared.SharedState`'s round: a request
only ever touches local memory. Each round, per quota domain, one Lua script on one
key (so it is atomic, and on Redis Cluster it stays in one slot — the key carries
the hash tag ``{...}``):

* refills the shared bucket on the Redis server's clock (``TIME``: no clock skew
  between replica hosts), capped at ``burst_s`` of the limit — except while frozen
  after a cold start: capacity spent from a full bucket freezes the refill until a
  replica reports an endpoint's answer (at most ``MAX_HOLD_S``), as the local bucket
  does (:meth:`~llm_multicloud.limits.Bucket.ack`; the server counts a burst only
  when it arrives);
* returns what this replica holds beyond its target (a negative want), and grants
  what it asks for up to what the bucket has;
* answers the grant and the bucket's level.

A replica's *target* is two refresh periods of the larger of its fair share of the
limit (split by the live replicas) and twice its recent rate of use, capped at two
periods of the whole limit: a busy replica gets more, an idle one holds little; and
never less than the largest request the router asked the bucket to fit. A
request that finds the local lease spent wakes the round at once (never faster
than every 20 ms), so a saturated replica asks as often as it needs.

**Redis slow or unreachable**: a bucket keeps spending the leases it holds (each
was granted from the shared level, so spending it never overruns the quota) and
gets nothing new; requests wait for capacity within their deadlines. Only once no
lease has come for ``fallback_s`` (the heartbeat TTL: when the other replicas stop
counting this one's leases) does it refill itself at ``1 / replicas`` of the limit —
the last number of live replicas seen, or ``state.expected_replicas`` if this
replica never reached Redis — and what it refills so is *owed*: asked for on top of
the next lease, so the shared level pays for it once Redis is back. A bucket starts
*empty* and leased (no refill of its own), and a new shared bucket in Redis starts
empty too: Redis cannot know how much of the real quota is left (a restarted Redis,
an expired key); the cost is one burst at a fleet's very first start.

Why not refill locally at once on a failed round: that overran quotas (the
4-replica test saw 22 of 212 requests answered 429 on a loaded machine, and a
replica whose first round had not completed took the whole limit; reproduced by
starting 4 replicas while Redis is stalled: 76 of 198 answered 429, 19 requests
failed). Spending a held lease is always safe; inventing new capacity is not.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .limits import MAX_HOLD_S

if TYPE_CHECKING:
    from .limits import Bucket

#: KEYS[1]: the bucket, a hash: ``r``/``t`` (the shared level), ``at`` (ms, Redis clock),
#: ``f`` ("1": the fleet's capacity — the level plus what live replicas hold — was
#: (nearly) full at the last round), ``hold`` (ms: refill frozen since, see below) and
#: ``h:<replica>`` = "requests,tokens,at" that each replica holds in leases. ARGV:
#: rate_r, cap_r, rate_t, cap_t (per ms / absolute; 0 = no such limit), want_r,
#: want_t (negative: give back), ttl ms, replica id, held_r, held_t (what this replica
#: holds now), live ms (a replica silent longer holds nothing), full (the share of the
#: capacity that counts as full), used ("1": this replica reserved since its last
#: round), acked ("1": an endpoint answered one of its attempts since then), max hold
#: ms. The level refills only up to the capacity minus what the live replicas hold, so
#: leases sitting in replicas never add to the burst.
#:
#: The cold-start freeze (as the local bucket's, :meth:`~llm_multicloud.limits.Bucket.ack`):
#: a replica that used capacity taken from a full fleet bucket starts a hold — the
#: server's bucket was full too and counts those requests only when they arrive, up to
#: seconds later on a cold start — and the level does not refill until a replica
#: reports an answer (the server has counted by then), at most max hold ms.
#: Returns {granted_r, granted_t, level_r, level_t} as strings (Lua numbers would be cut
#: to integers).
LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rr, cr = tonumber(ARGV[1]), tonumber(ARGV[2])
local rt, ct = tonumber(ARGV[3]), tonumber(ARGV[4])
local wr, wt = tonumber(ARGV[5]), tonumber(ARGV[6])
local me, mr, mt = 'h:' .. ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local live = tonumber(ARGV[11])
local full_share = tonumber(ARGV[12])
local used, acked = ARGV[13] == '1', ARGV[14] == '1'
local max_hold = tonumber(ARGV[15])
local lr, lt, at, hold
local was_full = false
local hr, ht = mr, mt
local kv = redis.call('HGETALL', KEYS[1])
for i = 1, #kv, 2 do
  local k, v = kv[i], kv[i + 1]
  if k == 'r' then lr = tonumber(v)
  elseif k == 't' then lt = tonumber(v)
  elseif k == 'at' then at = tonumber(v)
  elseif k == 'hold' then hold = tonumber(v)
  elseif k == 'f' then was_full = v == '1'
  elseif k ~= me and string.sub(k, 1, 2) == 'h:' then
    local a, b, c = string.match(v, '^([^,]+),([^,]+),([^,]+)$')
    a, b, c = tonumber(a), tonumber(b), tonumber(c)
    if a and b and c and now - c <= live then
      hr = hr + a
      ht = ht + b
    else
      redis.call('HDEL', KEYS[1], k)
    end
  end
end
if lr == nil then lr = 0 end
if lt == nil then lt = 0 end
at = at or now
local from = at
if hold == nil and was_full and used then
  if acked then
    from = now
  else
    hold = now
  end
end
if hold ~= nil then
  if acked then
    from = math.max(at, now)
    hold = nil
  elseif now - hold >= max_hold then
    from = math.max(at, hold + max_hold)
    hold = nil
  else
    from = now
  end
end
local dt = now - from
if dt < 0 then dt = 0 end
lr = math.min(cr - hr, lr + dt * rr)
lt = math.min(ct - ht, lt + dt * rt)
local full = (rr > 0 and lr + hr >= cr * full_share - 0.01) or (rt > 0 and lt + ht >= ct * full_share - 0.01)
local function grant(want, level)
  if want <= 0 then return want end
  return math.max(math.min(want, level), 0)
end
local gr = grant(wr, lr)
local gt = grant(wt, lt)
lr = lr - gr
lt = lt - gt
redis.call('HSET', KEYS[1], 'r', string.format('%.6f', lr), 't', string.format('%.6f', lt),
           'at', string.format('%.3f', now), 'f', full and '1' or '0',
           me, string.format('%.6f,%.6f,%.3f', math.max(mr + gr, 0), math.max(mt + gt, 0), now))
if hold ~= nil then
  redis.call('HSET', KEYS[1], 'hold', string.format('%.3f', hold))
else
  redis.call('HDEL', KEYS[1], 'hold')
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return {string.format('%.6f', gr), string.format('%.6f', gt), string.format('%.6f', lr), string.format('%.6f', lt)}
"""


def domain_tag(name: str) -> str:
    """The Redis Cluster hash tag of a quota domain's keys: ``{d:<name>}``."""
    return "{d:" + name + "}"


#: Asked on top of each want: grants travel as decimal strings, and a lease that ends a
#: hair below one request would never grow to it.
WANT_SLACK = 0.01

#: The least time between two rounds woken by a spent lease.
MIN_WAKE_S = 0.02


@dataclass(slots=True)
class _Ask:
    bucket: Bucket
    key: str
    want_req: float
    want_tok: float
    #: refilled locally since the last lease: asked for on top, and kept by Redis
    owed_req: float = 0.0
    owed_tok: float = 0.0
    #: reserved since the last round / an endpoint answered since (the cold-start freeze)
    used: bool = False
    acked: bool = False


class SharedLimits:
    """The lease side of one SharedState round (see the module docs)."""

    def __init__(
        self,
        buckets: Callable[[], dict[str, Bucket]],
        prefix: str,
        refresh_s: float,
        now: float,
        *,
        replica: str,
        live_s: float,
        on_starved: Callable[[], None],
        expected_replicas: int = 1,
    ) -> None:
        #: the current buckets (a catalog update may replace them)
        self._buckets = buckets
        self._prefix = prefix
        self._on_starved = on_starved
        self._known: dict[str, Bucket] = {}
        self._asked: dict[str, float] = {}
        self.refresh_s = refresh_s
        self.replica = replica
        self.live_ms = int(live_s * 1000)
        #: how long without a lease before a bucket refills itself (see :meth:`failed`)
        self.fallback_s = live_s
        #: per quota domain: the last lease (or, before the first, when it was adopted)
        self._ok_at: dict[str, float] = {}
        #: live replicas: as last seen in Redis, or as expected before that
        self.replicas = max(expected_replicas, 1)
        self.ok = False
        self.rounds = 0
        self._adopt(now)

    def _adopt(self, now: float) -> dict[str, Bucket]:
        """Buckets not seen before start empty (shared mode) and wake the loop when dry."""
        current = self._buckets()
        for name, b in current.items():
            if self._known.get(name) is not b:
                b.start_empty(now)
                self._ok_at[name] = now
                b.on_starved = self._on_starved
        self._known = dict(current)
        return current

    def key(self, name: str) -> str:
        # The quota domain's hash tag: one slot with its cooldown and its endpoints'
        # ejections on Redis Cluster.
        return f"{self._prefix}:{domain_tag(name)}:bucket"

    def asks(self, replicas: int, now: float) -> list[_Ask]:
        """What to ask of (or give back to) each shared bucket this round. What a
        bucket refilled by itself (before its first lease, or while Redis was
        unreachable) is owed: asked for on top, so the shared level pays for it."""
        if replicas > 0:  # 0: not seen yet (no round has succeeded)
            self.replicas = replicas
        out = []
        horizon = 2.0 * self.refresh_s
        for name, b in self._adopt(now).items():
            used_r, used_t = b.take_usage()
            owed_r, owed_t = b.take_borrowed(now)
            lim = b.limits
            wr = wt = 0.0
            # Demand: what it used per second since its last ask, over the next horizon.
            last = self._asked.get(name)
            dt = max(now - last, 1e-3) if last is not None else horizon
            self._asked[name] = now
            if lim.rpm is not None:
                rate = lim.rpm / 60.0 * b.headroom
                target = min(max(rate / self.replicas, 2.0 * used_r / dt) * horizon, rate * horizon)
                wr = max(target, 1.0) - b.level_req + owed_r + WANT_SLACK
            if lim.tpm is not None:
                rate = lim.tpm / 60.0 * b.headroom
                target = min(max(rate / self.replicas, 2.0 * used_t / dt) * horizon, rate * horizon)
                wt = max(target, float(b.largest)) - b.level_tok + owed_t + WANT_SLACK
            used = used_r > 0 or used_t > 0
            out.append(_Ask(b, self.key(name), wr, wt, owed_r, owed_t, used, b.take_acks() > 0))
        return out

    def args(self, ask: _Ask) -> list[str]:
        b = ask.bucket
        lim = b.limits
        rr = 0.0 if lim.rpm is None else lim.rpm / 60_000.0 * b.headroom
        rt = 0.0 if lim.tpm is None else lim.tpm / 60_000.0 * b.headroom
        cr = 0.0 if lim.rpm is None else max(lim.rpm / 60.0 * lim.burst_s * b.headroom, 1.0)
        ct = 0.0 if lim.tpm is None else max(lim.tpm / 60.0 * lim.burst_s * b.headroom, 1.0)
        ttl = int(max(lim.burst_s * 4.0, 120.0) * 1000)
        return [
            f"{rr:.9f}",
            f"{cr:.3f}",
            f"{rt:.9f}",
            f"{ct:.3f}",
            f"{ask.want_req:.3f}",
            f"{ask.want_tok:.3f}",
            str(ttl),
            self.replica,
            f"{max(b.level_req, 0.0) if lim.rpm is not None else 0.0:.3f}",
            f"{max(b.level_tok, 0.0) if lim.tpm is not None else 0.0:.3f}",
            str(self.live_ms),
            f"{b.headroom:.4f}",
            "1" if ask.used else "0",
            "1" if ask.acked else "0",
            str(int(MAX_HOLD_S * 1000)),
        ]

    def merge(self, asks: list[_Ask], results: list[Any], now: float) -> None:
        """Credit the grants. A script that failed is a failed round for its bucket:
        what it would have paid back stays owed (see :meth:`failed`)."""
        share = 1.0 / self.replicas
        for ask, res in zip(asks, results, strict=True):
            gr = gt = math.nan
            if isinstance(res, list) and len(res) == 4:
                with contextlib.suppress(TypeError, ValueError):
                    gr, gt = float(res[0]), float(res[1])
            if not (math.isfinite(gr) and math.isfinite(gt)):
                ask.bucket.give_back_borrowed(ask.owed_req, ask.owed_tok)
                self._fall_back(ask.bucket, now)
                continue
            ask.bucket.lease(gr - ask.owed_req, gt - ask.owed_tok, share)
            self._ok_at[ask.bucket.name] = now
        self.ok = True
        self.rounds += 1

    def failed(self, now: float, asks: list[_Ask] | None = None) -> None:
        """A round failed (Redis down, slow, refusing). What it would have paid back
        stays owed. Buckets keep spending the leases they hold (each was granted from
        the shared level: spending it can never overrun the quota) and get nothing
        new; only once no lease has come for ``fallback_s`` (the time after which the
        other replicas stop counting this one's leases) does a bucket refill itself,
        at 1 / replicas of the limit. Refilling at once, on every failed round, is
        what overran quotas: each replica then took its share *and* Redis kept
        refilling the same seconds of quota for the leases that followed, and a
        replica that had not yet seen the others took the whole limit."""
        self.ok = False
        for ask in asks or []:
            ask.bucket.give_back_borrowed(ask.owed_req, ask.owed_tok)
        for b in self._buckets().values():
            self._fall_back(b, now)

    def _fall_back(self, b: Bucket, now: float) -> None:
        since = self._ok_at.setdefault(b.name, now)
        if now - since >= self.fallback_s:
            b.set_share(1.0 / max(self.replicas, 1), now)
