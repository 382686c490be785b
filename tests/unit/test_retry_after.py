"""parse_retry_after: Retry-After (seconds or HTTP date), retry-after-ms, x-ms-retry-after-ms."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from llm_multicloud.executor import parse_retry_after

NOW_WALL = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def test_no_header() -> None:
    assert parse_retry_after([]) is None
    assert parse_retry_after([("content-type", "application/json")]) is None


@pytest.mark.parametrize(("value", "expected"), [("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("1.5", 1.5)])
def test_seconds(value: str, expected: float) -> None:
    assert parse_retry_after([("retry-after", value)]) == expected


def test_http_date_relative_to_now_wall() -> None:
    when = datetime(2025, 6, 1, 12, 0, 45, tzinfo=UTC)
    header = format_datetime(when, usegmt=True)  # "Sun, 01 Jun 2025 12:00:45 GMT"
    assert parse_retry_after([("retry-after", header)], now_wall=NOW_WALL) == pytest.approx(45.0)


def test_http_date_in_the_past_means_now() -> None:
    header = "Sun, 01 Jun 2025 11:59:00 GMT"
    assert parse_retry_after([("retry-after", header)], now_wall=NOW_WALL) == 0.0


def test_retry_after_ms() -> None:
    assert parse_retry_after([("retry-after-ms", "1500")]) == pytest.approx(1.5)


def test_x_ms_retry_after_ms() -> None:
    assert parse_retry_after([("x-ms-retry-after-ms", "250")]) == pytest.approx(0.25)


def test_millisecond_headers_take_precedence_over_retry_after() -> None:
    # Azure OpenAI sends both; the millisecond one is the precise one.
    assert parse_retry_after([("retry-after", "10"), ("x-ms-retry-after-ms", "2500")]) == pytest.approx(2.5)
    assert parse_retry_after([("retry-after", "10"), ("retry-after-ms", "300")]) == pytest.approx(0.3)
    assert parse_retry_after([("x-ms-retry-after-ms", "2500"), ("retry-after-ms", "300")]) == pytest.approx(0.3)


def test_bad_millisecond_header_falls_back_to_retry_after() -> None:
    assert parse_retry_after([("x-ms-retry-after-ms", "soon"), ("retry-after", "4")]) == 4.0
    assert parse_retry_after([("retry-after-ms", "-1"), ("retry-after", "4")]) == 4.0


@pytest.mark.parametrize("value", ["soon", "", "12abc", "Mon, 99 Foo 2025 25:61:00 GMT", "inf", "nan", "1e999"])
def test_garbage_is_none(value: str) -> None:
    assert parse_retry_after([("retry-after", value)], now_wall=NOW_WALL) is None


@pytest.mark.parametrize("value", ["-1", "-0.5", "-3600"])
def test_negative_is_none(value: str) -> None:
    assert parse_retry_after([("retry-after", value)]) is None
    assert parse_retry_after([("retry-after-ms", value)]) is None
    assert parse_retry_after([("x-ms-retry-after-ms", value)]) is None
