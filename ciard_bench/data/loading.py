"""The torch side: stratified subsets, deterministic augmentation, a resumable sharded sampler."""
from __future__ import annotations

import math
import os
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import UserError

_PADDING = 4  # docs/methods.md#data: random crop with padding 4, as in the released code
_M64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 rounds): nearby tuples give unrelated streams."""
    h = 0
    for v in values:
        z = (h + (int(v) & _M64) + 0x9E3779B97F4A7C15) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        h = z ^ (z >> 31)
    return h >> 1


def stratified_subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int,
                      what: str = "n") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points, per-class counts proportional to availability, kept in their original order.

    Counts are rounded by largest remainder (ties broken by a seeded class order), so on a
    balanced set they differ by at most one. Same (data, n, seed) -> same subset.
    """
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if isinstance(n, bool) or int(n) != n or n <= 0:
        raise UserError(f"{what} {n} must be > 0; accepted: an integer in 1..{len(y)}")
    if n > len(y):
        raise UserError(f"{what} {n} is larger than the {len(y)} available points; "
                        f"accepted: 1..{len(y)}")
    gen = torch.Generator().manual_seed(_mix(seed, 0x5EED))
    labels, avail = torch.unique(y, return_counts=True)
    share = avail.double() * n / len(y)
    count = share.floor().long()
    perm = torch.randperm(len(labels), generator=gen)  # seeded tie-break between equal remainders
    order = torch.sort((share - count)[perm], descending=True, stable=True).indices
    count[perm[order[: n - int(count.sum())]]] += 1
    picked = []
    for c, k in zip(labels, count.tolist()):
        idx = torch.nonzero(y == c).flatten()
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    keep = torch.cat(picked).sort().values
    return x[keep], y[keep]


def crop_flip(img: torch.Tensor, top: int, left: int, flip: bool,
              padding: int = _PADDING) -> torch.Tensor:
    """``RandomCrop(size, padding)`` (zero fill) at (top, left) of the padded image, then hflip."""
    h, w = img.shape[-2:]
    out = F.pad(img, (padding,) * 4)[..., top:top + h, left:left + w]
    return out.flip(-1) if flip else out


class ArrayDataset(Dataset):
    """uint8 N x H x W x 3 -> (float32 C x H x W in [0, 1], int64 label); no normalisation.

    With ``augment``: docs/methods.md#data, torchvision's ``RandomCrop(H, padding=4)`` (zero
    fill) then ``RandomHorizontalFlip(0.5)``, drawn from a generator seeded by
    (seed, epoch, index), never the global RNG: identical for any number of workers.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: bool = False, seed: int = 0):
        self.x, self.y = torch.as_tensor(x), torch.as_tensor(y).long()
        if self.x.dtype != torch.uint8 or self.x.ndim != 4 or len(self.x) != len(self.y):
            raise UserError(f"ArrayDataset needs uint8 N x H x W x C images and N labels; got "
                            f"{self.x.dtype} {tuple(self.x.shape)} and {tuple(self.y.shape)}")
        self.augment, self.seed, self.epoch = augment, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentation stream (call before creating the epoch's iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i].permute(2, 0, 1)
        if self.augment:
            gen = torch.Generator().manual_seed(_mix(self.seed, self.epoch, i))
            top, left = torch.randint(0, 2 * _PADDING + 1, (2,), generator=gen).tolist()
            img = crop_flip(img, top, left, bool(torch.rand(1, generator=gen) < 0.5))
        # contiguous NCHW: torch 2.14's conv backward crashes on channels-last-strided inputs
        # when the first layer is thin (< 8 channels)
        return img.float().div_(255).contiguous(), self.y[i]


class EpochSampler(Sampler[int]):
    """One rank's indices for one epoch.

    A (seed, epoch) permutation (identity without shuffle), padded by repeating its start
    to a multiple of ``world_size`` like ``DistributedSampler``, every ``world_size``-th
    index from ``rank``, minus the first ``skip`` (a mid-epoch resume).
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, rank: int = 0,
                 world_size: int = 1, skip: int = 0):
        gen = torch.Generator().manual_seed(_mix(seed, epoch))
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        total = math.ceil(n / world_size) * world_size
        if total > n:
            order = order.repeat(math.ceil(total / n))[:total]
        self.indices: list[int] = order[rank:total:world_size][skip:].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                epoch: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False,
                start_batch: int = 0, device: str | torch.device = "cpu",
                num_workers: int | None = None) -> DataLoader:
    """This rank's loader for one epoch, starting after ``start_batch`` batches."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
        raise UserError(f"batch size {batch_size} must be > 0; accepted: an integer > 0")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} with world size {world_size}; accepted: 0 <= rank < world size")
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    per_rank = math.ceil(len(dataset) / world_size)
    n_batches = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
    if not 0 <= start_batch <= n_batches:
        raise UserError(f"start batch {start_batch} is outside this epoch's 0..{n_batches} "
                        "batches; was the batch size or world size changed since the checkpoint?")
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank,
                           world_size=world_size, skip=start_batch * batch_size)
    cuda = torch.device(device).type == "cuda"
    if num_workers is None:  # on a CPU box workers only steal cores from the training step
        num_workers = min(8, os.cpu_count() or 1) if cuda else 0
    # A DataLoader without a generator draws its workers' base seed from the global RNG each
    # time an iterator starts, which would shift the training RNG stream after a resume.
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, pin_memory=cuda, persistent_workers=False,
                      generator=generator)


def to_float_nchw(x: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x C -> float32 N x C x H x W in [0, 1] (e.g. the first n test points)."""
    return torch.as_tensor(x).permute(0, 3, 1, 2).float().div_(255).contiguous()
