"""B6 — import time and memory.

Each measurement runs in a fresh Python subprocess (so nothing is cached in
``sys.modules``), several times, with bytecode caches warm, as after a pip install
(a throw-away run first; ``PYTHONPYCACHEPREFIX`` points the caches at a directory
under the system temp dir so the checkout stays untouched, whatever
``PYTHONDONTWRITEBYTECODE`` says). Reported:

* ``import llm_multicloud`` — time around the import statement (and the
  ``-X importtime`` cumulative figure); checks that openai was *not* imported;
* ``import llm_multicloud; llm_multicloud.MultiCloud`` — the first use, which loads
  pydantic, anyio and the engine (still without openai);
* for scale: ``import openai`` and LiteLLM's ``import litellm`` (offline cost map);
* memory of a ``MultiCloud`` over a 1000-endpoint catalog: RSS delta (no tracing)
  and ``tracemalloc`` current/peak (separate runs), after the modules are loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import common

NAME = "b6_import"
TITLE = "B6 — import time and memory"
BAR_IMPORT_MS = 150.0

_TIMED = """
import sys, time
t0 = time.perf_counter()
{stmt}
t1 = time.perf_counter()
import json
heavy = [m for m in ("openai", "httpx", "httpx2", "pydantic", "anyio", "yaml", "litellm") if m in sys.modules]
print("RESULT " + json.dumps({{"ms": (t1 - t0) * 1000, "modules": len(sys.modules), "loaded": heavy}}))
"""

_MEMORY = """
import gc, json, os, sys, time
from benchmarks.b1_routing import build_catalog
cat = build_catalog({n})
import llm_multicloud
llm_multicloud.MultiCloud
from llm_multicloud.context import UNCONSTRAINED
trace = {trace}
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
if trace:
    import tracemalloc
    tracemalloc.start()
gc.collect()
r0 = rss()
t0 = time.perf_counter()
mc = llm_multicloud.MultiCloud(cat, {{"probe": {{"enabled": False}}}})
t1 = time.perf_counter()
mc.router.plan("llama", UNCONSTRAINED, mc.health.states, mc.clock())
mc.snapshot()
gc.collect()
out = {{"rss_delta_mb": (rss() - r0) / 2**20, "construct_ms": (t1 - t0) * 1000}}
if trace:
    cur, peak = tracemalloc.get_traced_memory()
    out.update({{"traced_current_mb": cur / 2**20, "traced_peak_mb": peak / 2**20}})
print("RESULT " + json.dumps(out))
"""


def _env(pycache: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = pycache
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(common.REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _run(
    code: str, env: dict[str, str], *, args: tuple[str, ...] = (), timeout: float = 120.0
) -> tuple[dict[str, Any], str]:
    p = subprocess.run(
        [sys.executable, *args, "-c", code],
        env=env,
        cwd=common.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"subprocess failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(line[len("RESULT ") :]), p.stderr


def _importtime_us(stderr: str, module: str) -> int | None:
    """Cumulative µs of ``module`` from ``-X importtime`` output."""
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = [p.strip() for p in line[len("import time:") :].split("|")]
        if len(parts) == 3 and parts[2] == module:
            try:
                return int(parts[1])
            except ValueError:
                return None
    return None


def _importtime_groups(stderr: str, top: int = 10) -> list[dict[str, Any]]:
    """Self time from ``-X importtime`` summed per top-level package (llm_multicloud per module)."""
    groups: dict[str, int] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = [p.strip() for p in line[len("import time:") :].split("|")]
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        name = parts[2]
        key = name if name.startswith("llm_multicloud") else name.split(".")[0]
        groups[key] = groups.get(key, 0) + int(parts[0])
    ranked = sorted(groups.items(), key=lambda kv: -kv[1])[:top]
    return [{"module": k, "self_ms": v / 1000.0} for k, v in ranked]


def _timed(stmt: str, env: dict[str, str], runs: int, importtime_module: str | None = None) -> dict[str, Any]:
    code = _TIMED.format(stmt=stmt)
    _run(code, env)  # warm the bytecode cache
    ms: list[float] = []
    it: list[float] = []
    info: dict[str, Any] = {}
    for _ in range(runs):
        res, _err = _run(code, env)
        ms.append(res["ms"])
        info = res
        if importtime_module is not None:
            _r2, err = _run(code, env, args=("-X", "importtime"))
            v = _importtime_us(err, importtime_module)
            if v is not None:
                it.append(v / 1000.0)
    out = {
        "runs": runs,
        "median_ms": common.percentile(ms, 0.5),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "modules_loaded": info.get("modules"),
        "heavy_modules_loaded": info.get("loaded", []),
    }
    if importtime_module is not None:
        out["importtime_cumulative_ms_median"] = common.percentile(it, 0.5) if it else None
    return out


def run(*, quick: bool = False, out_dir: str | Path | None = None, litellm: bool | None = None) -> dict[str, Any]:
    """B6: import time of llm_multicloud (and of openai / LiteLLM for scale), memory of 1000 endpoints."""
    t_start = time.monotonic()
    use_litellm, why_not = common.want_litellm(litellm)
    runs = 2 if quick else 9
    ll_runs = 1 if quick else 3
    mem_runs = 1 if quick else 3
    n_endpoints = 1000
    # A persistent bytecode cache outside the checkout: compiled once per machine (openai and
    # LiteLLM take seconds to compile), reused afterwards; sources newer than it are recompiled.
    pycache = Path(tempfile.gettempdir()) / "llm-multicloud-bench-pycache"
    env = _env(str(pycache))
    imp = _timed("import llm_multicloud", env, runs, importtime_module="llm_multicloud")
    first_stmt = "import llm_multicloud; llm_multicloud.MultiCloud"
    first_use = _timed(first_stmt, env, runs)
    _r, err = _run(_TIMED.format(stmt=first_stmt), env, args=("-X", "importtime"))
    first_use["importtime_top_self_ms"] = _importtime_groups(err)
    openai_imp = None if quick else _timed("import openai", env, max(1, runs // 2))
    ll_imp = _timed("import litellm", env, ll_runs) if use_litellm else None
    rss_runs = [_run(_MEMORY.format(n=n_endpoints, trace=False), env)[0] for _ in range(mem_runs)]
    trace_runs = [_run(_MEMORY.format(n=n_endpoints, trace=True), env)[0] for _ in range(mem_runs)]

    mem = {
        "endpoints": n_endpoints,
        "rss_delta_mb": common.percentile([r["rss_delta_mb"] for r in rss_runs], 0.5),
        "construct_ms": common.percentile([r["construct_ms"] for r in rss_runs], 0.5),
        "traced_current_mb": common.percentile([r["traced_current_mb"] for r in trace_runs], 0.5),
        "traced_peak_mb": common.percentile([r["traced_peak_mb"] for r in trace_runs], 0.5),
    }
    mem["traced_kb_per_endpoint"] = mem["traced_current_mb"] * 1024 / n_endpoints
    results: dict[str, Any] = {
        "import_llm_multicloud": imp,
        "import_and_first_use": first_use,
        "import_openai": openai_imp if openai_imp is not None else {"skipped": "not measured in --quick"},
        "import_litellm": ll_imp if ll_imp is not None else {"skipped": why_not},
        "openai_imported_by_llm_multicloud": "openai" in imp["heavy_modules_loaded"]
        or "openai" in first_use["heavy_modules_loaded"],
        "memory_1000_endpoints": mem,
    }
    ratio = common.ratio(ll_imp["median_ms"], imp["median_ms"]) if ll_imp else None
    results["litellm_import_vs_llm_multicloud"] = ratio
    v = imp["median_ms"]
    bars = [
        common.bar(
            "import llm_multicloud (without openai)",
            f"≤ {BAR_IMPORT_MS:g} ms",
            v,
            v <= BAR_IMPORT_MS and not results["openai_imported_by_llm_multicloud"],
            f"median of {runs} fresh processes; "
            f"-X importtime {common.fmt(imp.get('importtime_cumulative_ms_median'))} ms; "
            f"+ first use (MultiCloud: pydantic, anyio, engine) {first_use['median_ms']:.0f} ms; "
            f"openai imported: {'yes' if results['openai_imported_by_llm_multicloud'] else 'no'}",
        ),
        common.bar(
            "import litellm (for scale)",
            "—",
            ll_imp["median_ms"] if ll_imp else None,
            None,
            (f"{ratio:.0f}× llm_multicloud's import" if ratio else "") if ll_imp else (why_not or ""),
        ),
    ]
    result = {
        "name": NAME,
        "title": TITLE,
        "quick": quick,
        "params": {
            "runs": runs,
            "litellm_runs": ll_runs if use_litellm else 0,
            "memory_runs": mem_runs,
            "note": "fresh subprocess per measurement; bytecode cache warm (PYTHONPYCACHEPREFIX in a temp dir); "
            "LITELLM_LOCAL_MODEL_COST_MAP=True",
        },
        "results": results,
        "bars": bars,
        "plots": [],
    }
    return common.finish(result, t_start)


def markdown(res: dict[str, Any]) -> str:
    r = res["results"]
    rows = []
    for label, key in (
        ("`import llm_multicloud`", "import_llm_multicloud"),
        ("`import llm_multicloud; llm_multicloud.MultiCloud` (first use)", "import_and_first_use"),
        ("`import openai` (for scale)", "import_openai"),
        ("`import litellm` (for scale)", "import_litellm"),
    ):
        e = r[key]
        if "skipped" in e:
            rows.append((label, "skipped", e["skipped"], "", ""))
            continue
        rows.append(
            (
                label,
                e["runs"],
                e["median_ms"],
                f"{e['min_ms']:.1f}–{e['max_ms']:.1f}",
                ", ".join(e["heavy_modules_loaded"]) or "—",
            )
        )
    m = r["memory_1000_endpoints"]
    return "\n".join(
        [
            f"### {res['title']}",
            "",
            common.md_table(
                ["statement (fresh process)", "runs", "median ms", "range ms", "heavy modules loaded"], rows
            ),
            "",
            f"Memory of a MultiCloud over {m['endpoints']} endpoints (after imports): "
            f"RSS +{m['rss_delta_mb']:.1f} MB; tracemalloc {m['traced_current_mb']:.1f} MB retained "
            f"({m['traced_kb_per_endpoint']:.1f} KB per endpoint), peak {m['traced_peak_mb']:.1f} MB; "
            f"construction (catalog validation included) {m['construct_ms']:.0f} ms.",
            "",
            "First use, where the import time goes (`-X importtime` self time per package, one run): "
            + ", ".join(
                f"{g['module']} {g['self_ms']:.0f} ms"
                for g in r["import_and_first_use"].get("importtime_top_self_ms", [])
            )
            + ".",
            "",
            common.bars_table(res["bars"]),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(common.main_for(NAME, run, markdown))
