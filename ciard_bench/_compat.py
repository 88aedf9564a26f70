"""The install traps of the attack/zoo ecosystem, solved in one place.

* robustbench 1.1.1 imports ``autoattack`` (the git package); PyPI only has ``pyautoattack``,
  which is the same code under another name. We alias the module (and its submodules)
  before robustbench is imported.
* robustbench imports ``pkg_resources``: setuptools<81 is pinned in setup.cfg.
* the torchattacks 3.5.1 wheel ships an old top-level ``robustbench/``; .ci/run installs
  torchattacks first and robustbench after it, and :func:`import_robustbench` checks that the
  module it gets is the real one (it has the model zoo and ``load_model``).

Nothing heavy is imported at module level: ``import ciard_bench`` stays fast.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

from .errors import UserError

_AA_SUBMODULES = ("autoattack", "state", "checks", "autopgd_base", "fab_pt", "fab_base",
                  "square", "other_utils", "utils_tf", "fab_projections", "fab_tf")


def import_autoattack() -> ModuleType:
    """Return the AutoAttack package (``pyautoattack``), aliased as ``autoattack``."""
    try:
        aa = importlib.import_module("pyautoattack")
    except ImportError as err:  # pragma: no cover - install problem
        raise UserError("pyautoattack is not installed; run: pip install pyautoattack") from err
    if sys.modules.get("autoattack") is not aa:
        sys.modules["autoattack"] = aa
    for sub in _AA_SUBMODULES:
        name = f"pyautoattack.{sub}"
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        sys.modules.setdefault(f"autoattack.{sub}", mod)
    return aa


def import_robustbench() -> ModuleType:
    """Import the real robustbench (not torchattacks' vendored copy), with the alias in place."""
    import_autoattack()
    try:
        rb = importlib.import_module("robustbench")
        utils = importlib.import_module("robustbench.utils")
        importlib.import_module("robustbench.model_zoo")
    except ImportError as err:
        raise UserError(
            f"robustbench could not be imported ({err}); reinstall it after torchattacks: "
            "pip install --force-reinstall --no-deps robustbench") from err
    if not hasattr(utils, "load_model"):
        raise UserError(f"the robustbench at {rb.__file__} is not the real package "
                        "(torchattacks' wheel ships an old copy); reinstall robustbench")
    return rb
