"""Dependencies point one way (issue 13): tools/check_imports.py on the real package,
and on small packages built here to show that each of its checks can fail."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_imports", ROOT / "tools" / "check_imports.py")
assert _spec is not None and _spec.loader is not None
check_imports = importlib.util.module_from_spec(_spec)
sys.modules["check_imports"] = check_imports
_spec.loader.exec_module(check_imports)


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    pkg = tmp_path / "llm_multicloud"
    for rel, text in {"__init__.py": "", **files}.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return check_imports.modules(pkg)


def test_the_package_has_no_cycle_and_keeps_its_layers() -> None:
    edges = check_imports.graph(check_imports.modules())
    assert check_imports.static_problems(edges) == []
    # the composition root is imported only from above it
    importers = {m for m, deps in edges.items() if "llm_multicloud.client" in deps}
    assert importers <= check_imports.ABOVE_ROOT
    for lower in ("transport", "probe", "shared", "live", "telemetry"):
        assert "llm_multicloud.client" not in edges[f"llm_multicloud.{lower}"]


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    assert check_imports.import_problems(check_imports.modules()) == []


def test_a_cycle_through_type_checking_and_a_function_is_found(tmp_path: Path) -> None:
    mods = _package(
        tmp_path,
        {
            "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
            "b.py": "def f():\n    from . import c\n",
            "c.py": "from .a import *\n",
            "d.py": "from . import a\n",
        },
    )
    edges = check_imports.graph(mods)
    assert edges["llm_multicloud.b"] == {"llm_multicloud.c"}
    assert check_imports.cycles(edges) == [frozenset({"llm_multicloud.a", "llm_multicloud.b", "llm_multicloud.c"})]
    (problem,) = [p for p in check_imports.static_problems(edges) if p.check == "cycle"]
    assert "a -> b -> c -> a" in problem.message


def test_a_lower_module_taking_the_multicloud_is_refused(tmp_path: Path) -> None:
    mods = _package(
        tmp_path,
        {
            "client.py": "",
            "probe.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .client import MultiCloud\n",
            "cli.py": "from .client import MultiCloud\n",
            "telemetry.py": "from . import __version__\n",
        },
    )
    found = {(p.check, p.message.split()[0]) for p in check_imports.static_problems(check_imports.graph(mods))}
    assert ("layering", "llm_multicloud.probe") in found
    assert ("layering", "llm_multicloud.telemetry") in found  # through the package __init__
    assert all(mod != "llm_multicloud.cli" for _, mod in found)  # above the root: allowed


def test_a_known_cycle_that_is_gone_must_be_struck_off(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = frozenset({"llm_multicloud.x", "llm_multicloud.y"})
    monkeypatch.setitem(check_imports.KNOWN_CYCLES, gone, "removed long ago")
    problems = check_imports.static_problems(check_imports.graph(check_imports.modules()))
    assert [p.check for p in problems] == ["stale"]


def test_a_module_that_cannot_import_alone_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package(tmp_path, {"broken.py": "import llm_multicloud_no_such_dependency\n"})
    monkeypatch.setattr(check_imports, "ROOT", tmp_path)
    monkeypatch.setenv("PYTHONPATH", "")
    (problem,) = check_imports.import_problems(["llm_multicloud.broken"])
    assert "ModuleNotFoundError" in problem.message and "llm_multicloud.broken" in problem.message
