"""What a step and an attack pass cost on the device they run on: seconds and peak memory.

* **Time**: wall-clock seconds around the call (after a device synchronisation on CUDA); the
  median of up to :data:`REPEATS` calls for fast ones, one call for a step of a second or
  more; one warm-up call first (oneDNN / cuDNN set-up).
* **Memory**: on CUDA the allocator's own peak (``torch.cuda.max_memory_allocated``); on a
  CPU, where the allocator keeps no such count, :class:`LiveBytes`: a dispatch mode that
  follows every tensor storage alive during the step (parameters, buffers, gradients,
  optimiser state, activations, temporaries) and keeps the peak of their sum. What it
  cannot see is the allocator's own overhead (fragmentation, caching), which a GPU adds.

On a GPU :func:`batch_sizes` measures the real batch (and its half, for the slope a smaller
per-process batch needs); on a CPU, where a full-size step at the real batch takes minutes,
two small batches to fit ``a + b x batch`` and a larger one to check the fit.
"""
from __future__ import annotations

import dataclasses
import functools
import time
import weakref
from typing import Any, Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .. import train as engine
from ..build import build
from ..config import TrainConfig
from ..data import to_float_nchw
from ..schedules import get_schedule

CPU_FIT = (2, 4)     # batch sizes a CPU measures to fit time and memory ~ a + b x batch ...
CPU_CHECK = 8        # ... and the one it checks the fit against
REPEATS = 5          # timings of a fast call (a slow one, >= 1 s, is timed once)


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storage alive while it is active: the storages of ``tensors``
    given at the start, plus every storage an operation creates under it, each counted
    until it is freed (a weak reference to the storage says when).

    Why not ``torch.distributed._tools.mem_tracker.MemTracker``, which does this and more:
    its module hooks break ``torch.autograd.grad`` (which every training attack calls:
    "A leaf node was passed to _will_engine_execute_node...") and it puts a gradient hook
    on every parameter, which raises for a frozen teacher's."""

    def __init__(self, tensors: Sequence[torch.Tensor] = ()):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, Any] = {}
        for t in tensors:
            self._add(t)

    def _add(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = st.data_ptr()
        if not key or key in self._refs:
            return
        n = st.nbytes()
        self.live += n
        self.peak = max(self.peak, self.live)
        self._refs[key] = weakref.ref(st, functools.partial(self._free, key, n))

    def _free(self, key: int, n: int, _ref: Any) -> None:
        if self._refs.pop(key, None) is not None:
            self.live -= n

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._add(t)
        return out


def batch_sizes(device: torch.device, real_batch: int) -> dict[str, list[int]]:
    """What a device measures: ``fit`` (a line through them) and ``check`` (against it)."""
    if device.type == "cuda":
        return {"fit": sorted({max(1, real_batch // 2), real_batch}), "check": []}
    return {"fit": list(CPU_FIT), "check": [CPU_CHECK]}


def timed(fn: Callable[[], Any], device: torch.device,
          tracked: Sequence[Any] = ()) -> dict[str, Any]:
    """Seconds of ``fn`` and, with ``tracked`` (the modules and optimisers it uses), its peak
    memory: ``{"s", "peak_bytes", "state_bytes"}`` (module docstring)."""
    out: dict[str, Any] = {"peak_bytes": None, "state_bytes": None}

    def once() -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    if not tracked:
        first = once()
    elif device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        first = once()
        out["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
        out["state_bytes"] = state_bytes(tracked)
    else:
        out["state_bytes"] = state_bytes(tracked)
        with LiveBytes(_state_tensors(tracked)) as tracker:
            first = once()
        out["peak_bytes"] = tracker.peak
    times = [first]
    while first < 1.0 and len(times) < REPEATS and sum(times) < 1.0:
        times.append(once())        # plain calls: the tracker's overhead left out
    out["s"] = sorted(times[1:] or times)[len(times[1:] or times) // 2]
    return out


def _state_tensors(objects: Sequence[Any]) -> list[torch.Tensor]:
    """The parameters, buffers and gradients of the modules and the state of the
    optimisers in ``objects``."""
    tensors: list[torch.Tensor] = []
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            tensors += [*obj.parameters(), *obj.buffers()]
            tensors += [p.grad for p in obj.parameters() if p.grad is not None]
        else:
            tensors += [v for st in obj.state.values() for v in st.values() if torch.is_tensor(v)]
    return tensors


def state_bytes(objects: Sequence[Any]) -> int:
    """Bytes of :func:`_state_tensors` (a storage shared between them counted once)."""
    sizes = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
             for t in _state_tensors(objects)}
    return sum(sizes.values())


def _tile(x: torch.Tensor, n: int) -> torch.Tensor:
    return x[torch.arange(n) % len(x)]


def measure_training(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Seconds and peak memory of the engine's own training step (``train.train_step``) for
    the resolved config ``cfg`` at its last epoch (that epoch's learning rates; CIARD's ITT
    on), at the batch sizes of :func:`batch_sizes` for ``cfg.batch_size``; the data and
    teachers ``cfg`` names (a rehearsal's)."""
    sizes = batch_sizes(device, cfg.batch_size)
    n_max = max(sizes["fit"] + sizes["check"])
    run = build(dataclasses.replace(cfg, n_train=None, n_test=1), device)
    method, epoch = run.method, cfg.epochs
    trainings = method.teacher_trainings()
    for group in run.optimizer.param_groups:
        group["lr"] = get_schedule(cfg.schedule)(epoch, cfg.epochs, cfg.lr)
    for t in trainings:
        for group in run.teacher_optimizers[t.name].param_groups:
            group["lr"] = t.lr_at(epoch)
    method.begin_epoch(epoch)
    method.train()
    x = _tile(to_float_nchw(run.data.x_train[:n_max]), n_max).to(device)
    y = _tile(run.data.y_train[:n_max], n_max).to(device)
    tracked = [method, run.optimizer, *run.teacher_optimizers.values()]

    def step(b: int) -> Callable[[], Any]:
        return lambda: engine.train_step(run, x[:b], y[:b], trainings)

    step(sizes["fit"][0])()
    rows = {str(b): timed(step(b), device, tracked) for b in sizes["fit"] + sizes["check"]}
    return {"batch": rows, "fit": sizes["fit"], "check": sizes["check"], "epoch": epoch,
            "itt": bool(getattr(method, "itt_active", False)), "real_batch": cfg.batch_size,
            "device": str(device)}


def measure_passes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   device: torch.device, eval_batch: int) -> dict[str, Any]:
    """Seconds of an attack's two kinds of pass through ``model`` in eval mode: a forward
    without a graph, and a forward and backward to the input (one attack step), at the
    batch sizes of :func:`batch_sizes` for the evaluation's batch."""
    sizes = batch_sizes(device, eval_batch)
    n_max = max(sizes["fit"] + sizes["check"])
    x, y = _tile(x, n_max).to(device), _tile(y, n_max).to(device)
    loss = torch.nn.CrossEntropyLoss()
    was = model.training
    model.eval()

    def forward(b: int) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad():
                model(x[:b])
        return run

    def gradient(b: int) -> Callable[[], Any]:
        def run() -> None:
            xa = x[:b].clone().requires_grad_(True)
            torch.autograd.grad(loss(model(xa), y[:b]), xa)
        return run

    gradient(sizes["fit"][0])()
    rows = {str(b): {"forward_s": timed(forward(b), device)["s"],
                     "gradient_s": timed(gradient(b), device)["s"]}
            for b in sizes["fit"] + sizes["check"]}
    model.train(was)
    return {"batch": rows, "fit": sizes["fit"], "check": sizes["check"], "device": str(device)}
