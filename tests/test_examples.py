"""Every script in examples/ runs and exits 0, so that no example can rot.

The examples start the simulated fleet themselves (127.0.0.1 only) and assert their
own claims: a non-zero exit is a broken claim or a broken example. The list is
whatever ``examples/*.py`` holds, so a new example is picked up without touching
this file.

An example that needs something not installed (Redis, an OTel SDK, a framework...)
prints one line saying what and how to install it, and exits 3. Locally that is a
skip with that line as its reason. Under nox (``LLM_MULTICLOUD_EXAMPLES_MAY_SKIP``
set, per openai line, to the examples whose prerequisites cannot be installed on
that line, e.g. LlamaIndex with openai 3.x) any other exit 3 fails: CI runs every
example on at least one line.

``examples/catalog.yaml`` is loaded and validated like a user's catalog would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import llm_multicloud as lmc
from llm_multicloud.regions import expand_tag

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT_S = 60


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 6, EXAMPLES


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_and_exits_0(script: Path) -> None:
    env = dict(os.environ)
    # Run from a checkout even without installing: the package is importable from the root.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    try:
        proc = subprocess.run(
            [sys.executable, str(script.relative_to(ROOT))],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(f"{script.name} did not finish within {TIMEOUT_S}s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    if proc.returncode == 3:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "needs" in lines[0], f"{script.name}: exit 3 must say what it needs in one line"
        allowed = os.environ.get("LLM_MULTICLOUD_EXAMPLES_MAY_SKIP")
        if allowed is None or script.name in allowed.split(","):
            pytest.skip(lines[0])
        pytest.fail(f"{lines[0]} (its prerequisites are installed on this line: see noxfile.py)")
    assert proc.returncode == 0, (
        f"{script.name} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )


def test_example_catalog_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / "examples" / "catalog.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    names = [ep["api_key_env"] for ep in data["endpoints"] if ep.get("api_key_env")]
    assert names, "the example catalog should show api_key_env"
    for name in names:
        monkeypatch.setenv(name, f"dummy-{name.lower()}")

    cat = lmc.Catalog.load(path)
    assert [e.id for e in cat.endpoints] == [ep["id"] for ep in data["endpoints"]]
    cat.policy()  # the policy: section is valid too (Catalog.load alone does not check it)
    assert all(e.price is not None for e in cat.endpoints), "every example endpoint has a price"
    assert all(e.footprint for e in cat.endpoints), "every example endpoint has a known location"

    # The catalog is usable as documented: an EU plan stays in the EU (explain() sends nothing).
    with lmc.MultiCloud(cat) as mc:
        plan = mc.explain("llama-3.1-8b", residency="EU", near="eu-central-1")
        assert plan.candidates
        assert all(c.endpoint.footprint <= expand_tag("EU") for c in plan.candidates)
        assert {x.endpoint.id for x in plan.excluded} == {"aws-use1", "together-us"}


def test_example_catalog_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LMC_"):
            monkeypatch.delenv(key)
    with pytest.raises(lmc.CatalogError, match="api_key_env: environment variable 'LMC_"):
        lmc.Catalog.load(ROOT / "examples" / "catalog.yaml")


PREREQUISITES = {
    "telemetry_console.py": "opentelemetry.sdk",
    "shared_state.py": "redis",
    "shared_state_cluster.py": "redis",
    "langchain_chat.py": "langchain_openai",
    "agents_sdk.py": "agents",
    "llamaindex_openailike.py": "llama_index",
    "httpx_sdk_cerebras.py": "cerebras",
}


@pytest.mark.parametrize(("name", "module"), sorted(PREREQUISITES.items()))
def test_missing_prerequisite_is_one_line_not_a_traceback(name: str, module: str) -> None:
    # Run the example with its prerequisite made unimportable (as if not installed).
    code = (
        "import runpy, sys; "
        f"sys.modules[{module!r}] = None; "
        f"sys.argv = [{f'examples/{name}'!r}]; "
        f"runpy.run_path({f'examples/{name}'!r}, run_name='__main__')"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    env.pop("LLM_MULTICLOUD_TEST_REDIS_URL", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 3, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"examples/{name} needs ") and "pip install '.[" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_states_its_prerequisites_and_their_extra(script: Path) -> None:
    import ast
    import re
    import tomllib

    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    assert "Prerequisites:" in doc, f"{script.name}: its docstring must say what it needs"
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = re.findall(r"pip install '\.\[([\w,]+)\]'", doc)
    assert named, f"{script.name}: name the extra that installs its prerequisites"
    for group in named:
        assert set(group.split(",")) <= extras, (script.name, group)
