"""Two datasets: ``digits_inverted`` (offline, real images) and ``image_folder`` (your own).

``digits_inverted``: scikit-learn's bundled 8x8 handwritten digits (1,797 real scans from the
UCI collection, shipped inside scikit-learn: nothing is downloaded) with the polarity of the
built-in ``digits`` flipped: dark strokes on a white background, as in most photographs of
handwriting, where ``digits`` has white strokes on black. Pixels 0..16 are scaled to 0..255,
upscaled bilinearly to 32x32, rounded, inverted (255 - v) and copied to 3 channels. The split
is the built-in ``digits`` split (80/20 per class, a fixed seed): 1,438 training and 359 test
images, image for image the negatives of ``digits`` (the tests check it), so a model trained
on one can be evaluated on the other's test set. ``root`` and ``download`` are ignored.

``image_folder``: the layout torchvision's ImageFolder reads, one folder per split::

    <data-root>/image_folder/train/<class>/*.png   (or .jpg, .jpeg, .bmp, .gif, .webp)
    <data-root>/image_folder/test/<class>/*.png

Classes are the sorted names of the ``train`` sub-folders (a test class must be one of them).
Images are read with Pillow, converted to RGB and resized bilinearly to 32x32 when they are
another size. Everything is decoded at each load (no cache): for a large set, save the arrays
once with ``numpy.savez`` and use ciard-bench's own ``npz:PATH`` dataset. For a folder of
another name, call ``register_image_folder("my_set")`` in your own plugin module: it reads
``<data-root>/my_set/``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ciard_bench.api import DatasetArrays, UserError, make_arrays, register_dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_DIGITS_SPLIT_SEED = 0        # the built-in digits' split seed: the same test images


@register_dataset("digits_inverted")
def load_digits_inverted(root: Path, download: bool) -> DatasetArrays:
    """scikit-learn's digits as dark strokes on white, 32x32 RGB, the built-in digits' split."""
    # scikit-learn's import may draw from Python's global `random` (a progress-bar module when
    # `rich` is installed); keep the caller's stream as it was, so a run's saved RNG state does
    # not depend on whether this process imported scikit-learn before
    state = random.getstate()
    from sklearn.datasets import load_digits
    random.setstate(state)

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] * (255.0 / 16.0)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = 255 - x.round().clamp(0, 255).to(torch.uint8)
    x = x.permute(0, 2, 3, 1).expand(-1, -1, -1, 3)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(_DIGITS_SPLIT_SEED)
    is_test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        is_test[idx[torch.randperm(len(idx), generator=gen)[:round(0.2 * len(idx))]]] = True
    return make_arrays("digits_inverted", x[~is_test], y[~is_test], x[is_test], y[is_test],
                       [str(c) for c in range(10)])


def load_image_folder(folder: Path, name: str, size: int = 32) -> DatasetArrays:
    """``folder/{train,test}/<class>/<image>`` -> arrays (uint8 N x size x size x 3)."""
    train_dir, test_dir = folder / "train", folder / "test"
    for split_dir in (train_dir, test_dir):
        if not split_dir.is_dir():
            raise UserError(f"{name}: the folder {str(split_dir)!r} is missing; accepted: "
                            f"{str(folder)!r} holding train/<class>/*.png and test/<class>/*.png "
                            "(set --data-root to the folder above it)")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{name}: {str(train_dir)!r} has no class sub-folders; accepted: "
                        "one sub-folder of images per class")
    unknown = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and d.name not in classes)
    if unknown:
        raise UserError(f"{name}: test class {unknown[0]!r} has no folder in {str(train_dir)!r}; "
                        f"accepted: the training classes {', '.join(classes)}")
    x_train, y_train = _read_split(train_dir, classes, name, size)
    x_test, y_test = _read_split(test_dir, classes, name, size)
    return make_arrays(name, x_train, y_train, x_test, y_test, classes)


def _read_split(split_dir: Path, classes: list[str], name: str,
                size: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, cls in enumerate(classes):
        folder = split_dir / cls
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(path) as img:
                    img = img.convert("RGB")
                    if img.size != (size, size):
                        img = img.resize((size, size), Image.Resampling.BILINEAR)
                    images.append(np.asarray(img, dtype=np.uint8))
            except OSError as err:          # includes PIL.UnidentifiedImageError
                raise UserError(f"{name}: cannot read the image {str(path)!r}: {err}") from err
            labels.append(label)
    if not images:
        raise UserError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) under "
                        f"{str(split_dir)!r}; accepted: {split_dir.name}/<class>/<image>")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def register_image_folder(name: str, size: int = 32) -> Callable[[Path, bool], DatasetArrays]:
    """Register dataset ``name`` reading ``<data-root>/<name>/{train,test}/<class>/*``."""
    def load(root: Path, download: bool) -> DatasetArrays:
        return load_image_folder(Path(root) / name, name, size)
    load.__name__ = f"load_{name}"
    load.__doc__ = f"images under <data-root>/{name}/{{train,test}}/<class>/, {size}x{size} RGB"
    return register_dataset(name)(load)


load_image_folder_dataset = register_image_folder("image_folder")
