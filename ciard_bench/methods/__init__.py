"""The built-in training methods, one module each, written against :mod:`ciard_bench.api`
exactly as a plugin's would be (``tests/test_layers.py`` holds them to it); the registry and
the base class live in the API. Plugins' methods join the same registry
(:mod:`ciard_bench.plugins`)."""
from ..api import (Context, Method, TeacherTraining, create_method, get_method, list_methods,
                   make_options, register_method)
from . import standard, trades, ciard  # noqa: F401  (registration)
from . import sat, ard, rslad, score, absld, mtard, bmtard, adaad, iad  # noqa: F401  (baselines)
from . import fairness, fair_ard  # noqa: F401  (Fair-ARD and its variants: class re-weighting)
from . import peeraid  # noqa: F401  (PeerAiD: a peer trained alongside, an SWA student)

__all__ = ["Context", "Method", "TeacherTraining", "create_method", "get_method", "list_methods",
           "make_options", "register_method"]
