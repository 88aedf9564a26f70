"""Where the arrays come from: CIFAR via torchvision, the offline digits, Tiny-ImageNet, npz files."""
from __future__ import annotations

import logging
import os
import pickle
import random
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..checkpoint import create_temporary
from ..errors import UserError
from .arrays import DatasetArrays, make_arrays, register_dataset

log = logging.getLogger(__name__)

_DIGITS_SPLIT_SEED = 0  # fixed, independent of `seed`, so the digits test set never changes
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_NPZ_ACCEPTED = "an .npz with x_train, y_train, x_test, y_test and optional classes"


def _register_cifar(name: str, cls_name: str, folder: str, archive: str) -> None:
    @register_dataset(name)
    def load(root: Path, download: bool) -> DatasetArrays:
        from torchvision import datasets  # heavy import (torchvision), only for CIFAR

        cls = getattr(datasets, cls_name)
        try:  # torchvision md5-checks every file, so a truncated batch is caught here too
            train = cls(str(root), train=True, download=download)
            test = cls(str(root), train=False, download=False)
        except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError,
                tarfile.TarError) as err:  # missing/corrupt files, no network, bad archive
            what = f"could not be downloaded ({err})" if download else "was not found or is corrupted"
            raise UserError(f"{name} {what}: expected the folder {str(root / folder)!r}; pass "
                            f"--download, or extract {archive} into {str(root)!r}") from err
        return make_arrays(name, train.data, train.targets, test.data, test.targets, train.classes)


_register_cifar("cifar10", "CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz")
_register_cifar("cifar100", "CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz")


@register_dataset("digits")
def load_digits(root: Path, download: bool) -> DatasetArrays:
    """scikit-learn's bundled 8x8 handwritten digits as 32x32 RGB: the offline dataset.

    Why this one: the images are real (1,797 scanned handwritten digits from UCI), they ship
    inside a dependency so a fresh machine downloads nothing, there are 10 classes like
    CIFAR-10, and a CIFAR model reaches high clean accuracy on them in seconds on a CPU,
    so the robust accuracies of a smoke run measure something. Pixels 0..16 are scaled to
    0..255, upscaled bilinearly to 32x32 and replicated to 3 channels, so every CIFAR
    architecture runs unchanged. ``root`` and ``download`` are ignored. The 80/20
    class-stratified split uses a fixed seed, so the test set (359 images) never changes.
    """
    # heavy import (scikit-learn), done on first use; with `rich` installed it draws from
    # Python's global `random` at import time (sklearn.callback's progress bar), after the
    # engine has seeded it: keep the caller's stream as it was, so a run's saved RNG state
    # does not depend on whether an earlier run in the process imported scikit-learn
    state = random.getstate()
    from sklearn.datasets import load_digits as sklearn_digits
    random.setstate(state)

    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] * (255.0 / 16.0)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).expand(-1, -1, -1, 3)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(_DIGITS_SPLIT_SEED)
    is_test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        is_test[idx[torch.randperm(len(idx), generator=gen)[:round(0.2 * len(idx))]]] = True
    return make_arrays("digits", x[~is_test], y[~is_test], x[is_test], y[is_test],
                       [str(c) for c in range(10)])


@register_dataset("tiny_imagenet")
def load_tiny_imagenet(root: Path, download: bool) -> DatasetArrays:
    """``<root>/tiny-imagenet-200`` (val = test), decoded once, cached in ``<root>/tiny-imagenet-200.npz``.

    Labels index the sorted wnids; delete the cache to decode the JPEGs again.
    """
    folder, cache = root / "tiny-imagenet-200", root / "tiny-imagenet-200.npz"
    if cache.is_file():
        return read_npz(cache, "tiny_imagenet")
    if not (folder / "wnids.txt").is_file():
        raise UserError(
            f"tiny_imagenet was not found: expected {str(folder / 'wnids.txt')!r} from the "
            "extracted tiny-imagenet-200.zip (with train/<wnid>/images/*.JPEG, val/images, "
            "val/val_annotations.txt); --download is not supported for it, place the folder there")
    wnids = sorted((folder / "wnids.txt").read_text().split())
    label = {w: i for i, w in enumerate(wnids)}
    train = [(p, label[w]) for w in wnids for p in _jpegs(folder / "train" / w / "images")]
    val = _val_annotations(folder, label)
    log.info("decoding %d Tiny-ImageNet JPEGs once; cache: %s", len(train) + len(val), cache)
    arrays = {"x_train": _decode([p for p, _ in train]), "y_train": np.array([c for _, c in train]),
              "x_test": _decode([p for p, _ in val]), "y_test": np.array([c for _, c in val]),
              "classes": np.array(wnids)}
    data = validate_npz_arrays(folder, "tiny_imagenet", arrays)
    _write_npz_atomic(cache, arrays)
    return data


def _val_annotations(folder: Path, label: dict[str, int]) -> list[tuple[Path, int]]:
    notes = folder / "val" / "val_annotations.txt"
    if not notes.is_file():
        raise UserError(f"tiny_imagenet: {str(notes)!r} is missing; accepted: the extracted "
                        "tiny-imagenet-200.zip, whose val_annotations.txt gives each val image's wnid")
    val = []
    for line in notes.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in label:
            raise UserError(f"{str(notes)!r}: wnid {parts[1]!r} of {parts[0]!r} is not in wnids.txt")
        val.append((folder / "val" / "images" / parts[0], label[parts[1]]))
    return sorted(val)


def _jpegs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"tiny_imagenet: the folder {str(folder)!r} is missing; accepted: the "
                        "extracted tiny-imagenet-200.zip with train/<wnid>/images for every wnid")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))


def _decode(paths: list[Path]) -> np.ndarray:
    def one(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"))  # some Tiny-ImageNet JPEGs are grayscale
        except OSError as err:  # includes a missing file and PIL.UnidentifiedImageError
            raise UserError(f"tiny_imagenet: cannot read the image {str(path)!r}: {err}") from err

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL frees the GIL
        images = list(pool.map(one, paths))
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise UserError(f"tiny_imagenet: images of different sizes {sorted(shapes)}; accepted: "
                        "all the same size (64x64 in the official archive)")
    return np.stack(images) if images else np.zeros((0, 64, 64, 3), np.uint8)


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Temp file + ``os.replace``: a crash never leaves half a cache; unwritable -> just no cache."""
    try:
        fd, tmp = create_temporary(path)   # the mode open() gives, not mkstemp's 0600
    except OSError as err:
        log.warning("cannot cache the decoded images in %s (%s); decoding again next time", path, err)
        return
    try:
        with os.fdopen(fd, "wb") as fh:  # a file object, so numpy does not append ".npz"
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError as err:           # a full disk: the data is in memory, only the cache is lost
        log.warning("cannot cache the decoded images in %s (%s); decoding again next time", path, err)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_npz(path: Path, name: str) -> DatasetArrays:
    """Read and validate an npz dataset (see :func:`validate_npz_arrays`); never runs pickles."""
    if not path.is_file():
        raise UserError(f"npz dataset file {str(path)!r} does not exist; accepted: {_NPZ_ACCEPTED}")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array")
        with npz:
            arrays = {k: npz[k] for k in (*_NPZ_KEYS, "classes") if k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{str(path)!r} is not a valid npz dataset ({err}); accepted: "
                        f"{_NPZ_ACCEPTED}, written by numpy.savez without object arrays") from err
    return validate_npz_arrays(path, name, arrays)


def validate_npz_arrays(path: Path, name: str, a: dict[str, np.ndarray]) -> DatasetArrays:
    """Check dtypes, shapes, lengths and label ranges; each failure is one line naming the array.

    The class count is ``len(classes)`` when given, else ``max(y_train) + 1``.
    """
    def bad(key: str, problem: str, accepted: str) -> UserError:
        return UserError(f"{str(path)!r}: array {key!r} {problem}; accepted: {accepted}")

    for key in _NPZ_KEYS:
        if key not in a:
            raise bad(key, "is missing", _NPZ_ACCEPTED)
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if x.dtype != np.uint8:
            raise bad(f"x_{split}", f"has dtype {x.dtype}", "uint8 pixels 0..255")
        if x.ndim != 4 or x.shape[-1] != 3 or len(x) == 0:
            raise bad(f"x_{split}", f"has shape {x.shape}", "N x H x W x 3 (channels last), N > 0")
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise bad(f"y_{split}", f"has dtype {y.dtype} and shape {y.shape}", "a 1-D integer array")
        if len(y) != len(x):
            raise bad(f"y_{split}", f"has {len(y)} labels for {len(x)} images in x_{split}",
                      "one label per image")
    if a["x_train"].shape[1:] != a["x_test"].shape[1:]:
        raise bad("x_test", f"has images of shape {a['x_test'].shape[1:]}",
                  f"the shape of the x_train images, {a['x_train'].shape[1:]}")
    classes = a.get("classes")
    if classes is not None and (classes.ndim != 1 or classes.dtype.kind not in "US"):
        raise bad("classes", f"has dtype {classes.dtype} and shape {classes.shape}",
                  "a 1-D array of class names (strings)")
    n_cls = len(classes) if classes is not None else int(a["y_train"].max()) + 1
    source = "len(classes)" if classes is not None else "max(y_train) + 1"
    for key in ("y_train", "y_test"):
        lo, hi = int(a[key].min()), int(a[key].max())
        if lo < 0 or hi >= n_cls:
            raise bad(key, f"has labels {lo}..{hi}", f"labels 0..{n_cls - 1} ({source} = {n_cls})")
    names = ([c.decode() if isinstance(c, bytes) else c for c in classes.tolist()]
             if classes is not None else [str(c) for c in range(n_cls)])
    return make_arrays(name, a["x_train"], a["y_train"], a["x_test"], a["y_test"], names)
