"""Hostile and broken servers: what the caller sees when an endpoint lies, stalls or leaks.

Two EU regions of the simulated fleet; one of them misbehaves in a new way each
round — a redirect, a 200 with an HTML login page, a 200 with ``{"error": ...}``,
a stream that drips one byte at a time or sends only keep-alive comments, a 50 MB
event, a server that echoes the API key back — and the script shows, and asserts:

* a reply that is not an answer is an endpoint fault: the request fails over to
  the other region and the caller gets a real answer, never an HTML string or a
  completion without choices;
* a committed stream that stops sending data (however busy its connection is)
  raises ``lmc.StreamInterrupted`` with the partial answer, after ``chunk_gap_s``;
* an oversized event is cut off at ``read_limits.event_bytes``;
* a key echoed by the server shows as ``***`` in every message and snapshot.

See docs/health.md (limits on what an endpoint sends) and docs/errors.md.

Prerequisites: the ``fleet`` extra and the openai SDK — ``pip install '.[demo]'``.
Runs against the simulated fleet on 127.0.0.1; no credentials.

    python examples/hostile_servers.py
"""

from __future__ import annotations

import json
from typing import Any

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, Latency, RegionSpec

MODEL = "llama-3.1-8b"
KEY = "sk-example-0f9e8d7c6b5a4f3e2d1c"
EU = {"x-llm-multicloud-residency": "EU"}
DE = {"x-llm-multicloud-residency": "DE"}  # only the misbehaving region qualifies


def main() -> None:
    fast = Latency(ttft_ms=1, ttft_jitter=0.0)
    regions = [
        RegionSpec(id="eu-a", provider="aws", region="eu-central-1", models={MODEL: "m"}, api_key=KEY, latency=fast),
        RegionSpec(id="eu-b", provider="gcp", region="europe-west4", models={MODEL: "m"}, api_key="sk-b-1234567890"),
    ]
    policy: dict[str, Any] = {
        "strategy": "ordered",
        "probe": {"enabled": False},
        "hedge": {"enabled": False},
        "timeouts": {"chunk_gap_s": 0.5},
        "read_limits": {"event_bytes": 1 << 20},
    }
    with Fleet(regions) as fleet, lmc.MultiCloud(fleet.catalog(), policy) as mc:
        client = mc.wrap(openai.OpenAI(api_key="unused"))
        ask = [{"role": "user", "content": "hello"}]

        for mode in ("redirect", "html_200", "error_200"):
            fleet.set_fault("eu-a", mode=mode)
            r = client.chat.completions.with_raw_response.create(model=MODEL, messages=ask, extra_headers=EU)
            answer = r.parse()
            served = r.headers["x-llm-multicloud-endpoint"]
            print(f"{mode:15s} -> answered by {served}: {answer.choices[0].message.content!r}")
            assert served == "eu-b" and answer.choices
            try:
                client.chat.completions.create(model=MODEL, messages=ask, extra_headers=DE)
                raise AssertionError("a reply that is not an answer was handed over")
            except openai.InternalServerError as exc:
                body = exc.body if isinstance(exc.body, dict) else {}
                print(f"{'':15s}    alone: 503: {str(body.get('message', exc)).splitlines()[1].strip()}")

        for mode, extra in (
            ("drip", {"interval_ms": 50}),
            ("keepalive_only", {"interval_ms": 50}),
            ("huge_event", {"size": 50 << 20}),
            ("key_echo", {}),
        ):
            fleet.set_fault("eu-a", mode=mode, after_chunks=2, **extra)
            try:
                for _ in client.chat.completions.create(model=MODEL, messages=ask, stream=True, extra_headers=DE):
                    pass
                raise AssertionError("a broken stream ended quietly")
            except lmc.StreamInterrupted as exc:
                print(f"{mode:15s} -> StreamInterrupted after {exc.delivered_text!r}: {str(exc).split(': ', 1)[1]}")
                assert exc.delivered_text == "[eu-a] w0 w1"
                assert KEY[:12] not in str(exc)

        snap = json.dumps(mc.snapshot())
        assert KEY[:12] not in snap and KEY not in snap
        print("no key in any message or in the snapshot")


if __name__ == "__main__":
    main()
