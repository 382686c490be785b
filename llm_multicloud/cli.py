"""``llm-multicloud``: demo, fleet, explain, status and validate.

* ``demo`` — no credentials needed: starts a simulated three-cloud fleet on
  loopback, sends a mixed workload through the real openai SDK, shows where each
  request went and why, then takes a region down and shows the failover.
* ``fleet CONFIG`` — run a simulated fleet to rehearse an outage against your code.
* ``explain CATALOG --model M [--residency EU] [--near eu-west-1]`` — the plan
  with reasons.
* ``status CATALOG`` — probe every endpoint once and print a table (``--json``);
  ``--smoke`` also sends each endpoint a one-token request (inference health).
* ``validate CATALOG`` — load the catalog and print what is wrong with it;
  ``--offline`` needs none of its secrets (CI).

``python -m llm_multicloud`` is the same command. Output piped into ``head``
ends quietly; the exit code still tells the verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import LLMMulticloudError
from .tables import format_table

if TYPE_CHECKING:
    from .catalog import Endpoint
    from .client import MultiCloud
    from .probe import ProbeResult


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["fleet"]:
        # Hand everything after "fleet" to the fleet's own parser (it has options
        # such as --demo that argparse.REMAINDER would not pass through).
        from .fleet.cli import main as fleet_main

        return fleet_main(args_list[1:])
    from ._version import __version__

    p = argparse.ArgumentParser(prog="llm-multicloud", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=f"llm-multicloud {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="simulated three-cloud fleet on loopback: routing, residency, failover")
    d.add_argument("--requests", type=int, default=24, help="requests per phase (default 24)")
    f = sub.add_parser("fleet", help="run a simulated fleet from a YAML/JSON FleetSpec", add_help=False)
    f.add_argument("rest", nargs=argparse.REMAINDER)
    e = sub.add_parser("explain", help="show the routing plan for a hypothetical request")
    e.add_argument("catalog")
    e.add_argument("--model", required=True)
    e.add_argument("--residency")
    e.add_argument("--near")
    e.add_argument("--tags", help="k=v,k2=v2")
    e.add_argument("--max-tokens", type=int)
    e.add_argument("--input-tokens", type=int, default=0)
    e.add_argument("--json", action="store_true")
    s = sub.add_parser("status", help="probe every endpoint once and print a table")
    s.add_argument("catalog")
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--smoke",
        action="store_true",
        help="also send each endpoint a one-token chat request: inference health, not only /models (costs a token)",
    )
    s.add_argument("--model", help="with --smoke: the logical model to send (default: each endpoint's first)")
    v = sub.add_parser("validate", help="validate a catalog")
    v.add_argument("catalog")
    v.add_argument(
        "--probe", action="store_true", help="also ask each endpoint's /models and report served-name mismatches"
    )
    v.add_argument(
        "--offline",
        action="store_true",
        help="check the catalog without its secrets: unset *_env variables are warnings (for CI)",
    )
    args = p.parse_args(args_list)
    try:
        if args.cmd == "demo":
            from .demo import run_demo

            return run_demo(requests=args.requests)
        if args.cmd == "explain":
            return _explain(args)
        if args.cmd == "status":
            return _status(args)
        if args.cmd == "validate":
            from .catalog import Catalog

            if args.offline and args.probe:
                print(
                    "error: --offline and --probe exclude each other (--probe talks to the endpoints)", file=sys.stderr
                )
                return 2
            with _offline_secrets(args.catalog) if args.offline else _nothing():
                cat = Catalog.load(args.catalog)
                cat.policy()  # the policy section too
            _out(f"ok: {len(cat.endpoints)} endpoints, models: {', '.join(sorted(cat.models))}")
            if args.probe:
                return _validate_probe(args)
            return 0
    except LLMMulticloudError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


def _out(text: str) -> None:
    """Print to stdout; a reader that went away (``| head``) ends the output quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit: point
        # stdout at /dev/null so that the process ends quietly with its own exit code.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _offline_secrets(path: str) -> Iterator[None]:
    """``validate --offline``: every ``*_env`` variable the catalog names that is not set
    gets a placeholder while it loads (reported as a warning), so that CI can check a
    catalog without its secrets. Nothing is sent anywhere."""
    from pathlib import Path

    from .catalog import _parse_text

    try:
        data: Any = _parse_text(Path(path).read_text(encoding="utf-8"), Path(path))
    except (OSError, LLMMulticloudError):
        yield  # Catalog.load reports it properly
        return
    missing = sorted({v for v in _env_names(data) if not os.environ.get(v)})
    for name in missing:
        print(f"warning: environment variable {name!r} is not set (needed at run time; not needed for --offline)")
        os.environ[name] = "offline-placeholder"
    try:
        yield
    finally:
        for name in missing:
            os.environ.pop(name, None)


def _env_names(node: Any) -> Iterator[str]:
    """Values of every ``*_env`` key anywhere in a catalog (``api_key_env``, auth settings...)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str) and k.endswith("_env") and isinstance(v, str) and v:
                yield v
            else:
                yield from _env_names(v)
    elif isinstance(node, list):
        for item in node:
            yield from _env_names(item)


def _explain(args: argparse.Namespace) -> int:
    from .client import MultiCloud
    from .context import UNCONSTRAINED

    tags = None
    if args.tags:
        from .intent import _parse_tags

        try:
            tags = _parse_tags(args.tags)
        except LLMMulticloudError as exc:
            return _flag_error("--tags", args.tags, exc)
    # Each flag on its own, so that an error names the flag (not a header or keyword).
    for flag, kw in (("--residency", {"residency": args.residency}), ("--near", {"near": args.near})):
        if next(iter(kw.values())) is not None:
            try:
                UNCONSTRAINED.narrow(**kw)
            except LLMMulticloudError as exc:
                return _flag_error(flag, next(iter(kw.values())), exc)
    with MultiCloud(args.catalog) as mc:
        plan = mc.explain(
            args.model,
            residency=args.residency,
            near=args.near,
            tags=tags,
            input_tokens=args.input_tokens,
            max_tokens=args.max_tokens,
        )
        if args.json:
            _out(json.dumps(plan.to_dict(), indent=2))
        else:
            _out(plan.describe())
    if not plan.candidates:
        print(
            "this request would get a 503: no endpoint is eligible (each excluded one is listed above with why)",
            file=sys.stderr,
        )
        return 1
    return 0


def _flag_error(flag: str, value: str, exc: Exception) -> int:
    """An error about a command-line flag, named as that flag."""
    import re

    msg = re.sub(r"^x-llm-multicloud-[a-z-]+:\s*", "", str(exc))
    msg = msg.replace(" for near=", "")
    print(f"error: {flag} {value!r}: {msg}", file=sys.stderr)
    return 2


def _probe_once(mc: MultiCloud) -> dict[str, ProbeResult]:
    """One probe round over every endpoint, outside the MultiCloud's background loop."""
    import anyio

    from .client import _lib
    from .probe import Prober
    from .upstream import Upstream

    async def once() -> list[ProbeResult]:
        up = Upstream(_lib(None))
        try:
            return await Prober(mc).probe_all(up)
        finally:
            await up.aclose()

    return {r.endpoint: r for r in anyio.run(once)}


def _not_listed(ep: Endpoint, pr: ProbeResult) -> str:
    """What to tell about served names this endpoint's /models did not list."""
    shown = ", ".join(repr(i) for i in (pr.models_listed or [])[:8]) or "nothing"
    names = ", ".join(f"{ep.models[m]!r} (model {m!r})" for m in pr.unlisted)
    return f"endpoint {ep.id}: /models does not list {names}; it lists {shown}"


def _validate_probe(args: argparse.Namespace) -> int:
    from .client import MultiCloud

    with MultiCloud(args.catalog, {"probe": {"enabled": False}}) as mc:
        results = _probe_once(mc)
        for ep in mc.catalog.endpoints:
            pr = results[ep.id]
            if not pr.ok:
                print(f"warning: endpoint {ep.id}: probe failed: {pr.error}")
            elif pr.unlisted:
                # A mismatch is a warning, not an error: many servers answer a name
                # they do not list (llama.cpp answers any name with its one model).
                print(f"warning: {_not_listed(ep, pr)}; requests naming it may still succeed")
    return 0


def _status(args: argparse.Namespace) -> int:
    from .client import MultiCloud

    with MultiCloud(args.catalog, {"probe": {"enabled": False}}) as mc:
        if args.model is not None and args.model not in mc.catalog.models:
            known = ", ".join(sorted(mc.catalog.models))
            print(f"error: --model {args.model!r}: not in the catalog (it serves: {known})", file=sys.stderr)
            return 2
        results = _probe_once(mc)
        smoke = _smoke_once(mc, args.model) if args.smoke else {}
        rows: list[dict[str, Any]] = []
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        for ep in mc.catalog.endpoints:
            pr = results[ep.id]
            price = (
                "unknown" if ep.price is None else f"${ep.price[0]:.3f}/${ep.price[1]:.3f}"  # input/output per Mtok
            )
            row: dict[str, Any] = {
                "id": ep.id,
                "provider": ep.provider,
                "region": ep.region,
                "residency": ",".join(ep.residency) or "unknown",
                "rtt_ms": None if pr.rtt_ms is None else round(pr.rtt_ms, 1),
                "models": {
                    m: (m not in pr.missing and m not in pr.unlisted)
                    if pr.ok and pr.models_listed is not None
                    else None
                    for m in ep.models
                },
                "models_listed": pr.models_listed,
                "not_listed": _not_listed(ep, pr) if pr.unlisted else None,
                "price_per_mtok": price,
                "state": "up" if pr.ok else "down",
                "error": pr.error,
                "breaker": snap[ep.id]["state"],
            }
            if args.smoke:
                sm = smoke[ep.id]
                row["inference"] = sm
                if sm["ok"] is False:
                    row["state"] = "down"
            rows.append(row)
    rc = 0 if all(r["state"] == "up" for r in rows) else 1
    if args.json:
        _out(json.dumps(rows, indent=2))
        return rc
    header = ["endpoint", "provider", "region", "residency", "RTT ms", "models served", "price in/out per Mtok"]
    if args.smoke:
        header.append("inference")
    header.append("state")
    table: list[list[str]] = [header]
    for r in rows:
        served = ", ".join(
            f"{m}{'' if ok else ('?' if ok is None else ' (not listed)')}" for m, ok in r["models"].items()
        )
        rtt = "-" if r["rtt_ms"] is None else f"{r['rtt_ms']:.1f}"
        line = [r["id"], r["provider"], r["region"], r["residency"], rtt, served, r["price_per_mtok"]]
        if args.smoke:
            sm = r["inference"]
            line.append("skipped" if sm["ok"] is None else (f"ok {sm['ms']:.0f} ms" if sm["ok"] else "failed"))
        line.append(r["state"])
        table.append(line)
    out = [format_table(table)]
    # Errors in full, one per line under the table (a table cell would cut them).
    for r in rows:
        if r["error"]:
            out.append(f"{r['id']}: /models probe: {r['error']}")
        if args.smoke and r["inference"]["error"]:
            out.append(f"{r['id']}: inference: {r['inference']['error']}")
        if r["not_listed"]:
            out.append(f"note: {r['not_listed']}")
    _out("\n".join(out))
    return rc


def _smoke_once(mc: MultiCloud, model: str | None) -> dict[str, dict[str, Any]]:
    """``status --smoke``: one non-streamed, one-token chat request to every endpoint at
    once (``max_tokens: 1``), straight to the endpoint with its own credentials, so
    that an endpoint whose ``/models`` answers while inference fails (503, hangs,
    wrong served name) shows as down. Bounded by the policy's ``connect_s`` and
    ``first_token_s``."""
    import time

    import anyio

    from .client import _lib
    from .errors import error_message, redact
    from .upstream import Upstream, UpstreamError

    secrets = mc.catalog.secrets()
    to = mc.policy.timeouts
    limit = to.first_token_s + to.connect_s
    out: dict[str, dict[str, Any]] = {}

    async def one(up: Upstream, ep: Endpoint) -> None:
        logical = model if model is not None else next(iter(ep.models))
        if logical not in ep.models:
            out[ep.id] = {"ok": None, "model": logical, "ms": None, "status": None, "error": None}
            return
        body = json.dumps(
            {"model": ep.models[logical], "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        ).encode()
        headers = [("content-type", "application/json"), *ep.auth_headers()]
        t0 = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            with anyio.fail_after(limit):
                resp = await up.open(
                    "POST", f"{ep.base_url}/chat/completions", headers, body, connect_s=to.connect_s, read_s=limit
                )
                try:
                    status = resp.status
                    raw = await resp.read(limit=1 << 20)
                finally:
                    await resp.aclose()
            if status >= 400:
                error = f"HTTP {status}: {error_message(raw, limit=4000)}"
            else:
                try:
                    choices = json.loads(raw).get("choices")
                except (ValueError, AttributeError):
                    choices = None
                if not isinstance(choices, list) or not choices:
                    error = f"HTTP {status} but no choices in the reply: {raw[:200]!r}"
        except TimeoutError:
            error = f"no answer within {limit:g}s (connect_s + first_token_s)"
        except UpstreamError as exc:
            error = f"{exc.kind} error: {exc}"
        ms = (time.monotonic() - t0) * 1000.0
        out[ep.id] = {
            "ok": error is None,
            "model": logical,
            "ms": round(ms, 1),
            "status": status,
            "error": None if error is None else redact(error, secrets),
        }

    async def run() -> None:
        up = Upstream(_lib(None), **mc.http_options)
        try:
            async with anyio.create_task_group() as tg:
                for ep in mc.catalog.endpoints:
                    tg.start_soon(one, up, ep)
        finally:
            await up.aclose()

    anyio.run(run)
    return out


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
