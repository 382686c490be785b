"""The documentation cannot rot silently.

* every relative link in README.md and docs/*.md points to an existing file inside
  the repository, and
  every ``#anchor`` into a Markdown file to an existing heading (GitHub's slugs);
* every ```python block preceded by a ``<!-- test -->`` line runs (in a fresh
  interpreter, from the repository root) and exits 0 — the convention for
  runnable documentation;
* every policy field the docs name exists in ``llm_multicloud.policy``: the rows of
  every "Policy field | Default | ..." table (with the default they state), and the
  dotted ``section.field`` names in the text of the policy pages; and the policy
  reference in docs/catalog.md lists every field there is;
* the region list and the bloc table of docs/regions.md match the built-in table;
* every example is mentioned somewhere in the docs;
* the README gives the two commands, exactly.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

import llm_multicloud as lmc
from llm_multicloud import regions
from llm_multicloud.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]

DEMO_COMMAND = 'python3 -m pip install ".[demo]" && llm-multicloud demo'
TEST_COMMAND = "python3 -m pip install nox && python3 -m nox -s tests lint typecheck"

FENCE = re.compile(r"^(`{3,}|~{3,})")
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
RUNNABLE_MARK = "<!-- test -->"


# ---------------------------------------------------------------------------- helpers


def _prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    fence: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.strip())
        if m:
            if fence is None:
                fence = m.group(1)[0] * 3
            elif line.strip().startswith(fence):
                fence = None
            continue
        if fence is None:
            yield n, line


def _strip_inline_code(line: str) -> str:
    return re.sub(r"`+[^`]*`+", "", line)


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, inline markup removed, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = _slug(m.group(2))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return out


def _links() -> list[tuple[Path, int, str]]:
    found = []
    for page in PAGES:
        for n, line in _prose_lines(page.read_text(encoding="utf-8")):
            for m in LINK.finditer(_strip_inline_code(line)):
                found.append((page, n, m.group(1)))
    return found


def _runnable_blocks() -> list[tuple[Path, int, str]]:
    blocks = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() != RUNNABLE_MARK:
                continue
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j >= len(lines) or not re.match(r"^```python\s*$", lines[j].strip()):
                blocks.append((page, i + 1, ""))  # a marker without a python block: reported below
                continue
            body = []
            k = j + 1
            while k < len(lines) and not lines[k].strip().startswith("```"):
                body.append(lines[k])
                k += 1
            blocks.append((page, j + 1, "\n".join(body) + "\n"))
    return blocks


def _policy_field(path: str) -> Any:
    """The pydantic FieldInfo of a dotted policy field (``hedge.quantile``); KeyError if none."""
    model: type[BaseModel] = Policy
    parts = path.split(".")
    for i, part in enumerate(parts):
        info = model.model_fields.get(part)
        if info is None:
            raise KeyError(path)
        if i == len(parts) - 1:
            return info
        sub = info.annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            raise KeyError(path)
        model = sub
    raise KeyError(path)


def _leaf_fields(model: type[BaseModel] = Policy, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out |= _leaf_fields(sub, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def _policy_tables() -> list[tuple[Path, int, str, str]]:
    """(page, line, field, default cell) for every row of every "| Policy field |" table."""
    rows = []
    for page in DOCS:
        in_table = False
        for n, line in _prose_lines(page.read_text(encoding="utf-8")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.strip().startswith("|") else []
            if not cells:
                in_table = False
                continue
            if cells[0] == "Policy field":
                in_table = True
                continue
            if not in_table or set(cells[0]) <= {"-", ":", " "}:
                continue
            m = re.fullmatch(r"`([a-z_.]+)`", cells[0])
            assert m, f"{page.name}:{n}: the first cell of a policy table must be a `field`: {cells[0]!r}"
            rows.append((page, n, m.group(1), cells[1] if len(cells) > 1 else ""))
    return rows


#: The nested sections of the policy (hedge, retry, breaker, ...).
SECTIONS = {
    n for n, i in Policy.model_fields.items() if isinstance(i.annotation, type) and issubclass(i.annotation, BaseModel)
}


# ---------------------------------------------------------------------------- links


@pytest.mark.parametrize("page,line,target", _links(), ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_relative_links_resolve(page: Path, line: int, target: str) -> None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return
    path_part, _, anchor = target.partition("#")
    dest = page if not path_part else (page.parent / path_part).resolve()
    assert dest.is_relative_to(ROOT), (
        f"{page.relative_to(ROOT)}:{line}: link outside the repository (dead in any other checkout): {target}"
    )
    assert dest.exists(), f"{page.relative_to(ROOT)}:{line}: link to a missing file: {target}"
    if anchor and dest.suffix == ".md":
        assert anchor in _anchors(dest), (
            f"{page.relative_to(ROOT)}:{line}: no heading for #{anchor} in {dest.relative_to(ROOT)} "
            f"(known: {sorted(_anchors(dest))})"
        )


def test_there_are_links_to_check() -> None:
    assert len(_links()) > 50


# ---------------------------------------------------------------------------- runnable code


BLOCKS = _runnable_blocks()


def test_there_are_runnable_blocks() -> None:
    assert len(BLOCKS) >= 6, BLOCKS


@pytest.mark.parametrize("page,line,code", BLOCKS, ids=[f"{p.name}:{n}" for p, n, _ in BLOCKS] if BLOCKS else None)
def test_runnable_block_runs(page: Path, line: int, code: str, tmp_path: Path) -> None:
    assert code.strip(), f"{page.name}:{line}: '{RUNNABLE_MARK}' must be followed by a ```python block"
    script = tmp_path / f"{page.stem}_{line}.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=90,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{page.name}:{line}: the block did not finish within 90 s")
    assert proc.returncode == 0, (
        f"{page.name}:{line}: the block failed\n{code}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )


# ---------------------------------------------------------------------------- YAML snippets


def _yaml_blocks() -> list[tuple[Path, int, str]]:
    blocks = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            if re.match(r"^```ya?ml\s*$", lines[i].strip()):
                start, body = i + 1, []
                i += 1
                while i < len(lines) and not lines[i].strip().startswith("```"):
                    body.append(lines[i])
                    i += 1
                blocks.append((page, start, "\n".join(body)))
            i += 1
    return blocks


YAML_BLOCKS = _yaml_blocks()


@pytest.mark.parametrize(
    "page,line,text", YAML_BLOCKS, ids=[f"{p.name}:{n}" for p, n, _ in YAML_BLOCKS] if YAML_BLOCKS else None
)
def test_yaml_catalogs_and_policies_in_the_docs_are_valid(
    page: Path, line: int, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A YAML block that is a whole catalog (``endpoints:``) loads; one that is a ``policy:``
    section validates. Fragments (one endpoint, one model) are not checked here."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        return
    if "endpoints" in data:
        for ep in data["endpoints"]:
            if isinstance(ep, dict) and ep.get("api_key_env"):
                monkeypatch.setenv(ep["api_key_env"], "dummy")
        try:
            lmc.Catalog.load(data).policy()
        except lmc.CatalogError as exc:
            pytest.fail(f"{page.name}:{line}: the catalog in this block is invalid:\n{exc}")
    elif set(data) == {"policy"}:
        try:
            Policy.model_validate(data["policy"])
        except ValueError as exc:
            pytest.fail(f"{page.name}:{line}: the policy in this block is invalid:\n{exc}")


# ---------------------------------------------------------------------------- policy fields


POLICY_ROWS = _policy_tables()


def test_policy_tables_exist_on_the_policy_pages() -> None:
    pages = {p.name for p, *_ in POLICY_ROWS}
    assert {"routing.md", "health.md", "hedging.md", "catalog.md"} <= pages, pages


@pytest.mark.parametrize(
    "page,line,field,default",
    POLICY_ROWS,
    ids=[f"{p.name}:{f}" for p, _, f, _ in POLICY_ROWS] if POLICY_ROWS else None,
)
def test_documented_policy_field_exists_with_its_default(page: Path, line: int, field: str, default: str) -> None:
    try:
        info = _policy_field(field)
    except KeyError:
        pytest.fail(f"{page.name}:{line}: `{field}` is not a field of llm_multicloud.policy.Policy")
    m = re.fullmatch(r"`(.+)`", default)
    assert m, f"{page.name}:{line}: the default of `{field}` must be a `json` literal: {default!r}"
    stated = json.loads(m.group(1))
    actual = list(info.default) if isinstance(info.default, tuple) else info.default  # JSON has lists
    if isinstance(stated, float | int) and not isinstance(stated, bool) and isinstance(actual, float | int):
        ok = math.isclose(float(stated), float(actual))
    else:
        ok = stated == actual
    assert ok, f"{page.name}:{line}: `{field}` is documented with default {stated!r}, the code says {actual!r}"


@pytest.mark.parametrize("name", ["routing.md", "health.md", "hedging.md", "cost.md", "catalog.md", "residency.md"])
def test_policy_fields_named_in_the_text_exist(name: str) -> None:
    page = ROOT / "docs" / name
    dotted = re.compile(r"^(?:policy\.)?(" + "|".join(sorted(SECTIONS)) + r")\.([a-z_]+)$")
    missing = []
    for n, line in _prose_lines(page.read_text(encoding="utf-8")):
        for token in re.findall(r"`([^`]+)`", line):
            token = token.split(":")[0].strip()  # `probe.metrics: true`
            m = dotted.match(token)
            if m is None or token.endswith((".py", ".md")):
                continue
            try:
                _policy_field(f"{m.group(1)}.{m.group(2)}")
            except KeyError:
                missing.append(f"{name}:{n}: `{token}`")
        for token in re.findall(r"`policy\.([a-z_.]+)`", line):
            try:
                _policy_field(token)
            except KeyError:
                missing.append(f"{name}:{n}: `policy.{token}`")
    assert not missing, "policy fields named in the docs but absent from llm_multicloud.policy:\n" + "\n".join(missing)


def test_catalog_md_lists_every_policy_field() -> None:
    listed = {f for p, _, f, _ in POLICY_ROWS if p.name == "catalog.md"}
    missing = sorted(_leaf_fields() - listed)
    assert not missing, (
        "policy fields missing from the policy reference in docs/catalog.md (document each new knob there, "
        f"with its default, and on the page where it acts): {missing}"
    )


# ---------------------------------------------------------------------------- records and snapshot


def _backticked(name: str) -> set[str]:
    """Every `code span` of a page's prose (code blocks excluded)."""
    text = (ROOT / "docs" / name).read_text(encoding="utf-8")
    return {t.strip() for _, line in _prose_lines(text) for t in re.findall(r"`([^`]+)`", line)}


def test_audit_record_fields_are_documented() -> None:
    import dataclasses

    missing = [f.name for f in dataclasses.fields(lmc.AttemptRecord) if f.name not in _backticked("residency.md")]
    assert not missing, f"AttemptRecord fields not described in docs/residency.md: {missing}"


def test_snapshot_fields_are_documented() -> None:
    catalog = {
        "endpoints": [
            {
                "id": "a",
                "provider": "aws",
                "region": "eu-central-1",
                "base_url": "https://a.example.invalid/v1",
                "models": ["m"],
            }
        ]
    }
    with lmc.MultiCloud(catalog) as mc:  # snapshot() sends nothing
        snap = mc.snapshot()
    documented = _backticked("health.md")
    missing = [k for k in [*snap, *snap["endpoints"][0]] if k not in documented]
    assert not missing, f"snapshot() keys not described in docs/health.md: {missing}"


# ---------------------------------------------------------------------------- regions


def test_region_list_in_regions_md_matches_the_table() -> None:
    text = (ROOT / "docs" / "regions.md").read_text(encoding="utf-8")
    documented: dict[str, list[tuple[str, str, bool]]] = {}
    for m in re.finditer(r"^### (\w+): (\d+) regions\n\n(.+)$", text, re.M):
        provider, count, body = m.group(1), int(m.group(2)), m.group(3)
        rows = [(c, cc, bool(s)) for c, cc, s in re.findall(r"`([a-z0-9-]+)` ([A-Z]{2})(†?)", body)]
        assert len(rows) == count, f"{provider}: heading says {count}, list has {len(rows)}"
        documented[provider] = rows
    actual: dict[str, list[tuple[str, str, bool]]] = {}
    for r in regions.all_regions():
        actual.setdefault(r.provider, []).append((r.code, r.country, r.sovereign))
    assert documented == actual, "docs/regions.md's region list is out of date with llm_multicloud.regions"


def test_bloc_table_in_regions_md_matches_the_code() -> None:
    text = (ROOT / "docs" / "regions.md").read_text(encoding="utf-8")
    documented = {
        m.group(1): (int(m.group(2)), frozenset(m.group(3).split()))
        for m in re.finditer(r"^\| `([A-Z]+)` \| [^|]+ \| (\d+): ([A-Z ]+) \|$", text, re.M)
    }
    actual = {b: (len(members), members) for b, members in regions.BLOCS.items()}
    assert documented == actual


# ---------------------------------------------------------------------------- examples and README


def test_every_example_is_documented() -> None:
    corpus = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    examples = [*sorted((ROOT / "examples").glob("*.py")), ROOT / "examples" / "catalog.yaml"]
    missing = [p.name for p in examples if f"examples/{p.name}" not in corpus]
    assert not missing, f"examples not linked from README.md or docs/: {missing}"


def test_readme_gives_the_two_commands_exactly() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line.strip() for line in readme.splitlines()]
    assert DEMO_COMMAND in lines, "the README must give the demo command on a line of its own"
    assert TEST_COMMAND in lines, "the README must give the test command on a line of its own"
    # ...on the first screen: before the first second-level heading.
    first_screen = readme.split("\n## ", 1)[0]
    assert DEMO_COMMAND in first_screen and TEST_COMMAND in first_screen


def test_ci_runs_the_readme_test_sessions() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND.split(" && ")[1] in ci  # CI may install nox quietly (-q); the sessions must be the same


def test_slugs_follow_github() -> None:
    assert _slug("`explain()` and `llm-multicloud explain`") == "explain-and-llm-multicloud-explain"
    assert _slug("`near`: where the user is") == "near-where-the-user-is"
    assert _slug("Retry-After and cooldowns") == "retry-after-and-cooldowns"
    assert _slug("503: nothing usable") == "503-nothing-usable"


def test_runnable_blocks_use_only_loopback() -> None:
    # Runnable blocks may start the simulated fleet (127.0.0.1) but must not need the network.
    for page, line, code in BLOCKS:
        for url in re.findall(r"https?://[^\s\"')]+", code):
            host = re.sub(r"^https?://", "", url).split("/")[0].split(":")[0]
            assert host.endswith((".invalid", "example.com")) or host in {"127.0.0.1", "localhost"}, (
                f"{page.name}:{line}: {url}"
            )


def test_supported_versions_table_is_what_ci_runs() -> None:
    # The table is generated from noxfile.OPENAI_LINES (`nox -s versions`): the README
    # and http-clients.md must show exactly the lines CI runs.
    import importlib.util

    spec = importlib.util.spec_from_file_location("noxfile_for_docs", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    noxfile = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = noxfile  # dataclasses look their module up
    try:
        spec.loader.exec_module(noxfile)
    finally:
        del sys.modules[spec.name]
    table = noxfile.versions_table()
    assert {"3", "2", "1"} <= set(noxfile.OPENAI_LINES), "CI must run openai 3.x, 2.x and 1.x"
    for page in (ROOT / "README.md", ROOT / "docs" / "http-clients.md"):
        text = page.read_text(encoding="utf-8")
        block = text.split("<!-- versions table:", 1)[1].split("-->", 1)[1].split("<!-- /versions table -->", 1)[0]
        assert block.strip() == table, f"{page.name}: run `nox -s versions` and paste its table"
