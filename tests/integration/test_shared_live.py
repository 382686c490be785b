"""Live operations across replicas, through a real redis-server: a drain on one
replica process reaches the other within the sharing interval, and replicas that
run different catalogs say so."""

from __future__ import annotations

import time
from typing import Any

import pytest

from llm_multicloud.fleet import Fleet

from .test_shared import REFRESH, TIMEOUT, Spawn, _eps, _policy, _wait, prefix, processes, redis_url, spawn

pytestmark = pytest.mark.integration

__all__ = ["prefix", "processes", "redis_url", "spawn"]  # fixtures shared with test_shared


def test_drain_propagates_between_replica_processes(clean: Fleet, redis_url: str, prefix: str, spawn: Spawn) -> None:
    a, b = spawn(clean.catalog(), _policy(redis_url, prefix), n=2)
    assert b.call({"cmd": "send", "n": 2})["served"] == ["aws-euc1", "aws-euc1"]

    t0 = time.monotonic()
    assert a.call({"cmd": "drain", "endpoint": "aws-euc1", "reason": "maintenance CHG-7"}) == ["aws-euc1"]
    seen = b.call({"cmd": "wait", "endpoint": "aws-euc1", "field": "state", "value": "drained", "timeout": 10})
    assert seen["ok"], seen
    # within one sharing interval (+ a round trip each side), measured from the drain call
    took = seen["at"] - t0
    assert took < 5.0, took
    print(f"drain reached the other replica in {took * 1000:.0f} ms (refresh_s {REFRESH}, timeout_s {TIMEOUT})")
    entry = _eps(b.snapshot())["aws-euc1"]
    assert entry["drained_reason"] == "maintenance CHG-7"
    before = len(b.call({"cmd": "attempts"}))
    out = b.call({"cmd": "send", "n": 5})
    assert out["errors"] == [] and set(out["served"]) == {"gcp-euw4"}
    assert "aws-euc1" not in b.call({"cmd": "attempts"})[before:]

    # an undrain on the *other* replica travels back
    assert b.call({"cmd": "undrain", "endpoint": "aws-euc1"}) == ["aws-euc1"]
    back = a.call({"cmd": "wait", "endpoint": "aws-euc1", "field": "drained", "value": False, "timeout": 10})
    assert back["ok"], back
    assert a.call({"cmd": "send", "n": 1})["served"] == ["aws-euc1"]


def test_replicas_report_a_catalog_mismatch(clean: Fleet, redis_url: str, prefix: str, spawn: Spawn) -> None:
    full = clean.catalog()
    a, b = spawn(full, _policy(redis_url, prefix), n=2)

    def shared(r: Any) -> dict[str, Any]:
        s: dict[str, Any] = r.snapshot()["shared_state"]
        return s

    _wait(lambda: shared(b)["replicas"] == 2 and shared(b)["catalog_mismatch"] == [], "both replicas seen")
    a_id = shared(a)["replica_id"]
    v_b = shared(b)["catalog_version"]
    smaller = {**full, "endpoints": [e for e in full["endpoints"] if e["id"] != "azure-jpe"]}
    v_a = a.call({"cmd": "update_catalog", "catalog": smaller})
    assert v_a != v_b
    _wait(lambda: shared(b)["catalog_mismatch"] == [{"replica": a_id, "catalog_version": v_a}], "b sees a's version")
    assert shared(b)["catalog_versions"][a_id] == v_a
    logs = [r["message"] for r in b.call({"cmd": "logs"})]
    assert any("replicas disagree on the catalog" in m and v_a in m for m in logs), logs

    assert b.call({"cmd": "update_catalog", "catalog": smaller}) == v_a  # b catches up
    _wait(lambda: shared(b)["catalog_mismatch"] == [] and shared(a)["catalog_mismatch"] == [], "agreement")
    assert any("every replica runs catalog" in r["message"] for r in b.call({"cmd": "logs"}))
