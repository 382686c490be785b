"""Shared health across app replicas through Redis (placeholder: being built)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import MultiCloud


class SharedState:
    def __init__(self, mc: MultiCloud) -> None:
        self.mc = mc

    async def run(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"backend": "redis", "status": "not implemented"}
