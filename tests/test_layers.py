"""The import graph follows the flow: every import of the three packages, module-level or inside a function, runs
from a stage to the stages below it, never back up, never in a loop, and never from the core to a plugin.

The stages of ``deepretrieval_trainer``, bottom to top: common -> retrieval -> rewriting -> training and evaluation
(beside each other) -> literature and sql (the tasks whose retriever is a search engine or a database) -> commands
-> cli. The plugins (``llamaindex_deepretrieval``, ``haystack_deepretrieval``) sit on top and may import any stage;
the core finds them through entry points, never by import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"deepretrieval_trainer": ROOT / "trainer", "llamaindex_deepretrieval": ROOT / "llamaindex_deepretrieval",
           "haystack_deepretrieval": ROOT / "haystack_deepretrieval"}
CORE = "deepretrieval_trainer"
# what each stage may import besides itself
MAY_IMPORT = {
    "common": set(),
    "retrieval": {"common"},
    "rewriting": {"common", "retrieval"},
    "training": {"common", "retrieval", "rewriting"},
    "evaluation": {"common", "retrieval", "rewriting"},
    "literature": {"common", "retrieval", "rewriting"},
    "sql": {"common", "retrieval", "rewriting", "training", "evaluation"},
    "commands": {"common", "retrieval", "rewriting", "training", "evaluation", "literature", "sql"},
    "cli": {"common", "commands"},
}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for file in folder.rglob("*.py"):
            parts = [package, *file.relative_to(folder).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


MODULES = modules()


def imports(name: str, file: Path) -> set[str]:
    """The modules of the three packages that ``name`` imports, wherever in the file (functions included)."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if node.module:  # `from . import module` imports the module, not the package's own code
                targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in MODULES and t != name}


GRAPH = {name: imports(name, file) for name, file in MODULES.items()}


def stage(name: str) -> str | None:
    """The stage of a core module (None: the package's own __init__, its public face, which may import any)."""
    parts = name.split(".")
    if parts[0] != CORE or len(parts) == 1:
        return None
    return parts[1]


def test_the_core_root_holds_only_the_cli():
    assert sorted(p.name for p in FOLDERS[CORE].glob("*.py")) == ["__init__.py", "cli.py"]
    folders = sorted(p.name for p in FOLDERS[CORE].iterdir() if (p / "__init__.py").is_file())
    assert set(folders) == set(MAY_IMPORT) - {"cli"}


@pytest.mark.parametrize("folder", sorted(set(MAY_IMPORT) - {"cli"}))
def test_each_stage_says_in_one_line_what_it_is_for(folder):
    doc = ast.get_docstring(ast.parse((FOLDERS[CORE] / folder / "__init__.py").read_text(encoding="utf-8")))
    assert doc and len(doc.splitlines()) == 1 and len(doc) <= 120, doc


def test_no_core_module_imports_a_plugin():
    wrong = {(name, target) for name, targets in GRAPH.items() if name.startswith(CORE)
             for target in targets if not target.startswith(CORE)}
    assert not wrong, f"the core must find plugins through entry points, not imports: {sorted(wrong)}"


def test_every_import_runs_down_the_stages():
    wrong = []
    for name, targets in GRAPH.items():
        here = stage(name)
        if here is None:
            continue
        for target in targets:
            there = stage(target)
            if there is not None and there != here and there not in MAY_IMPORT[here]:
                wrong.append(f"{name} ({here}) imports {target} ({there})")
    assert not wrong, "imports against the flow:\n" + "\n".join(sorted(wrong))


def test_no_import_loops():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for name in GRAPH:
        if name not in index:
            visit(name)
    assert not loops, f"import loops: {loops}"


def test_the_walk_sees_real_edges():
    """A walk that found nothing would pass every check above: it must see the edges that are known to exist."""
    assert f"{CORE}.retrieval.search" in GRAPH[f"{CORE}.rewriting.tasks"]
    assert f"{CORE}.training.engine" in GRAPH[f"{CORE}.sql.train"]  # a function-level import
    assert f"{CORE}.rewriting.card" in GRAPH["haystack_deepretrieval.component"]
    assert len(GRAPH) > 80
