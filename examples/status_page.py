"""The status page of a MultiCloud, served next to your app: ``lmc.status_app(mc)``.

    python examples/status_page.py            # serves it, prints what it shows, exits
    python examples/status_page.py --serve    # keeps serving: open the printed URL

Prerequisites: the simulated fleet and uvicorn, ``pip install '.[fleet]'``.

Starts the simulated fleet on 127.0.0.1, sends some traffic, drains one region and
takes another down, then serves the status app with uvicorn on a free port of
127.0.0.1 (in your service: mount it, e.g. ``app.mount("/ops/llm", status_app(mc))``)
and reads its JSON the way a script or a health check would.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import urllib.request

import openai
import uvicorn

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec

MODEL = "llama-3.1-8b"


def main() -> int:
    with Fleet(demo_spec()) as fleet:
        policy = {"strategy": "ordered", "probe": {"enabled": False}, "hedge": {"enabled": False}}
        with lmc.MultiCloud(fleet.catalog(), policy) as mc:
            client = mc.wrap(openai.OpenAI(api_key="unused"))
            for _ in range(4):
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            drained = mc.catalog.endpoints[0]
            mc.drain(drained.id, reason="maintenance window")
            broken = mc.catalog.endpoints[1].id
            fleet.set_fault(broken, mode="status", status=503)
            for _ in range(6):
                with contextlib.suppress(openai.APIError):
                    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])

            server = uvicorn.Server(uvicorn.Config(lmc.status_app(mc), host="127.0.0.1", port=0, log_level="warning"))
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            while not server.started:
                time.sleep(0.01)
            base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
            print(f"status page: {base}/   JSON: {base}/status.json")
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
            with opener.open(base + "/status.json", timeout=10) as resp:
                snap = json.load(resp)
            for e in snap["endpoints"]:
                print(f"  {e['id']:<12} {e['provider']:<7} {e['region']:<15} {e['state']:<9} {e['reason'] or ''}")
            states = {e["id"]: e["state"] for e in snap["endpoints"]}
            assert states[drained.id] == "drained" and states[broken] == "open", states
            with opener.open(base + "/", timeout=10) as resp:
                assert b"<table" in resp.read()
            if "--serve" in sys.argv:
                print("serving; Ctrl-C to stop")
                with contextlib.suppress(KeyboardInterrupt):
                    thread.join()
            server.should_exit = True
            thread.join(10)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
