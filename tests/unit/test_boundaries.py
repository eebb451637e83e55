"""The boundaries between packages, read from the source: each service and the gateway import
only the kernel (``shared``) and libraries, never one another; the kernel imports no service
and not the gateway; ``shared/contracts.py``, which both sides of a boundary import, needs
nothing outside the standard library."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNEL = "shared"
# packages that run the platform but are not behind a boundary: tooling and the tests
NOT_BOUNDED = {KERNEL, "tests", "deploy"}
BOUNDED = sorted(p.parent.name for p in ROOT.glob("*/__init__.py")
                 if p.parent.name not in NOT_BOUNDED and not p.parent.name.startswith("."))


def modules(package):
    return sorted(p for p in (ROOT / package).rglob("*.py") if ".venv" not in p.parts)


def imports(path):
    """Every module ``path`` imports, at the top or inside a function (absolute names)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def top(name):
    return name.split(".")[0]


def crossings(package, forbidden):
    found = []
    for path in modules(package):
        for line, name in imports(path):
            if top(name) in forbidden:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


def test_the_bounded_packages_are_found():
    assert {"identity", "auth", "authz", "audit", "gateway"} <= set(BOUNDED)


@pytest.mark.parametrize("package", BOUNDED)
def test_a_service_or_the_gateway_imports_no_other_one(package):
    others = set(BOUNDED) - {package}
    assert crossings(package, others) == []


def test_the_kernel_imports_no_service_and_not_the_gateway():
    assert crossings(KERNEL, set(BOUNDED)) == []


def test_the_contracts_need_only_the_standard_library():
    path = ROOT / KERNEL / "contracts.py"
    outside = [f"line {line}: {name}" for line, name in imports(path)
               if top(name) not in sys.stdlib_module_names]
    assert outside == []


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "late.py"
    module.write_text("def f():\n    from authz.permissions import Grants\n    return Grants\n")
    assert list(imports(module)) == [(2, "authz.permissions")]
