"""One app replica of benchmark B8, in its own process.

``python -m benchmarks.b8_worker`` reads one JSON config line on stdin, prints
``{"event": "ready"}``, waits for a ``go`` line, runs ``concurrency`` workers sending
chat requests for ``duration_s`` and prints one JSON result line. Variants: an
llm_multicloud MultiCloud (``catalog`` + ``policy``) or a LiteLLM Router
(``litellm``: model list + router kwargs). It exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


async def _drive(call: Any, concurrency: int, duration: float) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": 0, "failed": 0, "errors": [], "tokens": 0}
    until = time.monotonic() + duration

    async def worker(w: int) -> None:
        i = 0
        while time.monotonic() < until:
            i += 1
            try:
                out["tokens"] += await call(f"replica question {w} {i} about the quota")
                out["ok"] += 1
            except Exception as exc:
                out["failed"] += 1
                if len(out["errors"]) < 3:
                    out["errors"].append(f"{type(exc).__name__}: {str(exc)[:200]}")

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return out


def main() -> int:
    cfg = json.loads(sys.stdin.readline())
    model, max_tokens = cfg["model"], int(cfg["max_tokens"])
    if cfg.get("litellm"):
        from benchmarks import common

        ll = common.load_litellm()
        router = ll.Router(model_list=cfg["litellm"]["model_list"], **cfg["litellm"]["router"])

        async def call(q: str) -> int:
            r = await router.acompletion(model=model, messages=[{"role": "user", "content": q}], max_tokens=max_tokens)
            return int(r.usage.total_tokens) if r.usage else 0

        closer = None
    else:
        import openai

        import llm_multicloud as lmc

        mc = lmc.MultiCloud(cfg["catalog"], cfg["policy"])
        client = mc.wrap(openai.AsyncOpenAI(api_key="sk-placeholder-never-sent", timeout=60))

        async def call(q: str) -> int:
            r = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": q}], max_tokens=max_tokens
            )
            return int(r.usage.total_tokens) if r.usage else 0

        closer = mc
        mc._portal()  # start the shared-state loop now, as the first request would
    print(json.dumps({"event": "ready"}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1

    async def run() -> dict[str, Any]:
        res = await _drive(call, int(cfg["concurrency"]), float(cfg["duration_s"]))
        if closer is not None:
            res["snapshot_limits"] = closer.snapshot()["limits"]
            res["shared_state"] = closer.snapshot()["shared_state"]
        return res

    res = asyncio.run(run())
    if closer is not None:
        closer.close()
    print(json.dumps(res, default=str), flush=True)
    sys.stdin.read()  # until the parent closes stdin
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
