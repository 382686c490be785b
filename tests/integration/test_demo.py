"""``llm-multicloud demo``: live on a terminal, plain lines in a pipe, options checked.

The demo drives the real openai SDK against the simulated fleet (127.0.0.1); these
tests run it as a user would, once through a pipe and once on a pseudo-terminal.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration
DEMO = [sys.executable, "-m", "llm_multicloud.cli", "demo"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_plain_when_piped_every_request_a_whole_line_and_every_phase_explained() -> None:
    r = subprocess.run([*DEMO, "--requests", "6"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert not ANSI.search(out), "no terminal codes in a pipe"
    # one line per request as it completes, with its whole answer (8 tokens)
    answers = re.findall(r"^\s+\d+\s+(?:eu|us|apac)-user\s.*\s(\[[a-z0-9-]+\] w0 w1 w2 w3 w4 w5 w6 w7)$", out, re.M)
    assert len(answers) == 12, out  # 6 in phase 1, 6 in phase 2
    # phase 1 explains, per user group, where the plan's first choice went
    why = re.findall(r"^  why: (eu|us|apac)-user: \S+ ranked first \(.*\) (?:and|but .* →) \S*\s?served", out, re.M)
    assert set(why) >= {"eu", "us", "apac"}, out
    # phase 2: the EU's first choice goes down; nothing fails, nothing leaves the EU
    m = re.search(r"Phase 2: region (\S+) goes down", out)
    assert m, out
    assert "failed requests: 0" in out and "sent outside the EU: 0" in out
    assert re.search(rf"why: eu-user: {re.escape(m.group(1))} ranked first .* but its region went down", out), out
    if "(then its breaker opened)" in out:  # timing decides whether 5 failures came first
        assert f"! {m.group(1)}: breaker closed → open" in out  # the transition, when it happened
    assert "Phase 3: snapshot" in out and "total cost: $" in out


def test_live_view_on_a_terminal() -> None:
    # rich comes with the demo extra, installed on the openai 3.x line (noxfile.py)
    pytest.importorskip("rich", reason="the live view needs rich: pip install '.[demo]'")
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="150", LINES="60")
    proc = subprocess.Popen([*DEMO, "--requests", "6"], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=30) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert ANSI.search(screen), "a terminal gets the live view"
    plain = ANSI.sub("", screen)
    # the live table is redrawn as requests complete: its counter goes up in place
    counts = [int(n) for n in re.findall(r"traffic per region — (\d+)/6 requests", plain)]
    assert counts and max(counts) == 6 and len(set(counts)) > 1, counts
    if "(then its breaker opened)" in plain:
        assert "breaker closed → open" in plain  # the transition shown in the view
    assert "[aws-euc1] w0 w1" in plain or "[onprem-vllm] w0 w1" in plain  # answers whole, not read as markup
    assert "why: eu-user:" in plain and "Phase 3: snapshot" in plain


@pytest.mark.parametrize("value", ["0", "-3", "1001"])
def test_requests_option_is_validated(value: str) -> None:
    r = subprocess.run([*DEMO, "--requests", value], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: --requests must be a whole number from 1 to 1000 (got {int(value)})"
    assert r.stdout == ""
