"""A status view an operator can open: a tiny ASGI app over one MultiCloud.

``lmc.status_app(mc)`` is a plain ASGI 3 application (no framework needed) to mount
in an existing service — Starlette/FastAPI ``app.mount("/llm", lmc.status_app(mc))``,
or anything that speaks ASGI:

* ``GET <mount>/`` — an HTML page: a table of the endpoints grouped by region, with
  state (drained, open, half-open, cooling, closed) and its reason, TTFT estimates,
  in-flight, requests, failures, cost and the last error; it refreshes itself every
  ``refresh_s`` seconds from the JSON below (no reload, no external assets);
* ``GET <mount>/status.json`` — ``mc.snapshot()`` as JSON (the same dict the page
  renders), for scripts and checks.

It reads only the in-memory snapshot (microseconds, no I/O), never sends anything
to an endpoint, and never shows a key: snapshots carry ids, regions, numbers and
redacted error texts. It has no authentication of its own: mount it where your
service's own auth and network rules apply.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import MultiCloud

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_PATH = "/status.json"


def status_app(mc: MultiCloud, *, refresh_s: float = 2.0, title: str = "llm_multicloud status") -> ASGIApp:
    """An ASGI app serving ``mc``'s status: HTML at ``/``, JSON at ``/status.json``
    (relative to where it is mounted). ``refresh_s``: how often the page refreshes."""
    if not refresh_s > 0:
        raise ValueError(f"refresh_s must be > 0 (got {refresh_s!r})")
    page = _PAGE.replace("__TITLE__", _html_escape(title)).replace("__REFRESH_MS__", str(int(refresh_s * 1000)))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]  # mounted: route on the part below the mount
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain; charset=utf-8", [(b"allow", b"GET, HEAD")])
            return
        if path in ("", "/", "/index.html"):
            body = page.replace("__JSON_URL__", json.dumps(root + JSON_PATH)).encode()
            await _respond(send, 200, body, "text/html; charset=utf-8", head=method == "HEAD")
        elif path == JSON_PATH:
            body = json.dumps(mc.snapshot(), default=str).encode()
            await _respond(send, 200, body, "application/json", head=method == "HEAD")
        else:
            await _respond(send, 404, b"not found: try / or /status.json\n", "text/plain; charset=utf-8")

    return app


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    ctype: str,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    headers = [
        (b"content-type", ctype.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


# One self-contained page: no external script, font or style (it works offline and
# behind strict CSPs that allow 'self' inline). Values are inserted with textContent,
# never innerHTML: error texts from endpoints cannot inject markup.
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #1b1f24; background: #fff; }
 h1 { font-size: 18px; margin: 0 0 4px; }
 #meta { color: #57606a; margin-bottom: 12px; }
 table { border-collapse: collapse; width: 100%; }
 th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
 th { background: #f6f8fa; }
 tr.region td { background: #eef1f4; font-weight: 600; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; }
 td.state { font-weight: 600; color: #fff; }
 td.state-closed { background: #1a7f37; }
 td.state-half_open { background: #bf8700; }
 td.state-open { background: #cf222e; }
 td.state-cooling { background: #8250df; }
 td.state-drained { background: #57606a; }
 td.err { color: #cf222e; max-width: 420px; overflow-wrap: anywhere; }
 #error { color: #cf222e; }
</style></head>
<body>
<h1>__TITLE__</h1>
<div id="meta">loading…</div>
<div id="error"></div>
<table id="endpoints">
 <thead><tr><th>endpoint</th><th>provider</th><th>state</th><th>reason</th><th>TTFT ms</th><th>p90 ms</th>
 <th>in flight</th><th>requests</th><th>failures</th><th>cost USD</th><th>last error</th></tr></thead>
 <tbody></tbody>
</table>
<script>
const JSON_URL = __JSON_URL__;
const REFRESH_MS = __REFRESH_MS__;
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function num(v, digits) { return v === null || v === undefined ? null : Number(v).toFixed(digits); }
function render(snap) {
  const body = document.querySelector("#endpoints tbody");
  body.replaceChildren();
  const groups = new Map();
  for (const e of snap.endpoints) {
    const key = e.provider + " " + e.region;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(e);
  }
  for (const key of [...groups.keys()].sort()) {
    const head = document.createElement("tr");
    head.className = "region";
    const td = cell(head, key + " (" + (groups.get(key)[0].residency || []).join(",") + ")");
    td.colSpan = 11;
    body.appendChild(head);
    for (const e of groups.get(key)) {
      const tr = document.createElement("tr");
      tr.dataset.endpoint = e.id;
      tr.dataset.state = e.state;
      cell(tr, e.id);
      cell(tr, e.provider);
      cell(tr, e.state.replace("_", "-"), "state state-" + e.state);
      cell(tr, e.reason);
      cell(tr, num(e.ttft_ms, 0), "num");
      cell(tr, num(e.ttft_p90_ms, 0), "num");
      cell(tr, e.in_flight, "num");
      cell(tr, e.requests, "num");
      cell(tr, e.failures, "num");
      cell(tr, e.cost_usd === null ? "unknown" : num(e.cost_usd, 6), "num");
      cell(tr, e.last_error, "err");
      body.appendChild(tr);
    }
  }
  const shared = snap.shared_state || {};
  let meta = "catalog " + snap.catalog_version + " · " + snap.endpoints.length + " endpoints · shared state: "
    + (shared.status || "local") + " · total cost $" + Number(snap.cost_usd || 0).toFixed(6)
    + " · updated " + new Date().toLocaleTimeString();
  if (shared.catalog_mismatch && shared.catalog_mismatch.length)
    meta += " · catalog mismatch: "
      + shared.catalog_mismatch.map(m => m.replica + " runs " + m.catalog_version).join(", ");
  if (snap.retired && snap.retired.length)
    meta += " · finishing on removed endpoints: " + snap.retired.map(r => r.id + " (" + r.in_flight + ")").join(", ");
  document.getElementById("meta").textContent = meta;
  document.body.dataset.loaded = "1";
}
async function refresh() {
  try {
    const r = await fetch(JSON_URL, {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    document.getElementById("error").textContent = "";
  } catch (err) {
    document.getElementById("error").textContent = "status unavailable: " + err.message;
  }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
</script>
</body></html>
"""
