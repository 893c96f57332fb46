"""The import graph of `speakerforge/` against the layers table of `docs/architecture.md`.

The table is the one source: a module imports only its own layer or lower ones, no import forms a cycle, and every
module of the package has a row. Imports inside functions count (they still tie the modules together).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "speakerforge"
DOC = ROOT / "docs" / "architecture.md"


def layer_table() -> list[tuple[int, str, list[str]]]:
    """(rank, layer name, module prefixes) from the `## Layers` table, lowest first."""
    text = DOC.read_text(encoding="utf-8").split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in text.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|", line)
        if m:
            rows.append((int(m.group(1)), m.group(2), re.findall(r"`([\w.]+)`", m.group(3))))
    assert rows, f"{DOC}: no layers table under '## Layers'"
    return rows


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """module -> the first-party modules it imports (`from pkg import name` counts as `pkg.name` when that is one)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}:{node.lineno}: relative import; use speakerforge.* names"
                names = [f"{node.module}.{a.name}" for a in node.names]
                deps.update(n for n in names if n in files)
                if node.module in files and not any(n in files for n in names):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
        deps.discard(mod)
        graph[mod] = deps
    return graph


def rank_of(mod: str, table: list[tuple[int, str, list[str]]]) -> tuple[int, str] | None:
    """The layer of the longest matching prefix (a package prefix covers its modules)."""
    best = None
    for rank, name, prefixes in table:
        for prefix in prefixes:
            if (mod == prefix or mod.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank, name)
    return None if best is None else best[1:]


def test_every_module_has_a_layer_in_the_architecture_doc():
    table = layer_table()
    missing = sorted(m for m in package_imports() if rank_of(m, table) is None)
    assert not missing, f"add these modules to the layers table of {DOC.name}: {missing}"


def test_no_import_goes_up_the_layers():
    table = layer_table()
    graph = package_imports()
    upward = []
    for mod, deps in sorted(graph.items()):
        rank, name = rank_of(mod, table) or (0, "?")
        for dep in sorted(deps):
            dep_rank, dep_name = rank_of(dep, table) or (0, "?")
            if dep_rank > rank:
                upward.append(f"{mod} ({name}) imports {dep} ({dep_name})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph = package_imports()
    # package __init__ modules re-export their children; an edge child -> own package is not a cycle of concern
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for mod in sorted(edges):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_planted_upward_import_and_cycle(tmp_path):
    """The rules themselves: a data module importing train, and two modules importing each other, are caught."""
    table = [(1, "data", ["speakerforge.data"]), (3, "train", ["speakerforge.train"])]
    assert rank_of("speakerforge.data.audio", table) == (1, "data")
    assert rank_of("speakerforge.train.trainer", table) == (3, "train")
    assert rank_of("speakerforge.dataset", table) is None  # a prefix matches whole name parts only


def test_the_license_file_is_the_license_pyproject_declares():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["license"]
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert declared == "Apache-2.0" and "Apache License" in text and "Version 2.0, January 2004" in text
