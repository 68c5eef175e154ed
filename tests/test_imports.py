"""No import circle in the package or bench/, function-level imports included (tools/import_graph.py)."""

from __future__ import annotations

from pathlib import Path

from tools.import_graph import circles, describe, graph, modules


def test_no_module_imports_its_way_back_to_itself():
    edges = graph(modules())
    assert len(edges) > 60 and "bench.speed" in edges  # the package and the bench scripts were read
    found = circles(edges)
    assert not found, "\n".join(describe(group, edges) for group in found)


def test_a_circle_through_a_function_level_import_is_found(tmp_path: Path):
    """The check itself: a circle closed by an import inside a function is a circle; one closed only
    under ``if TYPE_CHECKING:`` is not; a bench script importing another by bare name is an edge."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def thing():\n    from ..a import x\n    return x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import y\n")
    (pkg / "d.py").write_text("from . import c\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "one.py").write_text("def f():\n    from two import g\n")
    (tmp_path / "scripts" / "two.py").write_text("import one\n")
    edges = graph(modules(tmp_path, "pkg", "scripts"))
    assert edges["pkg.a"] == {"pkg.sub.b"} and edges["pkg.sub.b"] == {"pkg.a"}
    assert edges["pkg.c"] == set() and edges["pkg.d"] == {"pkg.c"}
    assert sorted(circles(edges)) == [["pkg.a", "pkg.sub.b"], ["scripts.one", "scripts.two"]]
