"""Data-parallel training over processes started by ``torchrun`` (PyTorch's distributed engine).

``torchrun --nproc_per_node N -m ciard_bench.train ...`` trains ONE run on N processes: each
takes its shard of every global batch (``--batch-size`` is the global batch), gradients of
the student and of a teacher the method trains (CIARD's ITT) are averaged over processes
after each backward, and rank 0's BatchNorm statistics are broadcast after each step, so
every rank holds the same weights. Frozen teachers need nothing: each rank loads them.

Exact: every method's step on N processes is its step in one process on the joined global
batch, up to the order of float additions (``tests/test_distributed_grad.py``, every
registered method: within 1e-4 of the gradient's largest element, measured <= 5e-5). For
that, (1) every statistic of the batch a loss or a state update uses is reduced over the
processes first (:func:`all_reduce_sum_`, one packed buffer per step, through
``Method.global_means`` / ``Method.global_sums``): the methods' adaptive state (temperatures,
loss weights, per-class sums and counts) and CIARD's push term (its mean over the push set
of all processes and its magnitude scale from the global losses); (2) every rank keeps one
random stream and draws the attack starts of the whole global batch, keeping its own rows
(``api/inner.py``); (3) BatchNorm: by default each process normalises with its own shard's
statistics, as DDP does (no collective per layer; the batch statistics are those of B/N
samples, so the step is not the one-process step on B);
``--sync-bn`` (:class:`GlobalBatchNorm2d`) uses the global batch's statistics, which the
tables harness turns on for ``--procs-per-cell``. So every rank holds the same state, rank
0's checkpoint is the whole state, and a resumed run continues the run it was. Each epoch
the engine records whether all ranks' method buffers equal rank 0's exactly
(``method_state_equal_on_all_ranks``). In one process nothing is reduced and no operation
changes.

Why not the ``DistributedDataParallel`` wrapper: a distillation step runs the student many
times per backward (10 attack forwards whose gradient is taken with respect to the input
only, then train-mode forwards on x and x' that share one backward). DDP's reducer expects
one forward per backward ("Expected to have finished reduction in the prior iteration").
The attack could run through the unwrapped module, but the outer step still has two
train-mode forwards (S(x), S(x')) under one backward, which DDP can only serve as one
forward of the concatenated batch -- one BatchNorm batch where the released code has two,
a change of the method. So the engine averages one flattened gradient buffer with
``all_reduce`` after the backward (the arithmetic DDP performs, without its overlap of
communication with the backward). What that overlap could save at most, measured with
``benchmarks/comm_share.py`` (CIARD, ResNet-18-tiny student, resnet8 teachers, global batch
64, 2 CPU processes on gloo, 1 thread each, beside other jobs at load 5 on 2 cores): 10 %
and 21 % of a 0.97 s step in collectives on the two ranks (mostly waiting for the slower
rank), 33 % and 37 % of 1.06 s with ``--sync-bn``. No GPU figure yet.

Fail-fast: an exception on one rank ends it with one line naming the rank and the error
(:func:`report_failures`); its peers' next collective fails at once (gloo: "Connection closed
by peer") and they say only that, and torchrun's agent ends whatever is left, so the run
exits non-zero within seconds with the last good checkpoint intact. A stop request (TERM,
USR1, USR2) on any rank rides in the next step's gradient all-reduce, so every rank saves at
the same, next step boundary (``ciard_bench.train``). Only rank 0 evaluates and writes files.
"""
from __future__ import annotations

import math
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_name: str) -> tuple[Dist, str]:
    """Join the process group when started by torchrun; returns (Dist, device name to use)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device_name

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device_name!r} was asked for but this machine has no CUDA GPU")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        return Dist(rank, world, local), f"cuda:{local}"
    return Dist(rank, world, local), "cpu"


def report_failures(work: Callable[[], int], log_dir: str | None) -> int:
    """Run one torchrun process's ``work``; an unexpected error becomes ONE line on stderr
    naming the rank and the error (``rank 1: error: OSError: ...``), its traceback goes to
    ``<log_dir>/error-rank<R>.log``, and the exit status is 1. A rank whose collective fails
    because another rank ended (gloo: "Connection closed by peer", at once) says only that,
    so a run's error is reported once, by the rank that had it. torchrun's agent then ends
    every rank that is still running (SIGTERM) and prints its own summary."""
    rank = os.environ.get("RANK", "0")
    try:
        return work()
    except Exception as err:  # noqa: BLE001 - any error ends this rank with one line
        text = " ".join(str(err).split())
        if isinstance(err, dist.DistError) or any(s in text for s in _PEER_GONE):
            print(f"rank {rank}: stopped: another process of this run ended", file=sys.stderr)
            return 1
        where = ""
        if log_dir is not None:
            try:
                path = Path(log_dir) / f"error-rank{rank}.log"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(traceback.format_exc())
                where = f" (traceback: {path})"
            except OSError:          # the disk that failed may be this one
                pass
        print(f"rank {rank}: error: {type(err).__name__}: {text[:300]}{where}", file=sys.stderr)
        return 1


# how gloo reports a collective whose peer process has gone (it raises a plain RuntimeError)
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def teardown(d: Dist) -> None:
    """Leave the process group, after every rank has arrived: a rank that destroys the group
    while a peer is still finishing its last collective can abort the peer inside gloo
    ("terminate called without an active exception", seen here about one run in five)."""
    if d.enabled:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def average_gradients(params: Iterable[Any], d: Dist, flags: torch.Tensor | None = None) -> None:
    """All-reduce the gradients of ``params`` (one flattened buffer) and divide by world size.

    ``flags`` (a small 1-d tensor, e.g. the engine's stop flag) rides in the same all-reduce and
    is replaced, in place, by its sum over the processes: a per-step agreement at no extra
    collective."""
    if not d.enabled:
        return

    grads = [p.grad for p in params if p.grad is not None]
    extra = [] if flags is None else [flags.to(grads[0].dtype if grads else torch.float32)]
    if not grads and not extra:
        return
    flat = _flatten_dense_tensors(grads + extra)
    dist.all_reduce(flat)
    if extra:
        flags.copy_(flat[flat.numel() - flags.numel():])
        flat = flat[:flat.numel() - flags.numel()]
    flat.div_(d.world_size)
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) with a gradient: the backward sums the incoming gradients over the
    processes, since every process's loss depends on every process's input."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose train-mode statistics are those of the GLOBAL batch of all
    processes (``--sync-bn``), on any backend: torch's ``nn.SyncBatchNorm`` runs on CUDA only,
    and this one is the code the CPU tests check. One all-reduce of the per-channel sums
    forward, and one in the backward (the differentiable all-reduce sums the gradients of
    every process's loss), so averaging the
    gradients over the processes gives the one-process gradient on the joined batch. In eval
    mode, or in one process, it is ``BatchNorm2d``."""

    alone = False   # True: this formula on this process's batch only (the tests' 1-process twin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sync = dist.is_initialized() and dist.get_world_size() > 1 and not self.alone
        if not (self.training and (sync or self.alone)):
            return super().forward(x)
        c, dims, shape = x.shape[1], [0, 2, 3], (1, x.shape[1], 1, 1)
        n_local = x.numel() // c
        # this process's sums around its float32 mean m (two passes, as a batch norm): the
        # deviations' sum d and squares M2, so sum x = n m + d and sum x^2 = M2 + 2 m d + n m^2
        # exactly, summed over the processes in float64: the global M2 = that sum - N mean^2
        # loses only float64 digits. (d, zero in exact arithmetic, is what m's float32
        # rounding leaves; without it a channel whose mean is large against its spread got a
        # global variance off by ~n ulp(m) m, 1e-4 of a gradient through IAD's four forwards)
        m_local = x.mean(dims)
        dev = x - m_local.view(shape)
        d_local = dev.sum(dims).double()
        m2_local = (dev ** 2).sum(dims).double()
        m_local = m_local.double()
        local = torch.cat([n_local * m_local + d_local,
                           m2_local + 2 * m_local * d_local + n_local * m_local * m_local,
                           x.new_full((1,), n_local, dtype=torch.float64)])
        total = _SumOverProcesses.apply(local) if sync else local
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] - n * mean * mean) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * (var * n / (n - 1)).to(self.running_var.dtype))
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def global_batch_norm(module: nn.Module, alone: bool = False) -> nn.Module:
    """Make every ``BatchNorm2d`` of ``module`` a :class:`GlobalBatchNorm2d`, in place (same
    parameters, buffers and state-dict keys); returns ``module``. Other norms are an error.
    ``alone``: the same arithmetic on this process's batch only, no collective (what N
    processes compute, in one: the reference the tests compare them with)."""
    for name, child in module.named_modules():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = GlobalBatchNorm2d
            child.alone = alone
        elif isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm2d):
            raise UserError(f"--sync-bn handles BatchNorm2d only, and {name!r} is a {type(child).__name__}")
    return module


def broadcast_state(module: Any, d: Dist, params: bool = True) -> None:
    """Copy rank 0's buffers (and parameters) to every rank."""
    if not d.enabled:
        return

    tensors = list(module.buffers()) + (list(module.parameters()) if params else [])
    for t in tensors:
        dist.broadcast(t.data, src=0)


def all_reduce_sum_(flat: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum ``flat`` over the processes, in place (one collective, no host sync); returns it."""
    if d.enabled:
        dist.all_reduce(flat)
    return flat


def all_reduce_max(value: Any, d: Dist) -> Any:
    if d.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def all_reduce_mean(values: dict[str, Any], d: Dist) -> dict[str, Any]:
    if d.enabled:
        for v in values.values():
            dist.all_reduce(v)
            v.div_(d.world_size)
    return values


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj``, as a list indexed by rank (on every rank)."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def max_param_difference(module: Any, d: Dist) -> float:
    """Largest absolute difference of any parameter between rank 0 and another rank."""
    return max_difference(list(module.parameters()), d)


def max_difference(tensors: list[torch.Tensor], d: Dist) -> float:
    """Largest absolute difference of any element of ``tensors`` between rank 0 and another
    rank (a collective). NaN on both ranks counts as equal, NaN on one as ``inf``."""
    if not d.enabled or not tensors:
        return 0.0
    flat = torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors])
    copies = gather(flat, d)
    worst = 0.0
    for c in copies:
        nan_c, nan_0 = torch.isnan(c), torch.isnan(copies[0])
        diff = torch.where(nan_c | nan_0, torch.zeros_like(c), (c - copies[0]).abs())
        diff = torch.where(nan_c ^ nan_0, torch.full_like(c, math.inf), diff)
        worst = max(worst, float(diff.max()))
    return worst


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
