"""The packages' layers point one way only: contract/export ← client ← server ← bench (issue 12).

Reads every module's imports (function-local ones too) with ``ast``; a package may import only the
packages below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "export": set(),
    "client": {"export"},
    "server": {"export", "client"},
    "bench": {"export", "client", "server"},
}


def imported_packages(package: str) -> dict[str, set[str]]:
    """{module path: project packages it imports} for every module of ``package``."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & set(ALLOWED)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = {
        module: sorted(names - ALLOWED[package] - {package})
        for module, names in imported_packages(package).items()
        if names - ALLOWED[package] - {package}
    }
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}: {wrong}"
