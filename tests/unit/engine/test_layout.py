"""The engine's shape, as issue 13 asks: one idea per module (each says what it owns),
and no function of 60 lines or more (the longest is kept well under that)."""

from __future__ import annotations

import ast
from pathlib import Path

import llm_multicloud.engine as engine

ENGINE = Path(engine.__file__).parent


def _functions() -> list[tuple[int, str]]:
    out = []
    for f in sorted(ENGINE.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                out.append((node.end_lineno - node.lineno + 1, f"{f.name}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def test_no_engine_function_reaches_60_lines() -> None:
    longest = _functions()[:3]
    assert longest[0][0] < 50, f"the longest engine functions: {longest}"


def test_every_engine_module_says_what_it_owns() -> None:
    for f in sorted(ENGINE.glob("*.py")):
        doc = ast.get_docstring(ast.parse(f.read_text(encoding="utf-8")))
        assert doc and len(doc) > 80, f"{f.name} has no module docstring saying what it owns"
