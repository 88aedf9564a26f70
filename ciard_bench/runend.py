"""How a training run ends (:func:`ciard_bench.train.train`): at a stop request (saved at a
step boundary, said, and returned so that ``--resume`` continues), or finished, with its
``result.json``; and the per-epoch check that every rank holds the same method state."""
from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from .checkpoint import atomic_write_json
from .config import TrainConfig
from .distributed import Dist, all_reduce_max, max_difference, teardown
from .runs import RunDir
from .utils import provenance

log = logging.getLogger("ciard_bench.train")


def stop_requested(stop: threading.Event, d: Dist, device: Any) -> bool:
    """Whether to stop at the end of an epoch. One process: the flag. Several: every rank
    must stop at the same point (saving is a collective): an all-reduce of the flag."""
    if not d.enabled:
        return stop.is_set()
    flag = torch.tensor(int(stop.is_set()), device=device)
    return bool(all_reduce_max(flag, d).item())


def stopped(cfg: TrainConfig, out: str, epoch: int, step: int, d: Dist) -> dict[str, Any]:
    """The run saved at (epoch, step) on a stop request: say so, and return that (``out``:
    the run folder as the config names it)."""
    where = f"epoch {epoch} step {step}" if step else f"the end of epoch {epoch}"
    if d.is_main:
        log.warning("stop requested: saved %s at %s; --resume continues from there", out, where)
    teardown(d)   # waits for every rank first
    return {"interrupted": {"epoch": epoch, "step": step, "out": cfg.out}}


def state_equal(method, d: Dist, epoch: int) -> bool:
    """Whether every rank holds exactly rank 0's method buffers (a collective); warns if not."""
    diff = max_difference(list(method.adaptive_state().values()), d)
    if diff != 0.0 and d.is_main:
        log.warning("epoch %d: the method state differs between ranks by up to %g; a checkpoint "
                    "holds rank 0's", epoch, diff)
    return diff == 0.0


def finish(rundir: RunDir, cfg: TrainConfig, history: list, device, d: Dist,
            rank_difference: float, used: list | None = None) -> dict[str, Any]:
    state = rundir.read_state()
    evaluated = [r for r in history if "wr" in r]
    metrics = ("clean_acc", "pgd_trades_acc", "wr")
    result = {
        "method": cfg.method, "dataset": cfg.dataset, "student": cfg.student, "epochs": cfg.epochs,
        "last": {"epoch": evaluated[-1]["epoch"], **{k: evaluated[-1][k] for k in metrics}} if evaluated else None,
        "best": {"epoch": state["best"]["epoch"], **state["best"]["metrics"]} if state.get("best") else None,
        "selection": "best = highest (clean + PGD_TRADES)/2 on the evaluation subset of the test set, "
                     "as the released code; last = final epoch",
        "checkpoints": {k: state[k] for k in ("last", "best") if k in state},
        "config": cfg.to_dict(), "provenance": provenance(device, cfg.seed),
        "processes": d.world_size, "max_parameter_difference_between_ranks": rank_difference,
        **({"plugins": used} if used else {}),
    }
    atomic_write_json(rundir.root / "result.json", result)
    return result
