"""Another httpx-based SDK routed across regions: the Cerebras Cloud SDK.

Prerequisites: the ``fleet`` extra and cerebras-cloud-sdk —
``pip install '.[cerebras]'`` (it runs on legacy httpx, with any openai line).
Runs against the simulated fleet on 127.0.0.1. Any SDK built on httpx or httpx2
works the same way: give it ``mc.httpx_client(...)``, set its base URL so that its
paths land on the placeholder, turn its retries off.

The settings that matter (docs/integrations.md#other-httpx-sdks-cerebras):

* ``http_client=mc.httpx_client(lib="httpx", timeout=60.0)``: the SDK is built on
  httpx, so the routing client must be an ``httpx.Client`` (httpx2 clients are refused);
* ``base_url="http://llm-multicloud.invalid"``: the SDK's paths carry ``/v1`` themselves;
* ``max_retries=0``, and ``warm_tcp_connection=False`` (its warm-up request would be
  answered 400 ``not_routable``: it names no model).

    python examples/httpx_sdk_cerebras.py
"""

from __future__ import annotations

import sys
from typing import Any

try:
    from cerebras.cloud.sdk import Cerebras
except ImportError:
    print("examples/httpx_sdk_cerebras.py needs cerebras-cloud-sdk: pip install '.[cerebras]'", file=sys.stderr)
    raise SystemExit(3) from None  # 3: a prerequisite is missing (see the docstring)

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec

GERMAN = {"aws-euc1", "onprem-vllm"}


def main() -> None:
    requests: list[lmc.RequestRecord] = []
    with Fleet(demo_spec()) as fleet, lmc.MultiCloud(fleet.catalog(), on_request=requests.append) as mc:
        with Cerebras(
            api_key="unused",  # never sent: each endpoint gets its own key
            base_url="http://llm-multicloud.invalid",
            http_client=mc.httpx_client(lib="httpx", timeout=60.0),
            max_retries=0,
            warm_tcp_connection=False,
        ) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="llama-3.1-8b",
                messages=[{"role": "user", "content": "Hallo"}],
                extra_headers={"x-llm-multicloud-residency": "DE"},  # per-call routing headers work
            )
            served = raw.headers["x-llm-multicloud-endpoint"]
            answer: Any = raw.parse()
            print(f"json:   {served:12} {answer.choices[0].message.content}")
            assert served in GERMAN, served

            with lmc.routing(residency="DE"):
                stream = client.chat.completions.create(
                    model="llama-3.1-8b", messages=[{"role": "user", "content": "Stream"}], stream=True
                )
                text = "".join(_delta(chunk) for chunk in stream)
            print(f"stream: {text}")
            assert text.startswith(("[aws-euc1]", "[onprem-vllm]")), text
        assert len(requests) == 2, len(requests)  # one routed request per call: the SDK retried nothing
    print("ok: Cerebras SDK through httpx, residency kept, no SDK retries")


def _delta(chunk: Any) -> str:
    if not chunk.choices:
        return ""
    delta = chunk.choices[0].delta
    content = delta.get("content") if isinstance(delta, dict) else delta.content
    return content or ""


if __name__ == "__main__":
    main()
