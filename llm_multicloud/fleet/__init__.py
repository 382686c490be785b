"""Simulated multi-cloud fleet of OpenAI-compatible servers (the ``fleet`` extra).

Real HTTP servers on 127.0.0.1, one per "region", each with a latency profile
and failure injection that can be changed at run time. They power the demo,
the integration tests (which judge routing from what each server received)
and the benchmarks; users run them with ``llm-multicloud fleet CONFIG`` to
rehearse an outage before it happens for real.

The core library never imports this package: it needs starlette and uvicorn,
which only the ``fleet`` extra installs.
"""

from __future__ import annotations

from .cli import main
from .demo import demo_spec
from .fleet import Fleet, FleetBase
from .process import FleetProcess, start_fleet_process
from .records import Received
from .spec import Fault, FaultMode, FleetSpec, Latency, PrefixCache, RateLimits, RegionSpec

__all__ = [
    "Fault",
    "FaultMode",
    "Fleet",
    "FleetBase",
    "FleetProcess",
    "FleetSpec",
    "Latency",
    "PrefixCache",
    "RateLimits",
    "Received",
    "RegionSpec",
    "demo_spec",
    "main",
    "start_fleet_process",
]
