"""Whether an endpoint can take a new attempt now, and how fast it is predicted to
answer: the two rules the router (planning), the engine (placing each attempt) and
health (its views) all ask, written once here, below all three.

They read an endpoint's health through :class:`EndpointView`, the read-only shape of
:class:`~llm_multicloud.health.EndpointState`, so this module depends on nothing but
the catalog and the vocabulary.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

from .catalog import Endpoint
from .limits import Bucket
from .vocabulary import ExclusionKind

__all__ = ["EndpointView", "QuotaView", "Unusable", "predict_ttft_ms", "unusable_now", "unusable_reason"]


class QuotaView(Protocol):
    until: float
    reason: str


class EndpointView(Protocol):
    """What the router reads of an endpoint's health (see :class:`health.EndpointState`)."""

    @property
    def endpoint(self) -> Endpoint: ...
    @property
    def ttft_ms(self) -> float | None: ...
    @property
    def ttft_at(self) -> float: ...
    @property
    def ttft_before_jump(self) -> float | None: ...
    @property
    def rtt_ms(self) -> float | None: ...
    @property
    def inflight(self) -> int: ...
    @property
    def remote_inflight(self) -> int: ...
    @property
    def queue_waiting(self) -> float: ...
    @property
    def breaker(self) -> str: ...
    @property
    def open_until(self) -> float: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def missing_models(self) -> frozenset[str]: ...
    @property
    def refused_models(self) -> frozenset[str]: ...
    @property
    def quota(self) -> QuotaView: ...
    @property
    def drained(self) -> str | None: ...
    @property
    def bucket(self) -> Bucket | None: ...


def predict_ttft_ms(st: EndpointView, baseline_ms: float, now: float, decay_s: float) -> float:
    """The predicted time to first token of ``st`` now: its peak-EWMA estimate decayed
    toward ``baseline_ms`` (probe RTT plus a processing guess, else the geographic
    prior) with time constant ``decay_s``; the baseline alone before any sample.

    The one definition of the prediction: the router ranks by it, the hedge delay's
    cold start and health's views read it.
    """
    est = st.ttft_ms
    if est is None:
        return baseline_ms
    dt = st.ttft_at - now
    if dt >= 0.0:  # a sample newer than ``now`` (the router predicts at a rounded time)
        return est
    return baseline_ms + (est - baseline_ms) * math.exp(dt / decay_s)


#: Why an endpoint cannot take a new attempt now (the router's ``Exclusion.kind``).
#: ``ExclusionKind`` members; a ``Literal`` so that callers can match on the five cases.
Unusable = Literal[
    ExclusionKind.DRAINED,
    ExclusionKind.CREDENTIAL,
    ExclusionKind.MISSING_MODEL,
    ExclusionKind.COOLING,
    ExclusionKind.EJECTED,
]


def unusable_now(st: EndpointView, model: str | None, now: float) -> Unusable | None:
    """Why ``st`` cannot take a new attempt for ``model`` now, or None when it can.

    The one "usable now" predicate, in the order the reasons are reported: drained by
    an operator (never re-admitted, not even in panic), credential unavailable, the
    model missing from its listing, its quota domain cooling down, its breaker open
    (ejected: the router may still re-admit it under the ejection cap or in panic).
    The router plans with it and the engine re-checks each attempt with it (an
    endpoint may cool down or be ejected while a request runs).
    Capacity (``limits:``) and concurrency are not here: they depend on the request's
    size and are reserved at admission, not predicted.
    """
    if st.drained is not None:
        return ExclusionKind.DRAINED
    if st.endpoint.credential.unavailable is not None:
        return ExclusionKind.CREDENTIAL
    if model is not None and st.missing_models and model in st.missing_models:
        return ExclusionKind.MISSING_MODEL
    if st.quota.until > now:
        return ExclusionKind.COOLING
    if st.breaker == "open" and st.open_until > now:
        return ExclusionKind.EJECTED
    return None


def unusable_reason(st: EndpointView, model: str | None, why: Unusable, now: float) -> str:
    """The sentence that says why (plans, 503 messages and ``explain()``)."""
    ep = st.endpoint
    if why == ExclusionKind.DRAINED:
        return f"drained: {st.drained}"
    if why == ExclusionKind.CREDENTIAL:
        return f"credential unavailable: {ep.credential.unavailable}"
    if why == ExclusionKind.MISSING_MODEL:
        served = ep.models.get(model or "", model)
        if model in st.refused_models:
            return f"404 for {served!r}, a served name its /models has never listed"
        return f"/models no longer lists {served!r}"
    if why == ExclusionKind.COOLING:
        return f"cooling down for {st.quota.until - now:.1f}s more: {st.quota.reason}"
    return f"ejected (breaker open for {st.open_until - now:.1f}s more): {st.last_error}"
