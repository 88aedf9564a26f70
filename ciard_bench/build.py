"""Building a training run (data, models, method, optimisers) and its per-epoch evaluation.

Split from :mod:`ciard_bench.train` so that the engine's loop reads top to bottom.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch

from . import plugins
from .attacks import accuracy
from .config import TrainConfig, localize
from .data import load_dataset, make_loader, to_float_nchw
from .distributed import Dist, broadcast_state, global_batch_norm
from .errors import UserError
from .faults import kill_point
from .methods import Context, create_method, get_method
from .models import create_model, load_teacher
from .utils import eval_mode, recompute_batch_norm


def autocast(cfg: TrainConfig, device):
    """The step's autocast context: none, or bf16/fp16 on ``device`` (``cfg.amp``)."""
    if cfg.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclasses.dataclass
class Run:
    cfg: TrainConfig
    device: Any
    data: Any
    method: Any
    optimizer: Any
    teacher_optimizers: dict
    scaler: Any
    x_test: Any
    y_test: Any


def build(cfg: TrainConfig, device, d: Dist = Dist(), results: Any = None) -> Run:
    """Data, student, teachers, method and optimisers for a resolved config; ``d``: the
    processes of a torchrun run, over which the method reduces its statistics; ``results``:
    the results folder of a grid cell's config (its ``results:`` paths,
    :func:`~ciard_bench.config.localize`). The run keeps ``cfg`` as given (what it records)."""
    here = localize(cfg, results)
    data = load_dataset(here.dataset, root=cfg.data_root, download=cfg.download,
                        n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed)
    student = create_model(cfg.student, num_classes=data.num_classes, **cfg.student_kwargs)
    check_logits(student, cfg.student, data)
    teachers = {}
    for role in get_method(cfg.method).teachers:
        spec = getattr(here, role)
        if spec is None:
            raise UserError(f"method {cfg.method!r} needs --{role.replace('_', '-')} "
                            "(PATH | ARCH=PATH | rb:NAME; train one with python -m ciard_bench.teachers train)")
        teachers[role] = load_teacher(spec, dataset=cfg.dataset, num_classes=data.num_classes,
                                      model_dir=here.teacher_model_dir, device="cpu")
    ctx = Context(num_classes=data.num_classes, epochs=cfg.epochs, eps=cfg.eps, alpha=cfg.alpha,
                  steps=cfg.attack_steps, dist=d)
    if cfg.sync_bn and d.enabled:   # every model: a teacher in train mode (ITT) normalises too
        for model in (student, *teachers.values()):
            global_batch_norm(model)
    method = create_method(cfg.method, student, teachers, ctx, cfg.method_options).to(device)
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    if cfg.compile:
        for module in [method.student, *(getattr(method, r) for r in get_method(cfg.method).teachers)]:
            module.compile()
    optimizer = torch.optim.SGD(method.student.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    teacher_optimizers = {
        t.name: torch.optim.SGD(getattr(method, t.name).parameters(), lr=0.0, momentum=t.momentum,
                                weight_decay=t.weight_decay)
        for t in method.teacher_trainings()}
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    x_test = to_float_nchw(data.x_test).to(device)
    return Run(cfg, device, data, method, optimizer, teacher_optimizers, scaler, x_test,
               data.y_test.to(device))


def check_logits(model: torch.nn.Module, name: str, data: Any) -> None:
    """A model must map the dataset's images to ``[batch, classes]`` logits: checked once, on
    two test images in eval mode (no statistics or random state change), before training."""
    x = to_float_nchw(data.x_test[:2])
    with torch.no_grad(), eval_mode(model):
        out = model(x)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), data.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model {name!r} ({plugins.describe('model', name)}) returned {got} for "
                        f"{len(x)} images of {data.name} ({tuple(x.shape[1:])}); accepted: "
                        f"[batch, {data.num_classes}] logits")


def evaluate_epoch(run: Run, epoch: int) -> dict[str, float]:
    kill_point("eval")
    cfg, seed = run.cfg, run.cfg.seed * 100003 + epoch
    models = {"student": run.method.evaluated_student()}
    if cfg.eval_teachers:
        models.update({r: getattr(run.method, r) for r in run.method.teachers})
    metrics = {}
    for who, model in models.items():
        prefix = "" if who == "student" else f"{who}_"
        clean = accuracy(model, run.x_test, run.y_test, cfg.eval_batch_size)
        robust = accuracy(model, run.x_test, run.y_test, cfg.eval_batch_size, "pgd_trades", cfg.eps, seed)
        metrics.update({f"{prefix}clean_acc": clean, f"{prefix}pgd_trades_acc": robust,
                        f"{prefix}wr": (clean + robust) / 2})
    return metrics


def refresh_batch_norm(run: Run, models: list, train_ds: Any, epoch: int, d: Dist) -> None:
    """The BatchNorm statistics of ``models`` (``Method.batch_norm_refresh``) recomputed by one
    pass over the training data after epoch ``epoch``: its own order and augmentation (the
    stream of "epoch" -epoch, unrelated to every training epoch's), no draw from the global
    random generators, so the training that follows is unchanged. Under torchrun each rank
    passes its shard; rank 0's statistics are kept, as the student's after each step."""
    cfg = run.cfg
    loader = make_loader(train_ds, cfg.batch_size // d.world_size, shuffle=True, seed=cfg.seed,
                         epoch=-epoch, rank=d.rank, world_size=d.world_size, device=run.device,
                         num_workers=cfg.num_workers)
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for model in models:
        batches = (x.to(run.device, non_blocking=True).contiguous(memory_format=memory)
                   for x, _ in loader)
        recompute_batch_norm(model, batches)
        broadcast_state(model, d, params=False)
