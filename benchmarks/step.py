"""Time one training step of a method: ms/step, images/s, peak memory, passes, FLOPs, FLOP/s.

    python benchmarks/step.py --method ciard --reference released --student resnet18 \\
        --clean-teacher-arch resnet56 --robust-teacher-arch wrn_34_10 --batch-size 16 --device cpu

The step is the training engine's own :func:`ciard_bench.train.train_step`: the method's
forward under autocast, the student's backward and SGD step through the GradScaler, then the
step of any teacher the method trains (CIARD's ITT). Weights are random and inputs are random
CIFAR-shaped images: the speed does not depend on them. The first warm-up step runs with
hooks on every model that count forward and backward passes; the timed steps run without.
With ``--reference released`` (CIARD only) the released code's step structure
(``benchmarks/released_step.py``) runs beside it from deep copies of the same initial
weights, on the same inputs with the same seed per step, alternating the order each repeat.
Both then restart every step from one snapshot of the weights, BatchNorm statistics and
adaptive state (outside the timer; optimiser momentum is kept), so the losses of every step
are compared from identical states: otherwise float rounding (a masked sum against boolean
indexing) flips a few signs in the next step's PGD and the runs drift apart at ~1e-4.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ciard_bench.config import TrainConfig
from ciard_bench.errors import cli_main
from ciard_bench.methods import Context, create_method, get_method
from ciard_bench.models import count_flops, create_model
from ciard_bench.train import Run, train_step
from ciard_bench.utils import resolve_device

if __package__:
    from . import _common as C
    from ._common import PassCounter
    from .released_step import ReleasedCIARDStep
else:
    import _common as C
    from _common import PassCounter
    from released_step import ReleasedCIARDStep

LOSS_RTOL = {"none": 1e-5, "bf16": 2e-2, "fp16": 1e-2}


@dataclass
class Variant:
    """One way of running the step: a forward (the method, or the released structure)."""
    name: str
    forward: Callable[..., dict]
    models: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    trainings: list
    teacher_opts: dict
    scaler: Any
    times: list = field(default_factory=list)
    cpu_times: list = field(default_factory=list)
    memory: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    passes: dict = field(default_factory=dict)


def engine_step(v: Variant, x, y, amp: str) -> dict:
    """One step: the training engine's own ``train_step`` on this variant's forward."""
    run = Run(cfg=TrainConfig(amp=amp), device=x.device, data=None, method=v.forward,
              optimizer=v.optimizer, teacher_optimizers=v.teacher_opts, scaler=v.scaler,
              x_test=None, y_test=None)
    return train_step(run, x, y, v.trainings)


def _optimizers(method, forward_owner, epoch: int) -> tuple:
    d = method.train_defaults
    opt = torch.optim.SGD(method.student.parameters(), lr=d.get("lr", 0.1),
                          momentum=d.get("momentum", 0.9), weight_decay=d.get("weight_decay", 0.0))
    trainings = forward_owner.teacher_trainings()
    topts = {t.name: torch.optim.SGD(getattr(method, t.name).parameters(), lr=t.lr_at(epoch),
                                     momentum=t.momentum, weight_decay=t.weight_decay)
             for t in trainings}
    return opt, trainings, topts


def build(args, device: torch.device) -> tuple[list[Variant], dict[str, float]]:
    cls = get_method(args.method)
    archs = {"clean_teacher": args.clean_teacher_arch, "robust_teacher": args.robust_teacher_arch}
    missing = [r for r in cls.teachers if not archs[r]]
    if missing:
        raise SystemExit(f"error: method {args.method!r} needs --{missing[0].replace('_', '-')}-arch")
    torch.manual_seed(args.seed)
    student = create_model(args.student, num_classes=args.num_classes)
    teachers = {r: create_model(archs[r], num_classes=args.num_classes) for r in cls.teachers}
    flops = {"student": count_flops(student, (1, 3, args.image_size, args.image_size))}
    flops.update({r: count_flops(t, (1, 3, args.image_size, args.image_size)) for r, t in teachers.items()})
    ctx = Context(num_classes=args.num_classes, epochs=args.epochs)
    method = create_method(args.method, student, teachers, ctx, dict(args.opt)).to(device)
    if args.channels_last:
        method.to(memory_format=torch.channels_last)
    ref = copy.deepcopy(method) if args.reference == "released" else None   # same initial weights
    method.begin_epoch(args.epoch)
    method.train()
    opt, trainings, topts = _optimizers(method, method, args.epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    models = {"student": method.student, **{r: getattr(method, r) for r in cls.teachers}}
    variants = [Variant("ours", method, models, opt, trainings, topts, scaler)]
    if ref is not None:
        released = ReleasedCIARDStep(ref)
        released.begin_epoch(args.epoch)
        ref.train()
        opt, trainings, topts = _optimizers(ref, released, args.epoch)
        variants.append(Variant("released", released, released.models(), opt, trainings, topts,
                                torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")))
    return variants, flops


def _values(out: dict) -> dict[str, float]:
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()
            if not k.startswith("_")}


def run(args) -> dict:
    device = resolve_device(args.device)
    if args.amp != "none" and device.type != "cuda":
        raise SystemExit(f"error: --amp {args.amp} needs a CUDA device (as the training engine)")
    if args.threads is None and device.type == "cpu":
        args.threads = 1     # see --threads: reproducible on a shared CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    load = C.load_average()
    if device.type == "cpu" and torch.get_num_threads() > 1 and load and load[0] > 0.5:
        print(f"warning: load average {load} with {torch.get_num_threads()} threads: OpenMP threads "
              "stall when other processes share the cores (here up to 5x slower than --threads 1)",
              file=sys.stderr)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    peaks = [] if args.count_only else [C.matmul_peak(device)]
    variants, flops = build(args, device)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    snapshot = copy.deepcopy(variants[0].forward.state_dict()) if len(variants) > 1 else None

    def step(v: Variant, i: int, timed: bool) -> None:
        if snapshot is not None:                  # every step from the same state (see above)
            owner = v.forward if isinstance(v.forward, nn.Module) else v.forward.method
            owner.load_state_dict(snapshot)
            if hasattr(v.forward, "reset"):
                v.forward.reset()
        torch.manual_seed(args.seed + i)          # same PGD noise for every variant
        if timed:
            with C.MemoryMeter(device) as mem:
                out, dt, cpu = C.timed(lambda: engine_step(v, x, y, args.amp), device)
            v.times.append(dt)
            v.cpu_times.append(cpu)
            v.memory.append(mem.result())
        else:
            out = engine_step(v, x, y, args.amp)
        v.losses.append(_values(out))

    for v in variants:                            # step 0: count passes (untimed, uncompiled)
        counter = PassCounter(v.models)
        step(v, 0, timed=False)
        counter.remove()
        v.passes = {r: {k: c[k] / args.batch_size for k in ("forward", "graph", "backward_full",
                                                            "backward_input")}
                    for r, c in counter.counts.items()}
        if args.compile:
            for m in v.models.values():
                m.compile()
    if args.count_only:
        return report(args, device, variants, flops, peaks)
    first = max(args.warmup, 2 if args.compile else 1)    # compiling needs a warm-up step
    for i in range(1, first):
        for v in variants:
            step(v, i, timed=False)
    for r in range(args.repeats):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            step(v, first + r, timed=True)
    peaks.append(C.matmul_peak(device))
    return report(args, device, variants, flops, peaks)


def report(args, device, variants: list[Variant], flops: dict, peaks: list) -> dict:
    peak = max((p["gflops"] for p in peaks), default=float("nan"))
    result = {"config": vars(args), "machine": C.machine(device), "accounting": C.ACCOUNTING + " Passes are in batches (images / batch size).",
              "forward_gflop_per_image": {r: f / 1e9 for r, f in flops.items()},
              "matmul_peak": peaks, "peak_gflops": peak, "variants": {}}
    for v in variants:
        gflop = sum(flops[r] * args.batch_size * C.forward_equivalents(p) for r, p in v.passes.items()) / 1e9
        t = C.median(v.times)
        result["variants"][v.name] = {
            "ms_per_step": 1e3 * t, "times_s": v.times, "images_per_s": args.batch_size / t,
            "cpu_s_per_step": C.median(v.cpu_times), "cpu_times_s": v.cpu_times,
            "memory": {"peak_mb": C.median([m["peak_mb"] for m in v.memory]),
                       "step_increase_mb": C.median([m["step_increase_mb"] for m in v.memory]),
                       "kind": v.memory[0]["kind"] if v.memory else None,
                       "process_max_rss_mb": C.max_rss_mb()},
            "passes": v.passes, "gflop_per_step": gflop, "gflop_per_image": gflop / args.batch_size,
            "achieved_gflops": gflop / t, "fraction_of_matmul_peak": gflop / t / peak,
            "losses": v.losses}
    if len(variants) == 2 and not args.count_only:
        ours, rel = (result["variants"][k] for k in ("ours", "released"))
        bound = rel["gflop_per_step"] / ours["gflop_per_step"]
        paired = [r / o for r, o in zip(rel["times_s"], ours["times_s"])]
        paired_cpu = [r / o for r, o in zip(rel["cpu_times_s"], ours["cpu_times_s"])]
        speedup = C.median(paired)       # each pair ran back to back: load drift cancels
        diffs = {}
        for a, b in zip(ours["losses"], rel["losses"]):
            for k in set(a) & set(b):
                d = abs(a[k] - b[k]) / max(abs(a[k]), abs(b[k]), 1e-12)
                diffs[k] = max(diffs.get(k, 0.0), d if abs(a[k] - b[k]) > 1e-9 else 0.0)
        rtol = LOSS_RTOL[args.amp]
        result["comparison"] = {
            "speedup": speedup, "flop_bound": bound, "fraction_of_bound": speedup / bound,
            "meets_95_percent_of_bound": speedup >= 0.95 * bound,
            "speedup_definition": "median over repeats of released/ours wall time, each repeat "
                                  "running the two back to back in alternating order",
            "per_repeat_speedup": paired,
            "ratio_of_median_times": rel["ms_per_step"] / ours["ms_per_step"],
            "cpu_time_speedup": C.median(paired_cpu), "per_repeat_cpu_speedup": paired_cpu,
            "loss_max_rel_diff": diffs, "loss_rtol": rtol,
            "losses_agree": all(d <= rtol for d in diffs.values()) and "loss" in diffs}
    return result


def print_report(res: dict) -> None:
    a = res["config"]
    print(f"method {a['method']}, student {a['student']}, clean teacher {a['clean_teacher_arch']}, "
          f"robust teacher {a['robust_teacher_arch']}, batch {a['batch_size']}, epoch {a['epoch']}/"
          f"{a['epochs']}, device {a['device']}, amp {a['amp']}, torch {res['machine']['torch']}, "
          f"{res['machine']['torch_threads']} threads, load average {res['machine']['load_average']}")
    if res["matmul_peak"]:
        print(f"matmul peak ({res['matmul_peak'][0]['dtype']}): " + ", ".join(
            f"{p['gflops']:.1f} GFLOP/s (load {p['load_average']})" for p in res["matmul_peak"]))
    rows = [[n, v["ms_per_step"], v["cpu_s_per_step"], v["images_per_s"], v["memory"]["peak_mb"],
             v["memory"]["step_increase_mb"],
             v["gflop_per_step"], v["gflop_per_image"], v["achieved_gflops"], 100 * v["fraction_of_matmul_peak"]]
            for n, v in res["variants"].items()]
    print(C.table(rows, ["step", "ms/step", "CPU s/step", "img/s", "peak MB", "step +MB", "GFLOP/step", "GFLOP/img",
                         "GFLOP/s", "% peak"]))
    rows = [[f"{n}:{r}", p["forward"], p["graph"], p["backward_full"], p["backward_input"],
             p["graph"] - p["backward_full"] - p["backward_input"], res["forward_gflop_per_image"][r]]
            for n, v in res["variants"].items() for r, p in v["passes"].items()]
    print(C.table(rows, ["passes (batches)", "fwd", "fwd w/ graph", "bwd full", "bwd input-only",
                         "graphs unused", "fwd GFLOP/img"]))
    print("accounting:", res["accounting"])
    cmp = res.get("comparison")
    if cmp:
        print(f"speedup released/ours {cmp['speedup']:.3f}x = median of the paired repeats "
              f"({', '.join(f'{s:.3f}' for s in cmp['per_repeat_speedup'])}; ratio of median times "
              f"{cmp['ratio_of_median_times']:.3f}x); FLOP bound {cmp['flop_bound']:.3f}x; "
              f"{100 * cmp['fraction_of_bound']:.1f} % of the bound (>= 95 %: "
              f"{'yes' if cmp['meets_95_percent_of_bound'] else 'NO'})")
        print(f"CPU-time speedup {cmp['cpu_time_speedup']:.3f}x ({100 * cmp['cpu_time_speedup'] / cmp['flop_bound']:.1f}"
              f" % of the bound; per repeat {', '.join(f'{s:.3f}' for s in cmp['per_repeat_cpu_speedup'])}): "
              "robust to other processes with --threads 1")
        print(f"losses agree (rtol {cmp['loss_rtol']:g}): {cmp['losses_agree']}; max rel diff "
              + ", ".join(f"{k} {d:.1e}" for k, d in sorted(cmp["loss_max_rel_diff"].items())))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default in (("method", "ciard"), ("student", "resnet18"), ("device", "cpu"),
                          ("clean-teacher-arch", "resnet56"), ("robust-teacher-arch", "wrn_34_10")):
        p.add_argument(f"--{flag}", default=default)
    for flag, default in (("num-classes", 10), ("image-size", 32), ("batch-size", 16), ("seed", 0)):
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    for flag in ("channels-last", "compile", "cudnn-benchmark"):   # as the engine's flags
        p.add_argument(f"--{flag}", action="store_true")
    p.add_argument("--epochs", type=int, default=None, help="run length (default: the method's)")
    p.add_argument("--epoch", type=int, default=None,
                   help="which epoch's regime (default 100, during CIARD's ITT; 10 is before it)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. --opt itt=false (value parsed as JSON when it can be)")
    p.add_argument("--reference", choices=("released",), default=None,
                   help="also run the released CIARD step structure (CIARD only)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps (the first counts passes)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per variant (median)")
    p.add_argument("--count-only", action="store_true",
                   help="only the counting step: passes and FLOPs, no timing (e.g. --batch-size 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default on CPU: 1; with 2 threads on this shared 2-core "
                        "machine other processes' load stalled OpenMP up to 5x; on CUDA: torch's)")
    p.add_argument("--out", default=None, metavar="JSON")
    return p


def _option(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    args.opt = [_option(o) for o in args.opt]
    args.epochs = args.epochs or get_method(args.method).train_defaults.get("epochs", 300)
    args.epoch = args.epoch or min(100, args.epochs)
    if args.reference and args.method != "ciard":
        raise SystemExit("error: --reference released exists for --method ciard only")
    args.warmup = max(1, args.warmup)
    res = run(args)
    print_report(res)
    C.write_json(args.out, res)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; a ``UserError`` (bad model, option, device) prints one line, exit 2."""
    return cli_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
