"""Shared helpers of the benchmarks: statistics, machine info, LiteLLM setup, fleets,
result checking, Markdown and the command line.

Nothing here imports openai, litellm or matplotlib at module level: the smoke tests
run under openai 2.x and 3.x without LiteLLM or matplotlib installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"

#: The logical model every benchmark asks for, and what the fleet serves it as.
MODEL = "llama"
SERVED = "served-llama"
MESSAGES = [{"role": "user", "content": "hello there"}]
PLACEHOLDER_KEY = "sk-placeholder-never-sent"

#: Real cloud regions for the simulated fleets (the router's geographic prior and
#: residency tags come from the built-in region table).
FLEET_REGIONS = (
    ("aws", "us-east-1"),
    ("gcp", "europe-west4"),
    ("azure", "japaneast"),
    ("aws", "eu-central-1"),
    ("gcp", "us-central1"),
    ("azure", "westeurope"),
)


# ----------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation between order statistics."""
    if not values:
        return math.nan
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def summarize(values: Sequence[float], *, scale: float = 1.0) -> dict[str, Any]:
    """n, mean, min, p50, p90, p99, p99.9 and max, each multiplied by ``scale``."""
    if not values:
        return {"n": 0}
    s = sorted(values)
    return {
        "n": len(s),
        "mean": sum(s) / len(s) * scale,
        "min": s[0] * scale,
        "p50": percentile(s, 0.5) * scale,
        "p90": percentile(s, 0.9) * scale,
        "p99": percentile(s, 0.99) * scale,
        "p999": percentile(s, 0.999) * scale,
        "max": s[-1] * scale,
    }


def rotations(variants: Sequence[str], rounds: int) -> Iterator[tuple[int, list[str]]]:
    """Interleaving order: round i runs every variant once, the order rotated by i
    (ABC, BCA, CAB, ...), so that no variant always goes first after a pause."""
    k = len(variants)
    for i in range(rounds):
        j = i % k
        yield i, [*variants[j:], *variants[:j]]


def shuffled_rounds(variants: Sequence[str], rounds: int, seed: int = 1) -> Iterator[tuple[int, list[str]]]:
    """Interleaving order: round i runs every variant once, in a fresh random order.
    Unlike a fixed rotation, no variant always follows the same neighbour (LiteLLM leaves
    logging work behind on the event loop and in a thread; with a rotation it would
    always land on the same next variant)."""
    rng = random.Random(seed)
    names = list(variants)
    for i in range(rounds):
        yield i, rng.sample(names, len(names))


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when undefined (b <= 0 or missing)."""
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b <= 0:
        return None
    return a / b


# ----------------------------------------------------------------------------- machine


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on. Versions come from package metadata, so
    neither openai nor litellm is imported here."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        commit: str | None = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    try:  # read-only: which library files differ from the commit (they are what was measured)
        dirty: list[str] | None = [
            line[3:]
            for line in subprocess.run(
                ["git", "status", "--porcelain", "--", "llm_multicloud"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.splitlines()
            if line.strip()
        ]
    except (OSError, subprocess.SubprocessError):
        dirty = None
    http_lib = "httpx2" if importlib.util.find_spec("httpx2") is not None else "httpx"
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "openai": _version("openai"),
        "http_lib": http_lib,
        "httpx2": _version("httpx2"),
        "httpx": _version("httpx"),
        "litellm": _version("litellm"),
        "llm_multicloud": _version("llm-multicloud"),
        "pydantic": _version("pydantic"),
        "anyio": _version("anyio"),
        "uvicorn": _version("uvicorn"),
        "loadavg": load,
        "commit": commit,
        "uncommitted_library_files": dirty,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ----------------------------------------------------------------------------- LiteLLM


def litellm_installed() -> bool:
    return importlib.util.find_spec("litellm") is not None


def want_litellm(flag: bool | None) -> tuple[bool, str | None]:
    """(use it?, why not). ``None`` = use it when installed."""
    if flag is False:
        return False, "disabled (--no-litellm)"
    if not litellm_installed():
        if flag:
            raise RuntimeError("litellm was requested but is not installed (pip install litellm)")
        return False, "litellm not installed"
    return True, None


def load_litellm() -> Any:
    """Import LiteLLM for offline use: local model cost map, no tokenizer download,
    no telemetry, no callbacks, quiet logging. Nothing leaves 127.0.0.1."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import litellm

    litellm.disable_hf_tokenizer_download = True
    for name, value in (
        ("telemetry", False),
        ("suppress_debug_info", True),
        ("turn_off_message_logging", True),
        ("set_verbose", False),
        ("drop_params", True),
    ):
        if hasattr(litellm, name):
            setattr(litellm, name, value)
    for name in ("callbacks", "success_callback", "failure_callback", "input_callback", "service_callback"):
        if isinstance(getattr(litellm, name, None), list):
            setattr(litellm, name, [])
    import logging

    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return litellm


def litellm_deployments(fleet: Any, region_ids: Iterable[str]) -> list[dict[str, Any]]:
    """One LiteLLM deployment per fleet region (OpenAI-compatible, ``api_base``)."""
    return [
        {
            "model_name": MODEL,
            "litellm_params": {"model": f"openai/{SERVED}", "api_base": fleet.url(rid), "api_key": fleet.api_key(rid)},
            "model_info": {"id": rid},
        }
        for rid in region_ids
    ]


# ----------------------------------------------------------------------------- fleets


def region_specs(n: int, latency: Any, *, seed0: int = 0) -> list[Any]:
    """``n`` fleet regions (ids r0..r{n-1}) in distinct real cloud regions, all serving MODEL."""
    from llm_multicloud.fleet import RegionSpec

    out = []
    for i in range(n):
        provider, region = FLEET_REGIONS[i % len(FLEET_REGIONS)]
        out.append(
            RegionSpec(
                id=f"r{i}",
                provider=provider,
                region=region,
                models={MODEL: SERVED},
                api_key=f"sk-bench-r{i}",
                latency=latency,
                seed=seed0 + i,
            )
        )
    return out


def catalog_for(
    fleet: Any, region_ids: Iterable[str] | None = None, policy: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The fleet's catalog, restricted to some regions."""
    cat = fleet.catalog(policy=policy)
    if region_ids is not None:
        keep = set(region_ids)
        cat["endpoints"] = [e for e in cat["endpoints"] if e["id"] in keep]
    return cat


def counts_total(fleet: Any) -> int:
    return sum(fleet.counts().values())


# ----------------------------------------------------------------------------- results


def bar(name: str, target: str, value: float | None, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"bar": name, "target": target, "value": value, "met": met, "note": note}


def litellm_absent(use_litellm: bool, why_not: str | None) -> list[dict[str, Any]]:
    """The row that says why LiteLLM did not run alongside (none when it did)."""
    return [] if use_litellm else [bar("LiteLLM alongside", "—", None, None, why_not or "")]


def problems(obj: Any, path: str = "$") -> list[str]:
    """Every non-finite number (NaN, inf) in a result: results must be JSON-clean.
    ``None`` is allowed and means "not measured / undefined" (always explained)."""
    out: list[str] = []
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return out
    if isinstance(obj, int | float):
        if not math.isfinite(obj):
            out.append(f"{path} = {obj}")
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                out.append(f"{path}: non-string key {k!r}")
            out.extend(problems(v, f"{path}.{k}"))
        return out
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out.extend(problems(v, f"{path}[{i}]"))
        return out
    out.append(f"{path}: unexpected type {type(obj).__name__}")
    return out


def check_result(result: dict[str, Any]) -> list[str]:
    """Structural problems of one benchmark result (empty list: well-formed)."""
    errs = problems(result)
    for key in ("name", "title", "quick", "params", "results", "bars", "duration_s"):
        if key not in result:
            errs.append(f"missing key {key!r}")
    for b in result.get("bars", []):
        for key in ("bar", "target", "value", "met"):
            if key not in b:
                errs.append(f"bar {b.get('bar')!r}: missing {key!r}")
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        errs.append(f"not JSON-serializable: {exc}")
    return errs


def clean(obj: Any) -> Any:
    """Replace non-finite floats by None (JSON has no NaN/inf)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- plots


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- Markdown


def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}f}"
    return str(x)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |")
    return "\n".join(lines)


def met_mark(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "**missed**")


def markdown_tail(res: dict[str, Any], errors: dict[str, str | None] | None = None) -> list[str]:
    """What every benchmark's Markdown ends with: the first error of each variant that
    had one (a benchmark that hides its failures measures the wrong thing), then the
    bars table. ``errors``: variant -> its first error, where the results are not one
    entry per variant with an ``errors`` list (see :func:`load_errors`)."""
    lines: list[str] = []
    if errors is None:
        errs = [(v, r["errors"][0]) for v, r in res["results"].items() if r["errors"]]
    else:
        errs = [(v, e) for v, e in errors.items() if e]
    if errs:
        lines += ["", "First error per variant: " + "; ".join(f"{v}: `{e}`" for v, e in errs)]
    return [*lines, "", bars_table(res["bars"])]


def load_errors(concurrency: dict[str, Any]) -> dict[str, str | None]:
    """The first error of each (client, concurrency, variant) of a
    :func:`benchmarks.load.concurrency` run, for :func:`markdown_tail`."""
    return {
        f"{kind} ×{c} {v}": x.get("first_error")
        for kind, levels in concurrency.items()
        for c, vs in levels.items()
        for v, x in vs.items()
    }


def bars_table(bars: Sequence[dict[str, Any]]) -> str:
    return md_table(
        ["bar", "target", "measured", "verdict", "note"],
        [(b["bar"], b["target"], fmt(b["value"]), met_mark(b["met"]), b.get("note", "")) for b in bars],
    )


# ----------------------------------------------------------------------------- CLI


def out_dir_for(quick: bool, out_dir: str | Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    return QUICK_RESULTS_DIR if quick else RESULTS_DIR


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load average (this machine is shared: every figure carries it)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def finish(result: dict[str, Any], t0: float) -> dict[str, Any]:
    result["duration_s"] = round(time.monotonic() - t0, 2)
    result.setdefault("params", {})["loadavg_end"] = loadavg()
    return clean(result)


def main_for(
    name: str,
    run: Callable[..., dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
    argv: Sequence[str] | None = None,
) -> int:
    """Command line of one benchmark: run it, write ``<out>/<name>.json``, print Markdown."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=(run.__doc__ or "").strip())
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds); for smoke runs")
    p.add_argument(
        "--out-dir",
        default=None,
        help="where JSON and PNG go (default: benchmarks/results, or benchmarks/results/quick with --quick)",
    )
    p.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM side even if installed")
    args = p.parse_args(argv)
    out = out_dir_for(args.quick, args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = run(quick=args.quick, out_dir=out, litellm=False if args.no_litellm else None)
    result.setdefault("machine", machine_info())
    errs = check_result(result)
    write_json(out / f"{name}.json", result)
    print(markdown(result))
    print(f"\nwritten: {out / (name + '.json')}", file=sys.stderr)
    if errs:
        print("malformed result:\n  " + "\n  ".join(errs), file=sys.stderr)
        return 1
    return 0


def save_plot(fig: Any, out: Path, filename: str, result: dict[str, Any]) -> None:
    """Lay out, write and close a matplotlib figure, and list it in the result."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / filename, dpi=110)
    plt.close(fig)
    result["plots"].append(filename)
