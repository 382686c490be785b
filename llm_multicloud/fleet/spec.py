"""Configuration models for the simulated fleet.

The models are plain pydantic so that the same description can come from Python
(tests, benchmarks), from a YAML/JSON file (``llm-multicloud fleet CONFIG``) or
from the HTTP control API of a fleet running in another process. They forbid
unknown keys on purpose: a typo such as ``ttft: 500`` in a rehearsal config
would otherwise silently give you the default 20 ms and a useless rehearsal.

``Latency`` and ``Fault`` are frozen because the servers swap them atomically
(one attribute assignment) from other threads; an immutable value means a
request always sees one consistent profile, never a half-applied update.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "Fault",
    "FaultMode",
    "FleetSpec",
    "Latency",
    "PrefixCache",
    "RateLimits",
    "RegionSpec",
]

FaultMode = Literal[
    "none",
    "down",
    "status",
    "hang",
    "close_mid_stream",
    "malformed_sse",
    "slow",
    # hostile or broken servers (see Fault)
    "redirect",
    "html_200",
    "error_200",
    "garbage_mid_stream",
    "drip",
    "keepalive_only",
    "huge_event",
    "huge_body",
    "key_echo",
    "stop_mid_stream",
]

#: Context window advertised by :meth:`Fleet.catalog` for every logical model
#: unless overridden; the simulated servers do not enforce it.
DEFAULT_CONTEXT_WINDOW = 131072


class Latency(BaseModel):
    """Latency profile of one region, all values in milliseconds.

    Time is measured from the moment the request arrives: response headers go
    out at ``headers_ms`` and the first *content* token at the sampled TTFT (or
    right after the headers if those are later). A streamed response sends the
    headers and the role-only chunk first, like vLLM and OpenAI, so a client
    that treats "HTTP 200 received" as "first token" gets caught by the tests.
    For a non-streamed response the whole body arrives at
    ``max(headers_ms, ttft + tokens * itl_ms)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_ms: float = Field(20.0, ge=0, description="median time to first token")
    ttft_jitter: float = Field(0.2, ge=0, description="lognormal sigma around the median; 0 = fixed")
    tail_prob: float = Field(0.0, ge=0, le=1, description="probability that a request hits the tail")
    tail_ms: float = Field(0.0, ge=0, description="extra TTFT for a tail request")
    itl_ms: float = Field(0.0, ge=0, description="inter-token latency between content chunks")
    headers_ms: float = Field(0.0, ge=0, description="delay before the HTTP response headers")


class Fault(BaseModel):
    """Failure injected into a region's inference endpoints.

    ``down`` with ``probability`` 1 stops the region listening (connections
    are refused); with a lower probability the chosen requests get their TCP
    connection reset instead, which is the closest per-request analogue.
    The other modes act on ``/v1/chat/completions`` and ``/v1/embeddings`` only.

    Hostile or broken servers, each something a client must survive:

    * ``redirect``: HTTP ``status`` (a 3xx; 307 unless ``status`` is one) to ``location``;
    * ``html_200`` / ``error_200``: HTTP 200 with an HTML page / with
      ``{"error": ...}`` and no ``choices``/``data``;
    * streams, after ``after_chunks`` content chunks: ``garbage_mid_stream`` (an
      event that looks like JSON and is not), ``drip`` (the rest one byte every
      ``interval_ms``), ``keepalive_only`` (``: keep-alive`` comments every
      ``interval_ms``, no more data), ``huge_event`` (one event of ``size`` bytes,
      sent in 64 KiB pieces), ``stop_mid_stream`` (``[DONE]`` with no choice ever
      given a ``finish_reason``: llama.cpp's ``interrupt_requests``, a worker that
      stopped generating behind a proxy);
    * ``huge_body``: a ``size``-byte body with HTTP ``status`` (the default 503 gives
      a huge error body; 200 a huge answer), sent in 64 KiB pieces;
    * ``key_echo``: the request's key echoed back in many printed forms (raw,
      JSON ``\\u`` escapes, percent-encoded, base64, cut short) — in an error event
      after ``after_chunks`` chunks of a stream, or in an HTTP ``status`` error body.

    The ``bytes_sent`` of a request's record says how much of a huge or dripped
    body actually left the server: a client that stops reading at its limit shows
    as a small number and ``outcome="disconnected"``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: FaultMode = "none"
    status: int = Field(503, ge=100, le=599, description="HTTP status for mode=status")
    retry_after: str | None = Field(None, description="raw Retry-After header value sent with mode=status")
    retry_after_ms: int | None = Field(None, ge=0, description="retry-after-ms header sent with mode=status")
    after_chunks: int = Field(2, ge=0, description="content chunks before close_mid_stream / malformed_sse")
    probability: float = Field(1.0, ge=0, le=1, description="share of requests the fault applies to")
    body: str | None = Field(None, description="custom error body for mode=status")
    location: str = Field("http://127.0.0.1:9/v1/chat/completions", description="Location of mode=redirect")
    interval_ms: float = Field(200.0, gt=0, description="pace of mode=drip / keepalive_only")
    size: int = Field(20 << 20, ge=1, le=1 << 31, description="bytes of mode=huge_event / huge_body")


class PrefixCache(BaseModel):
    """A simulated prompt (prefix) cache, as vLLM's automatic prefix caching and the
    providers' prompt caching: the leading messages of a prompt this region saw
    within ``ttl_s`` are not prefilled again. Each uncached prompt token adds
    ``prefill_ms_per_token`` to the time to first token, and the answer's usage
    reports the cached ones in ``prompt_tokens_details.cached_tokens``.

    A real engine's cache is its GPU's KV memory, so its size is counted in tokens:
    ``kv_tokens`` (each cached message costs its tokens; least recently used first
    out). ``max_entries`` bounds the number of cached messages instead, whatever
    their size; both may be set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill_ms_per_token: float = Field(0.1, ge=0, description="extra TTFT per uncached prompt token (ms)")
    ttl_s: float = Field(300.0, gt=0, description="how long a prefix stays cached after its last use")
    max_entries: int = Field(100_000, ge=1, description="cached prefixes kept (least recently used evicted)")
    kv_tokens: int | None = Field(
        None,
        ge=1,
        description="KV cache capacity in prompt tokens (least recently used prefixes evicted by their "
        "token cost); None = only max_entries bounds the cache",
    )
    prefill_lanes: int | None = Field(
        None,
        ge=1,
        description="prompts prefilled at once (a GPU's compute is shared: more queue); None = unlimited",
    )


class RateLimits(BaseModel):
    """Per-region request and token limits, enforced like a cloud deployment's quota:
    token buckets holding ``burst_s`` seconds' worth, refilled continuously at
    ``rpm``/``tpm`` per minute. A request's tokens are its prompt plus the completion it
    asks for, counted on arrival; a request over a limit gets 429 with Retry-After."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: float | None = Field(None, gt=0, description="requests per minute")
    tpm: float | None = Field(None, gt=0, description="tokens per minute")
    burst_s: float = Field(60.0, gt=0, description="bucket capacity in seconds of the limit")


class RegionSpec(BaseModel):
    """One simulated deployment: an OpenAI-compatible server in a "region"."""

    model_config = ConfigDict(extra="forbid")

    # Same rule as llm_multicloud's catalog endpoint ids, so catalog() is always valid.
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    provider: str = "onprem"
    region: str = "local"
    models: dict[str, str] = Field(description="logical model -> served model name")
    listed: list[str] | None = Field(
        None,
        description="ids /v1/models lists instead of the served names, as real servers do that list an "
        "alias or a file path (llama.cpp) yet answer the served name",
    )
    api_key: str
    latency: Latency = Field(default_factory=Latency)
    fault: Fault = Field(default_factory=Fault)
    pricing: dict[str, float] | None = None
    seed: int | None = Field(None, description="RNG seed; None derives one from the id (reproducible)")
    metrics: bool = True
    port: int = Field(0, ge=0, le=65535, description="fixed port; 0 picks a free one")
    catalog: dict[str, Any] | None = Field(
        None, description="extra keys merged into this region's catalog endpoint (country, residency, tags...)"
    )
    prefix_cache: PrefixCache | None = Field(None, description="simulate a prompt-prefix cache (TTFT, cached_tokens)")
    limits: RateLimits | None = Field(None, description="rpm/tpm limits answered with 429 + Retry-After")


class FleetSpec(BaseModel):
    """A whole fleet; loadable from YAML or JSON with :meth:`from_file`."""

    model_config = ConfigDict(extra="forbid")

    regions: list[RegionSpec]
    host: str = Field("127.0.0.1", description="interface the region servers bind to")
    control_port: int = Field(0, ge=0, le=65535, description="port of the fleet-wide control server")

    @model_validator(mode="after")
    def _unique(self) -> FleetSpec:
        ids = [r.id for r in self.regions]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate region ids: {dupes}")
        ports = [r.port for r in self.regions if r.port]
        if len(ports) != len(set(ports)):
            raise ValueError("two regions ask for the same fixed port")
        return self

    def region(self, region_id: str) -> RegionSpec:
        """Return the region with this id (KeyError naming the known ids otherwise)."""
        for r in self.regions:
            if r.id == region_id:
                return r
        raise KeyError(f"unknown region {region_id!r}; known: {[r.id for r in self.regions]}")

    @classmethod
    def from_data(cls, data: Any) -> FleetSpec:
        """Build from parsed YAML/JSON: either ``{"regions": [...]}`` or a bare list of regions."""
        if isinstance(data, list):
            data = {"regions": data}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            # in the config's own words (field paths, what is allowed, did-you-mean)
            from ..config_errors import describe

            raise ValueError("the fleet config is invalid:\n  " + "\n  ".join(describe(exc, data, cls))) from None

    @classmethod
    def from_file(cls, path: str | Path) -> FleetSpec:
        """Load a ``.json``, ``.yaml`` or ``.yml`` file (other suffixes: JSON, then YAML).

        PyYAML is imported lazily: it is a dependency of llm_multicloud itself,
        and JSON configs must keep working without it.
        """
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        suffix = p.suffix.lower()
        if suffix == ".json":
            return cls.from_data(json.loads(text))
        if suffix not in (".yaml", ".yml"):
            try:
                data = json.loads(text)
            except ValueError:
                pass
            else:
                return cls.from_data(data)
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - PyYAML ships with llm_multicloud
            raise RuntimeError(f"reading {p} needs PyYAML (pip install PyYAML)") from exc
        return cls.from_data(yaml.safe_load(text))
