"""Live operations through the real openai SDK: catalog updates without a restart,
drains, weights, and the guarantee that a swap loses and misroutes nothing."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from typing import Any

import anyio
import openai
import pytest
import yaml

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, Latency, start_fleet_process
from llm_multicloud.regions import expand_tag

from .conftest import MODEL, Audit, _regions, chat_records, make_mc

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

EU = expand_tag("EU")


def _without(cat: dict[str, Any], *ids: str) -> dict[str, Any]:
    out = copy.deepcopy(cat)
    out["endpoints"] = [e for e in out["endpoints"] if e["id"] not in ids]
    return out


def _ask(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], **kw
    )


def test_update_keeps_history_by_id_and_wrapped_clients_follow(clean: Fleet) -> None:
    with make_mc(clean) as mc:
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder"))
        for _ in range(3):
            assert _ask(client).headers["x-llm-multicloud-endpoint"] == "aws-euc1"
        before = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        v0 = mc.catalog_version

        change = mc.update_catalog(_without(clean.catalog(), "aws-euc1"))

        assert change.removed == ("aws-euc1",) and not change.added and not change.redefined
        assert change.version != v0 == change.previous_version == v0
        assert mc.catalog_version == change.version
        # The same wrapped client, no re-wrap: the next request follows the new catalog.
        assert _ask(client).headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        after = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        assert set(after) == {"gcp-euw4", "aws-use1", "azure-jpe"}

        # Re-adding the endpoint brings its history back (by id), not a blank state.
        mc.update_catalog(clean.catalog())
        again = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        assert again["aws-euc1"]["requests"] == before["aws-euc1"]["requests"] == 3
        assert again["aws-euc1"]["samples"] == before["aws-euc1"]["samples"] > 0
        assert again["gcp-euw4"]["requests"] == 1
        assert mc.catalog_version == v0


def test_redefined_endpoint_inherits_history_and_uses_its_new_target(clean: Fleet) -> None:
    with make_mc(clean) as mc:
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder"))
        _ask(client)
        cat = clean.catalog()
        cat["endpoints"][0]["headers"] = {"x-team": "blue"}
        change = mc.update_catalog(cat)
        assert change.redefined == ("aws-euc1",)
        clean.clear()
        _ask(client)
        (rec,) = chat_records(clean, "aws-euc1")
        assert rec.headers.get("x-team") == "blue"
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        assert snap["aws-euc1"]["requests"] == 2  # history carried over to the new definition


def test_bad_catalog_changes_nothing(clean: Fleet) -> None:
    with make_mc(clean) as mc:
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder"))
        v0 = mc.catalog_version
        bad = clean.catalog()
        bad["endpoints"][1]["region"] = "europe-wset4"
        with pytest.raises(lmc.CatalogError, match=r"endpoints\[1\] \(id='gcp-euw4'\)\.region: 'europe-wset4'"):
            mc.update_catalog(bad)
        dup = clean.catalog()
        dup["endpoints"][2]["id"] = "aws-euc1"
        with pytest.raises(lmc.CatalogError, match="already used"):
            mc.update_catalog(dup)
        with pytest.raises(lmc.CatalogError, match=r"(?s)policy is invalid.*strategy"):
            mc.update_catalog(policy={"strategy": "fastest"})
        with pytest.raises(lmc.CatalogError, match=r"policy\.state .*cannot change at run time"):
            mc.update_catalog(policy={"state": {"backend": "redis", "url": "redis://127.0.0.1:1/0"}})
        assert mc.catalog_version == v0
        assert [e.id for e in mc.catalog.endpoints] == ["aws-euc1", "gcp-euw4", "aws-use1", "azure-jpe"]
        assert _ask(client).headers["x-llm-multicloud-endpoint"] == "aws-euc1"


def test_policy_change_applies_live(clean: Fleet) -> None:
    with make_mc(clean) as mc:
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder"))
        assert _ask(client).headers["x-llm-multicloud-endpoint"] == "aws-euc1"
        change = mc.update_catalog(policy={"strategy": "cost"})
        assert change.policy_changed and not change.removed
        assert mc.explain(MODEL).strategy == "cost"
        # cost: aws-use1 is the cheapest endpoint of the fleet
        assert _ask(client).headers["x-llm-multicloud-endpoint"] == "aws-use1"


async def test_removed_endpoint_finishes_its_stream_and_takes_no_new_request(clean: Fleet) -> None:
    clean.set_latency("aws-euc1", Latency(ttft_ms=2, ttft_jitter=0.0, itl_ms=40.0))
    with make_mc(clean) as mc:
        aclient = mc.wrap(openai.AsyncOpenAI(api_key="sk-placeholder"))
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = ""
        n = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            n += 1
            if n == 2:
                mc.update_catalog(_without(clean.catalog(), "aws-euc1"))
                snap = mc.snapshot()
                assert snap["retired"] == [
                    {"id": "aws-euc1", "provider": "aws", "region": "eu-central-1", "in_flight": 1}
                ]
                # a new request goes elsewhere while the old stream is still running
                r = await aclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
                assert r.choices[0].message.content.startswith("[gcp-euw4]")
        assert text.startswith("[aws-euc1]") and text.split()[-1] == "w7"  # complete
        assert mc.snapshot()["retired"] == []
        assert [r.outcome for r in chat_records(clean, "aws-euc1")] == ["ok"]


def test_drain_shows_everywhere_and_blocks_even_panic(clean: Fleet) -> None:
    audit = Audit()
    with make_mc(clean, on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder"))
        assert mc.drain("aws-euc1", reason="maintenance CHG-42") == ["aws-euc1"]
        assert mc.drain("aws-euc1", reason="maintenance CHG-42") == []  # idempotent
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        assert snap["aws-euc1"]["state"] == "drained"
        assert snap["aws-euc1"]["drained_reason"] == "maintenance CHG-42"
        assert snap["aws-euc1"]["reason"] == "maintenance CHG-42"
        plan = mc.explain(MODEL, residency="EU")
        assert [c.endpoint.id for c in plan.candidates] == ["gcp-euw4"]
        assert "aws-euc1 (aws eu-central-1): excluded: drained: maintenance CHG-42" in plan.describe()
        r = _ask(client, extra_headers={"x-llm-multicloud-residency": "EU"})
        assert r.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"

        # The other EU endpoint is ejected: it is re-admitted anyway (ejection cap / panic),
        # the drained one never is.
        clean.set_fault("gcp-euw4", mode="status", status=503)
        for _ in range(6):
            with pytest.raises(openai.APIStatusError):
                _ask(client, extra_headers={"x-llm-multicloud-residency": "EU"})
        plan = mc.explain(MODEL, residency="EU")
        assert [c.endpoint.id for c in plan.candidates] == ["gcp-euw4"] and plan.candidates[0].readmitted
        # ...and when gcp-euw4 is drained too, the 503 says why, per endpoint.
        mc.drain(region="europe-west4", reason="region evacuation")
        with pytest.raises(openai.APIStatusError) as exc:
            _ask(client, extra_headers={"x-llm-multicloud-residency": "EU"})
        assert exc.value.status_code == 503
        msg = str(exc.value)
        assert "aws-euc1 (aws eu-central-1): drained: maintenance CHG-42" in msg
        assert "gcp-euw4 (gcp europe-west4): drained: region evacuation" in msg
        assert audit.to("aws-euc1") == []

        assert mc.undrain(region="eu-central-1") == ["aws-euc1"]
        assert _ask(client).headers["x-llm-multicloud-endpoint"] == "aws-euc1"
        with pytest.raises(ValueError, match="unknown endpoint id 'nope'; this catalog has: aws-euc1"):
            mc.drain("nope")
        with pytest.raises(ValueError, match="no endpoint in mars-1"):
            mc.drain(region="mars-1")


def test_drain_survives_catalog_updates(clean: Fleet) -> None:
    with make_mc(clean) as mc:
        mc.drain("aws-euc1", reason="kept")
        mc.update_catalog(_without(clean.catalog(), "azure-jpe"))
        mc.update_catalog(clean.catalog())
        assert {e["id"]: e["state"] for e in mc.snapshot()["endpoints"]}["aws-euc1"] == "drained"


def test_no_retry_or_hedge_to_an_endpoint_drained_during_the_request(clean: Fleet) -> None:
    """The plan was made before the drain: the failover after the primary's failure
    skips the endpoint drained meanwhile (and the hedge would too).

    The drain happens in the audit hook of the primary's failed attempt, which the
    engine calls before it picks the failover: deterministic, whatever the load."""
    audit = Audit()
    clean.set_fault("aws-euc1", mode="status", status=503)
    owner: list[lmc.MultiCloud] = []

    def drain_on_failure(rec: lmc.AttemptRecord) -> None:
        audit(rec)
        if rec.endpoint == "aws-euc1" and rec.outcome == "failed":
            owner[0].drain("gcp-euw4", reason="drained mid-request")

    with make_mc(clean, on_attempt=drain_on_failure) as mc:
        owner.append(mc)
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder"))
        r = _ask(client)
        assert r.headers["x-llm-multicloud-endpoint"] == "aws-use1"
        assert [a.endpoint for a in audit.records] == ["aws-euc1", "aws-use1"]
        assert chat_records(clean, "gcp-euw4") == []


def test_set_weight_applies_live_and_survives_updates(clean: Fleet) -> None:
    with make_mc(clean, {"strategy": "weighted"}) as mc:
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder"))
        for eid in ("gcp-euw4", "aws-use1", "azure-jpe"):
            mc.set_weight(eid, 1e-6)
        got = {_ask(client).headers["x-llm-multicloud-endpoint"] for _ in range(20)}
        assert got == {"aws-euc1"}
        mc.update_catalog(clean.catalog())  # the overrides stay
        assert {e["id"]: e["weight"] for e in mc.snapshot()["endpoints"]}["aws-use1"] == 1e-6
        mc.set_weight("aws-euc1", 1e-9)
        got = [_ask(client).headers["x-llm-multicloud-endpoint"] for _ in range(20)]
        assert "aws-euc1" not in got[-10:] or got.count("aws-euc1") < 3
        mc.set_weight("aws-euc1", None)  # back to the catalog's weight
        assert {e["id"]: e["weight"] for e in mc.snapshot()["endpoints"]}["aws-euc1"] == 1.0
        with pytest.raises(ValueError, match="positive finite"):
            mc.set_weight("aws-euc1", 0)


# ------------------------------------------------------------------ the big one


N_STREAMS = 500
N_SWAPS = 20
N_AT_ONCE = 400


async def test_500_streams_through_20_swaps_and_a_drain() -> None:
    """500 concurrent streams (half of them pinned to the EU) while the catalog is
    swapped 20 times and a region is drained mid-stream: every request ends in a
    complete answer or an exception (here: none), no attempt starts on an endpoint
    drained or removed by a swap that had already returned, and none leaves its
    residency."""
    # Streams of ~3 s: 400 start at once, 5 more after each of the 20 swaps (one
    # every 60 ms), so that hundreds are open together and new ones (with hedges and
    # failovers) start across every swap. The fleet
    # runs in a child process, so that 500 connections do not starve it of the GIL.
    regions = [r.model_copy(update={"latency": Latency(ttft_ms=5, ttft_jitter=0.2, itl_ms=400.0)}) for r in _regions()]
    with start_fleet_process(regions) as fleet:
        await _swaps_under_load(fleet)


async def _swaps_under_load(fleet: Any) -> None:
    full = fleet.catalog()
    redefined = copy.deepcopy(full)
    redefined["endpoints"][0]["headers"] = {"x-generation": "b"}
    variants = [full, _without(full, "aws-use1"), _without(full, "azure-jpe"), redefined]
    starts: list[tuple[int, str, str]] = []  # (start ns, endpoint, residency)

    def on_attempt(rec: lmc.AttemptRecord) -> None:
        starts.append((rec.start_unix_nano, rec.endpoint, rec.residency))

    # (from ns, endpoint ids that may get *new* attempts from then on)
    allowed: list[tuple[int, frozenset[str]]] = []
    drained_at: int | None = None
    outcomes: list[str] = []
    peak: list[int] = []
    swapped = [anyio.Event() for _ in range(N_SWAPS)]
    policy = {
        "strategy": "balanced",
        "hedge": {"enabled": True, "min_delay_ms": 20.0},
        "explore": 0.05,
        # a loaded 2-core machine: 500 connections opening at once are slow to accept
        "timeouts": {"connect_s": 20.0, "first_token_s": 30.0},
    }
    with make_mc(fleet, policy, on_attempt=on_attempt) as mc:
        aclient = mc.wrap(openai.AsyncOpenAI(api_key="sk-placeholder", timeout=60.0))

        async def one(i: int) -> None:
            # 400 open at once; then 5 more right after each swap, so that new
            # requests keep arriving across all the swaps however slow the machine is.
            if i >= N_AT_ONCE:
                await swapped[(i - N_AT_ONCE) * N_SWAPS // (N_STREAMS - N_AT_ONCE)].wait()
            eu = i % 2 == 0
            headers = {"x-llm-multicloud-residency": "EU"} if eu else {}
            try:
                stream = await aclient.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"request {i}"}],
                    stream=True,
                    extra_headers=headers,
                )
                text, finish = "", None
                async for chunk in stream:
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                        finish = chunk.choices[0].finish_reason or finish
                ok = finish == "stop" and text.split()[-1:] == ["w7"]
                outcomes.append("complete" if ok else f"truncated: {finish} {text!r}")
            except openai.APIError as exc:
                outcomes.append(f"exception: {type(exc).__name__}: {exc}")

        async def operator() -> None:
            nonlocal drained_at
            for k in range(N_SWAPS):
                await anyio.sleep(0.06)
                peak.append(sum(e["in_flight"] for e in mc.snapshot()["endpoints"]))
                cat = variants[(k + 1) % len(variants)]
                mc.update_catalog(cat)
                ids = {e["id"] for e in cat["endpoints"]}
                if k == N_SWAPS // 2:
                    mc.drain(region="eu-central-1", reason="evacuating eu-central-1")
                    drained_at = time.time_ns()
                if drained_at is not None:
                    ids.discard("aws-euc1")
                allowed.append((time.time_ns(), frozenset(ids)))
                swapped[k].set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(operator)
            for i in range(N_STREAMS):
                tg.start_soon(one, i)
        snap = mc.snapshot()

    assert len(outcomes) == N_STREAMS
    bad = [o for o in outcomes if o != "complete"]
    assert bad == [], bad[:5]
    assert len(allowed) == N_SWAPS and drained_at is not None
    # Attempts that started after a swap (or the drain) had returned, and before the
    # next one: only to endpoints that swap left usable.
    violations = []
    for ns, eid, residency in starts:
        live = [ids for at, ids in allowed if at <= ns]
        if live and eid not in live[-1]:
            violations.append((ns, eid))
        if residency == "EU":
            assert eid in ("aws-euc1", "gcp-euw4"), (eid, residency)
    assert violations == []
    # The swaps happened while streams were running: attempts on both sides of them.
    assert sum(1 for ns, _, _ in starts if ns > allowed[-1][0]) < len(starts)
    assert any(ns > drained_at for ns, _, _ in starts), "the drain came after every request"
    assert any(ns < drained_at and eid == "aws-euc1" for ns, eid, _ in starts)
    assert snap["retired"] == [] and all(e["in_flight"] == 0 for e in snap["endpoints"])
    assert max(peak) >= 300, peak  # streams open at once while swapping
    print(f"in flight at each swap: {peak}")


def test_state_change_log_records_carry_structured_fields(clean: Fleet) -> None:
    """Every state-change record of the llm_multicloud loggers has endpoint, provider,
    region, from, to, reason as attributes (``extra=``): what JSON formatters emit."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger("llm_multicloud")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with make_mc(clean) as mc:
            client = mc.wrap(openai.OpenAI(api_key="sk-placeholder"))
            mc.drain("aws-euc1", reason="maintenance")  # serving -> drained
            clean.set_fault("gcp-euw4", mode="status", status=503)
            clean.set_fault("aws-use1", mode="status", status=429, retry_after="5")
            for _ in range(5):  # gcp-euw4: closed -> open; aws-use1: closed -> cooling
                with contextlib.suppress(openai.APIStatusError):
                    _ask(client)
            mc.undrain("aws-euc1")  # drained -> serving
            mc.update_catalog(_without(clean.catalog(), "azure-jpe"))  # -> removed
            mc.update_catalog(clean.catalog())  # added
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    changes = [r for r in records if hasattr(r, "to")]
    seen = {(r.endpoint, getattr(r, "from"), r.to) for r in changes}  # type: ignore[attr-defined]
    assert {
        ("aws-euc1", "serving", "drained"),
        ("gcp-euw4", "closed", "open"),
        ("aws-use1", "closed", "cooling"),
        ("aws-euc1", "drained", "serving"),
        ("azure-jpe", "closed", "removed"),
        ("azure-jpe", "absent", "serving"),
    } <= seen
    where = {"aws-euc1": ("aws", "eu-central-1"), "gcp-euw4": ("gcp", "europe-west4"),
             "aws-use1": ("aws", "us-east-1"), "azure-jpe": ("azure", "japaneast")}  # fmt: skip
    for r in changes:
        f = r.__dict__
        assert (f["provider"], f["region"]) == where[f["endpoint"]], f
        assert isinstance(f["reason"], str) and f["reason"]
    # the health logger's state-change records are all structured
    health = [r for r in records if r.name == "llm_multicloud.health"]
    assert health and all(hasattr(r, "to") for r in health)
    # what a JSON formatter (python-json-logger, structlog's stdlib bridge) gets
    line = json.dumps({k: changes[0].__dict__[k] for k in ("endpoint", "provider", "region", "from", "to", "reason")})
    assert json.loads(line)["to"] == "drained"


# ------------------------------------------------------------------ file watching


def test_watched_file_reloads_and_a_broken_edit_keeps_serving(
    clean: Fleet, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("watchfiles")
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(clean.catalog()), encoding="utf-8")
    policy = {"strategy": "ordered", "probe": {"enabled": False}, "hedge": {"enabled": False}, "explore": 0.0}
    caplog.set_level(logging.INFO, logger="llm_multicloud.live")
    with lmc.MultiCloud(path, policy, watch=True) as mc:
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder"))
        assert _ask(client).headers["x-llm-multicloud-endpoint"] == "aws-euc1"
        v0 = mc.catalog_version

        # An edit (written in place) is picked up: aws-euc1 removed.
        path.write_text(yaml.safe_dump(_without(clean.catalog(), "aws-euc1")), encoding="utf-8")
        clean.wait_for(lambda: mc.catalog_version != v0, timeout=10)
        assert _ask(client).headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        v1 = mc.catalog_version

        # A broken edit: one clear error, the last good catalog keeps serving.
        path.write_text("endpoints:\n  - id: gcp-euw4\n    regon: oops\n", encoding="utf-8")
        clean.wait_for(lambda: any(r.levelno == logging.ERROR for r in caplog.records), timeout=10)
        assert mc.catalog_version == v1
        for _ in range(5):
            assert _ask(client).headers["x-llm-multicloud-endpoint"] == "gcp-euw4"

        # The next good edit (atomically renamed into place, as config managers do) wins.
        tmp = tmp_path / ".catalog.yaml.tmp"
        tmp.write_text(yaml.safe_dump(clean.catalog()), encoding="utf-8")
        tmp.replace(path)
        clean.wait_for(lambda: mc.catalog_version == v0, timeout=10)
        assert _ask(client).headers["x-llm-multicloud-endpoint"] == "aws-euc1"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    msg = errors[0].getMessage()
    assert "keeping the last good catalog" in msg and "regon: unknown field" in msg
    assert str(path) in msg


def test_watch_needs_a_path(clean: Fleet) -> None:
    with pytest.raises(lmc.CatalogError, match="watch=True needs a catalog file path"):
        lmc.MultiCloud(clean.catalog(), watch=True)
