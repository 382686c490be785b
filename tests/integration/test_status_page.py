"""``lmc.status_app(mc)`` served by uvicorn on 127.0.0.1 and opened in a real headless
Chromium (Debian's package): the page renders the fleet from its JSON, by region,
with each state's colour — checked in the DOM and in a screenshot — and the JSON
endpoint is checked on its own."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet

from .conftest import MODEL, make_mc

pytestmark = pytest.mark.integration

CHROMIUM = (
    os.environ.get("LLM_MULTICLOUD_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
# The flags that work on this machine (docs/.library: the machine's notes): no sandbox
# as root, no GPU, and no background networking (the network is closed).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
#: state colours of the page's CSS
COLOURS = {"closed": (0x1A, 0x7F, 0x37), "open": (0xCF, 0x22, 0x2E), "drained": (0x57, 0x60, 0x6A)}


class Served:
    """An ASGI app under uvicorn on a free 127.0.0.1 port, in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _get(url: str) -> tuple[int, str, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as r:
            return r.status, r.headers["content-type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read()


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp / f"profile-{len(list(tmp.iterdir()))}"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.fixture
def fleet_state(clean: Fleet) -> Iterator[lmc.MultiCloud]:
    """A MultiCloud with history: traffic, one drained endpoint, one ejected."""
    with make_mc(clean) as mc:
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder"))
        for _ in range(3):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        mc.drain("aws-use1", reason="maintenance <b>CHG-9</b>")  # markup must show as text
        clean.set_fault("gcp-euw4", mode="status", status=503)
        for _ in range(5):
            with contextlib.suppress(openai.APIStatusError):
                client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "hi"}],
                    extra_headers={"x-llm-multicloud-residency": "NL"},
                )
        yield mc


def test_status_json_and_routes(fleet_state: lmc.MultiCloud) -> None:
    with Served(lmc.status_app(fleet_state)) as base:
        status, ctype, body = _get(base + "/status.json")
        assert status == 200 and ctype == "application/json"
        snap = json.loads(body)
        eps = {e["id"]: e for e in snap["endpoints"]}
        assert eps["aws-use1"]["state"] == "drained" and eps["aws-use1"]["reason"] == "maintenance <b>CHG-9</b>"
        assert eps["gcp-euw4"]["state"] == "open" and "503" in eps["gcp-euw4"]["last_error"]
        assert eps["aws-euc1"]["requests"] == 3 and snap["catalog_version"] == fleet_state.catalog_version
        assert b"sk-" not in body  # no key, ever
        status, ctype, page = _get(base + "/")
        assert status == 200 and ctype.startswith("text/html") and b'"/status.json"' in page
        assert _get(base + "/nope")[0] == 404


def test_status_app_mounted_under_a_prefix(fleet_state: lmc.MultiCloud) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/ops/llm", app=lmc.status_app(fleet_state))])
    with Served(outer) as base:
        status, _, page = _get(base + "/ops/llm/")
        assert status == 200 and b'"/ops/llm/status.json"' in page
        status, _, body = _get(base + "/ops/llm/status.json")
        assert status == 200 and json.loads(body)["endpoints"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium; .ci/run installs it)")
def test_status_page_in_headless_chromium(fleet_state: lmc.MultiCloud, tmp_path: Path) -> None:
    from PIL import Image

    with Served(lmc.status_app(fleet_state, refresh_s=0.5)) as base:
        # The DOM after the page's script fetched the JSON and rendered the table.
        dom = _chromium(tmp_path, "--virtual-time-budget=4000", "--dump-dom", base + "/")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        assert 'data-loaded="1"' in html, html[-3000:]
        for eid, state in (("aws-euc1", "closed"), ("aws-use1", "drained"), ("gcp-euw4", "open")):
            assert f'data-endpoint="{eid}" data-state="{state}"' in html
        assert "maintenance &lt;b&gt;CHG-9&lt;/b&gt;" in html  # text, not markup
        assert "aws eu-central-1 (DE,EEA,EMEA,EU)" in html and "gcp europe-west4 (" in html  # grouped by region
        assert "catalog " + fleet_state.catalog_version in html

        # What an operator sees: a screenshot with each state's colour in the table.
        shot = tmp_path / "status.png"
        r = _chromium(
            tmp_path, "--window-size=1280,720", "--virtual-time-budget=4000", f"--screenshot={shot}", base + "/"
        )
        assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 720)
    counts = Counter(getattr(img, "get_flattened_data", img.getdata)())  # Pillow 13 renamed getdata
    for state, rgb in COLOURS.items():
        near = sum(n for c, n in counts.items() if max(abs(a - b) for a, b in zip(c, rgb, strict=True)) <= 6)
        assert near > 300, f"no {state} cell ({rgb}) in the screenshot"
    # mostly a light page with text: not blank, not an error screen
    assert counts.most_common(1)[0][0] == (255, 255, 255)
    assert len(counts) > 50
