"""Retry/hedge budget: a floor per second plus a ratio of recent requests, over a window."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_multicloud.budget import Budget


def _drain(b: Budget) -> int:
    n = 0
    while b.try_withdraw():
        n += 1
        assert n < 10_000, "budget never runs out"
    return n


def test_floor_allows_min_per_s_times_window(clock: Any) -> None:
    b = Budget(0.0, min_per_s=2.0, window_s=5.0, clock=clock)
    assert b.balance() == 10.0
    assert _drain(b) == 10  # 2/s over 5 s, and not one more
    assert not b.try_withdraw()
    assert b.balance() == 0.0


def test_ratio_of_deposits(clock: Any) -> None:
    b = Budget(0.2, min_per_s=0.0, window_s=10.0, clock=clock)
    assert not b.try_withdraw()  # no traffic, no floor: no retries
    for _ in range(10):
        b.deposit()
    assert b.balance() == pytest.approx(2.0)
    assert _drain(b) == 2  # 20% of 10 requests
    for _ in range(5):
        b.deposit()
    assert _drain(b) == 1  # 20% of 15 = 3 in total, 2 already spent


def test_floor_and_ratio_add_up(clock: Any) -> None:
    b = Budget(0.5, min_per_s=1.0, window_s=3.0, clock=clock)
    for _ in range(4):
        b.deposit()
    assert _drain(b) == 3 + 2


def test_fractional_balance_below_one_refuses(clock: Any) -> None:
    b = Budget(0.1, min_per_s=0.0, window_s=10.0, clock=clock)
    for _ in range(9):
        b.deposit()
    assert b.balance() == pytest.approx(0.9)
    assert not b.try_withdraw()
    b.deposit()
    assert b.try_withdraw()


def test_withdrawals_expire_after_the_window(clock: Any) -> None:
    b = Budget(0.0, min_per_s=1.0, window_s=10.0, clock=clock)
    assert _drain(b) == 10
    clock.advance(5.0)
    assert not b.try_withdraw()  # still inside the window
    clock.advance(5.5)
    assert _drain(b) == 10  # the old withdrawals left the window


def test_deposits_expire_after_the_window(clock: Any) -> None:
    b = Budget(1.0, min_per_s=0.0, window_s=10.0, clock=clock)
    for _ in range(100):
        b.deposit()
    clock.advance(10.5)  # a quiet period does not bank credit
    assert b.balance() == 0.0
    assert not b.try_withdraw()


def test_sliding_window_partial_expiry(clock: Any) -> None:
    b = Budget(1.0, min_per_s=0.0, window_s=10.0, clock=clock)
    for _ in range(3):
        b.deposit()
    clock.advance(6.0)
    for _ in range(2):
        b.deposit()
    assert b.balance() == 5.0
    clock.advance(5.0)  # the first 3 deposits are 11 s old, the last 2 only 5 s
    assert b.balance() == 2.0


def test_many_deposits_stay_bounded_in_memory(clock: Any) -> None:
    b = Budget(0.1, min_per_s=0.0, window_s=1.0, clock=clock)
    for _ in range(10_000):
        b.deposit()
        clock.advance(0.01)
    assert len(b._deposits) <= 4097 + 100


_ops = st.lists(
    st.one_of(
        st.just(("deposit", 0.0)),
        st.just(("withdraw", 0.0)),
        st.tuples(st.just("advance"), st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0])),
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None, database=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, 2.0]),
    min_per_s=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    window_s=st.sampled_from([1.0, 2.0, 5.0, 10.0]),
    ops=_ops,
)
def test_withdrawals_never_exceed_floor_plus_ratio_within_a_window(
    ratio: float, min_per_s: float, window_s: float, ops: list[tuple[str, float]]
) -> None:
    now = [0.0]
    b = Budget(ratio, min_per_s=min_per_s, window_s=window_s, clock=lambda: now[0])
    deposits: list[float] = []
    withdrawals: list[float] = []
    refused_with_credit = 0
    for op, dt in ops:
        if op == "deposit":
            b.deposit()
            deposits.append(now[0])
        elif op == "withdraw":
            if b.try_withdraw():
                withdrawals.append(now[0])
                t = now[0]
                # every window that ends at a withdrawal (the worst windows)
                w = sum(1 for x in withdrawals if t - window_s <= x <= t)
                d = sum(1 for x in deposits if t - window_s <= x <= t)
                assert w <= min_per_s * window_s + ratio * d + 1e-9
            else:
                t = now[0]
                w = sum(1 for x in withdrawals if t - window_s <= x <= t)
                d = sum(1 for x in deposits if t - window_s <= x <= t)
                # refused only when the allowance is really spent (no over-refusal)
                if w + 1 <= min_per_s * window_s + ratio * d - 1e-9:
                    refused_with_credit += 1
        else:
            now[0] += dt
    assert refused_with_credit == 0
