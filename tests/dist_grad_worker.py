"""Run by tests/test_distributed_grad.py under torchrun (2 gloo processes); not a test itself.

For every registered method (CIARD also with ``mtard_adaptive`` weights and with ITT
training the robust teacher), one training step with the engine's own ``build`` and
``train_step`` (gradient averaging included) on each rank's shard of a global batch of 8,
and on rank 0 the same step in ONE process on the joined batch; rank 0 writes, per case and
per parameter (student, the ITT teacher, PeerAiD's peer), the largest absolute difference of the
gradients and the largest absolute element of the one-process gradient, to
``argv[1]/grads.json``.

Modes (``argv[2:]``): ``nobn`` -- a BatchNorm-free student; ``syncbn`` -- BatchNorm students
and teachers with ``sync_bn`` (global-batch statistics), against one process whose batch norms
do the same arithmetic on the joined batch (``global_batch_norm(alone=True)``; how that
arithmetic compares with torch's own BatchNorm2d is tests/test_distributed_grad.py's
business); ``rankbn`` -- BatchNorm with each
process's own statistics (the default), compared with the mean of the one-process gradients
on each shard alone (what DDP computes), for the methods whose loss has no global statistic.

The joined batch is the ranks' shards interleaved (row j of rank r at 2 j + r), as the
data loader deals a global batch to the ranks, and every run is seeded alike just before its
step: each rank draws the attack starts of the whole global batch and keeps its rows, so
every sample starts where it does in the one process (api/inner.py). In ``rankbn`` mode
the per-shard references cannot draw that way, so there the start is made a function of each
image alone; everything else is the package's code.
"""
import json
import sys
from pathlib import Path

import torch

from ciard_bench.build import build
from ciard_bench.config import TrainConfig, resolve
from ciard_bench.data import ArrayDataset, make_loader
from ciard_bench.distributed import Dist, global_batch_norm, setup, teardown
from ciard_bench.api import inner as pgd_module
from ciard_bench.methods import list_methods
from ciard_bench.plugins import origin
from ciard_bench.train import train_step
from ciard_bench.utils import seed_everything

# methods whose step uses no statistic of the whole batch besides BatchNorm (rankbn mode)
PER_SAMPLE = ("standard", "sat", "trades", "ard", "rslad", "score", "adaad")
# methods that attack through the student in TRAIN mode: under sync_bn every sample's input
# gradient then depends on the whole global batch, and PGD's sign() turns a float-order
# difference in a near-zero element into a full 2/255 step (1 pixel of 24576 here, which
# moves the gradient by 0.07 to 0.15): under syncbn they attack in eval mode (their own
# attack_mode switch), and their train-mode attack is compared in nobn mode
TRAIN_MODE_ATTACK = ("ard", "fair_ard", "iad_i", "iad_ii", "fair_iad")


def _start(x: torch.Tensor, start: str, eps: float, gauss_std: float = 1e-3, shard=None) -> torch.Tensor:
    """A start that depends on the image only: a fixed pattern of the pixel values."""
    wave = torch.sin(997.0 * x + torch.arange(x[0].numel(), dtype=x.dtype).view_as(x[0]))
    if start == "gauss":
        return x + gauss_std * wave
    if start == "uniform":
        return x + eps * wave
    return x.clone()


def _cases(mode: str) -> list[tuple[str, dict]]:
    names = [m for m in list_methods() if (mode != "rankbn" or m in PER_SAMPLE)
             and origin("method", m) is None]    # the built-ins (not an installed plugin's)
    cases = [(m, {}) for m in names]
    if mode != "rankbn":
        cases += [("ciard", {"loss_weights": "mtard_adaptive"})]
    if mode == "syncbn":
        cases += [("ciard", {"itt_start_epoch": 0})]   # ITT trains the robust teacher from epoch 1
    return cases


def _run(name: str, opts: dict, folder: Path, mode: str, d: Dist):
    if mode == "syncbn" and name in TRAIN_MODE_ATTACK:
        opts = {**opts, "attack_mode": "eval"}
    cfg = resolve(TrainConfig(method=name, method_options=opts, dataset="digits", n_train=8,
                              n_test=8, student="resnet8",
                              student_kwargs={"norm": "none"} if mode == "nobn" else {},
                              clean_teacher=str(folder / "t1.pt"), robust_teacher=str(folder / "t2.pt"),
                              epochs=300, batch_size=8, seed=5, device="cpu",
                              attack_steps=2,
                              sync_bn=mode == "syncbn", out=str(folder / "unused")))
    seed_everything(cfg.seed)                           # the same initial weights everywhere
    run = build(cfg, torch.device("cpu"), d)
    if mode == "syncbn" and not d.enabled:              # the one process: the same arithmetic
        for model in run.method.children():
            global_batch_norm(model, alone=True)
    trainings = run.method.teacher_trainings()
    for t in trainings:
        for group in run.teacher_optimizers[t.name].param_groups:
            group["lr"] = t.lr_at(1)
    run.method.begin_epoch(1)
    run.method.train()
    return cfg, run, trainings


def _grads(run, trainings) -> dict[str, torch.Tensor]:
    out = {f"student.{k}": p.grad.clone() for k, p in run.method.student.named_parameters()}
    for t in trainings:
        out.update({f"{t.name}.{k}": p.grad.clone()
                    for k, p in getattr(run.method, t.name).named_parameters() if p.grad is not None})
    return out


def _step(name: str, opts: dict, folder: Path, mode: str, d: Dist, shards) -> dict[str, torch.Tensor]:
    _, run, trainings = _run(name, opts, folder, mode, d)
    x, y = (torch.stack(v, dim=1).flatten(0, 1) for v in zip(*shards)) if len(shards) > 1 else shards[0]
    torch.manual_seed(11)                               # the same stream in every run
    train_step(run, x, y, trainings, d)
    return _grads(run, trainings)


def _compare(name: str, opts: dict, folder: Path, mode: str, d: Dist) -> dict | None:
    cfg, run, _ = _run(name, opts, folder, mode, Dist())
    data = ArrayDataset(run.data.x_train, run.data.y_train, augment=True, seed=cfg.seed)
    shards = [next(iter(make_loader(data, cfg.batch_size // 2, shuffle=True, seed=cfg.seed, epoch=1,
                                    rank=r, world_size=2))) for r in range(2)]
    two = _step(name, opts, folder, mode, d, [shards[d.rank]])
    if not d.is_main:
        return None
    if mode == "rankbn":       # each process's own statistics: the mean of the per-shard gradients
        per_shard = [_step(name, opts, folder, mode, Dist(), [s]) for s in shards]
        ref = {k: (per_shard[0][k] + per_shard[1][k]) / 2 for k in per_shard[0]}
    else:
        ref = _step(name, opts, folder, mode, Dist(), shards)
    assert ref.keys() == two.keys(), (sorted(ref), sorted(two))
    return {k: [float((two[k] - ref[k]).abs().max()), float(ref[k].abs().max())] for k in ref}


def main(folder: str, modes: list[str]) -> None:
    d, _ = setup("cpu")
    assert d.world_size == 2, "run under torchrun --nproc_per_node=2"
    report: dict[str, dict] = {mode: {} for mode in modes}
    for mode in modes:
        if mode == "rankbn":
            pgd_module.random_start = _start
        for name, opts in _cases(mode):
            diffs = _compare(name, opts, Path(folder), mode, d)
            if diffs is not None:
                report[mode][f"{name} {json.dumps(opts, sort_keys=True)}"] = diffs
    if d.is_main:
        (Path(folder) / "grads.json").write_text(json.dumps(report, indent=1))
    teardown(d)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
