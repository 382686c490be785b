"""Background probes (placeholder until the health issue lands)."""

from __future__ import annotations

from typing import Any


class Prober:
    def __init__(self, mc: Any) -> None:
        self.mc = mc

    async def run(self) -> None:
        return None

    async def stop(self) -> None:
        return None
