"""OpenTelemetry (placeholder: the telemetry work replaces this file)."""

from __future__ import annotations

from .executor import RequestRecord
from .health import Transition


class Telemetry:
    def on_request(self, rec: RequestRecord) -> None:
        return None

    def on_transition(self, t: Transition) -> None:
        return None
