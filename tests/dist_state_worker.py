"""Run by tests/test_distributed_state.py under torchrun (2 gloo processes); not a test itself.

For each stateful method it trains with the engine's own pieces (``build``, the engine's
``make_loader`` shards, ``train_step`` with its gradient averaging and BN broadcast,
``begin_epoch`` / ``end_epoch``) for the first 2 epochs (2 steps each) of a 300-epoch
configuration (the released length: no rate is decayed yet), and after every step and every
epoch gathers every rank's method buffers and compares them exactly. Rank 0 also runs the
same epoch 1 in ONE process on the global batch (the two ranks' shards of each step, joined)
and compares its buffers after every step and at the epoch's end. Rank 0 writes a JSON
report to ``argv[1]/report.json``; ``argv[1]`` also holds the teacher files.

Settings that make the one-process comparison meaningful (see the test's docstring): a
BN-free student, frozen teachers in eval mode (their outputs do not depend on the batch),
and eps = 0 set on the method's context after ``build`` (the CLI accepts (0, 1]): the attack
then returns x exactly, whatever random start each process draws from its own stream.
"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

from ciard_bench.build import build
from ciard_bench.config import TrainConfig, resolve
from ciard_bench.data import ArrayDataset, make_loader
from ciard_bench.distributed import Dist, gather, setup, teardown
from ciard_bench.train import train_step
from ciard_bench.utils import seed_everything

ITT = {"itt_start_epoch": 1}   # CIARD's ITT trains the robust teacher in epoch 2
METHODS = [("ciard", ITT), ("ciard", {**ITT, "loss_weights": "mtard_adaptive"}), ("mtard", {}),
           ("bmtard", {}), ("absld", {}), ("fair_ard", {})]
STEPS = 2      # per epoch: 32 samples, global batch 16 = 2 x 8


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exactly equal, NaN where the other is NaN (CIARD's unused first-step losses)."""
    nan = torch.isnan(a)
    return a.shape == b.shape and torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan], b[~nan])


def _state(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in run.method.adaptive_state().items()}


def _build(cfg: TrainConfig, d: Dist):
    seed_everything(cfg.seed)                         # the same initial weights everywhere
    run = build(cfg, torch.device("cpu"), d)
    run.method.ctx = dataclasses.replace(run.method.ctx, eps=0.0)
    return run


def _set_lrs(run, epoch: int, trainings: list) -> None:
    for t in trainings:                               # as the engine: ITT's rate of this epoch
        for group in run.teacher_optimizers[t.name].param_groups:
            group["lr"] = t.lr_at(epoch)


def _one(name: str, opts: dict, folder: Path, d: Dist) -> dict:
    cfg = resolve(TrainConfig(method=name, method_options=opts, dataset="digits", n_train=32,
                              n_test=16, student="resnet8", student_kwargs={"norm": "none"},
                              clean_teacher=str(folder / "t1.pt"), robust_teacher=str(folder / "t2.pt"),
                              epochs=300, batch_size=16, attack_steps=2, seed=5, device="cpu",
                              out=str(folder / "unused")))
    run = _build(cfg, d)
    ref = _build(cfg, Dist()) if d.is_main else None  # one process, the global batch
    if d.rank > 0:
        seed_everything(cfg.seed + 1000 * d.rank)     # as the engine: another stream per rank
    trainings = run.method.teacher_trainings()
    data = ArrayDataset(run.data.x_train, run.data.y_train, augment=True, seed=cfg.seed)
    report = {"rank_checks": 0, "rank_mismatches": [], "ref_checks": 0, "ref_mismatches": [],
              "states": []}

    def check(where: str, with_ref: bool) -> None:
        copies = gather(_state(run), d)               # every rank's buffers, on every rank
        report["rank_checks"] += 1
        for key, value in copies[0].items():
            if not all(_same(value, c[key]) for c in copies[1:]):
                report["rank_mismatches"].append(f"{where}: {key} {[c[key].tolist() for c in copies]}")
        if with_ref and ref is not None:
            report["ref_checks"] += 1
            for key, value in _state(ref).items():
                if not torch.allclose(copies[0][key], value, rtol=1e-5, atol=1e-6, equal_nan=True):
                    report["ref_mismatches"].append(
                        f"{where}: {key} two processes {copies[0][key].tolist()} one {value.tolist()}")
        report["states"].append({k: v.tolist() for k, v in copies[0].items()})

    for epoch in (1, 2):
        runs = [run, ref] if epoch == 1 and ref is not None else [run]
        for r in runs:
            _set_lrs(r, epoch, trainings if r is run else r.method.teacher_trainings())
            r.method.begin_epoch(epoch)
            r.method.train()
        loaders = [make_loader(data, cfg.batch_size // 2, shuffle=True, seed=cfg.seed, epoch=epoch,
                               rank=rank, world_size=2) for rank in range(2)]
        for step, shards in enumerate(zip(*loaders), start=1):
            x, y = shards[d.rank]
            train_step(run, x, y, trainings, d)
            if len(runs) == 2:
                xs, ys = zip(*shards)
                train_step(ref, torch.cat(xs), torch.cat(ys), ref.method.teacher_trainings())
            check(f"epoch {epoch} step {step}", len(runs) == 2)
        for r in runs:
            r.method.end_epoch(epoch)
        check(f"end of epoch {epoch}", len(runs) == 2)
    return report


def main(folder: str) -> None:
    d, _ = setup("cpu")
    assert d.world_size == 2, "run under torchrun --nproc_per_node=2"
    reports = {f"{name} {opts}": _one(name, opts, Path(folder), d) for name, opts in METHODS}
    if d.is_main:
        (Path(folder) / "report.json").write_text(json.dumps(reports, indent=1))
    teardown(d)


if __name__ == "__main__":
    main(sys.argv[1])
