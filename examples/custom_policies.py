"""Hedging and retry policies replaced from code.

The engine asks two small objects what to do (docs/hedging.md, docs/health.md):
``mc.executor.hedge`` — when a hedge starts, whether it may, and to whom — and
``mc.executor.retry`` — whether a failed attempt is retried, and where. Both are
built from the policy; any object with the same methods (a subclass is simplest)
replaces them. This script installs two:

* ``SpareCapacityHedges``: hedge after a fixed 30 ms, and only to the on-prem box
  (capacity you already pay for), never to another cloud;
* ``SameProviderFailover``: fail over only within the provider of the plan's first
  choice (e.g. one contract per request), never to another provider.

Then it checks, through the real openai SDK against the simulated fleet, that a
slow primary is hedged to on-prem and only there, and that a failing primary fails
over within its provider and only there. Residency and budgets still apply: a
policy chooses among the compliant candidates the router planned, and a budget
token is spent only when the policy found a target.

Prerequisites: the ``fleet`` extra and the openai SDK — ``pip install '.[demo]'``.
Runs against the simulated fleet on 127.0.0.1; no credentials.

    python examples/custom_policies.py
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import openai

import llm_multicloud as lmc
from llm_multicloud.catalog import Endpoint
from llm_multicloud.engine.hedge import HedgePolicy
from llm_multicloud.engine.retry import RetryPolicy
from llm_multicloud.fleet import Fleet, demo_spec
from llm_multicloud.health import EndpointState
from llm_multicloud.router import Candidate, Plan

MODEL = "llama-3.1-8b"
MESSAGES = [{"role": "user", "content": "hello"}]


class SpareCapacityHedges(HedgePolicy):
    """Hedge after 30 ms, only to on-prem endpoints."""

    def delay_ms(self, st: EndpointState, plan: Plan) -> float:
        return 30.0

    def targets(self, pool: Sequence[Candidate], in_flight: Iterable[Endpoint]) -> list[Candidate]:
        return [c for c in super().targets(pool, in_flight) if c.endpoint.provider == "onprem"]


class SameProviderFailover(RetryPolicy):
    """Fail over only within the provider of the plan's first choice."""

    def targets(self, plan: Plan, pool: Sequence[Candidate], tried_any: bool) -> Sequence[Candidate]:
        provider = plan.candidates[0].endpoint.provider
        return [c for c in super().targets(plan, pool, tried_any) if c.endpoint.provider == provider]


def main() -> int:
    with Fleet(demo_spec()) as fleet:
        for rid in fleet.region_ids:
            fleet.set_latency(rid, ttft_ms=2, ttft_jitter=0.0)
        policy = {"strategy": "ordered", "explore": 0.0, "hedge": {"enabled": True, "budget": 1.0}}
        with lmc.MultiCloud(fleet.catalog(), policy) as mc:
            ex = mc.executor
            ex.hedge = SpareCapacityHedges(ex.policy.hedge, ex.hedge.budget, default_ttft_ms=ex.policy.default_ttft_ms)
            ex.retry = SameProviderFailover(ex.policy.retry, ex.retry.budget)
            client = mc.wrap(openai.OpenAI(api_key="unused"))
            first = mc.explain(MODEL).candidates[0].endpoint
            print(f"the plan's first choice: {first.id} ({first.provider})")

            # 1. A slow primary: hedged after 30 ms, to on-prem only.
            fleet.set_latency(first.id, ttft_ms=400, ttft_jitter=0.0)
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=4)
            served, hedged = raw.headers["x-llm-multicloud-endpoint"], raw.headers["x-llm-multicloud-hedged"]
            print(f"slow primary: served by {served}, hedged={hedged}")
            assert hedged == "true" and served == "onprem-vllm", (served, hedged)
            fleet.set_latency(first.id, ttft_ms=2, ttft_jitter=0.0)

            # 2. A failing primary: failover within its provider only.
            fleet.clear()
            fleet.set_fault(first.id, mode="status", status=503)
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=4)
            served = raw.headers["x-llm-multicloud-endpoint"]
            tried = [r.region_id for r in fleet.received() if r.path.endswith("/chat/completions")]
            print(f"failing primary: tried {tried}, served by {served}")
            providers = {ep.id: ep.provider for ep in mc.catalog.endpoints}
            assert providers[served] == first.provider and served != first.id, served
            assert {providers[t] for t in tried} == {first.provider}, tried
    print("ok: both policies decided, through the real openai SDK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
