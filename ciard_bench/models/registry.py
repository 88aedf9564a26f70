"""The model registry: ``@register_model``, ``create_model``, ``list_models``, and counters.

A factory is a function ``f(num_classes=10, **architecture_kwargs) -> nn.Module``; its name is
the model's name. ``create_model`` drops ``None``-valued keyword arguments, so a CLI flag left
at its default (``None``) never overrides the architecture's own default (timm's convention).
The registry lives in its own module so that the architecture files can import it without a
circular import through the package ``__init__``.
"""
from __future__ import annotations

import fnmatch
import inspect
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import plugins
from ..errors import UserError, choices_error

_MODELS: dict[str, Callable[..., Any]] = {}


def register_model(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Register ``fn`` under ``name`` (default ``fn.__name__``), as timm's decorator; usable as
    ``@register_model`` or ``@register_model(name="...")``. A name registered twice (by a
    built-in or a plugin) is an error."""
    if fn is None:
        return lambda f: register_model(f, name=name)
    if not callable(fn):
        raise plugins.PluginError(f"model {name!r}: {fn!r} is not a callable factory")
    name = name or fn.__name__
    plugins.builtins_first(fn)
    if name in _MODELS:
        raise plugins.clash("model", "name", name, name)
    _MODELS[name] = fn
    plugins.note("model", name, fn)
    return fn


def _add_entry_point(name: str, obj: Any) -> None:
    if _MODELS.get(name) is not obj and _MODELS.get(getattr(obj, "__name__", "")) is not obj:
        register_model(obj, name=name)


plugins.track("model", _MODELS, adder=_add_entry_point)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by an fnmatch ``pattern``."""
    plugins.load()
    names = sorted(_MODELS)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def model_kwargs(name: str) -> dict[str, Any]:
    """The architecture keyword arguments a model accepts, with their defaults."""
    fn = _factory(name)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind in named and p.name != "num_classes"}


def _factory(name: str) -> Callable[..., Any]:
    plugins.load()
    if name not in _MODELS:
        raise UserError(str(choices_error("model", name, list_models())) + plugins.failures_note())
    return _MODELS[name]


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> Any:
    """Build a registered model. ``None``-valued ``kwargs`` are dropped (architecture default).

    The model records how it was built in ``model.ciard_arch`` (``{"name", "num_classes",
    "kwargs"}``), the ``arch`` entry the project's checkpoint format stores.
    """
    fn = _factory(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    accepted = model_kwargs(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UserError(f"model {name!r} does not take {', '.join(map(repr, unknown))}; "
                        f"accepted: num_classes, {', '.join(accepted) or '(nothing else)'}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes {num_classes!r} is not valid; accepted: an integer >= 1")
    model = fn(num_classes=num_classes, **kwargs)
    model.ciard_arch = {"name": name, "num_classes": int(num_classes), "kwargs": dict(kwargs)}
    return model


def count_parameters(model: Any) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: Any, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Forward FLOPs per image (multiply-add = 2), with ``torch.utils.flop_counter``.

    Only the forward is counted: the counter's convolution-backward formula ignores
    ``groups`` (see benchmarks/README.md). Works on ``meta``-device models, which makes
    counting the 267 M-parameter WRN-70-16 instant. The model's train/eval mode is restored.
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    x = torch.zeros(input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // max(1, int(input_size[0]))
