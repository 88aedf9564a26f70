"""Time the evaluation attacks: seconds per 1,000 images, passes and FLOPs per image.

    python benchmarks/evaluate.py --model resnet18 --n-examples 64 --device cpu

1. Each attack alone through ``ciard_bench.evaluate.evaluate`` (every point attacked,
   ``skip_misclassified=False``; the attack's own time, which includes the suite's two
   re-scoring passes, and the whole call), with hooks counting the model's forward and
   backward passes over the whole call (pre-flight checks, clean pass, attack, re-scoring),
   so the cost can be read as FLOPs per image.
2. torchattacks' PGD (``pgd_trades`` settings) called directly, batch by batch, against the
   same attack through the suite: same model, batches and seed; the accuracies must agree.

Weights are random unless ``--checkpoint`` is given. Cost per point is fixed for FGSM, PGD
and CW (every step runs); Square and AutoAttack stop on points already broken, so on a
random-weight model (few points correct, all broken at once) their times are LOWER bounds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

if __package__:
    from . import _common as C
    from ._common import PassCounter
else:
    import _common as C
    from _common import PassCounter

def _data(args) -> tuple[torch.Tensor, torch.Tensor, str]:
    from ciard_bench.data import load_dataset, to_float_nchw

    path = Path(args.data) if args.data else None
    if path is not None and path.is_file():
        d = load_dataset(f"npz:{path}")
        return to_float_nchw(d.x_test)[:args.n_examples], d.y_test[:args.n_examples].long(), str(path)
    g = torch.Generator().manual_seed(args.seed)
    return (torch.rand(args.n_examples, 3, 32, 32, generator=g),
            torch.randint(0, 10, (args.n_examples,), generator=g), "random images")


def _model(args, device):
    from ciard_bench.models import create_model, load_model_file

    if args.checkpoint:
        model, _ = load_model_file(args.checkpoint, device=device)
    else:
        torch.manual_seed(args.seed)
        model = create_model(args.model, num_classes=10)
    return model.to(device).eval()


def per_attack(model, x, y, args, device, gflop_fwd: float) -> list[dict]:
    from ciard_bench.evaluate import evaluate

    rows = []
    for name in args.attacks.split(","):
        n = args.aa_examples if name == "aa" else len(y)
        counter = PassCounter({"model": model})
        start = time.perf_counter()
        res = evaluate(model, x[:n], y[:n], attacks=[name], batch_size=args.batch_size,
                       seed=args.seed, device=device, skip_misclassified=False,
                       expensive_checks=False)
        total = time.perf_counter() - start
        counter.remove()
        e, c = res["attacks"][name], counter.counts["model"]
        passes = {k: c[k] / n for k in ("forward", "backward_full", "backward_input")}
        gflop = gflop_fwd * C.forward_equivalents(passes)
        rows.append({"attack": name, "n": n, "n_attacked": e["n_attacked"], "accuracy": e["accuracy"],
                     "attack_time_s": e["time_s"], "evaluate_time_s": total,
                     "s_per_1000": 1000 * e["time_s"] / max(1, e["n_attacked"]),
                     "passes_per_image": passes, "gflop_per_image": gflop,
                     "achieved_gflops": gflop * n / total, "load_average": C.load_average()})
    return rows


def direct_vs_suite(model, x, y, args, device) -> dict:
    """torchattacks.PGD by hand vs ``evaluate(..., attacks=["pgd_trades"])``."""
    import torchattacks

    from ciard_bench.attacks import attack_settings
    from ciard_bench.evaluate import decode_mask, evaluate, predict
    from ciard_bench.utils import seed_everything

    s = attack_settings("pgd_trades")
    clean_ok = predict(model, x, args.batch_size, device) == y
    C.sync(device)
    start = time.perf_counter()
    seed_everything(args.seed)
    atk = torchattacks.PGD(model, eps=s["eps"], alpha=s["alpha"], steps=s["steps"],
                           random_start=s["random_start"])
    adv_ok = []
    for i in range(0, len(y), args.batch_size):
        xb, yb = x[i:i + args.batch_size].to(device), y[i:i + args.batch_size].to(device)
        x_adv = atk(xb, yb)
        with torch.no_grad():
            adv_ok.append((model(x_adv).argmax(1) == yb).cpu())
    C.sync(device)
    direct_s = time.perf_counter() - start
    direct = torch.cat(adv_ok) & clean_ok
    start = time.perf_counter()
    res = evaluate(model, x, y, attacks=["pgd_trades"], batch_size=args.batch_size, seed=args.seed,
                   device=device, skip_misclassified=False, expensive_checks=False)
    suite_s = time.perf_counter() - start
    e = res["attacks"]["pgd_trades"]
    suite = decode_mask(e["correct"])[:len(y)].bool()
    return {"n": len(y), "batch_size": args.batch_size, "seed": args.seed,
            "direct_time_s": direct_s, "suite_attack_time_s": e["time_s"], "suite_evaluate_time_s": suite_s,
            "direct_accuracy": 100.0 * direct.float().mean().item(), "suite_accuracy": e["accuracy"],
            "per_example_equal": bool((direct == suite).all()), "load_average": C.load_average()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18", help="architecture with random weights")
    p.add_argument("--checkpoint", default=None, help="a trained model file or run folder instead")
    p.add_argument("--data", default=None, help="npz with x_test/y_test (default: random images)")
    p.add_argument("--n-examples", type=int, default=64)
    p.add_argument("--aa-examples", type=int, default=16, help="AutoAttack runs on this subset")
    p.add_argument("--attacks", default="fgsm,pgd_sat,pgd_trades,cw_inf,square,aa")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default on CPU: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-direct", action="store_true", help="skip the torchattacks comparison")
    p.add_argument("--out", default=None, metavar="JSON")
    return p


def _main(argv: list[str] | None) -> int:
    import logging

    from ciard_bench.models import count_flops
    from ciard_bench.utils import resolve_device

    args = _parser().parse_args(argv)
    logging.getLogger("ciard_bench").setLevel(logging.WARNING)
    device = resolve_device(args.device)
    if args.threads is None and device.type == "cpu":
        args.threads = 1     # as benchmarks/step.py: reproducible on a shared CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y, source = _data(args)
    model = _model(args, device)
    gflop_fwd = count_flops(model) / 1e9
    peak = C.matmul_peak(device)
    result = {"config": vars(args), "data": source, "machine": C.machine(device), "matmul_peak": peak,
              "forward_gflop_per_image": gflop_fwd,
              "accounting": C.ACCOUNTING + " Passes are per image.",
              "attacks": per_attack(model, x, y, args, device, gflop_fwd)}
    print(f"model {args.checkpoint or args.model} ({gflop_fwd:.3f} GFLOP/img forward), data {source}, "
          f"batch {args.batch_size}, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, matmul peak {peak['gflops']:.1f} GFLOP/s, "
          f"load average {C.load_average()}")
    rows = [[r["attack"], r["n_attacked"], r["accuracy"], r["s_per_1000"], r["evaluate_time_s"],
             r["passes_per_image"]["forward"], r["passes_per_image"]["backward_input"],
             r["passes_per_image"]["backward_full"], r["gflop_per_image"], r["achieved_gflops"],
             str(r["load_average"][:1])] for r in result["attacks"]]
    print(C.table(rows, ["attack", "attacked", "acc %", "s/1000 img", "evaluate() s", "fwd/img",
                         "bwd in/img", "bwd full/img", "GFLOP/img", "GFLOP/s", "load"]))
    if not args.skip_direct:
        d = result["direct_vs_suite"] = direct_vs_suite(model, x, y, args, device)
        print(f"torchattacks.PGD direct: {d['direct_time_s']:.2f} s, accuracy {d['direct_accuracy']:.2f} %; "
              f"through evaluate(): attack {d['suite_attack_time_s']:.2f} s (whole call "
              f"{d['suite_evaluate_time_s']:.2f} s), accuracy {d['suite_accuracy']:.2f} %; per-example "
              f"equal: {d['per_example_equal']} (n {d['n']}, batch {d['batch_size']}, seed {d['seed']}, "
              f"load {d['load_average']})")
    C.write_json(args.out, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; a ``UserError`` (bad model, option, device) prints one line, exit 2."""
    from ciard_bench.errors import cli_main

    return cli_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
