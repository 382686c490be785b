"""A script written the way users write them, for the exit tests (test_lifecycle.py).

``python exit_script.py CATALOG_JSON KIND STREAM PROBES SHARED CLOSE`` makes requests
through a wrapped openai client over the catalog, leaves what it is told to leave
(streams unread or half read, the MultiCloud or client unclosed) and ends by
falling off the end of the script. The test runs it in a subprocess with a timeout
and reads its exit code and its stderr.

KIND: sync | async | async-twice (two asyncio.run() calls) | httpx | fork (a sync request
from a forked child runs on its own thread with its own connections — never the
parent's sockets — and the parent's next request still works)
STREAM: none | unread | half | gc (sync: an unread stream collected on the loop thread)
PROBES, SHARED: on | off   CLOSE: yes | no
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys

import openai

import llm_multicloud as lmc

catalog_json, kind, stream, probes, shared, close = sys.argv[1:7]
policy: dict[str, object] = {"probe": {"enabled": probes == "on", "interval_s": 0.05}, "hedge": {"enabled": False}}
if shared == "on":
    # An unreachable Redis: the shared-state task runs (and keeps retrying) all along.
    policy["state"] = {"backend": "redis", "url": sys.argv[7], "refresh_s": 0.05}
mc = lmc.MultiCloud(json.loads(catalog_json), policy)
MODEL = "llama-3.1-8b"
MSG = [{"role": "user", "content": "hello"}]
kept: list[object] = []

if kind == "sync":
    client = mc.wrap(openai.OpenAI(api_key="unused"))
    assert client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8).choices[0].message.content
    if stream != "none":
        s = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=50, stream=True)
        if stream == "half":
            it = iter(s)
            next(it)
            next(it)
        if stream == "gc":
            # Make the abandoned stream garbage in a reference cycle, then collect it on
            # the background loop's own thread (as a GC pass there would).
            holder: list[object] = [s]
            holder.append(holder)
            del s, holder

            async def collect() -> int:
                return gc.collect()

            mc.run_sync(collect)
            # The MultiCloud must still answer (it froze here before).
            assert client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=4).choices[0].message.content
        else:
            kept.append(s)
    if close == "yes":
        mc.close()
elif kind in ("async", "async-twice"):
    client = mc.wrap(openai.AsyncOpenAI(api_key="unused"))

    async def main() -> None:
        r = await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8)
        assert r.choices[0].message.content
        if stream != "none":
            s = await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=50, stream=True)
            if stream == "half":
                it = s.__aiter__()
                await it.__anext__()
                await it.__anext__()
            kept.append(s)

    asyncio.run(main())
    if kind == "async-twice":
        asyncio.run(main())
    if close == "yes":
        mc.close()
elif kind == "fork":
    client = mc.wrap(openai.OpenAI(api_key="unused"))
    assert client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=4).choices[0].message.content
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            for _ in range(3):
                r = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=4)
                assert r.choices[0].message.content
            code = 0
        except BaseException as exc:
            print(f"forked child failed: {exc!r}", file=sys.stderr, flush=True)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=4).choices[0].message.content
else:  # httpx: another SDK's client
    http = mc.httpx_client(timeout=30.0)
    r = http.post("/chat/completions", json={"model": MODEL, "messages": MSG, "max_tokens": 4})
    assert r.status_code == 200, r.text
    if stream != "none":
        req = http.build_request("POST", "/chat/completions", json={"model": MODEL, "messages": MSG, "stream": True})
        resp = http.send(req, stream=True)
        if stream == "half":
            next(resp.iter_bytes())
        kept.append(resp)
    if close == "yes":
        mc.close()
print("script done", flush=True)
