"""Smoke runs of every benchmark at ``--quick`` size (benchmarks/, docs/benchmarks.md).

Each benchmark runs in-process with tiny sizes and must produce a well-formed result:
the expected keys, finite numbers, non-zero counts, its Markdown and, where matplotlib
is installed, its plots. Timings and bars are never asserted here: the machine is
shared and noisy, and the real run is ``nox -s bench``.

LiteLLM is not needed: where it is not installed (the CI test venvs) the LiteLLM side of
each benchmark is skipped and says so. Where it is installed it is still left out, to
keep this suite fast, unless ``LLM_MULTICLOUD_BENCH_SMOKE_LITELLM=1``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import pytest

from benchmarks import BENCHMARKS, common, run_all

pytestmark = pytest.mark.integration

LITELLM_INSTALLED = common.litellm_installed()
WITH_LITELLM = LITELLM_INSTALLED and os.environ.get("LLM_MULTICLOUD_BENCH_SMOKE_LITELLM") == "1"
#: None = "use LiteLLM when installed" (exercises the clean skip where it is missing).
LITELLM_FLAG: bool | None = None if (not LITELLM_INSTALLED or WITH_LITELLM) else False
MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x: Any) -> bool:
    return _finite(x) and x > 0


def _check_b1(r: dict[str, Any]) -> None:
    rows = r["results"]["rows"]
    assert len(rows) == 18  # --quick: 10,000 endpoints are left out (seconds to build)
    assert {x["endpoints"] for x in rows} == {10, 100, 1000}
    assert sum(1 for x in rows if x["changes_between_plans"]) == 6  # the index's incremental rows
    for x in rows:
        assert x["calls"] > 0 and x["candidates"] > 0
        assert _positive(x["median_us"]) and _positive(x["p99_us"]) and _positive(x["p99_over_median"])
        assert len(x["gc_collections"]) == 3 and all(g >= 0 for g in x["gc_collections"])
    assert r["bars"][1]["bar"].startswith("routing decision, 10,000 endpoints")


def _check_b2(r: dict[str, Any]) -> None:
    modes = r["results"]["modes"]
    assert set(modes) == {"sync non-stream", "sync stream", "async non-stream", "async stream"}
    for vs in modes.values():
        assert {"direct", "lmc_1ep", "lmc_6ep"} <= set(vs)
        assert ("litellm" in vs) == WITH_LITELLM
        for v, e in vs.items():
            assert e["latency_us"]["n"] > 0 and _positive(e["latency_us"]["p50"])
            if v != "direct":
                assert e["added_us"]["n"] == e["latency_us"]["n"]
                assert _finite(e["added_us"]["p50"]) and _finite(e["added_us"]["p99"])
    dec = r["results"]["decomposition"]
    assert "error" not in dec, f"B2's decomposition uses llm_multicloud internals that moved: {dec.get('error')}"
    for kind in ("sync", "async"):
        assert dec[kind]["lmc_own_us"]["n"] > 0
    assert _positive(r["results"]["sync_hop_us"]) and r["results"]["sync_hop_mechanism"]
    assert r["results"]["profile_async_non_stream"]["requests"] > 0
    assert sum(r["params"]["upstream_requests"].values()) > 0
    ld = r["results"]["load"]
    variants = {"direct", "lmc"} | ({"litellm"} if WITH_LITELLM else set())
    for kind in ("sync", "async"):
        assert set(ld["concurrency"][kind]) == {"1", "8"}  # --quick levels (full: 1, 64, 512)
        for vs in ld["concurrency"][kind].values():
            assert set(vs) == variants
            for x in vs.values():
                assert x["requests"] > 0 and x["errors"] == 0 and _positive(x["throughput_rps"])
                assert _positive(x["latency_ms"]["p99"]) and _positive(x["throughput_vs_direct"])
        assert set(ld["memory"][kind]) == variants  # LiteLLM's memory beside direct and ours
        for v in ("direct", "lmc"):
            m = ld["memory"][kind][v]
            assert m["all_held"] and m["errors"] == 0 and _positive(m["bytes_per_request"])
        for x in ld["post_burst"][kind].values():
            assert _positive(x["before_ms"]["p50"]) and _positive(x["after_ms"]["p50"])
    assert len(r["params"]["loadavg_end"]) == 3 and len(ld["loadavg_start"]) == 3


def _check_b3(r: dict[str, Any]) -> None:
    for kind in ("sync", "async"):
        k = r["results"][kind]
        for v in ("direct", "lmc"):
            assert k[v]["runs"] > 0 and k[v]["chunks_per_run"] > 100
            assert _positive(k[v]["chunks_per_s_median"])
        assert _positive(k["share_of_direct_median_of_pairs"])
    ld = r["results"]["load"]
    variants = {"direct", "lmc"} | ({"litellm"} if WITH_LITELLM else set())
    for kind in ("sync", "async"):
        assert set(ld["concurrency"][kind]) == {"1", "8"}  # --quick levels (full: 1, 64, 512)
        assert set(ld["chunks_per_stream"][kind]) == variants
        for vs in ld["concurrency"][kind].values():
            assert set(vs) == variants
            for x in vs.values():
                assert x["requests"] > 0 and x["errors"] == 0 and x["first_error"] is None
                assert _positive(x["chunks_per_s"]) and _positive(x["chunks_vs_direct"])
                assert _positive(x["latency_ms"]["p99"])
    assert len(ld["loadavg_start"]) == 3 and len(ld["loadavg_end"]) == 3
    assert [b["bar"].startswith("streaming chunks/s vs direct") for b in r["bars"]].count(True) == 2


def _check_b4(r: dict[str, Any]) -> None:
    rows = r["results"]
    assert {"no_hedge", "fixed", "adaptive"} <= set(rows)
    assert ("litellm" in rows) == WITH_LITELLM
    for v, x in rows.items():
        assert x["requests"] > 0 and x["upstream_requests"] > 0, v
        assert x["upstream_tail_requests"] >= x["upstream_tail_requests_cut_off"] >= 0
        if not v.startswith("litellm"):
            assert x["ok"] > 0
            assert _positive(x["ttft_ms"]["p50"]) and _positive(x["ttft_ms"]["p99"])
            assert _finite(x["extra_share"])


def _check_b5(r: dict[str, Any]) -> None:
    libs = r["results"]
    assert ("litellm" in libs) == WITH_LITELLM
    for x in libs.values():
        assert x["requests"] > 0
        assert x["dead_region"] in ("r0", "r1", "r2")
        assert _finite(x["t_down_s"]) and _finite(x["t_up_s"]) and x["t_up_s"] > x["t_down_s"]
        tl = x["timeline"]
        assert sum(sum(v) for v in tl["attempts_per_region"].values()) > 0
        assert x["latency_before"]["n"] > 0


def _check_b6(r: dict[str, Any]) -> None:
    res = r["results"]
    for key in ("import_llm_multicloud", "import_and_first_use"):
        assert _positive(res[key]["median_ms"]) and res[key]["runs"] > 0
    assert "openai" not in res["import_llm_multicloud"]["heavy_modules_loaded"]
    mem = res["memory_1000_endpoints"]
    assert mem["endpoints"] == 1000 and _positive(mem["traced_current_mb"]) and _positive(mem["construct_ms"])
    assert ("skipped" not in res["import_litellm"]) == WITH_LITELLM


def _check_b7(r: dict[str, Any]) -> None:
    rows = r["results"]
    assert {"no_affinity", "affinity", "session"} <= set(rows)
    assert ("litellm" in rows) == WITH_LITELLM
    for x in rows.values():
        assert x["requests"] > 0 and x["failed"] == 0
        assert 0 <= x["cache_hit_rate"] <= 1 and 0 < x["ideal_hit_rate"] <= 1
        assert x["residency_compliance"] == 1.0
        assert _positive(x["ttft_ms"]["p50"]) and _positive(x["cost_usd"])


def _check_b8(r: dict[str, Any]) -> None:
    rows = r["results"]
    assert {"blind", "local"} <= set(rows)
    for x in rows.values():
        assert x["upstream_requests"] > 0 and x["upstream_429"] >= 0
        assert _positive(x["tokens_possible"]) and _finite(x["capacity_used"])


CHECKS = {
    "b1_routing": _check_b1,
    "b2_overhead": _check_b2,
    "b3_streaming": _check_b3,
    "b4_hedging": _check_b4,
    "b5_outage": _check_b5,
    "b6_import": _check_b6,
    "b7_affinity": _check_b7,
    "b8_limits": _check_b8,
}


def test_every_benchmark_has_a_smoke_check() -> None:
    assert set(CHECKS) == set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_quick_run_is_well_formed(name: str, tmp_path: Path) -> None:
    mod = importlib.import_module(f"benchmarks.{name}")
    res = mod.run(quick=True, out_dir=tmp_path, litellm=LITELLM_FLAG)
    assert common.check_result(res) == []
    assert res["name"] == name and res["quick"] is True
    assert res["bars"], "every benchmark reports at least one bar"
    for b in res["bars"]:
        assert b["value"] is None or _finite(b["value"]), b
        assert b["met"] in (True, False, None)
    if not WITH_LITELLM and name in ("b2_overhead", "b3_streaming", "b4_hedging", "b5_outage", "b6_import"):
        text = str(res)
        assert "litellm not installed" in text or "disabled (--no-litellm)" in text
    CHECKS[name](res)
    if MATPLOTLIB:
        for p in res["plots"]:
            assert (tmp_path / p).stat().st_size > 1000
    md = mod.markdown(res)
    assert md.startswith("### ") and "| bar |" in md
    report = {
        "quick": True,
        "machine": common.machine_info(),
        "benchmarks": {name: res},
        "duration_s": res["duration_s"],
    }
    assert "## Bars" in run_all.render(report)


def test_litellm_missing_is_a_clean_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "litellm_installed", lambda: False)
    assert common.want_litellm(None) == (False, "litellm not installed")
    assert common.want_litellm(False) == (False, "disabled (--no-litellm)")
    with pytest.raises(RuntimeError, match="pip install litellm"):
        common.want_litellm(True)


def test_results_reject_non_finite_numbers() -> None:
    good = {
        "name": "x",
        "title": "t",
        "quick": True,
        "params": {},
        "results": {"a": [1, 2.5, None]},
        "bars": [common.bar("b", "≤ 1", 0.5, True)],
        "duration_s": 0.1,
    }
    assert common.check_result(good) == []
    bad = {**good, "results": {"a": float("nan")}}
    assert common.check_result(bad)
    assert common.clean(bad)["results"]["a"] is None
    assert common.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
