"""Training methods: one registry, one module per method (imported explicitly here)."""
from .base import (Context, Method, TeacherTraining, create_method, get_method, list_methods,
                   make_options, register_method)
from . import standard, trades, ciard  # noqa: F401  (registration)
from . import sat, ard, rslad, score, fair_ard, absld, mtard, bmtard, adaad  # noqa: F401  (baselines)

__all__ = ["Context", "Method", "TeacherTraining", "create_method", "get_method", "list_methods",
           "make_options", "register_method"]
