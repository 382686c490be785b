"""Credentials that refresh and sign, through the stock openai client.

Three local "clouds" on 127.0.0.1 that check credentials the way real ones do:

* ``bedrock-fra`` verifies AWS SigV4 with botocore over the exact bytes received
  (skipped, with a note, when the ``[aws]`` extra is not installed);
* ``vault-gw`` accepts only unexpired tokens from a local token authority; the
  tokens live one second and come from a plain function (``lmc.auth.provider``);
* ``onprem`` reads its key from a file that is rotated while traffic runs.

Three seconds of traffic cross three token lifetimes and one key rotation; the
script checks that no request failed and no endpoint was penalised.

Prerequisites: the ``fleet`` extra and the openai SDK — ``pip install '.[demo]'``;
for the SigV4 part botocore — ``pip install '.[aws]'`` (without it that part is skipped).

    python examples/cloud_credentials.py
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, Latency, RegionSpec
from llm_multicloud.fleet.identity import TokenAuthority, sigv4_verifier

MODEL = "llama-3.1-8b"
FAST = Latency(ttft_ms=2, ttft_jitter=0.0, itl_ms=0.0)
HAVE_AWS = importlib.util.find_spec("botocore") is not None


def main() -> int:
    authority = TokenAuthority(ttl_s=1.0)
    regions = [
        RegionSpec(
            id="vault-gw", provider="onprem", region="fra", models={MODEL: "llama-8b"}, api_key="-", latency=FAST
        ),
        RegionSpec(id="onprem", provider="onprem", region="muc", models={MODEL: "llama-8b"}, api_key="-", latency=FAST),
    ]
    if HAVE_AWS:
        served = "meta.llama3-1-8b-instruct-v1:0"
        regions.append(
            RegionSpec(
                id="bedrock-fra",
                provider="aws",
                region="eu-central-1",
                models={MODEL: served},
                api_key="-",
                latency=FAST,
            )
        )
    else:
        print("note: botocore is not installed (pip install 'llm-multicloud[aws]'): SigV4 part skipped")

    with Fleet(regions) as fleet, tempfile.TemporaryDirectory() as tmp:
        # -- the servers' side: what each one accepts
        fleet.set_authorizer("vault-gw", authority.bearer_authorizer())
        onprem_key = {"value": "onprem-key-1"}
        fleet.set_authorizer("onprem", lambda req: req.headers.get("authorization") == f"Bearer {onprem_key['value']}")
        if HAVE_AWS:
            os.environ.update(AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="example-secret-key")
            os.environ.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull)
            fleet.set_authorizer("bedrock-fra", sigv4_verifier("AKIDEXAMPLE", "example-secret-key", "eu-central-1"))

        # -- the client's side: one catalog, three kinds of credential
        key_file = Path(tmp) / "onprem.key"
        key_file.write_text("onprem-key-1\n")
        fetched = []

        def vault_token() -> tuple[str, float]:  # what a team's own token source looks like
            fetched.append(time.time())
            return authority.issue("example-app")

        endpoints = [
            {"id": "vault-gw", "provider": "onprem", "region": "fra", "country": "DE",
             "base_url": fleet.url("vault-gw"), "models": {MODEL: "llama-8b"}, "auth": lmc.auth.provider(vault_token)},
            {"id": "onprem", "provider": "onprem", "region": "muc", "country": "DE", "base_url": fleet.url("onprem"),
             "models": {MODEL: "llama-8b"}, "api_key_file": str(key_file)},
        ]  # fmt: skip
        if HAVE_AWS:
            # A real catalog says {preset: bedrock, region: eu-central-1}; here the URL is the local one.
            endpoints.append(
                {"id": "bedrock-fra", "provider": "aws", "region": "eu-central-1", "base_url": fleet.url("bedrock-fra"),
                 "models": {MODEL: "meta.llama3-1-8b-instruct-v1:0"}, "auth": {"kind": "aws"}}
            )  # fmt: skip
        policy = {"strategy": "weighted", "probe": {"enabled": False}}
        with lmc.MultiCloud({"endpoints": endpoints}, policy) as mc:
            client = mc.wrap(openai.OpenAI(api_key="unused"))
            served: dict[str, int] = {}
            end = time.monotonic() + 3.0
            rotated = False
            n = 0
            while time.monotonic() < end and n < 1000:
                n += 1
                if not rotated and time.monotonic() > end - 1.5:
                    key_file.write_text("onprem-key-2\n")  # the secret mount rotates ...
                    onprem_key["value"] = "onprem-key-2"  # ... and the server switches keys
                    rotated = True
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=4, stream=n % 2 == 0
                )
                if n % 2 == 0:
                    assert list(raw.parse())
                who = raw.headers["x-llm-multicloud-endpoint"]
                served[who] = served.get(who, 0) + 1
                time.sleep(0.01)
            snap = mc.snapshot()

    print(f"{n} requests, all answered: {served}")
    print(f"vault tokens fetched: {len(fetched)} (each lives 1 s; refreshed ahead of expiry)")
    for e in snap["endpoints"]:
        print(f"  {e['id']:<12} state={e['state']:<7} failures={e['failures']}")
    assert set(served) == {e["id"] for e in endpoints}, served
    assert all(e["failures"] == 0 and e["state"] == "closed" for e in snap["endpoints"]), snap["endpoints"]
    assert len(fetched) >= 3, fetched
    authority.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
