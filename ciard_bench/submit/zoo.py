"""RobustBench's model zoo, offline: weights in its layout, an entry registered at runtime.

``robustbench.utils.load_model(name, model_dir, dataset, threat_model)`` looks ``name`` up in
``robustbench.model_zoo.model_dicts[dataset][threat]`` (``{"model": constructor, "gdrive_id":
id}``), builds the model, and reads ``<model_dir>/<dataset>/<threat>/<name>.pt``, downloading
it from Google Drive only when the file is absent. :func:`register_zoo_entry` inserts an entry
whose constructor builds the ciard-bench architecture; its ``gdrive_id`` is ``""`` because
robustbench refuses ``None`` (``ValueError``: "has no gdrive_id specified") before it even
looks for the file. With the file in place nothing is downloaded.

The exported file is the ciard-bench checkpoint format (``save_model_file``): robustbench
reads its ``state_dict`` entry and ignores the others; ciard-bench reads its ``arch``, so
:func:`register_zoo_entry` can take the architecture from the file. The entry lives in this
process only; a new process registers it again before calling ``load_model``.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint
from ..errors import UserError
from ..models import build_model, save_model_file
from ..models.zoo import (NUM_CLASSES, load_robustbench_teacher, robustbench_path, timm_name,
                          zoo_models)
from .card import check_dataset

THREAT = "Linf"
ENTRY_KEY = "ciard_bench_arch"  # marks the entries this module registered
ACCEPT_TOLERANCE_PP = 0.05      # RobustBench's tests/test_clean_acc.py, slow mode


def zoo_weights_path(model_dir: str | os.PathLike, name: str, dataset: str) -> Path:
    """``<model_dir>/<dataset>/Linf/<name>.pt``: where ``load_model`` reads ``name``."""
    return robustbench_path(name, dataset, model_dir, THREAT)


def _arch_dict(arch: Any, dataset: str, model_dir: str | os.PathLike | None, name: str) -> dict:
    if arch is None:
        if model_dir is None:
            raise UserError("register_zoo_entry needs arch= or model_dir= (to read the "
                            "architecture from the exported file)")
        saved = load_checkpoint(zoo_weights_path(model_dir, name, dataset))
        arch = saved.get("arch") if isinstance(saved, Mapping) else None
        if arch is None:
            raise UserError(f"{str(zoo_weights_path(model_dir, name, dataset))!r} names no "
                            "architecture (not written by ciard-bench); pass arch=")
    if isinstance(arch, str):
        arch = {"name": arch, "num_classes": NUM_CLASSES[dataset], "kwargs": {}}
    arch = {"name": arch["name"], "num_classes": int(arch["num_classes"]),
            "kwargs": dict(arch.get("kwargs") or {})}
    if arch["num_classes"] != NUM_CLASSES[dataset]:
        raise UserError(f"model {name!r} has {arch['num_classes']} classes but {dataset} has "
                        f"{NUM_CLASSES[dataset]}")
    with torch.device("meta"):  # validates name and kwargs without allocating weights
        build_model(arch)
    return arch


def check_name_free(name: str, dataset: str) -> None:
    """Refuse a name of robustbench's own zoo, or one timm would serve instead of our file."""
    zoo = zoo_models(dataset, THREAT)   # imports robustbench through the compat shim first
    # heavy import (timm, seconds), and only after robustbench's shim: kept lazy
    import timm

    if name in zoo and ENTRY_KEY not in zoo[name]:
        raise UserError(f"{name!r} is already a RobustBench model ({dataset}/{THREAT}); "
                        "choose another --name")
    if timm.is_model(timm_name(name, dataset, THREAT)):
        raise UserError(f"{name!r} is served by timm for {dataset}/{THREAT}; robustbench would "
                        "load that model instead; choose another --name")


def register_zoo_entry(name: str, dataset: str, arch: Any = None,
                       model_dir: str | os.PathLike | None = None) -> dict:
    """Make ``robustbench.utils.load_model(name, model_dir, dataset, "Linf")`` build ``arch``.

    ``arch`` is a model name, an arch dict ``{"name", "num_classes", "kwargs"}``, or ``None``
    to read it from the exported file under ``model_dir``. A name of robustbench's own zoo,
    or one timm would serve instead, is refused; re-registering one of ours replaces it.
    Returns the entry.
    """
    check_dataset(dataset)
    check_name_free(name, dataset)
    zoo = zoo_models(dataset, THREAT)
    arch_d = _arch_dict(arch, dataset, model_dir, name)
    entry = {"model": functools.partial(build_model, arch_d), "gdrive_id": "", ENTRY_KEY: arch_d}
    zoo[name] = entry
    return entry


def export_weights(model: Any, arch: Mapping, path: str | os.PathLike, **extra: Any) -> str:
    """Write ``model`` where and how ``load_model`` reads it; returns the file's sha256."""
    return save_model_file(model, dict(arch), path, **extra)


def roundtrip_clean_accuracy(name: str, dataset: str, model_dir: str | os.PathLike, x: Any,
                             y: Any, batch_size: int, device: Any) -> float:
    """Clean accuracy (percent) of the model ``robustbench.utils.load_model`` builds from the
    exported file, measured with robustbench's own ``clean_accuracy``: its acceptance check."""
    model = load_robustbench_teacher(name, dataset, model_dir, THREAT, download=False,
                                     device=device)
    # robustbench is imported by now (load_robustbench_teacher, through the compat shim)
    from robustbench.utils import clean_accuracy

    return 100.0 * clean_accuracy(model, x, y, batch_size=batch_size, device=device)
