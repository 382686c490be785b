"""What a real deployment's capacity does to requests, simulated: a prompt-prefix
cache (time to first token and ``cached_tokens`` depend on whether this region saw
the prompt's leading messages recently) and rpm/tpm quotas answered with 429.

Both are per region, touched only from the fleet's event loop, and read the
monotonic clock given to them, so tests can reason about them exactly.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from .spec import PrefixCache, RateLimits


class PrefixCacheSim:
    """Cumulative hashes of each request's leading messages, LRU with a TTL.

    An entry stands for the KV cache of one message given everything before it (the
    hash of messages ``0..k``), so it costs that message's tokens: a GPU's prefix cache
    (vLLM's automatic prefix caching) holds KV blocks, and an 800-token context
    document fills it as much as 800 one-token questions. ``kv_tokens`` bounds the
    tokens held (``max_entries`` the entries); the least recently used entries go
    first. A request touches its entries from the last message back to the first, so
    that of one prompt the deepest entries are the older ones: a prefix is evicted
    from its tail, never from its head (vLLM's rule: among blocks last used together,
    the end of the longest prefix goes first). Evicting a head first would keep its
    tail's tokens in the cache although a lookup, which stops at the first miss,
    could never reach them.
    """

    def __init__(self, spec: PrefixCache, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        #: digest -> (last use, tokens it holds), least recently used first
        self._seen: OrderedDict[bytes, tuple[float, int]] = OrderedDict()
        #: when each prefill lane is free again (monotonic); None: unlimited
        self._lanes: list[float] | None = None if spec.prefill_lanes is None else [0.0] * spec.prefill_lanes
        self.tokens = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.evicted_tokens = 0

    def admit(self, texts: Sequence[str], tokens: Sequence[int]) -> int:
        """Look the prompt up and remember it; returns the cached prompt tokens (the
        longest run of leading messages seen within the TTL and still held)."""
        now = self._clock()
        ttl = self.spec.ttl_s
        seen = self._seen
        h = hashlib.blake2b(digest_size=16)
        cached = 0
        hit = True
        chain: list[tuple[bytes, int]] = []
        for text, n in zip(texts, tokens, strict=True):
            h.update(text.encode("utf-8", "replace") + b"\x1e")
            d = h.digest()
            if hit:
                entry = seen.get(d)
                if entry is not None and now - entry[0] <= ttl:
                    cached += n
                else:
                    hit = False
            chain.append((d, n))
        for d, n in reversed(chain):  # the head of the prompt ends most recently used
            old = seen.pop(d, None)
            if old is not None:
                self.tokens -= old[1]
            seen[d] = (now, n)
            self.tokens += n
        kv = self.spec.kv_tokens
        while len(seen) > self.spec.max_entries or (kv is not None and self.tokens > kv):
            _, (_, n) = seen.popitem(last=False)
            self.tokens -= n
            self.evictions += 1
            self.evicted_tokens += n
        if cached:
            self.hits += 1
        else:
            self.misses += 1
        return cached

    def state(self) -> dict[str, int | None]:
        """Counters for the fleet's ``state()``: what is held and what was evicted."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "entries": len(self._seen),
            "tokens": self.tokens,
            "kv_tokens": self.spec.kv_tokens,
            "evictions": self.evictions,
            "evicted_tokens": self.evicted_tokens,
        }

    def prefill_s(self, uncached_tokens: int) -> float:
        """Seconds from now until this request's prefill is done. With
        ``prefill_lanes`` the region prefills that many prompts at once (a GPU's
        compute is shared: a burst of uncached prompts queues, as on a real server);
        a request is scheduled on the lane that frees first."""
        work = uncached_tokens * self.spec.prefill_ms_per_token / 1000.0
        if self._lanes is None:
            return work
        now = self._clock()
        i = min(range(len(self._lanes)), key=self._lanes.__getitem__)
        done = max(self._lanes[i], now) + work
        self._lanes[i] = done
        return done - now

    def clear(self) -> None:
        self._seen.clear()
        if self._lanes is not None:
            self._lanes = [0.0] * len(self._lanes)
        self.tokens = self.hits = self.misses = self.evictions = self.evicted_tokens = 0


class _Bucket:
    __slots__ = ("at", "capacity", "level", "rate")

    def __init__(self, per_minute: float, burst_s: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate * burst_s, 1.0)
        self.level = self.capacity
        self.at = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0: now); inf if it never fits."""
        if amount > self.capacity:
            return math.inf
        return max(amount - self.level, 0.0) / self.rate


class RateLimiterSim:
    """rpm and tpm token buckets; a request is admitted only if both have room."""

    def __init__(self, spec: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        now = clock()
        self._rpm = _Bucket(spec.rpm, spec.burst_s, now) if spec.rpm else None
        self._tpm = _Bucket(spec.tpm, spec.burst_s, now) if spec.tpm else None
        self.admitted = 0
        self.limited = 0
        self.tokens = 0

    def take(self, tokens: int) -> float | None:
        """Admit a request of ``tokens`` (None) or say how many seconds to wait."""
        now = self._clock()
        wait = 0.0
        for b, amount in ((self._rpm, 1.0), (self._tpm, float(tokens))):
            if b is not None:
                b.refill(now)
                wait = max(wait, b.wait_for(amount))
        if wait > 0:
            self.limited += 1
            return wait
        if self._rpm is not None:
            self._rpm.level -= 1.0
        if self._tpm is not None:
            self._tpm.level -= tokens
        self.admitted += 1
        self.tokens += tokens
        return None

    def state(self) -> dict[str, float | int | None]:
        now = self._clock()
        for b in (self._rpm, self._tpm):
            if b is not None:
                b.refill(now)
        return {
            "admitted": self.admitted,
            "limited": self.limited,
            "tokens": self.tokens,
            "requests_left": None if self._rpm is None else round(self._rpm.level, 3),
            "tokens_left": None if self._tpm is None else round(self._tpm.level, 3),
        }
