"""GPU check: the CIARD training step and the evaluation attacks, in one command (<= 8 min).

    python benchmarks/gpu_check.py --device cuda --out gpu_check.json
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check.json   # the suite's

For each student (ResNet-18, ResNet-56, WRN-34-10; the paper's CIFAR-10 teachers ResNet-56
and WRN-34-10, CIARD during ITT) the engine's own step (:func:`ciard_bench.train.train_step`
through ``benchmarks/step.py``) runs at batch 128 in four configurations, each from the same
initial weights, inputs and per-step seeds: fp32, bf16 AMP, + channels_last, + torch.compile.
It reports images/s, peak memory (``torch.cuda.max_memory_allocated``), FLOPs per step
(``torch.utils.flop_counter``'s formulas on every operator of one whole step: forwards,
PGD's input gradients, backwards; no depthwise convolutions here, whose backward the
counter overstates), achieved TFLOP/s against the device's datasheet peak, and each step's loss
against fp32's (step 1 starts from identical states, later steps also carry the drift of
the earlier ones). The released step structure (``benchmarks/released_step.py``) runs
beside ours in fp32 and bf16. Then every evaluation attack's images/s through
``ciard_bench.evaluate.evaluate`` (``benchmarks/evaluate.py``). On CUDA one step per
variant also runs under ``torch.cuda.set_sync_debug_mode("warn")`` and the host syncs it
makes are counted. Timed loops hold no host sync: the device is synchronised only before
and after each loop, and the losses are read after it.

``--tiny``: stand-in models (resnet18_tiny, resnet8, wrn_10_2), batch 8, one warm-up and one
timed step (after one warm-up where compiling), a few attacked images and no AutoAttack; on
CPU torch.compile uses the ``eager`` backend (TorchDynamo's graph capture, guards and
recompiles, without code generation): measured for the ResNet-18 stand-in under load 7 on
this project's 2 cores, ``eager`` compiled in 10 s, ``aot_eager`` in 43 s and inductor
(C++ code generation) longer than the rest of the check together.
"""
from __future__ import annotations

import argparse
import gc
import math
import re
import sys
import time
import warnings
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

if __package__:
    from . import _common as C
    from .evaluate import per_attack
    from .step import _values, build, engine_step
else:
    import _common as C
    from evaluate import per_attack
    from step import _values, build, engine_step

# Dense (no sparsity) peaks in TFLOP/s from NVIDIA's datasheets (boost clock), matched on
# torch.cuda.get_device_name, most specific first. "tf32" is the rate fp32 convolutions run
# at (cuDNN allows TF32 by default), "fp32" that of the CUDA cores.
PEAKS = ((r"H200 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
         (r"H200", {"bf16": 989.5, "tf32": 494.5, "fp32": 67.0}),
         (r"H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
         (r"H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
         (r"H100", {"bf16": 989.5, "tf32": 494.5, "fp32": 67.0}),
         (r"A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
         (r"L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
         (r"L4\b", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}))
CONFIGS = {"fp32": ("none", False, False), "bf16": ("bf16", False, False),
           "bf16+channels_last": ("bf16", True, False),
           "bf16+channels_last+compile": ("bf16", True, True)}      # amp, channels_last, compile
FULL = {"students": ("resnet18", "resnet56", "wrn_34_10"), "clean": "resnet56",
        "robust": "wrn_34_10", "batch": 128, "warmup": 2, "steps": 5, "attack_n": 1024,
        "aa_n": 128, "attack_model": "resnet18"}
# --tiny: no warm-up step but compile's (its first call compiles); no AutoAttack (a random
# tiny model predicting one class is "robust" on those points, so AutoAttack runs all of its
# ~10,000 forward-equivalents per point: 40 s per image on one core)
TINY = {"students": ("resnet18_tiny", "resnet8", "wrn_10_2"), "clean": "resnet8",
        "robust": "wrn_10_2", "batch": 8, "warmup": 0, "steps": 1, "attack_n": 8, "aa_n": 0,
        "attack_model": "resnet18_tiny"}
ATTACKS = ("fgsm", "pgd_sat", "pgd_trades", "cw_inf", "square", "aa")


def device_peaks(device: torch.device) -> dict[str, Any]:
    """The datasheet peaks of this device, or ``{"name": ..., "known": False}``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for pattern, peaks in PEAKS:
        if re.search(pattern, name):
            return {"name": name, "known": True, "match": pattern, **peaks}
    return {"name": name, "known": False}


def _step_args(args, plan: dict, student: str, amp: str, channels_last: bool,
               released: bool) -> SimpleNamespace:
    """What ``step.build`` reads (as its own argparse namespace)."""
    return SimpleNamespace(method="ciard", student=student, clean_teacher_arch=plan["clean"],
                           robust_teacher_arch=plan["robust"], num_classes=10, image_size=32,
                           seed=args.seed, epochs=300, epoch=100, opt=[], amp=amp,
                           channels_last=channels_last,
                           reference="released" if released else None)


def _inputs(args, plan: dict, device: torch.device, channels_last: bool):
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(plan["batch"], 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (plan["batch"],), generator=g).to(device)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


class StepFlops(TorchDispatchMode):
    """FLOPs of every operator run inside, with ``torch.utils.flop_counter``'s own formulas
    (its ``flop_registry``). ``FlopCounterMode`` itself cannot count this step: its module
    tracker hooks the models' inputs and fails inside PGD's ``autograd.grad`` on a leaf
    (torch 2.14: "A leaf node was passed to _will_engine_execute_node")."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_step_flops(args, plan: dict, student: str, device: torch.device) -> dict[str, float]:
    """FLOPs of one whole step of ours and of the released structure (fp32, eager)."""
    variants, _ = build(_step_args(args, plan, student, "none", False, True), device)
    x, y = _inputs(args, plan, device, False)
    flops = {}
    for v in variants:
        torch.manual_seed(args.seed)
        with StepFlops() as counter:
            engine_step(v, x, y, "none")
        flops[v.name] = float(counter.total)
    return flops


def _host_syncs(v, x, y, amp: str, device: torch.device, seed: int) -> int | None:
    """Synchronising calls one step makes (CUDA's sync debug mode), untimed."""
    if device.type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.manual_seed(seed)
            engine_step(v, x, y, amp)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def run_config(args, plan: dict, student: str, name: str, device: torch.device) -> dict:
    """One configuration: warm-up, one timed loop per variant (no host sync inside), losses
    read after it."""
    amp, channels_last, compiled = CONFIGS[name]
    released = name in ("fp32", "bf16")
    variants, _ = build(_step_args(args, plan, student, amp, channels_last, released), device)
    x, y = _inputs(args, plan, device, channels_last)
    if compiled:
        for m in variants[0].models.values():
            m.compile(backend=args.compile_backend)
    out = {}
    for v in variants:
        step = 0
        losses = []
        start = time.perf_counter()
        for _ in range(max(plan["warmup"], 1 if compiled else 0)):
            torch.manual_seed(args.seed + step)
            losses.append(_values(engine_step(v, x, y, amp)))
            step += 1
        warm_s = time.perf_counter() - start
        timed = []
        with C.MemoryMeter(device) as mem:
            C.sync(device)
            start = time.perf_counter()
            for _ in range(plan["steps"]):
                torch.manual_seed(args.seed + step)
                result = engine_step(v, x, y, amp)
                timed.append({k: t.detach() for k, t in result.items()
                              if not k.startswith("_") and torch.is_tensor(t)})
                step += 1
            C.sync(device)
            seconds = time.perf_counter() - start
        losses += [_values(t) for t in timed]
        syncs = _host_syncs(v, x, y, amp, device, args.seed + step)     # after the timing
        out[v.name] = {"seconds": seconds, "steps": plan["steps"], "warmup_s": warm_s,
                       "images_per_s": plan["batch"] * plan["steps"] / seconds,
                       "ms_per_step": 1e3 * seconds / plan["steps"],
                       "peak_memory_mb": mem.result()["peak_mb"], "memory_kind": mem.result()["kind"],
                       "host_syncs_per_step": syncs, "losses": losses}
    del variants
    _release(device, compiled)
    return out


def _release(device: torch.device, compiled: bool) -> None:
    gc.collect()
    if compiled:
        torch.compiler.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def finish_student(res: dict, peaks: dict) -> None:
    """Per variant: TFLOP/s, fraction of the peak, loss against fp32 (same variant)."""
    for name, variants in res["configs"].items():
        if "skipped" in variants:
            continue
        kind = "bf16" if CONFIGS[name][0] == "bf16" else (
            "tf32" if torch.backends.cudnn.allow_tf32 else "fp32")
        for vname, v in variants.items():
            flops = res["flops_per_step"][vname]
            v["tflop_per_step"] = flops / 1e12
            v["achieved_tflops"] = flops * v["steps"] / v["seconds"] / 1e12
            v["peak_kind"] = kind
            v["peak_tflops"] = peaks.get(kind)
            v["fraction_of_peak"] = v["achieved_tflops"] / peaks[kind] if peaks["known"] else None
            fp32 = res["configs"]["fp32"]
            ref = fp32.get(vname, fp32.get("ours"))      # the released step against its own fp32
            diffs = [_rel(a["loss"], b["loss"]) for a, b in zip(v["losses"], ref["losses"])] \
                if ref else []
            v["loss_rel_diff_vs_fp32"] = {"first_step": diffs[0], "max": max(diffs),
                                          "per_step": diffs} if diffs else None
            if vname != "ours":   # the released structure computes the same losses as ours
                same = [_rel(a["loss"], b["loss"]) for a, b in zip(v["losses"],
                                                                   variants["ours"]["losses"])]
                v["loss_rel_diff_vs_ours"] = {"first_step": same[0], "max": max(same)}


def _over(args, start: float, expected: float = 0.0) -> bool:
    return time.perf_counter() - start + expected > args.budget_s


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device here")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cudnn.benchmark = True      # as a GPU user runs (--cudnn-benchmark)
    plan = TINY if args.tiny else FULL
    if args.students:
        plan = {**plan, "students": tuple(args.students.split(","))}
    if args.compile_backend is None:
        args.compile_backend = "eager" if device.type == "cpu" else "inductor"
    start = time.perf_counter()
    peaks = device_peaks(device)
    result = {"config": vars(args), "plan": plan, "machine": C.machine(device), "peaks": peaks,
              "students": {}, "attacks": [], "skipped": []}
    if device.type == "cuda":                      # this device's practical dense peaks
        result["matmul_peak"] = {str(dt): C.matmul_peak(device, dt, seconds=1.0)
                                 for dt in (torch.float32, torch.bfloat16)}
    took: dict[str, float] = {}
    for i, student in enumerate(plan["students"]):
        res = result["students"][student] = {
            "flops_per_step": count_step_flops(args, plan, student, device), "configs": {}}
        for name in CONFIGS:
            # not started when the budget is spent, or would be by what this configuration
            # took for the previous student (compiling a bigger model takes no less)
            if _over(args, start, took.get(name, 0.0)):
                res["configs"][name] = {"skipped": f"time budget {args.budget_s:g} s"}
                result["skipped"].append(f"{student} {name}")
                continue
            begun = time.perf_counter()
            res["configs"][name] = run_config(args, plan, student, name, device)
            took[name] = time.perf_counter() - begun
            print(f"  {student} {name}: {took[name]:.0f} s (total {time.perf_counter() - start:.0f} s)",
                  file=sys.stderr)
        finish_student(res, peaks)
        if i == 0:                                 # attacks after the paper's student
            result["attacks"] = attacks(args, plan, device, start, result["skipped"])
    result["wall_s"] = time.perf_counter() - start
    return result


def attacks(args, plan: dict, device: torch.device, start: float, skipped: list) -> list[dict]:
    """Each evaluation attack alone through ``evaluate()`` on random images and weights."""
    from ciard_bench.models import count_flops, create_model

    if _over(args, start):
        skipped.append("attacks")
        return []
    torch.manual_seed(args.seed)
    model = create_model(plan["attack_model"], num_classes=10).to(device).eval()
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(plan["attack_n"], 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (plan["attack_n"],), generator=g)
    names = [a for a in ATTACKS if a != "aa" or plan["aa_n"]]
    ns = SimpleNamespace(attacks=",".join(names), aa_examples=plan["aa_n"], seed=args.seed,
                         batch_size=min(512, plan["attack_n"]))
    rows = per_attack(model, x, y, ns, device, count_flops(model) / 1e9)
    for r in rows:
        r["images_per_s"] = r["n_attacked"] / r["attack_time_s"]
    _release(device, False)
    return rows


def print_report(res: dict) -> None:
    m, p = res["machine"], res["peaks"]
    print(f"gpu_check: device {m['device']} ({p['name']}), torch {m['torch']}, peaks "
          + (", ".join(f"{k} {p[k]:g}" for k in ("bf16", "tf32", "fp32")) + " TFLOP/s (datasheet, dense)"
             if p["known"] else "unknown") + f", load {m['load_average']}")
    for dt, mm in res.get("matmul_peak", {}).items():
        print(f"measured matmul peak {dt}: {mm['gflops'] / 1e3:.1f} TFLOP/s")
    rows = []
    for student, s in res["students"].items():
        for name, variants in s["configs"].items():
            if "skipped" in variants:
                rows.append([student, name, "-", "skipped: " + variants["skipped"]] + [""] * 7)
                continue
            for vname, v in variants.items():
                d = v["loss_rel_diff_vs_fp32"] or {"first_step": math.nan, "max": math.nan}
                frac = v["fraction_of_peak"]
                rows.append([student, name, vname, v["images_per_s"], v["ms_per_step"],
                             v["peak_memory_mb"], v["tflop_per_step"], v["achieved_tflops"],
                             f"{100 * frac:.1f} ({v['peak_kind']})" if frac is not None else "unknown",
                             f"{d['first_step']:.1e} / {d['max']:.1e}",
                             "-" if v["host_syncs_per_step"] is None else str(v["host_syncs_per_step"])])
    print(C.table(rows, ["student", "config", "step", "img/s", "ms/step", "peak MB", "TFLOP/step",
                         "TFLOP/s", "% peak", "loss vs fp32 (1st/max)", "syncs/step"]))
    for student, s in res["students"].items():
        for name, variants in s["configs"].items():
            if "released" in variants:
                d = variants["released"]["loss_rel_diff_vs_ours"]
                print(f"{student} {name}: released step's loss vs ours, same config: "
                      f"{d['first_step']:.1e} (step 1, identical states) / {d['max']:.1e} (max)")
    if res["attacks"]:
        print(C.table([[r["attack"], r["n_attacked"], r["images_per_s"], r["attack_time_s"],
                        r["gflop_per_image"]] for r in res["attacks"]],
                      ["attack", "images", "img/s", "attack s", "GFLOP/img"]))
    if res["skipped"]:
        print("skipped (time budget):", ", ".join(res["skipped"]))
    print(f"wall {res['wall_s']:.0f} s")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="stand-in models, batch 8, one timed step")
    p.add_argument("--students", default=None, help="comma list instead of the three students")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default: inductor on CUDA, eager on CPU)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no configuration that would end after this many seconds (judged "
                        "by the same configuration of the previous student; what is not run is "
                        "listed as skipped); default 420 s, for a check under 8 min")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="JSON")
    return p


def _main(argv: list[str] | None) -> int:
    import logging

    args = _parser().parse_args(argv)
    logging.getLogger("ciard_bench").setLevel(logging.WARNING)
    res = run(args)
    print_report(res)
    C.write_json(args.out, res)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; a ``UserError`` prints one line, exit 2."""
    from ciard_bench.errors import cli_main

    return cli_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
