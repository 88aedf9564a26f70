"""Datasets as uint8 arrays, stratified subsets, deterministic augmentation, resumable loaders.

Every dataset loads whole into a :class:`DatasetArrays` (uint8 HWC images, int64 labels);
:class:`ArrayDataset` turns it into [0, 1] CHW tensors (the models normalise inside) with
the paper's crop-and-flip augmentation (docs/methods.md#data), drawn from a generator seeded
by (seed, epoch, index) so it is the same for any worker count and after a resume;
:func:`make_loader` orders an epoch: a (seed, epoch) permutation, sharded per rank like
``DistributedSampler``, minus the first ``start_batch`` batches.

Names: ``cifar10``, ``cifar100`` (torchvision), ``digits`` (offline, bundled with
scikit-learn), ``tiny_imagenet`` and ``npz:PATH`` (a file with ``x_train, y_train,
x_test, y_test`` and optional ``classes``).

``arrays`` holds the data type and registry, ``sources`` the file formats, ``loading`` the
torch side (subsets, augmentation, sampler, loader).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..errors import choices_error
from . import sources  # noqa: F401  (registers cifar10, cifar100, digits, tiny_imagenet)
from .arrays import DatasetArrays, get_loader, list_datasets, register_dataset
from .loading import (ArrayDataset, EpochSampler, crop_flip, make_loader, stratified_subset,
                      to_float_nchw)
from .sources import read_npz

__all__ = ["ArrayDataset", "DatasetArrays", "EpochSampler", "crop_flip", "list_datasets",
           "load_dataset", "make_loader", "read_npz", "register_dataset", "stratified_subset",
           "to_float_nchw"]


def load_dataset(name: str, root: str | os.PathLike = "data", download: bool = False,
                 n_train: int | None = None, n_test: int | None = None,
                 seed: int = 0) -> DatasetArrays:
    """Load a registered dataset (see :func:`list_datasets`) or ``npz:PATH``.

    ``root`` holds the downloaded datasets; ``n_train`` / ``n_test`` take deterministic,
    class-stratified subsets (:func:`stratified_subset` with ``seed``).
    """
    if name.startswith("npz:"):
        data = read_npz(Path(name[4:]).expanduser(), name)
    else:
        loader = get_loader(name.strip().lower())
        if loader is None:
            raise choices_error("dataset", name, list_datasets() + ["npz:PATH"])
        data = loader(Path(root).expanduser(), download)
    if n_train is not None:
        x, y = stratified_subset(data.x_train, data.y_train, n_train, seed, what="n_train")
        data = replace(data, x_train=x, y_train=y)
    if n_test is not None:
        x, y = stratified_subset(data.x_test, data.y_test, n_test, seed, what="n_test")
        data = replace(data, x_test=x, y_test=y)
    return data
