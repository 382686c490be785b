"""Check that llm_multicloud's dependencies point one way: no import cycle, nothing
below the composition root imports it, and every module imports alone.

Three checks, each with a message that says what to fix:

1. **No cycle** in the import graph of the package. The graph has every import
   statement of every module — at module level, under ``if TYPE_CHECKING:`` and
   inside functions — because a deferred import is still a dependency: it only
   hides a cycle from the interpreter, not from the reader. Cycles are the strongly
   connected components of the graph (Tarjan's algorithm).
2. **Layering**: ``client.py`` is the composition root. Only the modules above it
   (the package ``__init__``, the CLI, the demo, the status app) may import it;
   everything else gets a narrow protocol from :mod:`llm_multicloud.runtime`. No
   submodule imports the package ``__init__`` itself (``from . import __version__``
   closes a cycle through every lazy export).
3. **Each module imports alone** in a fresh interpreter (``python -c "import m"``):
   an import that works only because another module happened to be imported first
   fails here.

Run ``python tools/check_imports.py`` (exit status 1 on a problem; ``--static`` skips
check 3). ``tests/unit/test_import_graph.py`` runs it in the suite and ``nox -s lint``
in CI. Stdlib only, so that the lint session needs nothing installed to run it.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "llm_multicloud"
COMPOSITION_ROOT = f"{PACKAGE}.client"
#: The modules above the composition root: they use a MultiCloud, nothing uses them.
ABOVE_ROOT = frozenset({PACKAGE, f"{PACKAGE}.__main__", f"{PACKAGE}.cli", f"{PACKAGE}.demo", f"{PACKAGE}.status"})
#: Cycles known and being removed, each with who removes it. A cycle not listed here
#: fails the check; a listed one that no longer exists fails it too (delete the entry).
KNOWN_CYCLES: dict[frozenset[str], str] = {}


@dataclass(frozen=True)
class Problem:
    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


def modules(package_dir: Path = ROOT / PACKAGE) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(name: str, path: Path, node: ast.Import | ast.ImportFrom, known: Iterable[str]) -> set[str]:
    """The package modules one import statement depends on."""
    known = set(known)
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    if node.level:
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, *([node.module] if node.module else [])])
    else:
        target = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        if sub in known:
            out.add(sub)  # ``from . import intent``: the submodule
        elif target in known:
            out.add(target)  # ``from .errors import X`` (or ``from . import X`` of the package)
    return out


def graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (every import statement, see the docs)."""
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                deps |= _imported(name, path, node, mods)
        deps.discard(name)
        edges[name] = deps
    return edges


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(edges[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, todo = work[-1]
            if todo:
                w = todo.pop()
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, sorted(edges.get(w, ()))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found


def _path_in(comp: frozenset[str], edges: dict[str, set[str]]) -> list[str]:
    """One concrete cycle inside a component, for the message (a -> b -> a)."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)  # pragma: no cover - a component always has a cycle


def static_problems(edges: dict[str, set[str]]) -> list[Problem]:
    problems = []
    found = cycles(edges)
    for comp in found:
        if comp in KNOWN_CYCLES:
            continue
        problems.append(
            Problem(
                "cycle",
                " -> ".join(m.removeprefix(PACKAGE + ".") for m in _path_in(comp, edges))
                + " (dependencies must point one way: move what both need into a lower module, "
                "or hand the lower one a protocol from llm_multicloud.runtime)",
            )
        )
    for comp, why in KNOWN_CYCLES.items():
        if comp not in found:
            problems.append(
                Problem("stale", f"{sorted(comp)} is no longer a cycle ({why}): remove it from KNOWN_CYCLES")
            )
    for mod, deps in sorted(edges.items()):
        if COMPOSITION_ROOT in deps and mod not in ABOVE_ROOT:
            problems.append(
                Problem(
                    "layering",
                    f"{mod} imports {COMPOSITION_ROOT}: only {sorted(ABOVE_ROOT)} may; give {mod} a narrow "
                    "protocol from llm_multicloud.runtime instead of the MultiCloud",
                )
            )
        if PACKAGE in deps and mod not in ABOVE_ROOT:
            problems.append(
                Problem("layering", f"{mod} imports the package {PACKAGE} itself: import the submodule it needs")
            )
    return problems


def _import_alone(module: str) -> Problem | None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return Problem("import", f"`python -c 'import {module}'` fails in a fresh interpreter: {last}")


def import_problems(names: Iterable[str], workers: int = 2) -> list[Problem]:
    """Import each module alone, each in a fresh interpreter (``workers`` at a time)."""
    with ThreadPoolExecutor(workers) as pool:
        return [p for p in pool.map(_import_alone, sorted(names)) if p is not None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--static", action="store_true", help="only the import graph (no fresh interpreters)")
    args = ap.parse_args(argv)
    mods = modules()
    problems = static_problems(graph(mods))
    if not args.static:
        problems += import_problems(mods)
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        extra = "" if args.static else ", each imports alone"
        known = f" beyond the {len(KNOWN_CYCLES)} known" if KNOWN_CYCLES else ""
        print(f"{len(mods)} modules: no import cycle{known}, layering kept{extra}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
