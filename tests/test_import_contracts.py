"""The structure of the code, checked.

- The import contracts of pyproject.toml ([tool.importlinter], run by `lint-imports` in `make
  test`) stay complete as p2m_core grows: a forbidden contract names what pseudo may not import,
  so a new module of p2m_core must join that list or the rule silently stops covering it.
- No module imports itself through others (no import cycle, imports inside functions included).
- No Python file reaches :data:`MAX_LINES` lines.
"""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import p2m_core

ROOT = Path(__file__).resolve().parents[1]
PSEUDO_MAY_IMPORT = {"p2m_core.config", "p2m_core.errors"}


def contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_pseudo_contract_forbids_every_other_module_of_p2m_core() -> None:
    modules = {f"p2m_core.{m.name}" for m in pkgutil.iter_modules(p2m_core.__path__)}
    contract = contracts()["pseudo"]
    assert contract["source_modules"] == ["p2m_core.pseudo"]
    assert set(contract["forbidden_modules"]) == modules - PSEUDO_MAY_IMPORT - {"p2m_core.pseudo"}



def import_cycles(packages: tuple[str, ...] = ("p2m_core", "ray_jobs", "analysis")) -> list[list[str]]:
    """The import cycles among our modules (imports inside functions included), as the sets of
    modules that reach each other (Tarjan's strongly connected components). A package importing
    its own submodules (its public face re-exporting them) is not counted."""
    import grimp  # import-linter's own graph builder

    graph = grimp.build_graph(*packages)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith(module + "."):
                continue
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_through_others() -> None:
    assert import_cycles() == []


def test_a_cycle_is_found_when_there_is_one(tmp_path, monkeypatch) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic import b\n")
    (package / "b.py").write_text("def f():\n    from cyclic import a\n")
    (package / "c.py").write_text("from cyclic import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles(("cyclic",)) == [["cyclic.a", "cyclic.b"]]


#: A module that grows past this many lines has taken on a second job: split it by job.
MAX_LINES = 500


def test_no_python_file_reaches_the_line_limit() -> None:
    folders = ("p2m_core", "ray_jobs", "analysis", "tests", "benchmarks")
    lines = {path.relative_to(ROOT): len(path.read_text().splitlines()) for folder in folders
             for path in (ROOT / folder).rglob("*.py")}  # fmt: skip
    assert len(lines) > 100
    assert {str(path): n for path, n in lines.items() if n >= MAX_LINES} == {}
