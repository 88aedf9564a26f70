"""The package's layers (setup.cfg's [importlinter] contracts) hold, and no module reaches
into another module's private names: a violation fails the suite, so it fails CI."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ciard_bench"


def test_import_linter_contracts_hold():
    """`lint-imports` (import-linter): layers, no cycles, private modules stay inside."""
    proc = subprocess.run([sys.executable, "-m", "importlinter.cli", "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"lint-imports failed:\n{proc.stdout}\n{proc.stderr}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module a ``from X import ...`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _private_uses(path: Path) -> list[str]:
    """``from <other ciard_bench module> import _name`` and ``<imported module>._name``."""
    module, is_package = _module_name(path), path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(module, node, is_package)
            if not source.startswith("ciard_bench"):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    if source != module:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {source} "
                                     f"import {alias.name}")
                else:   # `from . import store`: a module bound to a name
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ciard_bench"):
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    uses = [u for path in sorted(PACKAGE.rglob("*.py")) for u in _private_uses(path)]
    assert not uses, "private names used across modules (make them public):\n" + "\n".join(uses)


def test_the_private_name_check_sees_both_forms(tmp_path, monkeypatch):
    """The checker itself: a ``from .x import _y`` and an ``x._y`` are both reported."""
    pkg = tmp_path / "ciard_bench" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("from .b import _hidden, shown\nfrom . import b\nb._other()\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    uses = _private_uses(pkg / "a.py")
    assert [u.split(": ", 1)[1] for u in uses] == ["from ciard_bench.sub.b import _hidden",
                                                     "b._other"]
