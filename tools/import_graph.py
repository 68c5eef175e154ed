"""Import circles in the package and bench/: which modules import which (function-level imports
included, ``if TYPE_CHECKING:`` blocks left out: they never run), and the strongly connected groups of
that graph that hold more than one module.

    python -m tools.import_graph          # prints each circle; exit 1 if there is one

An edge goes to the module named, or to ``pkg.name`` when ``from pkg import name`` names a module; a
module's own parent packages are not edges (Python runs them first anyway). bench/ scripts import each
other by bare name (``from speed import ...``), as they put bench/ on ``sys.path``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(
    root: Path = ROOT, package: str = "bge_rerank_cli", scripts: str | None = "bench"
) -> dict[str, Path]:
    """Module name -> file: every module of ``package`` (under ``root``) and the scripts in ``scripts``
    (named ``bench.NAME``)."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    if scripts is not None:
        for path in sorted((root / scripts).glob("*.py")):
            found[f"{scripts}.{path.stem}"] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The modules of ``known`` that module ``name`` (its source at ``path``) imports, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    scripts = (
        name.partition(".")[0]
        if name.count(".") == 1 and not path.parent.joinpath("__init__.py").exists()
        else None
    )
    named: set[str] = set()

    def walk(nodes: Iterable[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _type_checking(node):
                walk(node.orelse)
                continue
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    named.add(sub if sub in known else module)
            walk(ast.iter_child_nodes(node))

    walk(tree.body)
    found = set()
    for target in named:
        if scripts is not None and f"{scripts}.{target}" in known:
            target = f"{scripts}.{target}"
        if target in known and target != name and not name.startswith(target + "."):
            found.add(target)
    return found


def circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        found.append(sorted(group))
    return found


def graph(known: Mapping[str, Path]) -> dict[str, set[str]]:
    return {name: imports_of(name, path, known) for name, path in known.items()}


def describe(group: list[str], edges: Mapping[str, set[str]]) -> str:
    lines = [f"circle of {len(group)}: " + ", ".join(group)]
    lines += [f"  {m} imports {', '.join(sorted(edges[m] & set(group)))}" for m in group]
    return "\n".join(lines)


def main() -> int:
    edges = graph(modules())
    found = circles(edges)
    for group in found:
        print(describe(group, edges))
    if not found:
        print(f"no import circles in {len(edges)} modules")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
