"""Shared fixtures of the unit suite: an injected clock and a small catalog builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


class FakeClock:
    """A monotonic clock the test drives by hand: ``clock()`` reads ``clock.now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        assert seconds >= 0, "a monotonic clock never goes back"
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def endpoint_dict(
    id: str,
    region: str = "us-east-1",
    provider: str = "aws",
    models: Any = ("m",),
    **extra: Any,
) -> dict[str, Any]:
    """One catalog entry with every required field filled in."""
    d: dict[str, Any] = {
        "id": id,
        "provider": provider,
        "region": region,
        "base_url": f"https://{id}.example.invalid/v1",
        "models": list(models) if isinstance(models, tuple | list) else models,
    }
    d.update(extra)
    return d


@pytest.fixture
def ep() -> Callable[..., dict[str, Any]]:
    """Factory of catalog endpoint entries: ``ep("id", "eu-central-1", pricing=...)``."""
    return endpoint_dict
