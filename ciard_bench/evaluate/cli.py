"""``python -m ciard_bench.evaluate``: load a model and test points, run :func:`evaluate`.

The model is a ciard-bench checkpoint (``--checkpoint``; a plain state dict needs ``--arch``
and ``--num-classes``) or a RobustBench zoo file placed offline (``--zoo NAME --model-dir
DIR`` reads ``DIR/<dataset>/Linf/NAME.pt``). ``--attacks all`` runs the white-box attacks and
Square, plus the transfer attacks when ``--source`` names the model to craft them on. The
JSON (atomic write) is the :func:`evaluate` dict plus ``model``, ``dataset``, ``source``,
``command`` and ``provenance``; a short table goes to stdout.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .. import plugins
from ..attacks import list_attacks
from ..checkpoint import atomic_write_json
from ..data import load_dataset, to_float_nchw
from ..errors import ArgumentParser, UserError, cli_main
from ..models import load_model_file, load_robustbench_teacher, load_teacher
from ..utils import parse_eps, positive_int, provenance, resolve_device
from .engine import evaluate, resolve_attacks


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m ciard_bench.evaluate",
                       description="Evaluate a model (checkpoint, run folder or RobustBench zoo "
                                   "model) with the paper's attacks and sanity checks; write one JSON.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a ciard-bench checkpoint (or a state dict with --arch)")
    src.add_argument("--zoo", metavar="NAME", help="a RobustBench zoo model read from --model-dir")
    p.add_argument("--arch", help="architecture of a plain state-dict --checkpoint")
    p.add_argument("--num-classes", type=int, help="classes of a plain state-dict --checkpoint")
    p.add_argument("--model-dir", default="models", help="RobustBench model folder (--zoo, rb:)")
    p.add_argument("--zoo-dataset", help="RobustBench dataset of --zoo / rb: models when "
                   "--dataset is not its name (e.g. npz:PATH holding CIFAR-10 test points)")
    p.add_argument("--dataset", required=True,
                   help="cifar10, cifar100, digits, tiny_imagenet, npz:PATH")
    p.add_argument("--data-root", default="data")
    p.add_argument("--n-examples", help="first N test points (default: min(10000, test set))")
    p.add_argument("--attacks", default="all",
                   help="all | comma list of " + ", ".join(list_attacks()))
    p.add_argument("--eps", default="8/255")
    p.add_argument("--batch-size", default="128")
    p.add_argument("--source", help="transfer source: a checkpoint, ARCH=PATH or rb:NAME")
    p.add_argument("--transfer-examples", default="per-source", metavar="per-source|per-student",
                   help="per-source: craft the transfer examples on the source for every point "
                   "and score the model on them (default); per-student: craft them only on the "
                   "points the model classifies correctly, as the released script")
    p.add_argument("--aa-state", help="AutoAttack resume file (JSON)")
    p.add_argument("--aa-attacks", help="run AutoAttack 'custom' with these, e.g. apgd-ce,apgd-t")
    p.add_argument("--seed", default="0")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="result JSON (default: next to the model, <id>_eval.json)")
    p.add_argument("--skip-misclassified", action=argparse.BooleanOptionalAction, default=True,
                   help="attack only points classified correctly clean (default: on)")
    p.add_argument("--no-expensive-checks", dest="expensive_checks", action="store_false",
                   help="skip the eps-sweep and noise sanity checks")
    p.add_argument("--sanity-examples", default="100", help="points used by the expensive checks")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p


def _load(args: argparse.Namespace, device) -> tuple:
    if args.zoo:
        zoo_data = args.zoo_dataset or args.dataset
        model = load_robustbench_teacher(args.zoo, zoo_data, args.model_dir, device=device)
        info = {"zoo": args.zoo, "zoo_dataset": zoo_data, "model_dir": str(args.model_dir),
                "threat_model": "Linf"}
        out = Path(args.model_dir) / "eval" / f"{zoo_data}_{args.zoo}.json"
    else:
        model, meta = load_model_file(args.checkpoint, arch=args.arch,
                                      num_classes=args.num_classes, device=device)
        info = {"checkpoint": str(args.checkpoint),
                **{k: meta[k] for k in ("arch", "sha256") if k in meta}}
        ckpt = Path(args.checkpoint)  # a file, or a training run folder (its best checkpoint)
        out = ckpt / "eval.json" if ckpt.is_dir() else ckpt.with_name(ckpt.stem + "_eval.json")
    return model, info, Path(args.out) if args.out else out


def _run(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    eps, seed = parse_eps(args.eps), int(args.seed)
    batch_size = positive_int(args.batch_size, "--batch-size")
    device = resolve_device(args.device)
    names = resolve_attacks(args.attacks, with_source=args.source is not None)
    data = load_dataset(args.dataset, root=args.data_root)
    n_test = len(data.y_test)
    n = positive_int(args.n_examples, "--n-examples") if args.n_examples else min(10000, n_test)
    if n > n_test:
        raise UserError(f"--n-examples {n} is larger than the {n_test} test points of "
                        f"{args.dataset!r}")
    model, info, out = _load(args, device)
    source = (load_teacher(args.source, args.zoo_dataset or args.dataset, data.num_classes,
                           args.model_dir, device) if args.source else None)
    overrides = ({"aa": {"version": "custom", "attacks": args.aa_attacks.split(",")}}
                 if args.aa_attacks else {})
    # an interrupted evaluation restarts where it stopped: finished attacks are cached next to
    # the output and AutoAttack keeps its own state file (both removed once the JSON is written)
    cache = out.with_name(out.name + ".partial.json")
    aa_state = args.aa_state or str(out.with_name(out.name + ".aa_state.json"))
    result = evaluate(model, to_float_nchw(data.x_test[:n]), data.y_test[:n], names, eps,
                      batch_size=batch_size, seed=seed, n_classes=data.num_classes, device=device,
                      source=source, skip_misclassified=args.skip_misclassified,
                      expensive_checks=args.expensive_checks,
                      sanity_examples=positive_int(args.sanity_examples, "--sanity-examples"),
                      aa_state=aa_state, overrides=overrides, progress=args.progress, cache=cache,
                      transfer=args.transfer_examples)
    if "all" in args.attacks and not args.source:
        print("note: transfer attacks need --source (a robust teacher); not run", file=sys.stderr)
    result.update({"model": info, "dataset": args.dataset, "eps_text": args.eps,
                   "source": args.source,
                   "command": ["python", "-m", "ciard_bench.evaluate", *(argv or sys.argv[1:])],
                   "provenance": provenance(device, seed)})
    used = result.pop("plugins", []) + plugins.provenance(
        model=(info.get("arch") or {}).get("name"), dataset=args.dataset)
    if used:     # the attacks', the architecture's and the data's plugins
        result["plugins"] = used
    atomic_write_json(out, result)
    cache.unlink(missing_ok=True)
    if not args.aa_state:
        Path(aa_state).unlink(missing_ok=True)
    print(summary_table(result))
    print(f"wrote {out}")
    return 0


def summary_table(result: dict) -> str:
    """A short plain-text table of a result dict (clean, each attack, worst case, checks)."""
    rows = [("clean", result["clean"])] + list(result["attacks"].items())
    rows.append(("worst white-box", result["worst_case_white_box"]))
    lines = [f"{'attack':<22}{'acc %':>8}{'95% CI':>17}{'W-R':>8}{'time s':>9}"]
    for name, e in rows:
        lo, hi = e["ci95"]
        wr = f"{e['wr']:.2f}" if "wr" in e else "-"
        lines.append(f"{name:<22}{e['accuracy']:>8.2f}{f'[{lo:.1f}, {hi:.1f}]':>17}{wr:>8}"
                     f"{e.get('time_s', 0.0):>9.1f}")
    s = result["sanity"]
    lines.append(f"sanity: {len(s['checks']) - s['n_failed']}/{len(s['checks'])} checks passed"
                 + (f"; FAILED: {', '.join(s['failed'])}" if s["failed"] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m ciard_bench.evaluate``; a ``UserError`` prints one line and exits 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return cli_main(_run, argv)
