"""What a simulated server saw: one :class:`Received` per request.

Integration tests judge routing from the server side (which region got the
request, with which key, whether a hedge loser was really disconnected), so
the record is written as the request arrives and updated in place as it
progresses; readers get shallow copies.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Received"]


@dataclass(slots=True)
class Received:
    """One request received by a region server.

    ``outcome`` is ``"pending"`` while the request is being served, then one of
    ``"ok"``, ``"fault:<mode>"`` (the injected fault shaped the response),
    ``"disconnected"`` (the client went away before the response was complete,
    e.g. a cancelled hedge or a client timeout; ``fault`` still tells which
    fault, if any, was active) or ``"error:<status>"`` (401/400/404 ...).

    ``time``/``end_time`` are ``time.monotonic()`` of the serving process; on
    Linux that clock is system-wide, so records fetched from a fleet in another
    process can still be compared with the client's own monotonic timestamps.
    """

    region_id: str
    time: float
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    model: str | None = None
    stream: bool = False
    outcome: str = "pending"
    status: int | None = None
    fault: str | None = None
    chunks_sent: int = 0  # content-bearing SSE chunks delivered (role chunk excluded)
    bytes_sent: int = 0  # body bytes written by the huge_body / huge_event / drip faults
    usage: dict[str, int] | None = None
    ttft_ms: float | None = None  # sampled time to first token for this request
    end_time: float | None = None

    def ended_by(self, fault: str) -> None:
        """The injected fault ended this answer: settled before the client can look
        (a client thread in this process may inspect it the instant bytes arrive)."""
        self.fault = fault
        self.outcome = f"fault:{fault}"
        self.end_time = time.monotonic()

    def copy(self) -> Received:
        """Shallow copy, so callers can keep a snapshot while the server updates the original."""
        return dataclasses.replace(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form used by the ``/_fleet/log`` control endpoint."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Received:
        """Inverse of :meth:`to_dict`; unknown keys are ignored so newer servers stay readable."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
