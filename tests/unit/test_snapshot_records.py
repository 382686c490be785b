"""snapshot() returns the typed records of llm_multicloud/snapshot.py, key for key, and
they are plain dicts that serialise to JSON as they are."""

from __future__ import annotations

import json
from typing import get_type_hints

import llm_multicloud as lmc
from llm_multicloud.snapshot import Budgets, EndpointRecord, RetiredRecord, Snapshot, TotalsRecord

CATALOG = {
    "endpoints": [
        {
            "id": f"e{i}",
            "provider": "aws",
            "region": "eu-central-1",
            "base_url": f"https://e{i}.example.invalid/v1",
            "models": ["m"],
            **({"pricing": {"input_per_mtok": 0.1, "output_per_mtok": 0.3}} if i else {}),
        }
        for i in range(2)
    ]
}


def test_the_snapshot_has_exactly_the_typed_keys() -> None:
    with lmc.MultiCloud(CATALOG, telemetry=False) as mc:  # snapshot() sends nothing
        mc.health.states[1].requests = 3
        mc.health.retired.append(mc.health.states[0])
        mc.health.states[0].inflight = 1
        snap = mc.snapshot()
    assert set(snap) == set(get_type_hints(Snapshot))
    for row in snap["endpoints"]:
        assert set(row) == set(get_type_hints(EndpointRecord))
    assert set(snap["budgets"]) == set(get_type_hints(Budgets))
    (retired,) = snap["retired"]
    assert set(retired) == set(get_type_hints(RetiredRecord))
    region = snap["totals"]["region"]["aws/eu-central-1"]
    assert set(region) == set(get_type_hints(TotalsRecord))
    assert region == {"requests": 3, "failures": 0, "cost_usd": 0.0, "unpriced_requests": 0}
    assert json.loads(json.dumps(snap)) == snap  # plain JSON types all the way down

