"""The share of a multi-process training step spent in collectives (communication, and waiting
for the slower process there), under torchrun:

    torchrun --standalone --nproc_per_node 2 benchmarks/comm_share.py --method ciard \\
        --student resnet18_tiny --batch-size 64 --steps 10 --device cpu

Each process runs the engine's own :func:`ciard_bench.train.train_step` on its shard of a
random global batch (``--batch-size`` is global) with random teachers, after 2 warm-up steps;
every ``torch.distributed`` collective is timed (the gradient all-reduce, the methods'
global statistics, ``--sync-bn``'s batch-norm sums, the BN-buffer broadcast). Rank 0 prints
the mean step time and the share in collectives per rank. On a GPU pass ``--device cuda``
(each process then synchronises the device around each collective, so the share includes
the kernels queued before it; an upper bound).
"""
from __future__ import annotations

import argparse
import functools
import json
import time

import torch
import torch.distributed as dist

from ciard_bench.config import TrainConfig, resolve
from ciard_bench.methods import Context, create_method, get_method
from ciard_bench.models import create_model
from ciard_bench.distributed import global_batch_norm, setup, teardown
from ciard_bench.train import Run, train_step

TIMED = ("all_reduce", "broadcast", "all_gather_object", "barrier")


def _timed(spent: list[float], sync: bool, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if sync:
            torch.cuda.synchronize()
        spent[0] += time.perf_counter() - t0
        return out
    return wrapper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="ciard")
    p.add_argument("--student", default="resnet18_tiny")
    p.add_argument("--teacher", default="resnet8")
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    d, device_name = setup(args.device)
    device = torch.device(device_name)
    torch.manual_seed(0)
    cfg = resolve(TrainConfig(method=args.method, student=args.student, batch_size=args.batch_size,
                              device=args.device, sync_bn=args.sync_bn))
    student = create_model(args.student, num_classes=10)
    teachers = {r: create_model(args.teacher, num_classes=10) for r in get_method(args.method).teachers}
    if args.sync_bn and d.enabled:
        for model in (student, *teachers.values()):
            global_batch_norm(model)
    method = create_method(args.method, student, teachers, Context(num_classes=10, epochs=300, dist=d),
                           cfg.method_options).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    run = Run(cfg, device, None, method, optimizer, {}, torch.amp.GradScaler(device.type, enabled=False),
              None, None)
    method.begin_epoch(1)
    method.train()
    spent = [0.0]
    for name in TIMED:
        setattr(dist, name, _timed(spent, device.type == "cuda", getattr(dist, name)))
    b = args.batch_size // d.world_size
    g = torch.Generator().manual_seed(1 + d.rank)
    x = torch.rand(b, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (b,), generator=g).to(device)
    for _ in range(2):
        train_step(run, x, y, [], d)
    spent[0] = 0.0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step(run, x, y, [], d)
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    shares = [None] * d.world_size
    dist.all_gather_object(shares, {"step_s": total / args.steps, "collective_share": spent[0] / total})
    if d.is_main:
        print(json.dumps({"method": args.method, "student": args.student, "processes": d.world_size,
                          "global_batch": args.batch_size, "sync_bn": args.sync_bn,
                          "device": str(device), "threads": torch.get_num_threads(),
                          "per_rank": shares}, indent=1))
    teardown(d)


if __name__ == "__main__":
    main()
