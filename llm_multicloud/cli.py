"""``llm-multicloud``: demo, fleet, explain, status and validate.

* ``demo`` — no credentials needed: starts a simulated three-cloud fleet on
  loopback, sends a mixed workload through the real openai SDK, shows where each
  request went and why, then takes a region down and shows the failover.
* ``fleet CONFIG`` — run a simulated fleet to rehearse an outage against your code.
* ``explain CATALOG --model M [--residency EU] [--near eu-west-1]`` — the plan
  with reasons.
* ``status CATALOG`` — probe every endpoint once and print a table (``--json``).
* ``validate CATALOG`` — load the catalog and print what is wrong with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import LLMMulticloudError

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
    p = argparse.ArgumentParser(prog="llm-multicloud", description=__doc__.split("\n\n")[0] if __doc__ else None)
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
    v = sub.add_parser("validate", help="validate a catalog")
    v.add_argument("catalog")
    v.add_argument(
        "--probe", action="store_true", help="also ask each endpoint's /models and report served-name mismatches"
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

            cat = Catalog.load(args.catalog)
            cat.policy()  # the policy section too
            print(f"ok: {len(cat.endpoints)} endpoints, models: {', '.join(sorted(cat.models))}")
            if args.probe:
                return _validate_probe(args)
            return 0
    except LLMMulticloudError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


def _explain(args: argparse.Namespace) -> int:
    from .client import MultiCloud

    tags = None
    if args.tags:
        from .intent import _parse_tags

        try:
            tags = _parse_tags(args.tags)
        except LLMMulticloudError as exc:
            print(f"error: --tags: {exc}", file=sys.stderr)
            return 2
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
            print(json.dumps(plan.to_dict(), indent=2))
        else:
            print(plan.describe())
    return 0


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
        results = _probe_once(mc)
        rows: list[dict[str, Any]] = []
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        for ep in mc.catalog.endpoints:
            pr = results[ep.id]
            price = (
                "unknown" if ep.price is None else f"${ep.price[0]:.3f}/${ep.price[1]:.3f}"  # input/output per Mtok
            )
            rows.append(
                {
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
            )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0 if all(r["state"] == "up" for r in rows) else 1
    header = (
        "endpoint",
        "provider",
        "region",
        "residency",
        "RTT ms",
        "models served",
        "price in/out per Mtok",
        "state",
    )
    table: list[tuple[str, ...]] = [header]
    for r in rows:
        served = ", ".join(
            f"{m}{'' if ok else ('?' if ok is None else ' (not listed)')}" for m, ok in r["models"].items()
        )
        rtt = "-" if r["rtt_ms"] is None else f"{r['rtt_ms']:.1f}"
        state = r["state"] if not r["error"] else f"{r['state']}: {r['error'][:60]}"
        table.append((r["id"], r["provider"], r["region"], r["residency"], rtt, served, r["price_per_mtok"], state))
    print(format_table(table))
    for r in rows:
        if r["not_listed"]:
            print(f"note: {r['not_listed']}")
    return 0 if all(r["state"] == "up" for r in rows) else 1


def format_table(rows: Sequence[Sequence[object]]) -> str:
    """Plain-text table, first row is the header."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
