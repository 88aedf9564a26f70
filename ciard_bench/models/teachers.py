"""Loading teachers from a spec, and the defaults of the CIARD paper.

A teacher *spec* is one of
  ``rb:NAME``    a RobustBench zoo model (``robustbench.utils.load_model``), read from
                 ``<model_dir>/<dataset>/<threat>/<NAME>.pt``; the zoo's dataset is the
                 run's, or (an ``npz:`` file) the one with its class count, or named:
                 ``rb:cifar100/NAME`` (:func:`zoo_dataset`);
  ``PATH``       a ciard-bench checkpoint (it names its own architecture) or a training run
                 folder (its best checkpoint, checked against the sha256 in run.json);
  ``ARCH=PATH``  a state-dict file (released ARD/RSLAD/MTARD/CIARD files) of model ``ARCH``.
Every teacher comes back in eval mode with ``requires_grad`` off.
RobustBench's side is :mod:`ciard_bench.models.zoo`; ``python -m ciard_bench.teachers`` is
the command line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from ..errors import UserError
from .io import load_model_file
from .registry import list_models
from .zoo import freeze, load_robustbench_teacher

# CIARD Table 2: robust teachers (RobustBench, Linf) and clean-teacher architectures
DEFAULT_ROBUST_TEACHERS = {"cifar10": "Zhang2019Theoretically", "cifar100": "Gowal2020Uncovering"}
DEFAULT_CLEAN_TEACHERS = {"cifar10": "resnet56", "cifar100": "wrn_22_6"}
# how a teacher of each kind is trained (python -m ciard_bench.teachers train, the tables' grid)
TEACHER_METHODS = {"clean": "standard", "robust": "trades"}
# RobustBench's datasets by class count: how an rb: teacher is found for an npz: dataset
_ZOO_BY_CLASSES = {10: "cifar10", 100: "cifar100", 1000: "imagenet"}


def classes_of(model: Any) -> int | None:
    """The width of the model's last ``nn.Linear`` (its classes), None without one."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def zoo_dataset(spec: str, dataset: str, num_classes: int) -> tuple[str, str]:
    """``(RobustBench dataset, model name)`` of an ``rb:`` spec used on ``dataset``.

    ``rb:cifar100/NAME`` names the zoo's dataset; ``rb:NAME`` takes it from ``dataset`` when
    that is a zoo dataset (cifar10, cifar100, imagenet), else from the class count (an
    ``npz:`` file of 100 classes -> cifar100); a class count no zoo dataset has is a
    one-line error asking for the qualified form.
    """
    body = spec[3:].strip()
    zoo, _, name = body.rpartition("/")
    name = name.strip()
    if not name:
        raise UserError(f"teacher spec {spec!r} names no model; e.g. rb:Zhang2019Theoretically "
                        "or rb:cifar100/Gowal2020Uncovering")
    if zoo:
        if zoo.strip().lower() not in _ZOO_BY_CLASSES.values():
            raise UserError(f"teacher spec {spec!r}: unknown RobustBench dataset {zoo!r}; "
                            f"accepted: {', '.join(_ZOO_BY_CLASSES.values())}")
        return zoo.strip().lower(), name
    if dataset in _ZOO_BY_CLASSES.values():
        return dataset, name
    if num_classes in _ZOO_BY_CLASSES:
        return _ZOO_BY_CLASSES[num_classes], name
    raise UserError(f"teacher spec {spec!r}: dataset {dataset!r} has {num_classes} classes, "
                    "which no RobustBench dataset has; accepted: "
                    + ", ".join(f"rb:{z}/{name}" for z in _ZOO_BY_CLASSES.values()))


def load_teacher(spec: str, dataset: str, num_classes: int, model_dir: str | Path = "models",
                 device: Any = "cpu", download: bool = False) -> Any:
    """Load a teacher from ``rb:NAME``, ``PATH`` or ``ARCH=PATH``; eval mode, frozen.

    ``download`` lets robustbench fetch a missing ``rb:`` file (off by default: offline).
    """
    spec = str(spec).strip()
    if spec.startswith("rb:"):
        zoo_data, name = zoo_dataset(spec, dataset, num_classes)
        model = load_robustbench_teacher(name, zoo_data, model_dir, download=download,
                                         device=device)
        got = classes_of(model)
        if got is not None and got != num_classes:
            raise UserError(f"RobustBench model {name!r} has {got} classes but {num_classes} "
                            "are needed; pick a model of the right dataset")
        return model
    if spec in list_models():
        raise UserError(f"teacher spec {spec!r} names an architecture but no weights; use "
                        f"{spec}=PATH (a state-dict file) or train the teacher first")
    arch, _, path = spec.partition("=")
    if path and not Path(spec).exists():
        if arch not in list_models():
            raise UserError(f"teacher spec {spec!r}: unknown architecture {arch!r}; accepted: "
                            f"{', '.join(list_models())}")
        model, _ = load_model_file(path, arch=arch, num_classes=num_classes)
    else:
        model, _ = load_model_file(spec, num_classes=num_classes)
    return freeze(model, device)
