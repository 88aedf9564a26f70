"""The training engine shared by every method: ``python -m ciard_bench.train``.

Read top to bottom: build the run (data, models, method, optimisers), restore it if
resuming, then for each epoch set the learning rates, run the steps, evaluate (clean and
PGD_TRADES on a test subset), and checkpoint atomically. A run killed at any moment and
restarted with ``--resume`` ends with the same weights as an uninterrupted run on CPU:
data order and augmentation are functions of (seed, epoch, index), and every RNG,
optimiser, scaler and adaptive method state is in the checkpoint.

A stop can be requested from outside the loop (a signal handler: ``STOP.set()``): the loop
looks at the flag once per step, between steps, so it saves at the next step boundary --
never from inside a step -- and returns ``{"interrupted": ...}``; ``--resume`` continues
from that step. Under torchrun a request on any one rank reaches every rank at the same,
next step boundary: each step's gradient all-reduce carries every rank's flag (no
collective of its own; the one host sync per step it needs is on the multi-process path
only). The SLURM launcher sets it on the preemption / time-limit signal, and the command
line on TERM, USR1 and USR2 (:mod:`ciard_bench.signals`): it then exits with status 128 +
the signal's number after saving.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import torch
from tqdm import tqdm

from . import plugins
from .bookkeeping import NonFiniteWeights, accumulate, epoch_means, raise_if_weights_bad  # noqa: F401
from .build import (Run, accuracy, autocast, build, evaluate_epoch,  # noqa: F401  (public here too)
                    refresh_batch_norm)
from .checkpoint import FORMAT, atomic_write_json
from .config import (TrainConfig, add_method_arguments, add_train_arguments, config_from_args,
                     load_config_file, resolve)
from .data import ArrayDataset, list_datasets, make_loader
from .distributed import (Dist, all_reduce_max, all_reduce_mean, average_gradients, barrier,
                          broadcast_state, gather, max_param_difference,
                          report_failures, setup, teardown)
from .errors import ArgumentParser, UserError, cli_main
from .faults import kill_point
from .methods import get_method, list_methods
from .runchecks import NonFiniteLoss, check_first_loss, check_loss, check_resume, raise_if_bad  # noqa: F401
from .runend import finish, state_equal, stop_requested, stopped
from .runs import RunDir, check_writable, local_path, teacher_identities
from .schedules import get_schedule
from .signals import stop_at_look, stop_on_signals
from .utils import resolve_device, rng_state, seed_everything, set_rng_state

log = logging.getLogger("ciard_bench.train")
LOG_EVERY = 20  # steps between progress-bar refreshes (each one syncs with the device)
# set (e.g. from a signal handler) to make train() save at the next step boundary and return;
# whoever sets it clears it (a signal that comes before train() starts is not lost)
STOP = threading.Event()


def _training_state(run: Run, epoch: int, step: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "arch": _arch(run),
            "state_dict": run.method.evaluated_student().state_dict(),
            "epoch": epoch, "step": step, "method_state": run.method.checkpoint_state(),
            "optimizer": run.optimizer.state_dict(),
            "teacher_optimizers": {k: o.state_dict() for k, o in run.teacher_optimizers.items()},
            "scaler": run.scaler.state_dict(), "rng": rng_state(run.device),
            "config": run.cfg.to_dict(), **extra}


def _arch(run: Run) -> dict[str, Any]:
    return {"name": run.cfg.student, "num_classes": run.data.num_classes, "kwargs": dict(run.cfg.student_kwargs)}


def _restore(run: Run, ckpt: dict[str, Any], d: Dist) -> None:
    rng = ckpt["rng"]
    ranks = rng["ranks"] if "ranks" in rng else [rng]
    if len(ranks) != d.world_size:
        raise UserError(f"--resume: the checkpoint was written by {len(ranks)} process(es) but "
                        f"{d.world_size} are running; accepted: the same number of processes")
    run.method.load_checkpoint_state(ckpt["method_state"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    for name, state in ckpt["teacher_optimizers"].items():
        run.teacher_optimizers[name].load_state_dict(state)
    run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ranks[d.rank], run.device)


def train_step(run: Run, x, y, trainings: list, d: Dist = Dist(), stop: threading.Event | None = None,
               agreed: torch.Tensor | None = None) -> dict[str, Any]:
    """One optimisation step of the student (and of any teacher the method trains): the
    method's forward under autocast, backward through the scaler, gradients averaged over
    processes, optimiser steps; returns the method's loss dict. ``agreed`` (torchrun, a
    1-element tensor): receives the number of ranks whose ``stop`` was set just before the
    gradient all-reduce, which carries it (a request during the step counts for this step).
    ``benchmarks/step.py`` times this very function."""
    with autocast(run.cfg, run.device):
        out = run.method(x, y)
    check_loss(run.cfg.method, out)         # metadata only: no host sync
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(out["loss"]).backward()
    if agreed is not None:
        agreed.fill_(float(stop is not None and stop.is_set()))
    average_gradients(run.method.student.parameters(), d, agreed)
    run.scaler.step(run.optimizer)
    for t in trainings:
        if t.loss_key in out:   # the method trains this teacher on this step
            opt, teacher = run.teacher_optimizers[t.name], getattr(run.method, t.name)
            opt.zero_grad(set_to_none=True)
            run.scaler.scale(out[t.loss_key]).backward()
            average_gradients(teacher.parameters(), d)
            run.scaler.step(opt)
            broadcast_state(teacher, d, params=False)
    run.scaler.update()
    broadcast_state(run.method.student, d, params=False)   # rank 0's BN statistics, as DDP
    return out


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True,
          stop: threading.Event | None = None, results: str | os.PathLike | None = None
          ) -> dict[str, Any]:
    """Train (or resume) one run; returns the result dict also written to ``result.json``.
    ``progress=False`` hides the per-epoch bar (the tables harness shows one bar of its own).

    ``results``: the results folder that the config's ``results:`` paths are inside (a grid
    cell's run folder and the teachers the grid trained, :mod:`ciard_bench.runs`); the run
    records the config as given, so its folder can move. Other paths are used as given.

    ``stop`` (default :data:`STOP`): once it is set, the run saves
    a checkpoint at the next step boundary and returns ``{"interrupted": {"epoch", "step",
    "out"}}`` instead of the result; ``resume=True`` continues it from that step.

    Under ``torchrun`` every process calls this; see :mod:`ciard_bench.distributed`.
    """
    cfg = resolve(cfg)
    out = local_path(cfg.out, results)      # the run folder as this process opens it
    stop = STOP if stop is None else stop
    d, device_name = setup(cfg.device)
    device = resolve_device(device_name)
    if cfg.amp != "none" and device.type != "cuda":
        raise UserError(f"--amp {cfg.amp} needs a CUDA device, but the device is {device}; accepted here: none")
    if cfg.batch_size % d.world_size:
        raise UserError(f"batch-size {cfg.batch_size} (the global batch) must be divisible by the "
                        f"{d.world_size} processes")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rundir = RunDir(out)
    saved = rundir.read_state() if rundir.exists() else {}
    if rundir.exists() and not resume:
        raise UserError(f"run folder {out!r} already holds a run; pass --resume to continue it "
                        "or choose another --out")
    used = plugins.provenance(method=cfg.method, model=cfg.student, dataset=cfg.dataset)
    teachers = teacher_identities(cfg, results)     # by content: the files may move
    if saved.get("config") is not None:
        check_resume(saved, cfg, used, out, teachers)
    check_writable(rundir.root)
    seed_everything(cfg.seed)
    if d.enabled:
        log.info("process %d of %d (world size %d) on %s", d.rank, d.world_size, d.world_size, device)
    run = build(cfg, device, d, results)   # every input is checked before anything is written
    if d.is_main:
        rundir.clean_temporaries()
        atomic_write_json(rundir.root / "config.json", cfg.to_dict())
    # one random stream on every rank: each draws the global batch's attack starts and keeps its
    # rows (api/inner.py), so a sample starts as in one process on the global batch
    method, schedule = run.method, get_schedule(cfg.schedule)
    trainings = method.teacher_trainings()
    start_epoch, start_step, history, best_wr, partial = 1, 0, [], -math.inf, {}
    ckpt = rundir.load("last") if resume else None
    if ckpt is not None:
        _restore(run, ckpt, d)
        history, best_wr, partial = ckpt["history"], ckpt["best_wr"], ckpt.get("partial", {})
        start_epoch, start_step = (ckpt["epoch"], ckpt["step"]) if ckpt["step"] else (ckpt["epoch"] + 1, 0)
        log.info("resuming %s at epoch %d step %d", out, start_epoch, start_step)
    train_ds = ArrayDataset(run.data.x_train, run.data.y_train, augment=True, seed=cfg.seed)

    def save(epoch: int, step: int, best: dict | None, sums: dict) -> None:
        raise_if_weights_bad(run, epoch, step)      # every rank: their replicas are equal
        rng = gather(rng_state(device), d)          # collective: every rank takes part
        if d.is_main:
            extra = {"history": history, "best_wr": best_wr, "partial": sums}
            state = _training_state(run, epoch, step, extra)
            state["rng"] = rng[0] if not d.enabled else {"ranks": rng}
            rundir.save(state, epoch=epoch, step=step, best=best, log=history,
                        extra_state={"config": cfg.to_dict(), "world_size": d.world_size,
                                     **({"plugins": used} if used else {}),
                                     **({"teachers": teachers} if teachers else {})})
        barrier(d)

    checked = False     # the first step of this invocation is checked (check_first_loss)
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = schedule(epoch, cfg.epochs, cfg.lr)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        for t in trainings:
            for group in run.teacher_optimizers[t.name].param_groups:
                group["lr"] = t.lr_at(epoch)
        method.begin_epoch(epoch)
        method.train()
        loader = make_loader(train_ds, cfg.batch_size // d.world_size, shuffle=True, seed=cfg.seed,
                             epoch=epoch, rank=d.rank, world_size=d.world_size, start_batch=start_step,
                             device=device, num_workers=cfg.num_workers)
        n_batches = start_step + len(loader)
        sums = {k: v.to(device) for k, v in partial.get("sums", {}).items()}
        n_done = partial.get("n", 0)
        bad_step = torch.full((), -1, device=device, dtype=torch.long)
        agreed = torch.zeros(1, device=device) if d.enabled else None   # ranks asking to stop
        bad_terms: dict[str, Any] = {}
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", initial=start_step, total=n_batches,
                   leave=False, disable=None if d.is_main and progress else True, mininterval=2.0)
        for i, (x, y) in enumerate(bar, start=start_step):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            kill_point("step")
            out = train_step(run, x, y, trainings, d, stop, agreed)
            if not checked:
                check_first_loss(cfg.method, out, epoch)
                checked = True
            with torch.no_grad():   # bookkeeping on the device: no host sync per step
                newly_bad = (bad_step < 0) & ~torch.isfinite(out["loss"].detach())
                bad_step = torch.where(newly_bad, torch.full_like(bad_step, i + 1), bad_step)
                accumulate(sums, out, method.log_weights)
                for k, v in out.items():
                    v = v.detach().float()
                    bad_terms[k] = torch.where(newly_bad, v, bad_terms.get(k, v))
            n_done += 1
            last_step = i + 1 == n_batches
            sync_step = (i + 1) % LOG_EVERY == 0 or last_step
            # stop requested (on any rank): save now (the last step saves at the epoch's end)
            stop_now = not last_step and (bool(agreed.item() > 0) if d.enabled else stop.is_set())
            checkpoint_now = (cfg.ckpt_every_steps and (i + 1) % cfg.ckpt_every_steps == 0
                              and not last_step) or stop_now
            if sync_step or checkpoint_now:
                raise_if_bad(all_reduce_max(bad_step, d), bad_terms, epoch)
                bar.set_postfix(loss=f"{out['loss'].item():.4f}")
            if checkpoint_now:
                save(epoch, i + 1, None, {"sums": {k: v.cpu() for k, v in sums.items()}, "n": n_done})
            if stop_now:
                bar.close()
                return stopped(cfg, out, epoch, i + 1, d)
        bar.close()
        method.end_epoch(epoch)
        refresh = method.batch_norm_refresh(epoch)
        if refresh:
            refresh_batch_norm(run, refresh, train_ds, epoch, d)
        all_reduce_mean(sums, d)
        record = {"epoch": epoch, "lr": lr, "steps": n_done,
                  **{f"teacher_lr_{t.name}": t.lr_at(epoch) for t in trainings},
                  **epoch_means(sums, n_done, method.log_weights),
                  **{k: float(v) for k, v in method.state_summary().items()}}
        if d.enabled:   # the method state is global, so equal on every rank: checked each epoch
            record["method_state_equal_on_all_ranks"] = state_equal(method, d, epoch)
        best = None
        if d.is_main and (epoch == cfg.epochs or (epoch >= cfg.eval_from
                                                  and epoch % cfg.eval_every == 0)):
            record.update(evaluate_epoch(run, epoch))
            if record["wr"] > best_wr:
                best_wr = record["wr"]
                best = {"format": FORMAT, "arch": _arch(run),
                        "state_dict": method.evaluated_student().state_dict(),
                        "epoch": epoch, "metrics": {k: record[k] for k in ("clean_acc", "pgd_trades_acc", "wr")},
                        "config": cfg.to_dict()}
        record["time_s"] = round(time.perf_counter() - t0, 3)
        history.append(record)
        if d.is_main:
            log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in record.items()
                                                       if isinstance(v, float) and k != "time_s"))
        save(epoch, 0, best, {})
        start_step, partial = 0, {}
        if epoch < cfg.epochs and stop_requested(stop, d, device):
            return stopped(cfg, out, epoch, 0, d)
    in_sync = max_param_difference(method, d)
    result = finish(rundir, cfg, history, device, d, in_sync, used) if d.is_main else {}
    teardown(d)   # waits for every rank first
    return result


def build_parser(method_name: str) -> argparse.ArgumentParser:
    """The ``python -m ciard_bench.train`` parser: engine flags and ``method_name``'s options."""
    parser = ArgumentParser(prog="python -m ciard_bench.train",
                                     description="Train a student (or teacher) with one method.")
    parser.add_argument("--list-methods", action="store_true", help="list the methods (built-in "
                        "or which plugin) and exit")
    parser.add_argument("--list-datasets", action="store_true", help="list the datasets (built-in "
                        "or which plugin) and exit")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--results-dir", help="the results folder of a grid cell's config (its "
                        "results:... paths: the run folder, the teachers the grid trained); "
                        "python -m ciard_bench.tables passes it")
    add_train_arguments(parser)
    add_method_arguments(parser, get_method(method_name))
    return parser


def _main(argv: list[str] | None) -> int:
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--method")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    method = known.method or (load_config_file(known.config).get("method") if known.config else None) or "ciard"
    args = build_parser(method).parse_args(argv)
    if args.list_methods:
        for name in list_methods():
            cls = get_method(name)
            print(f"{name:10s} {cls.description} [{cls.paper}] ({plugins.describe('method', name)})")
        return 0
    if args.list_datasets:
        for name in list_datasets():
            print(f"{name:14s} {plugins.describe('dataset', name)}")
        print(f"{'npz:PATH':14s} built-in (a file with x_train, y_train, x_test, y_test)")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = config_from_args(args)
    STOP.clear()
    with stop_on_signals(STOP) as received:   # TERM / USR1 / USR2: save at the next step
        # CIARD_BENCH_STOP_AT=<n>: a stop at a chosen step boundary (the rehearsal's, signals.py)
        result = train(cfg, resume=args.resume, stop=stop_at_look(STOP), results=args.results_dir)
    STOP.clear()
    if result and "interrupted" in result:
        where = result["interrupted"]
        name = signal.Signals(received[0]).name if received else "a stop request"
        print(f"stopped by {name}: saved at epoch {where['epoch']} step {where['step']} in "
              f"{where['out']}; rerun with --resume to continue", file=sys.stderr)
        return 128 + received[0] if received else 1
    if result:   # rank 0 (or a single process)
        print(f"done: last {result['last']}, best {result['best']} -> {result['config']['out']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:   # a torchrun process: one line per failure
        out = _out_folder(argv)
        return report_failures(lambda: cli_main(_main, argv), out)
    return cli_main(_main, argv)


def _out_folder(argv: list[str] | None) -> str | None:
    """The run folder the command line names (``--out``, else its ``--config`` file's)."""
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--out")
    pre.add_argument("--config")
    pre.add_argument("--results-dir")
    known = pre.parse_known_args(argv)[0]
    try:
        out = known.out
        if out is None and known.config:
            out = load_config_file(known.config).get("out")
        return local_path(out, known.results_dir)
    except UserError:     # the run itself reports a bad config file
        return None


if __name__ == "__main__":
    sys.exit(main())
