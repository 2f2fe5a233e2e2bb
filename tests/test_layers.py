"""The layers point one way only (issue 12):

    sam3_spec (the contract) ← export ← server ← bench
    sam3_spec                ← client ← server ← deploy (the Modal app's helpers)

Reads every module's imports (function-local ones too) with ``ast``; a layer may import only the
layers below it, and the contract imports nothing of the project.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sam3_spec import SAM3_INPUTS

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "sam3_spec": set(),
    "export": {"sam3_spec"},
    "client": {"sam3_spec"},
    "server": {"sam3_spec", "export", "client"},
    "bench": {"sam3_spec", "export", "client", "server"},
    "deploy": {"sam3_spec", "export", "client", "server"},
}


def _sources(layer: str) -> list[Path]:
    """The .py files of ``layer``: a package directory, or the single-file module ``layer``.py."""
    folder = ROOT / layer
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [ROOT / f"{layer}.py"]


def imported_layers(layer: str) -> dict[str, set[str]]:
    """{module path: project layers it imports} for every module of ``layer``."""
    found = {}
    for path in _sources(layer):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & set(ALLOWED)
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(layer):
    wrong = {
        module: sorted(names - ALLOWED[layer] - {layer})
        for module, names in imported_layers(layer).items()
        if names - ALLOWED[layer] - {layer}
    }
    assert not wrong, f"{layer} may import only {sorted(ALLOWED[layer])}: {wrong}"


def test_the_orchestrator_imports_the_contract_under_its_own_name():
    """triton_repo/sam3/1/sam3_spec.py is the top-level sam3_spec.py itself: same file, same name."""
    served = ROOT / "triton_repo" / "sam3" / "1" / "sam3_spec.py"
    assert served.resolve() == (ROOT / "sam3_spec.py").resolve()


def test_the_contract_needs_only_the_standard_library():
    tree = ast.parse((ROOT / "sam3_spec.py").read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= {"__future__", "dataclasses", "typing", "enum", "math"}, imported


def test_every_function_local_import_says_why():
    """ruff's PLC0415 (pyproject) keeps imports at module top; each exception names its reason."""
    MARK = "noqa: " + "PLC0415"  # split, so this line is not one of the exceptions
    sources = [p for p in ROOT.rglob("*.py") if not {".venv", "build", "artifacts"} & set(p.relative_to(ROOT).parts)]
    bare = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sources
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if MARK in line and not line.split(MARK, 1)[1].strip().startswith("(")
    ]
    assert not bare, f"a local import without its reason: {bare}"


def test_the_auto_mode_defaults_are_written_once():
    """The distinctive request defaults live in sam3_spec.py only (the web page, REST docs, clients,
    Modal app and orchestrator derive them); issue 12 found 0.88 in six files."""
    defaults = {t.name: t.default for t in SAM3_INPUTS}
    literals = [repr(defaults["pred_iou_thresh"]), repr(defaults["stability_score_thresh"])]
    skip = {".venv", "build", "artifacts", "tests", ".git"}
    sources = [
        p
        for p in ROOT.rglob("*")
        if p.suffix in (".py", ".js", ".html")
        and not skip & set(p.relative_to(ROOT).parts)
        and p.is_file()
        and not p.is_symlink()
    ]
    found = {lit: sorted(str(p.relative_to(ROOT)) for p in sources if lit in p.read_text()) for lit in literals}
    assert found == {lit: ["sam3_spec.py"] for lit in literals}
