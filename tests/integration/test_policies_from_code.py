"""The breaker's rules and the admission policy replaced from code
(``MultiCloud(breaker=..., admission=...)``), through the real openai SDK against the
fleet: what the servers receive shows that the injected policy decided."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from llm_multicloud.fleet import Fleet
from llm_multicloud.health import Admission, Breaker, Change, EndpointState
from llm_multicloud.policy import BreakerPolicy
from llm_multicloud.vocabulary import BreakerState

from .conftest import MODEL, Audit, chat_records, make_mc
from .drive import PLACEHOLDER_KEY

pytestmark = pytest.mark.integration
EU = {"x-llm-multicloud-residency": "EU"}


class OneStrike(Breaker):
    """Opens on the first endpoint fault, for a minute (the default needs 5 in a row)."""

    def failure(self, s: Any, now: float, reason: str, rand: float, bp: BreakerPolicy) -> Change | None:
        if s.breaker != BreakerState.CLOSED:
            return super().failure(s, now, reason, rand, bp)
        s.consecutive += 1
        self._move(s, "trip")
        s.ejections += 1
        s.opened_at, s.open_until = now, now + 60.0
        return Change(BreakerState.CLOSED, BreakerState.OPEN, f"one strike: {reason}", s.open_until)


class NotThere(Admission):
    """Admits nothing on one endpoint (an operator's own rule, e.g. a maintenance window)."""

    def __init__(self, endpoint_id: str) -> None:
        super().__init__()
        self.endpoint_id = endpoint_id
        self.refused = 0

    def allows(self, st: EndpointState, bp: BreakerPolicy) -> bool:
        if st.endpoint.id == self.endpoint_id:
            self.refused += 1
            return False
        return super().allows(st, bp)


def _send(client: openai.OpenAI, n: int) -> list[str]:
    out = []
    for i in range(n):
        r = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], extra_headers=EU
        )
        out.append(r.headers["x-llm-multicloud-endpoint"])
    return out


def test_an_injected_breaker_decides_when_an_endpoint_is_ejected(clean: Fleet) -> None:
    clean.set_fault("aws-euc1", mode="status", status=503)
    audit = Audit()
    moves: list[Any] = []
    with make_mc(clean, breaker=OneStrike(), on_attempt=audit, on_transition=moves.append) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        assert _send(client, 10) == ["gcp-euw4"] * 10  # the one failure failed over
        assert len(audit.to("aws-euc1")) == 1  # one strike, then out (the default breaker: 5)
        row = {e["id"]: e for e in mc.snapshot()["endpoints"]}["aws-euc1"]
        assert row["state"] == "open" and "503" in row["reason"]
    assert [(t.endpoint, t.new) for t in moves] == [("aws-euc1", "open")]
    assert moves[0].reason.startswith("one strike: ")


@pytest.mark.anyio
async def test_an_injected_admission_policy_is_asked_before_each_attempt(clean: Fleet) -> None:
    deny = NotThere("aws-euc1")
    with make_mc(clean, admission=deny) as mc:
        client = mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY))
        served = []
        for i in range(5):
            r = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], extra_headers=EU
            )
            served.append(r.headers["x-llm-multicloud-endpoint"])
        await client.close()
    assert served == ["gcp-euw4"] * 5
    assert deny.refused == 5  # asked for the first-ranked endpoint each time, refused
    assert chat_records(clean, "aws-euc1") == []  # nothing was sent there
