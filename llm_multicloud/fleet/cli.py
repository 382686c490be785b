"""``python -m llm_multicloud.fleet CONFIG`` / ``llm-multicloud fleet CONFIG``.

Runs a fleet until Ctrl-C or SIGTERM so users can point their application at
it and rehearse an outage (drive faults with ``curl -XPOST
http://127.0.0.1:<control>/_fleet/fault?region=aws-use1 -d '{"mode":"down"}'``).
``--json`` prints a single machine-readable ready line; ``start_fleet_process``
relies on it, together with ``--exit-on-stdin-eof`` so that a benchmark's
fleet can never outlive the process that started it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .demo import demo_spec
from .fleet import Fleet
from .spec import FleetSpec

__all__ = ["main", "ready_info"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-multicloud fleet",
        description="Run simulated OpenAI-compatible regions on this machine.",
    )
    p.add_argument("config", nargs="?", help="FleetSpec as YAML or JSON (or 'demo')")
    p.add_argument("--demo", action="store_true", help="run the built-in demo fleet")
    p.add_argument("--json", action="store_true", help="print one JSON ready line instead of a table")
    p.add_argument("--host", help="interface to bind (default from the config: 127.0.0.1)")
    p.add_argument("--control-port", type=int, help="port of the fleet control server (default: free port)")
    p.add_argument("--catalog-out", type=Path, help="also write a llm_multicloud catalog (JSON or YAML)")
    p.add_argument("--exit-on-stdin-eof", action="store_true", help=argparse.SUPPRESS)
    return p


def ready_info(fleet: Fleet) -> dict[str, Any]:
    """The ``--json`` ready line: enough for another process to drive the fleet."""
    return {
        "event": "ready",
        "pid": os.getpid(),
        "control_url": fleet.control_url,
        "regions": {
            r.id: {
                "url": fleet.url(r.id),
                "port": fleet.port(r.id),
                "api_key": r.api_key,
                "provider": r.provider,
                "region": r.region,
                "models": dict(r.models),
            }
            for r in fleet.spec.regions
        },
    }


def _write_catalog(path: Path, catalog: dict[str, Any]) -> None:
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(catalog, sort_keys=False), encoding="utf-8")
    else:
        path.write_text(json.dumps(catalog, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.demo or args.config == "demo":
            spec = demo_spec()
        elif args.config:
            spec = FleetSpec.from_file(args.config)
        else:
            print("error: give a CONFIG file or --demo", file=sys.stderr)
            return 2
        overrides: dict[str, Any] = {}
        if args.host:
            overrides["host"] = args.host
        if args.control_port is not None:
            overrides["control_port"] = args.control_port
        if overrides:
            spec = FleetSpec.from_data({**spec.model_dump(), **overrides})
    except (OSError, ValueError) as exc:
        print(f"error: cannot load fleet config: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)

    fleet = Fleet(spec, configure_logging=True)
    try:
        try:
            fleet.start()
        except OSError as exc:
            print(f"error: cannot start fleet: {exc}", file=sys.stderr)
            return 1
        if args.catalog_out is not None:
            _write_catalog(args.catalog_out, fleet.catalog())
        info = ready_info(fleet)
        if args.json:
            print(json.dumps(info, separators=(",", ":")), flush=True)
        else:
            width = max(len(rid) for rid in info["regions"]) if info["regions"] else 0
            for rid, region in info["regions"].items():
                models = ",".join(region["models"])
                print(f"{rid:<{width}}  {region['url']}  key={region['api_key']}  models={models}")
            print(f"{'control':<{width}}  {info['control_url']}/_fleet/state", flush=True)
        if args.exit_on_stdin_eof:
            threading.Thread(target=_wait_stdin_eof, args=(stop,), daemon=True).start()
        while not stop.wait(0.5):
            if not fleet.running:
                return 1
        return 0
    finally:
        fleet.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_stdin_eof(stop: threading.Event) -> None:
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    stop.set()
