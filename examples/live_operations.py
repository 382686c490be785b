"""Live operations: drain a region, add one, move weights — with traffic running and no restart.

Starts a simulated fleet on 127.0.0.1, serves a steady stream of requests from a
background thread through one wrapped openai client, and meanwhile:

1. drains eu-central-1 (no new request goes there; running ones finish);
2. adds a region with ``update_catalog`` (the same wrapped client uses it at once,
   the other endpoints keep their latency estimates and counters);
3. rejects a broken catalog without changing anything;
4. sets weights at run time.

Then checks that no request was lost and none reached the drained region after
the drain. Run: ``python examples/live_operations.py``.

Prerequisites: the ``fleet`` extra and the openai SDK — ``pip install '.[demo]'``.
Runs against the simulated fleet on 127.0.0.1; no credentials.
"""

from __future__ import annotations

import copy
import threading
import time

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, Latency, RegionSpec

MODEL = "llama-3.1-8b"


def region(rid: str, provider: str, where: str, price: float) -> RegionSpec:
    return RegionSpec(
        id=rid,
        provider=provider,
        region=where,
        models={MODEL: "meta-llama/Llama-3.1-8B-Instruct"},
        api_key=f"sk-{rid}",
        latency=Latency(ttft_ms=5, ttft_jitter=0.1, itl_ms=1),
        pricing={"input_per_mtok": price / 4, "output_per_mtok": price},
    )


def main() -> None:
    regions = [
        region("aws-euc1", "aws", "eu-central-1", 1.0),
        region("gcp-euw4", "gcp", "europe-west4", 2.0),
        region("azure-sec", "azure", "swedencentral", 1.5),  # not in the catalog at first
    ]
    with Fleet(regions) as fleet:
        full = fleet.catalog()
        first = copy.deepcopy(full)
        first["endpoints"] = [e for e in first["endpoints"] if e["id"] != "azure-sec"]
        policy = {"strategy": "weighted", "probe": {"enabled": False}}
        with lmc.MultiCloud(first, policy) as mc:
            client = mc.wrap(openai.OpenAI(api_key="unused"))
            served: list[tuple[float, str]] = []
            errors: list[BaseException] = []
            stop = threading.Event()

            def traffic() -> None:
                while not stop.is_set():
                    try:
                        raw = client.chat.completions.with_raw_response.create(
                            model=MODEL,
                            messages=[{"role": "user", "content": "hello"}],
                            max_tokens=4,
                            extra_headers={"x-llm-multicloud-residency": "EU"},
                        )
                        served.append((time.monotonic(), raw.headers["x-llm-multicloud-endpoint"]))
                    except openai.APIError as exc:
                        errors.append(exc)

            # Warm up first: the openai SDK's first call imports its response types (seconds
            # on a busy machine with openai 2.x), which would eat the windows measured below.
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "warm-up"}], max_tokens=1)
            worker = threading.Thread(target=traffic)
            worker.start()
            try:
                time.sleep(0.3)

                # 1. Drain a region: new requests go elsewhere, running ones finish.
                drained = mc.drain(region="eu-central-1", reason="maintenance CHG-1234")
                drained_at = time.monotonic()
                print("drained:", drained)
                print(mc.explain(MODEL, residency="EU").describe())
                time.sleep(0.3)

                # 2. Add a region: validated, swapped atomically, picked up by the same client.
                change = mc.update_catalog(full)
                print("update:", change.describe())
                time.sleep(0.3)

                # 3. A broken catalog changes nothing.
                broken = copy.deepcopy(full)
                broken["endpoints"][2]["region"] = "swedencentrl"
                try:
                    mc.update_catalog(broken)
                except lmc.CatalogError as exc:
                    print("rejected as expected:", str(exc).splitlines()[-1].strip())
                else:
                    raise SystemExit("a broken catalog was accepted")

                # 4. Weights at run time: almost everything to the new region.
                mc.set_weight("gcp-euw4", 0.01)
                weighted_at = time.monotonic()
                time.sleep(0.4)
            finally:
                stop.set()
                worker.join()

            snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
            after_drain = [eid for t, eid in served if t > drained_at + 0.05]
            late = [eid for t, eid in served if t > weighted_at + 0.05]
            print(f"{len(served)} requests, {len(errors)} errors")
            print("states:", {k: v["state"] for k, v in snap.items()})
            assert not errors, errors[:3]
            assert "aws-euc1" not in after_drain, "a request reached the drained region"
            assert "azure-sec" in after_drain, "the added region got no traffic"
            assert late.count("azure-sec") > late.count("gcp-euw4"), "the weights did not apply"
            assert snap["aws-euc1"]["state"] == "drained"
            assert snap["aws-euc1"]["drained_reason"] == "maintenance CHG-1234"
            assert snap["gcp-euw4"]["requests"] > 0  # kept its history through the update
    print("ok")


if __name__ == "__main__":
    main()
