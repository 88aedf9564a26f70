"""Data: real on-disk formats written into tmp_path, subsets, augmentation, sampler, errors."""
from __future__ import annotations

import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from ciard_bench.data import (ArrayDataset, EpochSampler, crop_flip, list_datasets, load_dataset,
                              make_loader, stratified_subset, to_float_nchw)
from ciard_bench.errors import UserError
from ciard_bench.plugins import origin

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_mini.npz"


def _one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# ----------------------------------------------------------------------------- CIFAR pickles
def _cifar_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows of 3072 bytes as in the official release: 1024 red, 1024 green, 1024 blue, row-major."""
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision md5-checks every CIFAR file against the official release, even with
    download=False (``check_integrity(path, md5)`` in ``_check_integrity`` / ``_load_meta``),
    and no test can write files with those md5s. So the test clears the recorded checksums
    in the class attributes torchvision reads them from (``train_list``, ``test_list``,
    ``meta``; ``check_integrity`` with md5=None only checks the file exists). Everything else
    (file names, pickle layout and keys, the NCHW -> NHWC reshape) is torchvision's own code."""
    from torchvision.datasets import CIFAR10, CIFAR100

    for cls in (CIFAR10, CIFAR100):
        monkeypatch.setattr(cls, "train_list", [[f, None] for f, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[f, None] for f, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": None})


def _write_cifar10(root: Path, per_batch: int = 6) -> tuple[np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data, y = _cifar_images(rng, per_batch), [(b + k) % 10 for k in range(per_batch)]
        _dump(folder / name, {"batch_label": f"batch {b}", "labels": y, "data": data,
                              "filenames": [f"img{b}_{k}.png" for k in range(per_batch)]})
        rows.append(data)
        labels += y
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": names,
                                    "num_vis": 3072})
    return np.concatenate(rows), labels


def test_cifar10_pickle_batches(tmp_path, no_md5):
    rows, labels = _write_cifar10(tmp_path)
    data = load_dataset("cifar10", root=tmp_path)
    assert data.x_train.shape == (30, 32, 32, 3) and data.x_test.shape == (6, 32, 32, 3)
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert data.num_classes == 10 and data.classes[0] == "airplane" and data.image_size == 32
    assert data.y_train.tolist() == labels[:30] and data.y_test.tolist() == labels[30:]
    # pixel (image k, row h, column w, channel c) is byte c*1024 + h*32 + w of row k
    for k, h, w, c in [(0, 0, 0, 0), (7, 5, 31, 2), (29, 31, 3, 1)]:
        assert data.x_train[k, h, w, c] == rows[k, c * 1024 + h * 32 + w]
    assert data.x_test[2, 9, 4, 1] == rows[32, 1024 + 9 * 32 + 4]


def test_cifar100_pickle_files(tmp_path, no_md5):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 8), ("test", 4)):
        _dump(folder / name, {"filenames": ["x"] * n, "batch_label": name, "data": _cifar_images(rng, n),
                              "fine_labels": list(range(90, 90 + n)), "coarse_labels": [1] * n})
    _dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)],
                            "coarse_label_names": [f"s{i}" for i in range(20)]})
    data = load_dataset("cifar100", root=tmp_path, n_test=2)
    assert data.num_classes == 100 and data.classes[99] == "c99"
    assert data.y_train.tolist() == list(range(90, 98)) and len(data.y_test) == 2


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"),
                                          ("cifar100", "cifar-100-python")])
def test_cifar_missing_folder_is_one_line(tmp_path, name, folder):
    with pytest.raises(UserError) as excinfo:
        load_dataset(name, root=tmp_path)
    _one_line_error(excinfo, str(tmp_path / folder), "--download")


def test_cifar_corrupt_files_and_failed_download(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    _write_cifar10(tmp_path)  # md5s differ from the official ones: torchvision calls it corrupted
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar10", root=tmp_path)
    _one_line_error(excinfo, "corrupted", "cifar-10-batches-py")

    def offline(self):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar10", root=tmp_path / "empty", download=True)
    _one_line_error(excinfo, "could not be downloaded", "name resolution", "cifar-10-batches-py")


# ----------------------------------------------------------------------------- Tiny-ImageNet
def _write_tiny(root: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]  # unsorted on purpose: labels index the sorted wnids
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    flat = {}
    for w in wnids:
        (folder / "train" / w / "images").mkdir(parents=True)
        for k in range(2):
            value = 40 * int(w[-1]) + 10 * k
            Image.new("RGB", (64, 64), (value, 255 - value, 128)).save(
                folder / "train" / w / "images" / f"{w}_{k}.JPEG")
            flat[f"{w}_{k}"] = value
    Image.new("L", (64, 64), 77).save(folder / "val" / "images" / "val_1.JPEG")  # grayscale
    Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "val" / "images" / "val_0.JPEG")
    (folder / "val" / "val_annotations.txt").write_text(
        "val_1.JPEG\tn03\t0\t0\t63\t63\nval_0.JPEG\tn01\t1\t2\t40\t50\n")
    return flat


def test_tiny_imagenet_folder_and_cache(tmp_path):
    _write_tiny(tmp_path)
    data = load_dataset("tiny_imagenet", root=tmp_path)
    assert data.classes == ("n01", "n02", "n03") and data.num_classes == 3
    assert data.x_train.shape == (6, 64, 64, 3) and data.image_size == 64
    assert data.y_train.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.y_test.tolist() == [0, 2]  # val_0 (n01), val_1 (n03), sorted by file name
    gray = data.x_test[1].int()
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert abs(gray.float().mean().item() - 77) < 2  # JPEG is lossy, a flat image nearly exact
    assert abs(data.x_train[2, ..., 0].float().mean().item() - 80) < 3  # n02_0: red = 80
    cache = tmp_path / "tiny-imagenet-200.npz"
    assert cache.is_file() and not list(tmp_path.glob(".*.tmp"))
    import shutil

    shutil.rmtree(tmp_path / "tiny-imagenet-200")  # the second load reads only the cache
    again = load_dataset("tiny_imagenet", root=tmp_path)
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)
    assert again.classes == data.classes


def test_tiny_imagenet_missing_parts(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_dataset("tiny_imagenet", root=tmp_path)
    _one_line_error(excinfo, str(tmp_path / "tiny-imagenet-200" / "wnids.txt"))
    _write_tiny(tmp_path)
    (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    with pytest.raises(UserError) as excinfo:
        load_dataset("tiny_imagenet", root=tmp_path)
    _one_line_error(excinfo, "val_annotations.txt")


# ----------------------------------------------------------------------------- npz files
def _good_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {"x_train": rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8),
            "y_train": np.arange(12) % 3, "x_test": rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8),
            "y_test": np.arange(6) % 3, "classes": np.array(["a", "b", "c"])}


def test_npz_good(tmp_path):
    arrays = _good_arrays()
    np.savez(tmp_path / "d.npz", **arrays)
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert data.classes == ("a", "b", "c") and data.num_classes == 3 and data.image_size == 8
    assert np.array_equal(data.x_train.numpy(), arrays["x_train"])
    assert data.y_test.dtype == torch.int64 and data.y_test.tolist() == arrays["y_test"].tolist()
    del arrays["classes"]
    arrays["y_train"] = arrays["y_train"].astype(np.uint8)
    np.savez(tmp_path / "e.npz", **arrays)
    assert load_dataset(f"npz:{tmp_path / 'e.npz'}").classes == ("0", "1", "2")


def _without(key):
    return lambda a: {k: v for k, v in a.items() if k != key}


def _with(**changes):
    return lambda a: {**a, **changes}


_BAD = {
    "missing array": (_without("y_test"), "y_test", "is missing"),
    "float images": (lambda a: {**a, "x_train": a["x_train"].astype(np.float32)}, "x_train", "uint8"),
    "channels first": (lambda a: {**a, "x_test": a["x_test"].transpose(0, 3, 1, 2)}, "x_test", "channels last"),
    "3-D images": (lambda a: {**a, "x_train": a["x_train"][..., 0]}, "x_train", "N x H x W x 3"),
    "float labels": (lambda a: {**a, "y_train": a["y_train"].astype(float)}, "y_train", "integer"),
    "length mismatch": (lambda a: {**a, "y_train": a["y_train"][:-1]}, "y_train", "11 labels for 12"),
    "negative label": (lambda a: {**a, "y_train": a["y_train"] - 1}, "y_train", "-1..1"),
    "test label >= C": (lambda a: {**a, "y_test": a["y_test"] + 1}, "y_test", "0..2"),
    "label >= len(classes)": (_with(classes=np.array(["a", "b"])), "y_train", "len(classes) = 2"),
    "object classes": (_with(classes=np.array(["a", 1, None], dtype=object)), "d.npz", "not a valid npz"),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_npz_bad(tmp_path, case):
    change, array, expected = _BAD[case]
    np.savez(tmp_path / "d.npz", **change(_good_arrays()))
    with pytest.raises(UserError) as excinfo:
        load_dataset(f"npz:{tmp_path / 'd.npz'}")
    _one_line_error(excinfo, "d.npz", array, expected)


def test_npz_missing_or_not_npz(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    _one_line_error(excinfo, "nope.npz", "does not exist")
    (tmp_path / "page.npz").write_text("<html>not found</html>")
    with pytest.raises(UserError) as excinfo:
        load_dataset(f"npz:{tmp_path / 'page.npz'}")
    _one_line_error(excinfo, "page.npz", "not a valid npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(UserError) as excinfo:
        load_dataset(f"npz:{tmp_path / 'single.npy'}")
    _one_line_error(excinfo, "single.npy", "not a valid npz")


@pytest.mark.skipif(not MINI.is_file(), reason=f"{MINI} is absent (only the shared workspace has it)")
def test_cifar10_mini_through_npz():
    data = load_dataset(f"npz:{MINI}")
    assert data.x_train.shape == (929, 32, 32, 3) and data.x_test.shape == (164, 32, 32, 3)
    assert data.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert data.y_train.bincount().tolist() == [77, 108, 95, 89, 105, 89, 94, 94, 85, 93]
    assert data.classes[-1] == "truck"


# ----------------------------------------------------------------------------- registry, digits
def test_registry_and_unknown_name():
    assert [d for d in list_datasets() if origin("dataset", d) is None] == [
        "cifar10", "cifar100", "digits", "tiny_imagenet"]
    with pytest.raises(UserError) as excinfo:
        load_dataset("imagenet")
    _one_line_error(excinfo, "'imagenet'", "cifar10", "digits", "npz:PATH")


def test_digits_offline_split():
    data = load_dataset("digits", root="/nonexistent")
    assert data.x_train.shape[1:] == (32, 32, 3) and data.x_train.dtype == torch.uint8
    assert len(data.y_train) + len(data.y_test) == 1797 and data.num_classes == 10
    assert 0.18 < len(data.y_test) / 1797 < 0.22
    assert (data.y_test.bincount(minlength=10) >= 30).all()  # every class, stratified
    assert torch.equal(data.x_train[..., 0], data.x_train[..., 2])  # grey replicated to RGB
    assert data.x_train.max() >= 250 and data.x_train.min() == 0  # 0..16 scaled to 0..255
    again = load_dataset("digits", seed=123)  # the split ignores `seed`
    assert torch.equal(again.x_test, data.x_test) and torch.equal(again.y_train, data.y_train)


# ----------------------------------------------------------------------------- subsets
def test_stratified_subset_counts_determinism_order():
    y = torch.tensor([0] * 10 + [1] * 20 + [2] * 30)
    x = torch.arange(60)
    xs, ys = stratified_subset(x, y, 12, seed=0)
    assert ys.bincount().tolist() == [2, 4, 6]  # proportional to availability
    assert torch.equal(y[xs], ys) and (xs.diff() > 0).all()  # original, stable order
    assert torch.equal(stratified_subset(x, y, 12, seed=0)[0], xs)
    assert not torch.equal(stratified_subset(x, y, 12, seed=1)[0], xs)
    balanced = torch.arange(100) % 10
    counts = stratified_subset(torch.arange(100), balanced, 25, seed=3)[1].bincount()
    assert counts.sum() == 25 and counts.max() - counts.min() <= 1
    assert torch.equal(stratified_subset(x, y, 60, seed=5)[0], x)


def test_stratified_subset_errors():
    y = torch.arange(10) % 2
    with pytest.raises(UserError) as excinfo:
        stratified_subset(torch.arange(10), y, 11, seed=0, what="n_train")
    _one_line_error(excinfo, "n_train 11", "10 available")
    for n in (0, -3):
        with pytest.raises(UserError):
            stratified_subset(torch.arange(10), y, n, seed=0)
    with pytest.raises(UserError) as excinfo:
        load_dataset("digits", n_test=5000)
    _one_line_error(excinfo, "n_test 5000", "359 available")


# ----------------------------------------------------------------------------- augmentation
def test_crop_flip_by_hand_and_against_torchvision():
    img = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(3, 32, 32) + 1
    out = crop_flip(img, top=0, left=0, flip=False)  # the image shifted 4 down and 4 right
    expected = torch.zeros_like(img)
    expected[:, 4:, 4:] = img[:, :28, :28]
    assert torch.equal(out, expected)
    out = crop_flip(img, top=8, left=2, flip=True)  # shifted 4 up, 2 right, then mirrored
    expected = torch.zeros_like(img)
    expected[:, :28, 2:] = img[:, 4:, :30]
    assert torch.equal(out, expected.flip(-1))
    import torchvision.transforms.functional as TF

    for top, left, flip in [(3, 7, False), (8, 0, True), (4, 4, False)]:
        ref = TF.crop(TF.pad(img, [4], fill=0), top, left, 32, 32)
        assert torch.equal(crop_flip(img, top, left, flip), TF.hflip(ref) if flip else ref)


def test_augmentation_deterministic_per_seed_epoch_index():
    x = torch.randint(0, 256, (40, 32, 32, 3), dtype=torch.uint8)
    ds = ArrayDataset(x, torch.zeros(40, dtype=torch.long), augment=True, seed=7)
    first = torch.stack([ds[i][0] for i in range(40)])
    assert first.dtype == torch.float32 and first.shape == (40, 3, 32, 32)
    assert 0 <= first.min() and first.max() <= 1
    again = ArrayDataset(x, torch.zeros(40), augment=True, seed=7)
    assert torch.equal(torch.stack([again[i][0] for i in range(40)]), first)
    ds.set_epoch(1)
    assert not torch.equal(torch.stack([ds[i][0] for i in range(40)]), first)
    ds.set_epoch(0)
    assert torch.equal(ds[5][0], first[5])
    # every output is one of the 81 crops x 2 flips of its image; both flips occur
    flips = 0
    for i in range(40):
        img = x[i].permute(2, 0, 1).float() / 255
        match = [(t, l, f) for t in range(9) for l in range(9) for f in (False, True)
                 if torch.equal(crop_flip(img, t, l, f), first[i])]
        assert match, i
        flips += match[0][2]
    assert 5 < flips < 35
    plain = ArrayDataset(x, torch.arange(40))
    assert torch.equal(plain[3][0], x[3].permute(2, 0, 1).float() / 255)
    assert plain[3][1].dtype == torch.int64 and plain[3][1] == 3


def test_to_float_nchw():
    x = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8)  # 1 x 1 x 1 x 3
    out = to_float_nchw(x)
    assert out.shape == (1, 3, 1, 1) and out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 1.0, 0.2]))


# ----------------------------------------------------------------------------- sampler, loader
def _order(loader) -> list[int]:
    return [int(i) for _, y in loader for i in y]  # labels are the indices


def _index_dataset(n: int, augment: bool = False) -> ArrayDataset:
    return ArrayDataset(torch.zeros(n, 4, 4, 3, dtype=torch.uint8), torch.arange(n), augment=augment)


def test_loader_shuffle_determinism_and_epochs():
    ds = _index_dataset(20)
    assert _order(make_loader(ds, 6, shuffle=False)) == list(range(20))
    e0 = _order(make_loader(ds, 6, shuffle=True, seed=1, epoch=0))
    assert sorted(e0) == list(range(20)) and e0 != list(range(20))
    assert _order(make_loader(ds, 6, shuffle=True, seed=1, epoch=0)) == e0
    assert _order(make_loader(ds, 6, shuffle=True, seed=1, epoch=1)) != e0
    assert _order(make_loader(ds, 6, shuffle=True, seed=2, epoch=0)) != e0
    assert [len(y) for _, y in make_loader(ds, 6, shuffle=True, drop_last=True)] == [6, 6, 6]


def test_sampler_rank_shards():
    full = EpochSampler(12, shuffle=True, seed=3, epoch=2).indices
    shards = [EpochSampler(12, shuffle=True, seed=3, epoch=2, rank=r, world_size=3).indices
              for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert sorted(sum(shards, [])) == list(range(12))  # disjoint and covering
    assert shards[1] == full[1::3]
    padded = [EpochSampler(10, shuffle=True, seed=3, rank=r, world_size=4).indices for r in range(4)]
    assert all(len(s) == 3 for s in padded)  # 10 -> 12, padded by repeating the first two
    assert set(sum(padded, [])) == set(range(10)) and len(sum(padded, [])) == 12


def test_loader_start_batch_resume():
    ds = _index_dataset(23)
    kw = dict(shuffle=True, seed=4, epoch=3, rank=1, world_size=2)
    batches = [y.tolist() for _, y in make_loader(ds, 5, **kw)]
    resumed = [y.tolist() for _, y in make_loader(ds, 5, start_batch=2, **kw)]
    assert resumed == batches[2:]
    assert list(make_loader(ds, 5, start_batch=len(batches), **kw)) == []
    with pytest.raises(UserError):
        make_loader(ds, 5, start_batch=len(batches) + 1, **kw)


def test_loader_same_with_workers_and_settings():
    ds = _index_dataset(16, augment=True)
    ds.x = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8)
    kw = dict(shuffle=True, seed=9, epoch=2)
    main = [x for x, _ in make_loader(ds, 4, num_workers=0, **kw)]
    workers = [x for x, _ in make_loader(ds, 4, num_workers=1, **kw)]
    assert all(torch.equal(a, b) for a, b in zip(main, workers)) and len(main) == 4
    cpu = make_loader(ds, 4, shuffle=False)
    assert cpu.num_workers == 0 and not cpu.pin_memory
    cuda = make_loader(ds, 4, shuffle=False, device="cuda")  # built, not iterated: no GPU needed
    assert cuda.pin_memory and cuda.num_workers >= 1 and not cuda.persistent_workers
    for bad in (0, -1):
        with pytest.raises(UserError) as excinfo:
            make_loader(ds, bad, shuffle=False)
        _one_line_error(excinfo, "batch size")


def test_loader_iteration_does_not_consume_the_global_rng():
    """Creating an iterator must not draw from torch's global RNG (resume equivalence)."""
    import torch
    from ciard_bench.data import ArrayDataset, make_loader

    ds = ArrayDataset(torch.zeros(10, 4, 4, 3, dtype=torch.uint8), torch.zeros(10, dtype=torch.long))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    iter(make_loader(ds, 4, shuffle=True, seed=1, epoch=2))
    assert torch.equal(before, torch.get_rng_state())


def test_float_images_are_contiguous_nchw():
    """Channels-last-strided inputs crash torch 2.14's conv backward for thin first layers."""
    import torch
    from ciard_bench.data import ArrayDataset, to_float_nchw

    x = torch.randint(0, 255, (4, 8, 8, 3), dtype=torch.uint8)
    assert to_float_nchw(x).is_contiguous()
    ds = ArrayDataset(x, torch.zeros(4, dtype=torch.long), augment=True)
    assert ds[0][0].is_contiguous() and ArrayDataset(x, torch.zeros(4, dtype=torch.long))[1][0].is_contiguous()
