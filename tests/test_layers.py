"""The import graph follows the pipeline: a package imports only packages at or below its layer.

docs/architecture.md draws the picture; this test is what keeps it true. Every
import of surgeon's own modules counts, function-local ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import surgeon

ROOT = Path(surgeon.__file__).parent
LAYERS = [  # bottom to top
    {"errors", "_version", "_threads", "_heap", "data"},
    {"roles"},
    {"io", "fixtures"},
    {"runtime"},
    {"edits"},
    {"study"},
    {"export"},
    {"cli"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
    """``surgeon.io.save`` -> ``io``; ``surgeon.cli`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of a surgeon module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import (use absolute surgeon.* imports)"
            if node.module and (node.module == "surgeon" or node.module.startswith("surgeon.")):
                if node.module == "surgeon":  # from surgeon import data -> surgeon.data
                    out += [(node.lineno, f"surgeon.{a.name}") for a in node.names]
                else:
                    out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("surgeon.")]
    return out


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.as_posix() == "__init__.py":
            continue  # the package facade (surgeon.open, the errors) sits above everything
        yield path, rel.parts[0].removesuffix(".py")


def test_every_module_belongs_to_a_layer():
    units = {unit for _, unit in _modules()}
    assert units <= set(LAYER_OF), f"modules outside the layer table: {sorted(units - set(LAYER_OF))}"


def test_imports_go_down_the_pipeline_never_up():
    bad = []
    for path, unit in _modules():
        for line, module in _imports(path):
            target = _unit(module)
            assert target in LAYER_OF, f"{path}:{line}: imports {module}, which has no layer"
            if LAYER_OF[target] > LAYER_OF[unit]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {unit} imports {module}")
    assert not bad, "imports that go up the pipeline:\n" + "\n".join(bad)


def test_io_and_roles_know_nothing_of_edits_runtime_study_export_or_cli():
    above = {"edits", "runtime", "study", "export", "cli"}
    for path, unit in _modules():
        if unit in ("io", "roles"):
            for line, module in _imports(path):
                assert _unit(module) not in above, f"{path}:{line}: {unit} imports {module}"


def test_nothing_imports_the_cli_or_the_package_facade():
    for path, _unit_name in _modules():
        for line, module in _imports(path):
            assert module != "surgeon.cli" or path.name == "__main__.py", f"{path}:{line}: imports the CLI"
            assert module != "surgeon.__init__", f"{path}:{line}: imports the package facade"


def test_own_modules_are_imported_at_the_top_except_in_the_cli():
    """Function-local imports of surgeon modules hide the graph; only the CLI defers a command's engine."""
    local = []
    for path, unit in _modules():
        if unit == "cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("surgeon"):
                        local.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    assert not local, "function-local imports of surgeon modules:\n" + "\n".join(local)
