"""Fixtures: one simulated fleet on 127.0.0.1 for the whole session, reset between tests.

Every integration test drives the real openai SDK (sync and async) through
``llm_multicloud`` against these servers and judges routing from what the servers
received: which region, which key, which model name, which headers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, Latency, RegionSpec

MODEL = "llama-3.1-8b"
SERVED = {
    "aws-euc1": "meta-llama/Llama-3.1-8B-Instruct",
    "gcp-euw4": "llama-3.1-8b-instruct",
    "aws-use1": "meta-llama/Llama-3.1-8B-Instruct",
    "azure-jpe": "Meta-Llama-3.1-8B-Instruct",
}
FAST = Latency(ttft_ms=2, ttft_jitter=0.0, itl_ms=0.0)


def _regions() -> list[RegionSpec]:
    where = {
        "aws-euc1": ("aws", "eu-central-1", 2.0),
        "gcp-euw4": ("gcp", "europe-west4", 3.0),
        "aws-use1": ("aws", "us-east-1", 1.0),
        "azure-jpe": ("azure", "japaneast", 4.0),
    }
    return [
        RegionSpec(
            id=rid,
            provider=prov,
            region=reg,
            models={MODEL: SERVED[rid], "embed-small": f"{rid}-embed"},
            api_key=f"sk-{rid}-secret",
            latency=FAST,
            pricing={"input_per_mtok": price / 4, "output_per_mtok": price},
            seed=i,
        )
        for i, (rid, (prov, reg, price)) in enumerate(where.items())
    ]


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    with Fleet(_regions()) as f:
        yield f


def _restore(fleet: Fleet, latency: Latency) -> None:
    fleet.reset()
    for rid in fleet.region_ids:
        fleet.set_latency(rid, latency)
        fleet.set_fault(rid)


@contextlib.contextmanager
def fresh(fleet: Fleet, latency: Latency = FAST) -> Iterator[Fleet]:
    """The fleet with records cleared, every region at ``latency`` and no fault; the
    same again afterwards (a test's faults never reach the next test)."""
    _restore(fleet, latency)
    try:
        yield fleet
    finally:
        _restore(fleet, latency)


@pytest.fixture(autouse=False)
def clean(fleet: Fleet) -> Iterator[Fleet]:
    with fresh(fleet):
        yield fleet


def make_mc(fleet: Fleet, policy: dict[str, Any] | None = None, **kw: Any) -> lmc.MultiCloud:
    """A MultiCloud over the fleet. Probes and hedging are off unless a test turns them
    on, so that what the servers receive is exactly what the test caused."""
    # No exploration either: a test asserts where each request goes.
    base: dict[str, Any] = {
        "strategy": "ordered",
        "probe": {"enabled": False},
        "hedge": {"enabled": False},
        "explore": 0.0,
    }
    for k, v in (policy or {}).items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return lmc.MultiCloud(fleet.catalog(), base, **kw)


@pytest.fixture
def mc(clean: Fleet) -> Iterator[lmc.MultiCloud]:
    with make_mc(clean) as m:
        yield m


@pytest.fixture
def client(mc: lmc.MultiCloud) -> openai.OpenAI:
    return mc.wrap(openai.OpenAI(api_key="sk-placeholder-never-sent"))


@pytest.fixture
def aclient(mc: lmc.MultiCloud) -> openai.AsyncOpenAI:
    return mc.wrap(openai.AsyncOpenAI(api_key="sk-placeholder-never-sent"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chat_records(fleet: Fleet, region: str | None = None) -> list[Any]:
    return [r for r in fleet.received(region) if r.path.endswith("/chat/completions")]


class OffsetClock:
    """Real monotonic time plus an offset the test can jump forward: breaker
    ejections and cooldowns expire without sleeping, while the executor's timers
    (which measure differences) still see real time pass."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        import time

        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Audit:
    """Collects AttemptRecords (the audit hook) for assertions on where data went."""

    def __init__(self) -> None:
        self.records: list[lmc.AttemptRecord] = []

    def __call__(self, rec: lmc.AttemptRecord) -> None:
        self.records.append(rec)

    def to(self, endpoint: str) -> list[lmc.AttemptRecord]:
        return [r for r in self.records if r.endpoint == endpoint]

    def clear(self) -> None:
        self.records.clear()
