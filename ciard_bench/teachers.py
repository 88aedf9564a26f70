"""Teachers: RobustBench zoo models, checkpoint files, and the defaults of the CIARD paper.

A teacher *spec* is one of
  ``rb:NAME``    a RobustBench zoo model (``robustbench.utils.load_model``), read from
                 ``<model_dir>/<dataset>/<threat>/<NAME>.pt``;
  ``PATH``       a ciard-bench checkpoint (it names its own architecture) or a training run
                 folder (its best checkpoint, checked against the sha256 in run.json);
  ``ARCH=PATH``  a state-dict file (released ARD/RSLAD/MTARD/CIARD files) of model ``ARCH``.
Every teacher comes back in eval mode with ``requires_grad`` off.

robustbench 1.1.1 and ``weights_only``: ``load_model`` calls ``torch.load(model_path,
map_location='cpu')`` without ``weights_only`` (utils.py, single-model and ensemble paths).
Since torch 2.6 that defaults to ``weights_only=True``, so on torch 2.14 it cannot run code,
unless the environment sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``. To not depend on that, and
to turn HTML pages, truncated downloads and code-running pickles into one-line errors, each
file is first read with :func:`ciard_bench.checkpoint.load_checkpoint` (explicit
``weights_only=True``) before robustbench reads it; this costs one extra read of the file.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint
from .errors import ArgumentParser, UserError, choices_error, cli_main

log = logging.getLogger(__name__)

# CIARD Table 2: robust teachers (RobustBench, Linf) and clean-teacher architectures
DEFAULT_ROBUST_TEACHERS = {"cifar10": "Zhang2019Theoretically", "cifar100": "Gowal2020Uncovering"}
DEFAULT_CLEAN_TEACHERS = {"cifar10": "resnet56", "cifar100": "wrn_22_6"}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
# robustbench.model_zoo.enums; `corruptions_3d` models live in the `corruptions` folder
_RB_DATASETS = ("cifar10", "cifar100", "imagenet")
_RB_THREATS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions",
               "corruptions_3d": "corruptions"}


def _threat_folder(threat_model: str) -> str:
    folder = _RB_THREATS.get(str(threat_model).lower())
    if folder is None:
        raise choices_error("threat model", threat_model, ["Linf", "L2", "corruptions",
                                                           "corruptions_3d"])
    return folder


def robustbench_path(name: str, dataset: str, model_dir: str | Path,
                     threat_model: str = "Linf") -> Path:
    """``model_dir/<dataset>/<threat>/<name>.pt``: where ``robustbench.utils.load_model`` reads."""
    if dataset not in _RB_DATASETS:
        raise choices_error("dataset", dataset, _RB_DATASETS)
    return Path(model_dir) / dataset / _threat_folder(threat_model) / f"{name}.pt"


def _zoo_entry(name: str, dataset: str, threat_model: str) -> dict:
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    threat = ThreatModel(_threat_folder(threat_model))
    zoo = model_dicts[BenchmarkDataset(dataset)].get(threat, {})
    if name not in zoo:
        close = difflib.get_close_matches(name, list(zoo), n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else \
            f"{len(zoo)} models are listed in robustbench/model_zoo/{dataset}.py"
        raise UserError(f"unknown RobustBench model {name!r} for {dataset}/{threat.value}; {hint}")
    return zoo[name]


def _files_for(path: Path, gdrive: Any) -> list[tuple[Path, str | None]]:
    """(file, gdrive id) pairs robustbench reads: one file, or ``<path>_m<i>.pt`` for ensembles."""
    if isinstance(gdrive, list):
        return [(Path(f"{path}_m{i}.pt"), gid) for i, gid in enumerate(gdrive)]
    return [(path, gdrive)]


def _fetch_or_explain(rb_utils: Any, name: str, files: list, download: bool) -> None:
    """Make sure every file is there: download it (``download``) or say where it goes."""
    for file, gid in files:
        if file.is_file():
            continue
        if not gid:
            raise UserError(f"RobustBench model {name!r} is not at {str(file)!r} and robustbench "
                            "lists no download for it; put the file there")
        if not download:
            raise UserError(f"RobustBench model {name!r} is not at {str(file)!r}; download "
                            f"https://drive.google.com/uc?id={gid} (robustbench gdrive id {gid}) "
                            "and save it there, or allow downloading (download=True, --download)")
        file.parent.mkdir(parents=True, exist_ok=True)
        part = file.with_name(f".{file.name}.part")  # never leave a half file under the real name
        log.info("downloading RobustBench %s (gdrive id %s) to %s", name, gid, file)
        try:
            rb_utils.download_gdrive_new(gid, part)
        except Exception as err:  # gdown/requests raise many types; report them in one line
            part.unlink(missing_ok=True)
            raise UserError(f"downloading {name!r} (gdrive id {gid}) to {str(file)!r} failed: "
                            f"{type(err).__name__}: {' '.join(str(err).split())[:160]}") from err
        try:
            load_checkpoint(part)  # an HTML quota page or a cut-off file stays out of the way
        except UserError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, file)


def _freeze(model: Any, device: Any) -> Any:
    import torch

    from .utils import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model = model.to(dev).eval()
    model.requires_grad_(False)
    return model


def load_robustbench_teacher(name: str, dataset: str = "cifar10", model_dir: str | Path = "models",
                             threat_model: str = "Linf", download: bool = False,
                             device: Any = "cpu") -> Any:
    """A RobustBench zoo model through ``robustbench.utils.load_model``; eval mode, frozen.

    Offline (``download=False``) a missing file is a one-line error saying where to put it
    and which Google-Drive id to fetch. Each file is vetted with ``load_checkpoint`` first.
    """
    import importlib

    from ._compat import import_robustbench

    import_robustbench()
    import timm

    rb_utils = importlib.import_module("robustbench.utils")
    path = robustbench_path(name, dataset, model_dir, threat_model)
    threat = _threat_folder(threat_model)
    entry = _zoo_entry(name, dataset, threat)
    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}"
    if timm.is_model(timm_name) and not download:
        raise UserError(f"RobustBench model {name!r} is served by timm from the Hugging Face "
                        "hub, not from a file; allow downloading (download=True, --download)")
    if not timm.is_model(timm_name) and not (dataset == "imagenet" and "Standard" in name):
        files = _files_for(path, entry["gdrive_id"])
        _fetch_or_explain(rb_utils, name, files, download)
        for file, _ in files:
            load_checkpoint(file)  # one-line errors; weights_only=True whatever the env says
    try:
        model = rb_utils.load_model(model_name=name, model_dir=str(model_dir), dataset=dataset,
                                    threat_model=threat)
    except (RuntimeError, KeyError, ValueError, EOFError, OSError, pickle.UnpicklingError,
            zipfile.BadZipFile) as err:
        # torch's state-dict errors span lines; UserError joins them, keep the first 300 chars
        what = " ".join(str(err).split())[:300] or type(err).__name__
        raise UserError(f"robustbench could not load {name!r} from {str(path)!r}: {what}") from err
    return _freeze(model, device)


def _classes_of(model: Any) -> int | None:
    import torch.nn as nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def load_teacher(spec: str, dataset: str, num_classes: int, model_dir: str | Path = "models",
                 device: Any = "cpu", download: bool = False) -> Any:
    """Load a teacher from ``rb:NAME``, ``PATH`` or ``ARCH=PATH``; eval mode, frozen.

    ``download`` lets robustbench fetch a missing ``rb:`` file (off by default: offline).
    """
    from .models import list_models, load_model_file

    spec = str(spec).strip()
    if spec.startswith("rb:"):
        name = spec[3:].strip()
        if not name:
            raise UserError("teacher spec 'rb:' names no model; e.g. rb:Zhang2019Theoretically")
        model = load_robustbench_teacher(name, dataset, model_dir, download=download,
                                         device=device)
        got = _classes_of(model)
        if got is not None and got != num_classes:
            raise UserError(f"RobustBench model {name!r} has {got} classes but {num_classes} "
                            "are needed; pick a model of the right dataset")
        return model
    if spec in list_models():
        raise UserError(f"teacher spec {spec!r} names an architecture but no weights; use "
                        f"{spec}=PATH (a state-dict file) or train the teacher first")
    arch, _, path = spec.partition("=")
    if path and not Path(spec).exists():
        if arch not in list_models():
            raise UserError(f"teacher spec {spec!r}: unknown architecture {arch!r}; accepted: "
                            f"{', '.join(list_models())}")
        model, _ = load_model_file(path, arch=arch, num_classes=num_classes)
    else:
        model, _ = load_model_file(spec, num_classes=num_classes)
    return _freeze(model, device)


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
    from .models import count_parameters
    from .utils import positive_int

    if args.dataset not in NUM_CLASSES:
        raise choices_error("dataset", args.dataset, NUM_CLASSES)
    n = positive_int(args.num_classes, "--num-classes") if args.num_classes else \
        NUM_CLASSES[args.dataset]
    model = load_teacher(args.spec, args.dataset, n, args.model_dir, device=args.device,
                         download=args.download)
    print(f"{args.spec}: {type(model).__name__}, {count_parameters(model) / 1e6:.3f} M "
          f"parameters, {_classes_of(model)} classes, eval mode, frozen")
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


TEACHER_METHODS = {"clean": "standard", "robust": "trades"}


def _cmd_train(args: argparse.Namespace) -> int:
    """Train a clean (cross-entropy) or robust (TRADES) teacher through the training engine."""
    from .train import main as train_main

    if args.kind not in TEACHER_METHODS:
        raise choices_error("teacher kind", args.kind, TEACHER_METHODS)
    rest = list(args.rest)
    if "--out" not in rest:
        dataset = rest[rest.index("--dataset") + 1] if "--dataset" in rest else "digits"
        safe = dataset.replace("npz:", "npz-").replace("/", "_")
        rest += ["--out", str(Path("runs") / "teachers" / f"{safe}-{args.kind}-{args.arch}")]
    code = train_main(["--method", TEACHER_METHODS[args.kind], "--student", args.arch, *rest])
    if code == 0:
        out = rest[rest.index("--out") + 1]
        print(f"teacher ready: use it with --{args.kind}-teacher {out} (the run folder: its best "
              "checkpoint, sha256-checked)")
    return code


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
