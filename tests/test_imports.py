"""The package's modules import each other without circles (an entry point's ``if __name__ == "__main__":``
block does not count: running a module as a script is not a dependency of it)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deeplsp_helpers"


def _is_main_block(node) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Compare) \
        and getattr(node.test.left, "id", None) == "__name__"


def import_graph(package: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, from every relative import, at any depth (also the ones
    inside functions)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()

        def visit(node, here=here, deps=deps):
            for child in ast.iter_child_nodes(node):
                if _is_main_block(child):
                    continue
                if isinstance(child, ast.ImportFrom) and child.level:
                    base = here[: len(here) - (child.level - 1)] + ([child.module] if child.module else [])
                    target = ".".join(base)
                    for alias in child.names:  # "from . import x" imports the module x
                        deps.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
                visit(child)

        visit(ast.parse(path.read_text()))
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_circle():
    graph = import_graph(PACKAGE)
    assert "deeplsp_helpers.channels" in graph and graph["deeplsp_helpers.speedup"]  # the graph was read
    assert circles(graph) == []


def test_channel_graph_queries_sit_on_the_ground_floor():
    graph = import_graph(PACKAGE)
    upstairs = {"deeplsp_helpers.latency_model", "deeplsp_helpers.speedup", "deeplsp_helpers.structured",
                "deeplsp_helpers.halp", "deeplsp_helpers.deeplsp"}
    assert not graph["deeplsp_helpers.channels"] & upstairs
    assert "deeplsp_helpers.speedup" not in graph["deeplsp_helpers.latency_model"]
    assert "deeplsp_helpers.structured" not in graph["deeplsp_helpers.speedup"]


def test_a_circle_is_found_even_through_an_import_inside_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("from .a import f\n")
    (pkg / "d.py").write_text("if __name__ == '__main__':\n    from .a import f\n")
    assert circles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.c"]]
