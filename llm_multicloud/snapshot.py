"""The records :meth:`MultiCloud.snapshot() <llm_multicloud.MultiCloud.snapshot>` returns.

Typed and documented here, one field per line, so that an editor completes them,
mypy checks the code that reads them, and an operator can look a field up. They
are :class:`typing.TypedDict`: at run time each is a plain ``dict``, so
``json.dumps(mc.snapshot())`` (what ``/status.json``, the CLI's ``status --json``
and dashboards read) writes exactly the same JSON as before they had types.

Times are wall-clock UNIX seconds (rounded to the millisecond) or None; durations
are milliseconds (``*_ms``) or seconds (``*_s``); an unknown value is None, never 0.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

#: One word for operators (see :meth:`~llm_multicloud.health.EndpointState.state_name`).
StateName = Literal["closed", "open", "half_open", "cooling", "drained"]


class EndpointRecord(TypedDict):
    """One endpoint's row (``snapshot()["endpoints"][i]``, in catalog order)."""

    #: the catalog id, as in response headers, audit records and telemetry
    id: str
    provider: str
    region: str
    #: residency tags it carries (ISO countries and blocs)
    residency: list[str]
    #: closed | open (ejected) | half_open (trials admitted) | cooling (quota) | drained
    state: str
    #: why it is not closed (the last error, the cooldown's reason, the drain's reason)
    reason: str | None
    #: the breaker alone (closed | open | half_open), whatever the cooldown or drain
    breaker: str
    drained: bool
    drained_reason: str | None
    drained_at: float | None
    #: seconds until its quota domain's cooldown ends (0.0 when not cooling)
    cooldown_remaining_s: float
    weight: float
    #: when the last ejection started (None when it has never been ejected)
    opened_at: float | None
    #: when the current ejection or cooldown ends
    until: float | None
    #: ejections so far (the next one lasts longer); reset after a long healthy spell
    ejections: int
    #: peak-EWMA time-to-first-token estimate
    ttft_ms: float | None
    #: quantiles of the last 256 TTFT samples (what hedge delays read)
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    #: time per output token (EWMA)
    tpot_ms: float | None
    #: probe round-trip time (EWMA)
    rtt_ms: float | None
    #: TTFT samples seen
    samples: int
    in_flight: int
    #: in-flight attempts of other replicas (shared state)
    remote_in_flight: int
    #: queue depth its /metrics reported (vLLM/SGLang), when probed
    queue_waiting: float
    #: attempts admitted, and how they ended
    requests: int
    successes: int
    failures: int
    retries: int
    hedges: int
    hedge_wins: int
    #: attempts that lost a race after sending (hedges and their primaries)
    wasted: int
    input_tokens: int
    output_tokens: int
    #: None when the catalog gives no price (unknown, never a silent zero)
    cost_usd: float | None
    #: some of the cost came from estimated token counts (no usage in the answer)
    cost_estimated: bool
    price_known: bool
    #: logical models its /models stopped listing (it is out for them)
    missing_models: list[str]
    #: logical models whose served name it has never listed (still routed)
    unlisted_models: list[str]
    #: the model ids its /models listed last (None before a listing)
    models_listed: list[str] | None
    last_error: str | None
    #: its quota domain's capacity bucket (``limits:``), as in ``snapshot()["limits"]``
    limits: dict[str, Any] | None


class RetiredRecord(TypedDict):
    """An endpoint removed (or redefined) by a catalog update whose attempts still run."""

    id: str
    provider: str
    region: str
    in_flight: int


class TotalsRecord(TypedDict):
    """Sums over the endpoints of one region (``provider/region``) or one provider."""

    requests: int
    failures: int
    #: the priced endpoints' cost
    cost_usd: float
    #: requests to endpoints without a price (not in cost_usd)
    unpriced_requests: int


class Totals(TypedDict):
    region: dict[str, TotalsRecord]
    provider: dict[str, TotalsRecord]


class Budgets(TypedDict):
    """Token-bucket balances of the retry and hedge budgets (tower's ``retry::budget``)."""

    retry_balance: float
    hedge_balance: float


class Snapshot(TypedDict):
    """``MultiCloud.snapshot()``: the fleet as this process sees it now."""

    #: fingerprint of the catalog's content (equal on replicas that loaded the same file)
    catalog_version: str
    endpoints: list[EndpointRecord]
    retired: list[RetiredRecord]
    totals: Totals
    #: the priced endpoints' total cost
    cost_usd: float
    unpriced_requests: int
    #: the shared-state backend's status (``backend``, ``status``, and with Redis its
    #: replicas, rounds, last error...; see docs/shared-state.md)
    shared_state: dict[str, Any]
    budgets: Budgets
    #: one entry per quota domain with ``limits:`` (see :meth:`MultiCloud.capacity`)
    limits: list[dict[str, Any]]
