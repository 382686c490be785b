"""Served names the server never lists: llama.cpp lists its alias or model file,
gateways may list nothing, and both still answer the served name. The probe warns
once and keeps routing; only a model that was listed and then vanished is taken
out. Through the real openai SDK, judged by where the fleet's servers say each
request went."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import openai
import pytest
import yaml

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, RegionSpec

from .conftest import FAST
from .drive import PLACEHOLDER_KEY

pytestmark = pytest.mark.integration
MODEL = "smollm2"


@pytest.fixture(scope="module")
def gguf_fleet() -> Iterator[Fleet]:
    regions = [
        # answers "smollm2-135m", lists only its model file (llama.cpp without --alias)
        RegionSpec(
            id="onprem-fra",
            provider="onprem",
            region="eu-central-1",
            models={MODEL: "smollm2-135m"},
            listed=["/srv/models/SmolLM2-135M-Instruct.Q4_1.gguf"],
            api_key="sk-fra",
            latency=FAST,
        ),
        RegionSpec(
            id="onprem-ams",
            provider="onprem",
            region="europe-west4",
            models={MODEL: "smollm2-135m"},
            api_key="sk-ams",
            latency=FAST,
        ),
    ]
    with Fleet(regions) as f:
        yield f


def _mc(fleet: Fleet) -> lmc.MultiCloud:
    policy = {"strategy": "ordered", "probe": {"interval_s": 0.05}, "hedge": {"enabled": False}, "explore": 0.0}
    return lmc.MultiCloud(fleet.catalog(), policy)


def test_a_served_name_never_listed_keeps_routing_and_warns_once(
    gguf_fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    gguf_fleet.clear()
    with caplog.at_level(logging.WARNING, "llm_multicloud.health"), _mc(gguf_fleet) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        first = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert first.headers["x-llm-multicloud-endpoint"] == "onprem-fra"
        # several probe rounds have seen the listing without the served name
        gguf_fleet.wait_for(
            lambda: len([r for r in gguf_fleet.received("onprem-fra") if r.path.endswith("/models")]) >= 3
        )
        fra = mc.snapshot()["endpoints"][0]
        assert fra["unlisted_models"] == [MODEL] and fra["missing_models"] == []
        assert fra["models_listed"] == ["/srv/models/SmolLM2-135M-Instruct.Q4_1.gguf"]
        assert not mc.explain(MODEL).excluded
        for i in range(5):
            r = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"q{i}"}]
            )
            assert r.headers["x-llm-multicloud-endpoint"] == "onprem-fra"  # still first choice
        warned = [r.getMessage() for r in caplog.records if "never listed" in r.getMessage()]
        assert len(warned) == 1, warned
        assert "onprem-fra" in warned[0] and "'smollm2-135m'" in warned[0]
        assert "SmolLM2-135M-Instruct.Q4_1.gguf" in warned[0]
    served = [r for r in gguf_fleet.received("onprem-fra") if r.path.endswith("/chat/completions")]
    assert len(served) == 6 and {r.model for r in served} == {"smollm2-135m"}


def test_a_listed_model_that_disappears_is_taken_out(gguf_fleet: Fleet) -> None:
    gguf_fleet.clear()
    with _mc(gguf_fleet) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        # onprem-fra is first in order; take it out of the picture by making ams the
        # one that lists the name and then stops listing it
        plan_ids = [c.endpoint.id for c in mc.explain(MODEL).candidates]
        assert plan_ids == ["onprem-fra", "onprem-ams"]
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "start probes"}])
        gguf_fleet.wait_for(lambda: mc.snapshot()["endpoints"][1]["models_listed"] == ["smollm2-135m"])
        gguf_fleet.set_models("onprem-ams", {"other": "other-model"})
        gguf_fleet.wait_for(lambda: MODEL in mc.snapshot()["endpoints"][1]["missing_models"])
        reasons = {x.endpoint.id: x.reason for x in mc.explain(MODEL).excluded}
        assert set(reasons) == {"onprem-ams"} and "no longer lists" in reasons["onprem-ams"]
    gguf_fleet.set_models("onprem-ams", {MODEL: "smollm2-135m"})


def test_status_and_validate_show_the_mismatch(gguf_fleet: Fleet, tmp_path: Path) -> None:
    p = tmp_path / "catalog.yaml"
    p.write_text(yaml.safe_dump(gguf_fleet.catalog()))
    cli = [sys.executable, "-m", "llm_multicloud.cli"]
    st = subprocess.run([*cli, "status", str(p), "--json"], capture_output=True, text=True, timeout=60)
    assert st.returncode == 0, st.stderr  # a naming mismatch is not an outage
    rows = {r["id"]: r for r in json.loads(st.stdout)}
    assert rows["onprem-fra"]["models"] == {MODEL: False}
    assert rows["onprem-fra"]["models_listed"] == ["/srv/models/SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert "'smollm2-135m'" in rows["onprem-fra"]["not_listed"]
    assert rows["onprem-ams"]["models"] == {MODEL: True} and rows["onprem-ams"]["not_listed"] is None
    table = subprocess.run([*cli, "status", str(p)], capture_output=True, text=True, timeout=60).stdout
    assert "smollm2 (not listed)" in table and "note: endpoint onprem-fra: /models does not list" in table
    v = subprocess.run([*cli, "validate", str(p), "--probe"], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stderr
    lines = [x for x in v.stdout.splitlines() if x.startswith("warning:")]
    assert len(lines) == 1 and "onprem-fra" in lines[0] and "SmolLM2-135M-Instruct.Q4_1.gguf" in lines[0]


def test_a_never_listed_name_that_real_requests_do_not_find_is_taken_out(gguf_fleet: Fleet) -> None:
    """The probe cannot tell a naming mismatch from a wrong served name: real requests
    decide. A 404 for a name /models has never listed settles it — that endpoint is
    taken out for the model (no breaker penalty) and the request fails over, sync and
    async (a listing that later shows the name brings it back: tests/unit/test_health.py)."""
    gguf_fleet.clear()
    cat = gguf_fleet.catalog()
    for ep in cat["endpoints"]:
        if ep["id"] == "onprem-fra":
            ep["models"] = {MODEL: "smollm2-typo"}  # the server answers "smollm2-135m" only
    policy = {"strategy": "ordered", "probe": {"interval_s": 0.05}, "hedge": {"enabled": False}, "explore": 0.0}
    with lmc.MultiCloud(cat, policy) as mc:
        mc._portal()  # starts the probes now, as the first request would
        gguf_fleet.wait_for(lambda: mc.snapshot()["endpoints"][0]["unlisted_models"] == [MODEL])
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        r = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "a"}])
        assert r.headers["x-llm-multicloud-endpoint"] == "onprem-ams"
        assert r.headers["x-llm-multicloud-attempts"] == "2"  # fra's 404, then the failover
        fra = mc.snapshot()["endpoints"][0]
        assert fra["missing_models"] == [MODEL] and fra["failures"] == 0 and fra["state"] == "closed"
        (why,) = [x.reason for x in mc.explain(MODEL).excluded if x.endpoint.id == "onprem-fra"]
        assert "never listed" in why and "404" in why

        async def more() -> list[str]:
            async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as ac:
                out = []
                for i in range(3):
                    raw = await ac.chat.completions.with_raw_response.create(
                        model=MODEL, messages=[{"role": "user", "content": f"b{i}"}]
                    )
                    out.append(raw.headers["x-llm-multicloud-endpoint"])
                return out

        assert anyio.run(more) == ["onprem-ams"] * 3
        # several probe rounds later it is still out (the listing still lacks the name)
        n = len([x for x in gguf_fleet.received("onprem-fra") if x.path.endswith("/models")])
        gguf_fleet.wait_for(
            lambda: len([x for x in gguf_fleet.received("onprem-fra") if x.path.endswith("/models")]) >= n + 3
        )
        assert mc.snapshot()["endpoints"][0]["missing_models"] == [MODEL]
    chats = [x for x in gguf_fleet.received("onprem-fra") if x.path.endswith("/chat/completions")]
    assert len(chats) == 1  # one 404, then never again while the doubt was settled
