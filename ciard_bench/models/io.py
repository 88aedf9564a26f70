"""Checkpoint files <-> models: the project format, released state-dict files, checked loads.

The project format (written by the training engine and :func:`save_model_file`) is a dict
``{"format": "ciard-bench/1", "arch": {"name", "num_classes", "kwargs"}, "state_dict": ...,
<other keys>}``. :func:`load_model_file` also reads the files the released ARD/RSLAD/CIARD
code writes (``{"model"|"state_dict"|"net": state_dict, ...}``) and bare state dicts; those
carry no architecture, so the caller names it. Every read goes through
:func:`ciard_bench.checkpoint.load_checkpoint` (``weights_only=True``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..checkpoint import FORMAT, load_checkpoint, save_checkpoint, sha256_file
from ..errors import UserError, choices_error
from ..runs import resolve_checkpoint
from ..utils import resolve_device
from .registry import create_model, list_models

log = logging.getLogger(__name__)

# DataParallel, torch.compile, and the `model.` wrapper that robustbench also strips
_PREFIXES = ("module.", "_orig_mod.", "model.")
# TRADES' WideResNet defines `sub_block1` and never calls it (see wide_resnet.py)
_UNUSED_PREFIX = "sub_block1."
_STATE_KEYS = ("state_dict", "model", "net")
_SCALARS = (bool, int, float, str, type(None))


def _normalise_arch(arch: Any, num_classes: int | None = None) -> dict:
    """``"resnet18"`` or ``{"name", "num_classes", "kwargs"}`` -> a validated arch dict."""
    if isinstance(arch, str):
        arch = {"name": arch, "num_classes": num_classes, "kwargs": {}}
    if not isinstance(arch, Mapping) or not isinstance(arch.get("name"), str):
        raise UserError(f"architecture {arch!r} is not valid; accepted: a model name or "
                        "{'name': str, 'num_classes': int, 'kwargs': dict}")
    n = arch.get("num_classes", num_classes)
    if n is None:
        raise UserError(f"the number of classes of {arch['name']!r} is not known; "
                        "pass num_classes= (on the command line: --num-classes)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"num_classes {n!r} is not valid; accepted: an integer >= 1")
    kwargs = arch.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise UserError(f"architecture kwargs {kwargs!r} are not a dict")
    if arch["name"] not in list_models():
        raise choices_error("model", arch["name"], list_models())
    return {"name": arch["name"], "num_classes": int(n),
            "kwargs": {k: v for k, v in kwargs.items() if v is not None}}


def build_model(arch: Mapping) -> Any:
    """Build the model an ``arch`` dict (``{"name", "num_classes", "kwargs"}``) describes."""
    arch = _normalise_arch(arch)
    return create_model(arch["name"], num_classes=arch["num_classes"], **arch["kwargs"])


def _strip_prefixes(state_dict: Mapping, model_keys: set[str]) -> dict:
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for prefix in _PREFIXES:
            # strip only a prefix every key has and the model's own keys do not
            if all(k.startswith(prefix) for k in sd) and not any(
                    k.startswith(prefix) for k in model_keys):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    if not any(k.startswith(_UNUSED_PREFIX) for k in model_keys):
        dropped = [k for k in sd if k.startswith(_UNUSED_PREFIX)]
        if dropped:
            log.info("ignoring %d unused %s* entries (TRADES WideResNet)", len(dropped),
                     _UNUSED_PREFIX)
            sd = {k: v for k, v in sd.items() if k not in dropped}
    return sd


def _classifier_keys(model: Any) -> set[str]:
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return set() if last is None else {f"{last}.weight", f"{last}.bias"}


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _model_name(model: Any) -> str:
    return getattr(model, "ciard_arch", {}).get("name", type(model).__name__)


def _check_fit(model: Any, own: Mapping, sd: Mapping, source: str) -> None:
    """Raise the one-line mismatch error unless ``sd`` has ``own``'s keys and shapes."""
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in own if k in sd and (not torch.is_tensor(sd[k])
                                                 or sd[k].shape != own[k].shape)]
    if not (missing or unexpected or mismatched):
        return
    head = f"checkpoint {source!r} does not fit model {_model_name(model)!r}:"
    classifier = _classifier_keys(model)
    cls = [k for k in mismatched if k in classifier and torch.is_tensor(sd[k])]
    if cls and sd[cls[0]].shape[1:] == own[cls[0]].shape[1:]:
        k = cls[0]
        raise UserError(f"{head} checkpoint has {sd[k].shape[0]} classes, model expects "
                        f"{own[k].shape[0]}; pass num_classes={sd[k].shape[0]} "
                        "(--num-classes) or the right checkpoint")
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    if mismatched:
        k = mismatched[0]
        got = tuple(sd[k].shape) if torch.is_tensor(sd[k]) else type(sd[k]).__name__
        parts.append(f"{len(mismatched)} shape mismatches, first {k}: checkpoint {got} "
                     f"vs model {tuple(own[k].shape)}")
    raise UserError(f"{head} {'; '.join(parts)}; is the architecture right? "
                    f"(models: {', '.join(list_models())})")


def load_state_dict_checked(model: Any, state_dict: Mapping, source: str) -> None:
    """Load ``state_dict`` into ``model`` strictly, or raise a one-line ``UserError``.

    Strips ``module.`` (DataParallel), ``_orig_mod.`` (torch.compile) and ``model.``
    prefixes, then compares keys and shapes before touching the model. The message names
    ``source`` and the model, counts missing/unexpected keys with the first few, and gives
    the first shape mismatch; a classifier mismatch reads "checkpoint has K classes, model
    expects C". BatchNorm ``num_batches_tracked`` counters absent from old files are zeroed.
    """
    if not isinstance(state_dict, Mapping) or not all(isinstance(k, str) for k in state_dict):
        raise UserError(f"{source!r} does not hold a state dict (a dict of named tensors)")
    own = model.state_dict()
    sd = _strip_prefixes(state_dict, set(own))
    _check_fit(model, own, sd, source)
    for k in own:
        if k not in sd:  # a num_batches_tracked counter that files from torch < 0.4.1 lack
            sd[k] = torch.zeros_like(own[k])
    model.load_state_dict(sd, strict=True)


def _split_checkpoint(obj: Any, path: str) -> tuple[Mapping, dict | None, dict]:
    """-> (state dict, the file's arch or None, the other top-level entries)."""
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        if "state_dict" not in obj or "arch" not in obj:
            raise UserError(f"checkpoint {path!r} says {FORMAT} but lacks 'arch' or "
                            "'state_dict'; it is damaged")
        rest = {k: v for k, v in obj.items() if k not in ("state_dict", "arch")}
        return obj["state_dict"], _normalise_arch(obj["arch"]), rest
    if isinstance(obj, Mapping):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), Mapping):
                return obj[key], None, {k: v for k, v in obj.items() if k != key}
        if obj and all(torch.is_tensor(v) for v in obj.values()):
            return obj, None, {}
    raise UserError(f"checkpoint {path!r} holds no state dict; accepted: the ciard-bench "
                    f"format, a dict with one of {', '.join(_STATE_KEYS)}, or a bare state dict")


def _check_agrees(file_arch: dict, arch: Any, num_classes: int | None, path: str) -> None:
    """A caller's ``arch``/``num_classes`` must match what a project-format file says."""
    if num_classes is not None and num_classes != file_arch["num_classes"]:
        raise UserError(f"checkpoint {path!r} holds a model with {file_arch['num_classes']} "
                        f"classes but {num_classes} were asked for")
    asked = {"name": arch} if isinstance(arch, str) else dict(arch or {})
    for key in ("name", "num_classes", "kwargs"):
        want = asked.get(key)
        if key == "kwargs" and want is not None:
            want = {k: v for k, v in want.items() if v is not None}
        if want is not None and want != file_arch[key] and (want or key != "kwargs"):
            raise UserError(f"checkpoint {path!r} holds {key} {file_arch[key]!r} but {want!r} "
                            "was asked for; drop that argument (the file names its own)")


def load_model_file(path: str | os.PathLike, arch: Any = None, num_classes: int | None = None,
                    device: Any = "cpu", which: str = "best") -> tuple[Any, dict]:
    """Load a model from a checkpoint file; returns ``(model in eval mode, metadata)``.

    ``path`` may also be a run folder of the training engine: its current ``which``
    (``best`` or ``last``) checkpoint is loaded and checked against the sha256 in ``run.json``.

    Accepts the project format (its ``arch`` is used; a disagreeing ``arch``/``num_classes``
    is an error), a dict holding the state dict under ``"model"``, ``"state_dict"`` or
    ``"net"``, or a bare state dict; the last two need ``arch`` (a model name or arch dict)
    and ``num_classes``. The metadata holds ``arch``, ``source``, ``sha256`` and the file's
    other top-level scalar entries (epoch, ...).
    """
    file, sha = resolve_checkpoint(path, which)
    path = str(file)
    obj = load_checkpoint(path, expected_sha256=sha)
    state_dict, file_arch, rest = _split_checkpoint(obj, path)
    if file_arch is not None:
        _check_agrees(file_arch, arch, num_classes, path)
        arch_d = file_arch
    elif arch is None:
        raise UserError(f"checkpoint {path!r} is a plain state dict and does not say which "
                        "architecture it holds; pass arch= and num_classes= (on the command "
                        "line ARCH=PATH, e.g. resnet56=teacher.pt, and --num-classes)")
    else:
        arch_d = _normalise_arch(arch, num_classes)
        if num_classes is not None and num_classes != arch_d["num_classes"]:
            raise UserError(f"num_classes {num_classes} disagrees with the architecture's "
                            f"{arch_d['num_classes']}")
    model = build_model(arch_d)
    load_state_dict_checked(model, state_dict, path)
    model.to(resolve_device(device) if isinstance(device, str) else device).eval()
    meta = {"arch": arch_d, "source": path, "sha256": sha256_file(path)}
    for key, value in rest.items():
        if torch.is_tensor(value) and value.numel() == 1:
            value = value.item()
        if isinstance(key, str) and isinstance(value, _SCALARS) and key not in meta:
            meta[key] = value
    return model, meta


def _plain(value: Any, where: str) -> Any:
    """Make ``value`` loadable with ``weights_only=True``; numpy scalars become Python ones."""
    if isinstance(value, _SCALARS) or torch.is_tensor(value) or isinstance(
            value, (torch.Size, torch.dtype, torch.device, bytes)):
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalar
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise UserError(f"cannot store {where} of type {type(value).__name__} in a checkpoint; "
                    "accepted: numbers, strings, tensors, and lists/dicts of them")


def _unwrap(model: Any) -> Any:
    """The module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if getattr(model, "_orig_mod", None) is not None:
            model = model._orig_mod
        elif type(model).__name__ in ("DataParallel", "DistributedDataParallel"):
            model = model.module
        else:
            return model


def save_model_file(model_or_state_dict: Any, arch: Any, path: str | os.PathLike,
                    **extra: Any) -> str:
    """Write the project format atomically; returns the file's sha256.

    ``arch`` is an arch dict, or a model name when the model was made by ``create_model``
    (which records its arch). The state dict is checked against ``arch`` (on the ``meta``
    device, so nothing is allocated) so a file that would not load is never written.
    ``extra`` entries (epoch, method, config, ...) must be numbers, strings, tensors or
    lists/dicts of them, so that the file loads with ``weights_only=True``.
    """
    if isinstance(model_or_state_dict, torch.nn.Module):
        model = _unwrap(model_or_state_dict)
        recorded, state = getattr(model, "ciard_arch", None), model.state_dict()
    else:
        recorded, state = None, model_or_state_dict
    if isinstance(arch, str) and recorded and recorded["name"] == arch:
        arch = recorded
    arch_d = _normalise_arch(arch)
    reserved = sorted({"format", "arch", "state_dict"} & set(extra))
    if reserved:
        raise UserError(f"save_model_file: {', '.join(reserved)} are reserved keys")
    if not isinstance(state, Mapping):
        raise UserError(f"save_model_file: expected a model or a state dict, got "
                        f"{type(state).__name__}")
    extra = {k: _plain(v, k) for k, v in extra.items()}  # before copying any tensor
    with torch.device("meta"):
        skeleton = build_model(arch_d)
    own = skeleton.state_dict()
    state = _strip_prefixes(state, set(own))
    _check_fit(skeleton, own, state, str(path))
    obj = {"format": FORMAT, "arch": arch_d,
           "state_dict": {k: v.detach().cpu() for k, v in state.items()}}
    obj.update(extra)
    return save_checkpoint(obj, Path(path))
