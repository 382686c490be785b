"""Probes against the engines' own ``/v1/models``. llama.cpp lists its ``model_alias``
or, without one, the model file's path, and answers any model name with its one
model: a served name it never listed is warned about once and keeps routing; a
model it listed and then stopped listing (a redeployment under another alias) is
taken out."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.integration.drive import PLACEHOLDER_KEY

from .conftest import catalog, fresh, make_mc
from .harness import MODEL, EngineSpec

pytestmark = pytest.mark.engines
PROBES = {"probe": {"enabled": True, "interval_s": 0.2, "timeout_s": 5}}


def _wait(pred: Any, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_served_name_llama_cpp_never_lists_keeps_routing(
    suite: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    slow, fast = suite["gcp-euw4-llama"], suite["aws-euc1-llama"]
    cat = catalog(slow.catalog_entry(), fast.catalog_entry())  # gcp: no alias, so it lists its file
    with caplog.at_level(logging.WARNING, "llm_multicloud.health"), make_mc(cat, PROBES) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        client.chat.completions.create(model=MODEL, messages=fresh("Say hi."), max_tokens=2)  # starts the prober

        def gcp() -> dict[str, Any]:
            return {e["id"]: e for e in mc.snapshot()["endpoints"]}["gcp-euw4-llama"]

        _wait(lambda: gcp()["models_listed"] is not None and mc._prober is not None and mc._prober.rounds >= 3)
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        assert snap["gcp-euw4-llama"]["models_listed"] == [str(slow.gguf)]  # what llama.cpp itself lists
        assert snap["gcp-euw4-llama"]["unlisted_models"] == [MODEL]
        assert snap["gcp-euw4-llama"]["missing_models"] == []
        assert snap["aws-euc1-llama"]["models_listed"] == ["smollm2-135m-instruct"]
        assert snap["aws-euc1-llama"]["unlisted_models"] == []
        assert not mc.explain(MODEL).excluded
        for _ in range(3):
            r = client.chat.completions.with_raw_response.create(model=MODEL, messages=fresh("Say hi."), max_tokens=2)
            assert r.headers["x-llm-multicloud-endpoint"] == "gcp-euw4-llama"
            assert r.parse().choices[0].message.content is not None
    warned = [r.getMessage() for r in caplog.records if "never listed" in r.getMessage()]
    assert len(warned) == 1 and "gcp-euw4-llama" in warned[0] and slow.gguf.name in warned[0]


def test_a_model_the_engine_stops_listing_is_taken_out(suite: dict[str, Any], spawn: Any) -> None:
    spec = EngineSpec(id="oci-fra-llama", provider="oci", region="eu-frankfurt-1", api_key="sk-v", alias="smollm2-v1")
    victim = spawn(spec)
    slow = suite["gcp-euw4-llama"]
    cat = catalog(victim.catalog_entry(), slow.catalog_entry())
    with make_mc(cat, PROBES) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        r = client.chat.completions.with_raw_response.create(model=MODEL, messages=fresh("Say hi."), max_tokens=2)
        assert r.headers["x-llm-multicloud-endpoint"] == "oci-fra-llama"

        def victim_state() -> dict[str, Any]:
            return mc.snapshot()["endpoints"][0]

        _wait(lambda: victim_state()["models_listed"] == ["smollm2-v1"])
        # redeployed on the same address under another alias: the served name is gone
        victim.stop()
        victim.start(spec=dataclasses.replace(spec, alias="smollm2-v2"))
        _wait(lambda: MODEL in victim_state()["missing_models"])
        reasons = {x.endpoint.id: x.reason for x in mc.explain(MODEL).excluded}
        assert "no longer lists 'smollm2-v1'" in reasons["oci-fra-llama"]
        r = client.chat.completions.with_raw_response.create(model=MODEL, messages=fresh("Say hi."), max_tokens=2)
        assert r.headers["x-llm-multicloud-endpoint"] == "gcp-euw4-llama"


def test_status_and_validate_show_what_the_engines_list(suite: dict[str, Any], tmp_path: Path) -> None:
    slow, fast = suite["gcp-euw4-llama"], suite["aws-euc1-llama"]
    p = tmp_path / "catalog.yaml"
    p.write_text(yaml.safe_dump(catalog(slow.catalog_entry(), fast.catalog_entry())))
    cli = [sys.executable, "-m", "llm_multicloud.cli"]
    st = subprocess.run([*cli, "status", str(p), "--json"], capture_output=True, text=True, timeout=120)
    assert st.returncode == 0, st.stderr
    rows = {r["id"]: r for r in json.loads(st.stdout)}
    assert rows["gcp-euw4-llama"]["state"] == "up" and rows["gcp-euw4-llama"]["models"] == {MODEL: False}
    assert rows["gcp-euw4-llama"]["models_listed"] == [str(slow.gguf)]
    assert rows["aws-euc1-llama"]["models"] == {MODEL: True}
    v = subprocess.run([*cli, "validate", str(p), "--probe"], capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stderr
    warnings = [x for x in v.stdout.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "gcp-euw4-llama" in warnings[0] and slow.gguf.name in warnings[0]
