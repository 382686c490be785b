"""Run every benchmark, each in its own Python process, and write the results:

* ``benchmarks/results/latest.json`` — machine info and every benchmark's full result;
* ``benchmarks/results/latest.md``   — Markdown tables (the bars first);
* ``benchmarks/results/<bN>.json`` and the PNG plots.

``python -m benchmarks.run_all`` (full size, ≈ 10 minutes on 2 cores) or
``--quick`` (seconds per benchmark; results go to ``benchmarks/results/quick/``).
A separate process per benchmark keeps them independent (no module, thread or
LiteLLM state leaks from one to the next); each fleet runs in a process of its own.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from . import BENCHMARKS, common


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# llm_multicloud benchmark results",
        "",
        f"{'Quick (smoke-size) run' if report['quick'] else 'Full run'} of {m['date']}, "
        f"commit {m.get('commit') or 'n/a'}"
        + (
            f" plus uncommitted changes to {', '.join(m['uncommitted_library_files'])}"
            if m.get("uncommitted_library_files")
            else ""
        )
        + f", {report['duration_s']:.0f} s in all. "
        "Produced by `python -m benchmarks.run_all"
        f"{' --quick' if report['quick'] else ''}`; see docs/benchmarks.md for what each benchmark does.",
        "",
        "## Machine",
        "",
        common.md_table(
            ["", ""],
            [
                ("CPU", f"{m['cpu']} ({m['cores']} cores)"),
                ("OS", m["platform"]),
                ("Python", f"{m['python']} ({m['implementation']})"),
                ("openai", f"{m['openai']} on {m['http_lib']} {m.get(m['http_lib']) or ''}"),
                ("litellm", m.get("litellm") or "not installed"),
                ("pydantic / anyio / uvicorn", f"{m.get('pydantic')} / {m.get('anyio')} / {m.get('uvicorn')}"),
                (
                    "load average (1/5/15 min) before → after",
                    f"{report.get('load_before')} → {report.get('load_after')}",
                ),
            ],
        ),
        "",
        "The machine is shared and noisy: every comparison is paired or interleaved within one run, and "
        "ratios are more trustworthy than absolute times.",
        "",
        "## Bars",
        "",
    ]
    rows = []
    for name, res in report["benchmarks"].items():
        if "error" in res:
            rows.append((name, "benchmark failed", "—", "—", "**error**", res["error"][:200]))
            continue
        for b in res["bars"]:
            rows.append(
                (name, b["bar"], b["target"], common.fmt(b["value"]), common.met_mark(b["met"]), b.get("note", ""))
            )
    lines.append(common.md_table(["benchmark", "bar", "target", "measured", "verdict", "note"], rows))
    for name, res in report["benchmarks"].items():
        lines += ["", "---", ""]
        if "error" in res:
            lines += [f"### {name}", "", f"Failed: `{res['error'][:2000]}`"]
            continue
        mod = importlib.import_module(f"benchmarks.{name}")
        lines.append(mod.markdown(res))
        for p in res.get("plots", []):
            lines += ["", f"![{p}]({p})"]
        lines += [
            "",
            f"_{res['duration_s']:.0f} s; parameters: `{json.dumps(res['params'], ensure_ascii=False)[:600]}`_",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run_all", description=(__doc__ or "").strip().splitlines()[0]
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    p.add_argument(
        "--out-dir", default=None, help="default: benchmarks/results (benchmarks/results/quick with --quick)"
    )
    p.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM side")
    p.add_argument("--only", default=None, help="comma-separated subset, e.g. b1_routing,b6_import")
    p.add_argument("--timeout", type=float, default=None, help="per benchmark, seconds (default 900, quick 300)")
    args = p.parse_args(argv)
    out = common.out_dir_for(args.quick, args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in BENCHMARKS if args.only is None or n in args.only.split(",")]
    timeout = args.timeout or (300.0 if args.quick else 900.0)
    t0 = time.monotonic()
    report: dict[str, Any] = {
        "quick": args.quick,
        "machine": common.machine_info(),
        "load_before": common.machine_info()["loadavg"],
        "benchmarks": {},
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(common.REPO_ROOT), env.get("PYTHONPATH", "")) if x)
    failures = 0
    for name in names:
        cmd = [sys.executable, "-m", f"benchmarks.{name}", "--out-dir", str(out)]
        if args.quick:
            cmd.append("--quick")
        if args.no_litellm:
            cmd.append("--no-litellm")
        print(f"== {name} ...", file=sys.stderr, flush=True)
        t1 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=common.REPO_ROOT, env=env, timeout=timeout, capture_output=True, text=True)
            path = out / f"{name}.json"
            if proc.returncode != 0 or not path.exists():
                raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-3000:]}")
            res = json.loads(path.read_text())
            res["load_after"] = common.machine_info()["loadavg"]
            report["benchmarks"][name] = res
            print(proc.stdout, flush=True)
        except (subprocess.TimeoutExpired, RuntimeError, ValueError) as exc:
            failures += 1
            report["benchmarks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"!! {name} failed: {exc}", file=sys.stderr, flush=True)
        print(f"== {name} done in {time.monotonic() - t1:.0f} s", file=sys.stderr, flush=True)
    report["load_after"] = common.machine_info()["loadavg"]
    report["duration_s"] = round(time.monotonic() - t0, 1)
    report["bars"] = [{"benchmark": n, **b} for n, r in report["benchmarks"].items() if "bars" in r for b in r["bars"]]
    common.write_json(out / "latest.json", report)
    (out / "latest.md").write_text(render(common.clean(report)), encoding="utf-8")
    print(f"written: {out / 'latest.json'}, {out / 'latest.md'}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
