"""Rendezvous (highest-random-weight) hashing, for session and prefix affinity.

Why rendezvous (Thaler & Ravishankar, 1996) rather than a hash ring: every client
computes the same choice from the key and the candidate ids alone — no shared
table, no coordination between app replicas — and when a candidate leaves the set
only the keys that were on it move (each to its own next choice), spread over the
others; keys elsewhere stay put. With a ring, a departure moves a whole arc onto
one neighbour.

``score(key, id)`` is a 64-bit mix of the key's hash and the candidate's hash; the
highest score wins. Weighted candidates use the logarithmic method
(``-w / ln(u)``, Schindelhauer & Schomaker 2005), so a candidate with twice the
weight gets twice the keys and a weight change moves the least possible.

Pure and deterministic (no process-random ``hash()``): two processes, two hosts and
two versions of the library agree on every choice.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TypeVar

T = TypeVar("T")

_M64 = (1 << 64) - 1


def key_hash(key: str | bytes) -> int:
    """A stable 64-bit hash of a session key (blake2b; never Python's seeded ``hash``)."""
    data = key.encode() if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@lru_cache(maxsize=65536)
def id_hash(candidate_id: str) -> int:
    """The 64-bit hash of a candidate id (memoised: ids are few and static)."""
    return key_hash(b"hrw:" + candidate_id.encode())


def _mix(x: int) -> int:
    """splitmix64's finaliser: a bijective avalanche of 64 bits."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _M64
    return x ^ (x >> 31)


def score(kh: int, candidate_id: str, weight: float = 1.0) -> float:
    """The rendezvous weight of one candidate for a key hash ``kh``: highest wins."""
    h = _mix(kh ^ id_hash(candidate_id))
    u = (h + 1) / 18446744073709551617.0  # in (0, 1)
    return -weight / math.log(u)


def rank(kh: int, items: Sequence[T], ident: Callable[[T], str], weight: Callable[[T], float] | None = None) -> list[T]:
    """``items`` ordered by rendezvous score for the key, best first. The first is the
    key's pin; the rest, in order, are where it goes when those before it leave."""
    if weight is None:
        return sorted(items, key=lambda it: -_mix(kh ^ id_hash(ident(it))))
    w = weight
    return sorted(items, key=lambda it: -score(kh, ident(it), w(it)))


def uniform_weights(weights: Sequence[float]) -> bool:
    """All weights equal (the fast, unweighted score applies)."""
    return not weights or all(x == weights[0] for x in weights)
