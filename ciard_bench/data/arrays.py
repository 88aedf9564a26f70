"""The in-memory form of every dataset, and the registry of named datasets."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import plugins

Loader = Callable[[Path, bool], "DatasetArrays"]  # (root, download) -> arrays
_LOADERS: dict[str, Loader] = {}


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value to compare
class DatasetArrays:
    """A whole dataset in memory: uint8 N x H x W x 3 images (RGB, HWC) and int64 labels."""

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    num_classes: int
    classes: tuple[str, ...] = field(repr=False)

    @property
    def image_size(self) -> int:
        """Height (= width) of the images: 32 for CIFAR and digits, 64 for Tiny-ImageNet."""
        return int(self.x_train.shape[1])


def make_arrays(name: str, x_train, y_train, x_test, y_test,
                classes: Sequence[str]) -> DatasetArrays:
    """numpy or torch arrays -> :class:`DatasetArrays` (contiguous uint8 images, int64 labels)."""
    xs = [torch.as_tensor(np.ascontiguousarray(x)) for x in (x_train, x_test)]
    ys = [torch.as_tensor(np.asarray(y), dtype=torch.int64) for y in (y_train, y_test)]
    classes = tuple(str(c) for c in classes)
    return DatasetArrays(name, xs[0], ys[0], xs[1], ys[1], len(classes), classes)


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: ``@register_dataset("cifar10") def load(root, download) -> DatasetArrays``."""
    def add(fn: Loader) -> Loader:
        if not callable(fn):
            raise plugins.PluginError(f"dataset {name!r}: {fn!r} is not a callable loader")
        plugins.builtins_first(fn)
        if name in _LOADERS:
            raise plugins.clash("dataset", "name", name, name)
        _LOADERS[name] = fn
        plugins.note("dataset", name, fn)
        return fn
    return add


def _add_entry_point(name: str, obj: Loader) -> None:
    if _LOADERS.get(name) is not obj:
        register_dataset(name)(obj)


plugins.track("dataset", _LOADERS, adder=_add_entry_point)


def list_datasets() -> list[str]:
    """Registered dataset names; ``load_dataset`` also accepts ``npz:PATH``."""
    plugins.load()
    return sorted(_LOADERS)


def get_loader(name: str) -> Loader | None:
    """The loader registered as ``name``, or None."""
    plugins.load()
    return _LOADERS.get(name)
