"""ciard-bench: reproducible adversarial robustness distillation (CIARD and its baselines).

The public API is imported lazily so that ``import ciard_bench`` is fast; torch and the
attack libraries load on first use. Training and evaluation live in the submodules
``ciard_bench.train`` (``train(cfg)``) and ``ciard_bench.evaluate`` (``evaluate(model, x, y)``).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "UserError": "ciard_bench.errors",
    "create_model": "ciard_bench.models",
    "list_models": "ciard_bench.models",
    "load_dataset": "ciard_bench.data",
    "list_datasets": "ciard_bench.data",
    "create_method": "ciard_bench.methods",
    "list_methods": "ciard_bench.methods",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ciard_bench' has no attribute {name!r}")
