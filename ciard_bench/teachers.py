"""``python -m ciard_bench.teachers {list,check,train}``: the default teachers, loading a
spec, and training a teacher with the engine.

A front-end above the training engine (``train`` builds a TrainConfig and calls
:func:`ciard_bench.train.train`). The library it drives lives below the engine, in
:mod:`ciard_bench.models.teachers` (a teacher spec -> a frozen model, the paper's defaults)
and :mod:`ciard_bench.models.zoo` (RobustBench); its names are re-exported here for
``from ciard_bench.teachers import load_teacher``. Inside the package, import them from
``ciard_bench.models``: nothing below the front-ends may import this module.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from .config import config_from_args
from .errors import ArgumentParser, choices_error, cli_main
from .models import count_parameters
from .models.teachers import (DEFAULT_CLEAN_TEACHERS, DEFAULT_ROBUST_TEACHERS,  # noqa: F401
                              TEACHER_METHODS, classes_of, load_teacher)
from .models.zoo import NUM_CLASSES, load_robustbench_teacher, robustbench_path  # noqa: F401
from .train import build_parser as build_train_parser
from .train import train
from .utils import positive_int


def _cmd_list(args: argparse.Namespace) -> int:
    print(f"model dir: {Path(args.model_dir).resolve()}")
    for dataset, name in DEFAULT_ROBUST_TEACHERS.items():
        path = robustbench_path(name, dataset, args.model_dir)
        state = "present" if path.is_file() else "missing"
        print(f"{dataset:<9} robust  rb:{name:<24} {path} ({state})")
        print(f"{dataset:<9} clean   {DEFAULT_CLEAN_TEACHERS[dataset]:<27} "
              f"pass {DEFAULT_CLEAN_TEACHERS[dataset]}=PATH (a state-dict file) or a "
              "ciard-bench checkpoint")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    if args.dataset not in NUM_CLASSES:
        raise choices_error("dataset", args.dataset, NUM_CLASSES)
    n = positive_int(args.num_classes, "--num-classes") if args.num_classes else \
        NUM_CLASSES[args.dataset]
    model = load_teacher(args.spec, args.dataset, n, args.model_dir, device=args.device,
                         download=args.download)
    print(f"{args.spec}: {type(model).__name__}, {count_parameters(model) / 1e6:.3f} M "
          f"parameters, {classes_of(model)} classes, eval mode, frozen")
    return 0


def _add_list(sub: Any) -> None:
    p = sub.add_parser("list", help="the default teachers and where their files are expected")
    p.add_argument("--model-dir", default="models")
    p.set_defaults(func=_cmd_list)


def _add_check(sub: Any) -> None:
    p = sub.add_parser("check", help="load a teacher spec and print its size")
    p.add_argument("--spec", required=True, help="rb:NAME | PATH | ARCH=PATH")
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(NUM_CLASSES)}")
    p.add_argument("--num-classes", default=None, help="default: the dataset's")
    p.add_argument("--model-dir", default="models")
    p.add_argument("--device", default="cpu")
    p.add_argument("--download", action="store_true", help="let robustbench download rb: files")
    p.set_defaults(func=_cmd_check)


def _cmd_train(args: argparse.Namespace) -> int:
    """Train a clean (cross-entropy) or robust (TRADES) teacher with the training engine: the
    further flags are the engine's, parsed into a TrainConfig for :func:`~ciard_bench.train.train`."""
    if args.kind not in TEACHER_METHODS:
        raise choices_error("teacher kind", args.kind, TEACHER_METHODS)
    method = TEACHER_METHODS[args.kind]
    flags = build_train_parser(method).parse_args(["--method", method, "--student", args.arch,
                                                   *args.rest])
    cfg = config_from_args(flags)
    if flags.out is None:
        safe = cfg.dataset.replace("npz:", "npz-").replace("/", "_")
        out = Path("runs") / "teachers" / f"{safe}-{args.kind}-{args.arch}"
        cfg = dataclasses.replace(cfg, out=str(out))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    result = train(cfg, resume=flags.resume)
    if result:   # rank 0 (or a single process)
        print(f"done: last {result['last']}, best {result['best']} -> {result['config']['out']}")
        print(f"teacher ready: use it with --{args.kind}-teacher {cfg.out} (the run folder: its "
              "best checkpoint, sha256-checked)")
    return 0


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a clean (CE) or robust (TRADES) teacher with the engine",
                       description="Any further flags go to `python -m ciard_bench.train` "
                                   "(e.g. --dataset, --epochs, --batch-size, --out).")
    p.add_argument("--kind", required=True, help="clean (standard CE training) | robust (TRADES)")
    p.add_argument("--arch", required=True, help="teacher architecture (python -m ciard_bench.models)")
    p.set_defaults(func=_cmd_train, rest=[])


# one function per subcommand, each adding its parser and setting `func`
_SUBCOMMANDS = [_add_list, _add_check, _add_train]


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m ciard_bench.teachers`` parser (subcommands from ``_SUBCOMMANDS``)."""
    parser = ArgumentParser(prog="python -m ciard_bench.teachers",
                                     description="Teachers: RobustBench zoo and state-dict files.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point; a ``UserError`` becomes one line on stderr and exit code 2."""
    return cli_main(_run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
