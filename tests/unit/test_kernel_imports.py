"""The kernel's modules import each other without cycles, function-local imports included, and
the registry client the gateway uses imports no nameko."""

import ast
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _imported(tree, package="shared"):
    """Every ``shared.*`` module a module's code imports, at any depth of its body."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from shared import config``: the names may be modules of the package
            if node.module == package:
                found.update(f"{package}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith(f"{package}.")}


def import_graph(folder=SHARED, package="shared"):
    modules = {f"{package}.{path.stem}": path for path in folder.glob("*.py")
               if path.stem != "__init__"}
    return {name: sorted(_imported(ast.parse(path.read_text())) & set(modules) - {name})
            for name, path in modules.items()}


def find_cycle(graph):
    """One cycle of ``graph`` as a list of nodes (first repeated last), or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import():
    tree = ast.parse("def f():\n    from shared import b\n")
    assert _imported(tree) == {"shared", "shared.b"} - {"shared"}
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a"]}) is None


def test_the_kernel_has_no_import_cycles():
    graph = import_graph()
    assert {"shared.db", "shared.health", "shared.registration"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_registry_client_imports_no_nameko():
    tree = ast.parse((SHARED / "registry.py").read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
    assert not {n for n in names if n.split(".")[0] in ("nameko", "eventlet")}
    assert not _imported(tree)  # nor the kernel's nameko side
