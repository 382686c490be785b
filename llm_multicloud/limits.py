"""Client-side capacity limits: requests- and tokens-per-minute token buckets.

Why: clouds enforce rpm/tpm per deployment (per quota domain). Learning them from
429s costs a refused request, a cooldown and a failover each time; knowing them, the
library sends only what the quota can take, so the 429s do not happen.

One :class:`Bucket` per quota domain with ``limits:`` in the catalog (endpoints of
one domain share it). It holds ``burst_s`` seconds' worth of each limit and refills
continuously at ``limit / 60`` per second (a token bucket, the shape the clouds'
quotas have). A request's token cost is *estimated* before it is sent — prompt
estimate + ``max_tokens`` (or ``limits.default_max_tokens``) — and *reserved*; when
the attempt ends it is *settled* with what was really used: the usage the server
reported, else the prompt estimate plus the tokens delivered (a stream that ended
early, broke, or was cancelled), or nothing for a refused attempt. The difference
goes back into the bucket (or, for an under-estimate, comes off it).

The router reads :meth:`Bucket.fits` and :meth:`Bucket.ready_at` (pure, ``now`` is
an argument): an endpoint whose bucket cannot take the request is skipped, and if
nothing else can serve, the plan says when it can (the executor waits for it within
the request's deadline). The executor :meth:`reserve`\\ s right before an attempt
(under a lock, so two requests cannot both take the last tokens).

**Across replicas** (``policy.state.backend: redis``): a replica's bucket is fed by
*leases* from one bucket in Redis instead of refilling by itself (see
:mod:`llm_multicloud.shared_limits`): the hot path still only touches local memory.
When Redis has been unreachable for a while the bucket refills locally at
``1 / replicas`` of the limit (the last known number of live replicas), so a fleet
of N replicas stays under the quota without Redis.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Output tokens assumed for a request that sets no max_tokens (cost and capacity).
DEFAULT_OUTPUT_TOKENS = 256


#: Levels are floats refilled in small steps and leased through decimal strings: a
#: level this close to what a request needs is enough.
EPS = 1e-3

#: Longest a bucket's refill stays frozen waiting for the server's first answer
#: after an idle spell (see :meth:`Bucket.ack`).
MAX_HOLD_S = 5.0

#: How long a request waits on a spent lease before it looks again (the shared-state
#: loop fetches one within ~20 ms of being asked).
LEASE_POLL_S = 0.025


def estimate_tokens(input_tokens: int, max_tokens: int | None) -> int:
    """What a request may consume: its prompt estimate plus its output limit."""
    return input_tokens + (max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS)


@dataclass(frozen=True, slots=True)
class Limits:
    """A quota as given in the catalog (``limits: {rpm, tpm, burst_s}``)."""

    rpm: float | None
    tpm: float | None
    burst_s: float


class Bucket:
    """The rpm and tpm buckets of one quota domain (see the module docs).

    Levels may go below zero (an under-estimate settled, or a request larger than
    the whole bucket let through when it was full): the debt is paid by the refill.
    """

    __slots__ = (
        "_lock",
        "acks",
        "at",
        "borrowed_req",
        "borrowed_tok",
        "cap_req",
        "cap_tok",
        "granted_req",
        "granted_tok",
        "headroom",
        "held_at",
        "largest",
        "leased",
        "level_req",
        "level_tok",
        "limits",
        "name",
        "on_starved",
        "rate_req",
        "rate_tok",
        "requests",
        "reserved_tok",
        "settled_tok",
        "share",
        "shared",
        "skipped",
        "waits",
    )

    def __init__(self, name: str, limits: Limits, now: float, *, headroom: float = 1.0) -> None:
        self.name = name
        self.limits = limits
        self.headroom = headroom
        self._lock = threading.Lock()
        self.share = 1.0
        #: fed by leases (shared state) instead of its own refill
        self.leased = False
        self.at = now
        self.rate_req = self.rate_tok = 0.0
        self.cap_req = self.cap_tok = math.inf
        self._rates()
        self.level_req = self.cap_req
        self.level_tok = self.cap_tok
        self.reserved_tok = 0
        self.settled_tok = 0
        self.requests = 0
        self.skipped = 0
        self.waits = 0
        # leases granted (shared state): consumed since the last round
        self.granted_req = 0.0
        self.granted_tok = 0.0
        #: shared mode: refilled locally (before the first lease, or while Redis was
        #: unreachable) and owed to the shared bucket, paid back from the next lease
        self.borrowed_req = 0.0
        self.borrowed_tok = 0.0
        self.shared = False
        #: the largest reservation asked for (a lease is never smaller than one request)
        self.largest = 0
        #: called (outside the lock) when a leased bucket refuses a reservation
        self.on_starved: Callable[[], None] | None = None
        #: refill frozen since (None: not frozen): see :meth:`ack`
        self.held_at: float | None = None
        #: answers since the last shared-state round (the shared bucket's freeze ends
        #: on one: see :mod:`llm_multicloud.shared_limits`)
        self.acks = 0

    def _rates(self) -> None:
        lim = self.limits
        s = self.share
        h = self.headroom
        if lim.rpm is not None:
            self.rate_req = lim.rpm / 60.0 * s * h
            self.cap_req = max(lim.rpm / 60.0 * lim.burst_s * s * h, 1.0)
        if lim.tpm is not None:
            self.rate_tok = lim.tpm / 60.0 * s * h
            self.cap_tok = max(lim.tpm / 60.0 * lim.burst_s * s * h, 1.0)

    # -- pure reads (the router) ------------------------------------------------------
    def _levels(self, now: float) -> tuple[float, float]:
        if self.leased:
            return self.level_req, self.level_tok
        at = self.at
        if self.held_at is not None:
            # Frozen until the server has counted the request that ended an idle spell
            # (see ack); bounded, in case no answer ever comes.
            at = max(at, self.held_at + MAX_HOLD_S)
        dt = max(now - at, 0.0)
        return (
            min(self.cap_req, self.level_req + dt * self.rate_req),
            min(self.cap_tok, self.level_tok + dt * self.rate_tok),
        )

    def fits(self, now: float, tokens: int) -> bool:
        """Can a request of ``tokens`` go now? A request larger than the whole bucket
        fits when the bucket is full (it would never fit otherwise).

        Remembers the largest request asked about: a leased bucket asks the shared
        bucket for at least that much, or a replica whose share of a round's refill is
        smaller than one request would wait for ever (the router skips the endpoint,
        so such a request never reaches :meth:`reserve`)."""
        if tokens > self.largest:
            self.largest = tokens  # a hint for the next lease; a lost race only delays it
        r, t = self._levels(now)
        return r + EPS >= min(1.0, self.cap_req) and t + EPS >= min(float(tokens), self.cap_tok)

    def ready_at(self, now: float, tokens: int) -> float:
        """When the request fits: at the current refill rate; leased, at the next lease."""
        r, t = self._levels(now)
        need_r = min(1.0, self.cap_req) - r
        need_t = min(float(tokens), self.cap_tok) - t
        wait = 0.0
        for need, rate in ((need_r, self.rate_req), (need_t, self.rate_tok)):
            if need > 0:
                wait = max(wait, need / (rate or 1e-9))
        if self.leased and wait > 0:
            # Leased: room comes with the next lease, which a starved bucket asks for at
            # once, not at this replica's share of the refill rate.
            wait = min(wait, LEASE_POLL_S)
        return now + wait

    def describe(self, now: float, tokens: int) -> str:
        r, t = self._levels(now)
        parts = []
        if self.limits.rpm is not None:
            parts.append(f"{max(r, 0.0):.1f} of {self.limits.rpm:g} rpm left")
        if self.limits.tpm is not None:
            parts.append(f"{max(t, 0.0):.0f} tokens of {self.limits.tpm:g} tpm left, ~{tokens} needed")
        wait = self.ready_at(now, tokens) - now
        return f"{', '.join(parts)}; room in {wait:.2f}s ({self.name})"

    # -- reservations (the executor) -------------------------------------------------------
    def reserve(self, now: float, tokens: int) -> bool:
        """Take one request and ``tokens`` if they fit (atomic); False: skip this endpoint."""
        starved = None
        with self._lock:
            self._refill(now)
            self.largest = max(self.largest, tokens)
            ok = self.level_req + EPS >= min(1.0, self.cap_req) and self.level_tok + EPS >= min(
                float(tokens), self.cap_tok
            )
            if ok:
                if self.held_at is None and not self.leased and self._full():
                    self.held_at = now
                if self.limits.rpm is not None:
                    self.level_req -= 1.0
                    self.granted_req += 1.0
                if self.limits.tpm is not None:
                    self.level_tok -= tokens
                    self.granted_tok += tokens
                self.reserved_tok += tokens
                self.requests += 1
            else:
                self.skipped += 1
                starved = self.on_starved if self.leased else None
        if starved is not None:
            starved()  # the shared-state loop fetches a lease now, not next period
        return ok

    def _full(self) -> bool:
        """(Nearly) full: the server's bucket is full too and its refill goes to waste."""
        h = self.headroom
        return (self.limits.rpm is not None and self.level_req >= self.cap_req * h) or (
            self.limits.tpm is not None and self.level_tok >= self.cap_tok * h
        )

    def ack(self, now: float) -> None:
        """The server answered an attempt (its status line arrived): it has counted it.

        Why: after an idle spell both buckets are full and waste their refill. The
        client's next reservations drain its bucket *now*; the server's drains only
        when those requests arrive — on a cold start (new connections, a busy
        machine) that is up to seconds later. Refilling the client from the
        reservation would run ahead of the server by that lag and meet 429s. So a
        reservation taken from a full bucket freezes the refill, and the first answer
        (which arrives after its request did) restarts it from then. Never frozen
        longer than ``MAX_HOLD_S``: an endpoint that answers nothing must not hold
        its bucket empty for ever."""
        with self._lock:
            self.acks += 1
            if self.held_at is not None:
                self._refill(now)
                self.held_at = None
                self.at = max(self.at, now)

    def settle(self, reserved: int, used: int, *, refund_request: bool = False) -> None:
        """An attempt ended: it used ``used`` tokens of the ``reserved`` ones. The
        difference goes back (or, if it used more, comes off). ``refund_request``: the
        attempt was refused before the server counted it."""
        with self._lock:
            self.reserved_tok -= reserved
            self.settled_tok += used
            if self.limits.tpm is not None:
                self.level_tok += reserved - used
                self.granted_tok -= reserved - used
            if refund_request and self.limits.rpm is not None:
                self.level_req += 1.0
                self.granted_req -= 1.0

    def _refill(self, now: float) -> None:
        if self.held_at is not None and now - self.held_at >= MAX_HOLD_S:
            self.at = max(self.at, self.held_at + MAX_HOLD_S)
            self.held_at = None  # no answer within the bound: refill from it
        if not self.leased:
            r, t = self._levels(now)
            if self.shared:
                self.borrowed_req += max(r - self.level_req, 0.0)
                self.borrowed_tok += max(t - self.level_tok, 0.0)
            self.level_req, self.level_tok = r, t
        self.at = max(self.at, now)

    # -- shared state -------------------------------------------------------------------
    def set_share(self, share: float, now: float) -> None:
        """Refill locally at ``share`` of the limit (1 / live replicas without Redis)."""
        with self._lock:
            self._refill(now)
            self.leased = False
            if share != self.share:
                self.share = share
                self._rates()
                self.level_req = min(self.level_req, self.cap_req)
                self.level_tok = min(self.level_tok, self.cap_tok)

    def start_empty(self, now: float) -> None:
        """Shared mode, before the first lease: empty and fed by leases only. It does
        not refill by itself until the shared state gives up on Redis (see
        :mod:`llm_multicloud.shared_limits`): replicas that start together, before
        they have seen each other, would otherwise each take the whole quota."""
        with self._lock:
            self.leased = True
            self.shared = True
            self.at = now
            self.level_req = 0.0 if self.limits.rpm is not None else self.cap_req
            self.level_tok = 0.0 if self.limits.tpm is not None else self.cap_tok

    def take_borrowed(self, now: float) -> tuple[float, float]:
        """What was refilled locally since the last lease (owed to the shared bucket)."""
        with self._lock:
            self._refill(now)
            r, t = self.borrowed_req, self.borrowed_tok
            self.borrowed_req = self.borrowed_tok = 0.0
            return r, t

    def give_back_borrowed(self, requests: float, tokens: float) -> None:
        """A round failed: the debt stays owed."""
        with self._lock:
            self.borrowed_req += requests
            self.borrowed_tok += tokens

    def lease(self, requests: float, tokens: float, share: float) -> None:
        """Credit a grant from the shared bucket (negative: what was given back, or a
        debt paid). While leased the bucket does not refill by itself; ``share``
        (1 / live replicas) is what :meth:`ready_at` expects to be granted per second."""
        with self._lock:
            self._refill(self.at)
            self.leased = True
            if share != self.share:
                self.share = share
                self._rates()
            if self.limits.rpm is not None:
                self.level_req += requests
            if self.limits.tpm is not None:
                self.level_tok += tokens

    def take_acks(self) -> int:
        """Answers since the last call (shared mode: one ends the shared bucket's freeze)."""
        with self._lock:
            n, self.acks = self.acks, 0
            return n

    def take_usage(self) -> tuple[float, float]:
        """What this replica consumed since the last call (requests, tokens): the
        amounts a shared-state round charges to the Redis bucket."""
        with self._lock:
            r, t = self.granted_req, self.granted_tok
            self.granted_req = self.granted_tok = 0.0
            return r, t

    def to_dict(self, now: float) -> dict[str, Any]:
        r, t = self._levels(now)
        lim = self.limits
        return {
            "quota_domain": self.name,
            "rpm": lim.rpm,
            "tpm": lim.tpm,
            "burst_s": lim.burst_s,
            "mode": "shared" if self.leased else ("local" if self.share == 1.0 else f"local 1/{round(1 / self.share)}"),
            "remaining_requests": None if lim.rpm is None else round(r, 3),
            "remaining_tokens": None if lim.tpm is None else round(t, 1),
            "reserved_tokens": self.reserved_tok,
            "settled_tokens": self.settled_tok,
            "requests": self.requests,
            "skipped": self.skipped,
        }
