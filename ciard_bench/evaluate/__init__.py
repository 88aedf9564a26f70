"""Evaluation under CIARD's attack protocol: :func:`evaluate`, :func:`robustness_curve`, the CLI.

``engine`` runs the attacks and the sanity checks and builds the result dict; ``cli`` is
``python -m ciard_bench.evaluate``. See :mod:`ciard_bench.evaluate.engine` for the
conventions (robust = correct clean and attacked; skipped points; seeds; check costs).
"""
from __future__ import annotations

from .cli import main, summary_table
from .engine import (FORMAT, Options, decode_mask, encode_mask, evaluate, predict,
                     preflight_checks, resolve_attacks, robustness_curve, run_attack, wilson)

__all__ = ["FORMAT", "Options", "decode_mask", "encode_mask", "evaluate", "main", "predict",
           "preflight_checks", "resolve_attacks", "robustness_curve", "run_attack",
           "summary_table", "wilson"]
