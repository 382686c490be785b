"""Retry and hedge budgets: a cap on *extra* requests as a share of real ones.

After Finagle's ``RetryBudget`` (and tower's ``retry::budget``): every request
deposits ``ratio`` tokens, every retry (or hedge) withdraws one, and a floor of
``min_per_s`` retries per second is always allowed, so that a client with little
traffic can still retry. Deposits expire after ``window_s``, which bounds how much
"credit" a quiet period can build up: during a wide outage retries add at most
``ratio`` × recent traffic, instead of multiplying load on whoever is still up.

The clock is injected (a callable returning seconds), so tests drive time
explicitly.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class Budget:
    """A token bucket over a sliding window. Thread-safe; O(1) amortised."""

    __slots__ = ("_clock", "_deposits", "_lock", "_withdrawals", "min_per_s", "ratio", "window_s")

    def __init__(self, ratio: float, *, min_per_s: float, window_s: float, clock: Callable[[], float]) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._clock = clock
        self._deposits: deque[float] = deque()
        self._withdrawals: deque[float] = deque()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_s
        for q in (self._deposits, self._withdrawals):
            while q and q[0] < cutoff:
                q.popleft()

    def deposit(self) -> None:
        """Count one real request."""
        now = self._clock()
        with self._lock:
            self._deposits.append(now)
            if len(self._deposits) > 4096:
                self._expire(now)

    def balance(self) -> float:
        """Extra requests allowed right now."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            return self._balance()

    def _balance(self) -> float:
        return self.min_per_s * self.window_s + self.ratio * len(self._deposits) - len(self._withdrawals)

    def try_withdraw(self) -> bool:
        """Take one extra request from the budget; False when it is spent."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            if self._balance() < 1.0:
                return False
            self._withdrawals.append(now)
            return True
