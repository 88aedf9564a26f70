"""Training configuration: dataclass defaults -> the method's released defaults -> a YAML/JSON
file -> command-line flags. The resolved config is saved next to every run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import plugins
from .errors import UserError
from .methods import get_method, make_options
from .runs import local_dataset, local_path
from .schedules import get_schedule
from .utils import finite, parse_eps, parse_fraction

AMP_MODES = ("none", "bf16", "fp16")
PROTOCOLS = ("released", "shared")
# The shared protocol (--protocol shared): every method trained like CIARD, for equal budgets.
SHARED_PROTOCOL = {"epochs": 300, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                   "weight_decay": 2e-4, "schedule": "ciard_released", "nesterov": False}
_FALLBACK = {"epochs": 300, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
             "weight_decay": 2e-4, "schedule": "multistep", "nesterov": False}
OPTIM_KEYS = tuple(_FALLBACK)
_ACCEPTED = {"lr": "a finite number > 0", "momentum": "a finite number >= 0",
             "weight_decay": "a finite number >= 0", "eps": "a radius in (0, 1], e.g. 8/255",
             "alpha": "a step in (0, 1], e.g. 2/255"}


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means "the method's released default"."""
    method: str = "ciard"
    method_options: dict = field(default_factory=dict)
    protocol: str = "released"
    dataset: str = "digits"
    data_root: str = "data"
    download: bool = False
    n_train: int | None = None
    n_test: int | None = None
    student: str = "resnet18"
    student_kwargs: dict = field(default_factory=dict)
    clean_teacher: str | None = None
    robust_teacher: str | None = None
    teacher_model_dir: str = "models"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    nesterov: bool | None = None
    eps: float = 8 / 255
    alpha: float = 2 / 255
    attack_steps: int = 10
    eval_every: int = 1
    eval_from: int = 1      # first epoch of the per-epoch evaluation (the last is always evaluated)
    eval_batch_size: int = 256
    eval_teachers: bool = False
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    sync_bn: bool = False   # under torchrun: BatchNorm statistics of the global batch
    ckpt_every_steps: int = 0
    num_workers: int | None = None
    threads: int | None = None
    out: str = "runs/run"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Keys that may change between a run and its resume (they do not change the math). The
# folders data and RobustBench files are read from are where this machine keeps them: a run
# (or a results folder) moved to another machine resumes with that machine's.
RESUME_FREE_KEYS = ("device", "num_workers", "out", "eval_batch_size", "cudnn_benchmark", "threads",
                    "data_root", "teacher_model_dir")


def _identity(key: str, value: Any) -> Any:
    """What a resume compares of a setting: an ``npz:`` dataset by its file name (the file
    may sit elsewhere on another machine, as a built-in dataset under another --data-root),
    every other value as it is."""
    if key == "dataset" and isinstance(value, str) and value.startswith("npz:"):
        return "npz:" + Path(value[4:]).name
    return value


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, value now)`` for each key (outside ``RESUME_FREE_KEYS``) whose
    value differs between a saved run's config and ``now``. A key the saved config lacks was
    added to :class:`TrainConfig` later: the run used its default, so it counts as that."""
    defaults = TrainConfig().to_dict()
    out = []
    for key in sorted(set(saved) | set(now)):
        was = saved.get(key, defaults.get(key))
        if key not in RESUME_FREE_KEYS and _identity(key, was) != _identity(key, now.get(key)):
            out.append((key, was, now.get(key)))
    return out


def localize(cfg: TrainConfig, results: str | Path | None) -> TrainConfig:
    """``cfg`` with its paths inside a results folder (``results:...``: a grid cell's run
    folder, the teachers the grid trained, :mod:`ciard_bench.runs`) as this process opens
    them; what is recorded stays ``cfg``. Every other path is kept as the user gave it."""
    return dataclasses.replace(cfg, out=local_path(cfg.out, results),
                               dataset=local_dataset(cfg.dataset, results),
                               teacher_model_dir=local_path(cfg.teacher_model_dir, results),
                               clean_teacher=local_path(cfg.clean_teacher, results),
                               robust_teacher=local_path(cfg.robust_teacher, results))


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill ``None`` optimiser settings from the method (or the shared protocol); validate."""
    method = get_method(cfg.method)
    if cfg.protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {cfg.protocol!r}; accepted: {', '.join(PROTOCOLS)}")
    defaults = {**_FALLBACK, **(SHARED_PROTOCOL if cfg.protocol == "shared" else method.train_defaults)}
    values = {k: (getattr(cfg, k) if getattr(cfg, k) is not None else defaults[k]) for k in OPTIM_KEYS}
    out = dataclasses.replace(cfg, **values)
    make_options(method, out.method_options)          # validates option names and choices
    get_schedule(out.schedule)
    for key in ("epochs", "batch_size", "attack_steps", "eval_every", "eval_from", "eval_batch_size"):
        if int(getattr(out, key)) <= 0:
            raise UserError(f"{key.replace('_', '-')} {getattr(out, key)} must be > 0; accepted: an integer > 0")
    for key in ("n_train", "n_test"):
        if getattr(out, key) is not None and int(getattr(out, key)) <= 0:
            raise UserError(f"{key.replace('_', '-')} {getattr(out, key)} must be > 0")
    for f in dataclasses.fields(out):   # NaN passes every comparison below: reject it first
        value = getattr(out, f.name)
        if isinstance(value, float):
            finite(value, f.name.replace("_", "-"), _ACCEPTED.get(f.name, "a finite number"))
    if out.lr <= 0:
        raise UserError(f"lr {out.lr} must be > 0; accepted: {_ACCEPTED['lr']}")
    for key in ("momentum", "weight_decay"):
        if getattr(out, key) < 0:
            raise UserError(f"{key.replace('_', '-')} {getattr(out, key)} must be >= 0; "
                            f"accepted: {_ACCEPTED[key]}")
    parse_eps(out.eps, "eps")
    parse_eps(out.alpha, "alpha")
    if out.amp not in AMP_MODES:
        raise UserError(f"unknown amp mode {out.amp!r}; accepted: {', '.join(AMP_MODES)}")
    if out.ckpt_every_steps < 0:
        raise UserError(f"ckpt-every-steps {out.ckpt_every_steps} must be >= 0")
    return out


def read_mapping_file(path: str, what: str, accepted: str, holds: str) -> dict[str, Any]:
    """The mapping a YAML or JSON file (``.json``: JSON, any other name: YAML) holds; a missing
    file, a parser error or another top-level value is a one-line error naming ``what``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {path!r} does not exist; accepted: {accepted}")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - any parser error is the user's file
        raise UserError(f"{what} {path!r} could not be parsed: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise UserError(f"{what} {path!r} must hold a mapping of {holds}")
    return data


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict of TrainConfig keys."""
    data = read_mapping_file(path, "config file", "a .yaml/.yml/.json file", "settings")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown setting {unknown[0]!r} in {path!r}; accepted: {', '.join(sorted(names))}")
    return data


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON; accepted: e.g. '{{\"width\": 4}}'") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object")
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Engine flags; each defaults to None so only what the user types overrides."""
    g = parser.add_argument_group("run")
    g.add_argument("--config", help="YAML/JSON file of settings (flags override it)")
    g.add_argument("--method", help="training method (see --list-methods); default ciard")
    g.add_argument("--protocol", choices=PROTOCOLS, help="released: each method's own epochs/"
                   "optimiser/schedule; shared: all methods trained like CIARD")
    g.add_argument("--dataset", help="cifar10 | cifar100 | tiny_imagenet | digits | npz:PATH")
    g.add_argument("--data-root", help="folder holding the datasets (default ./data)")
    g.add_argument("--download", action="store_true", default=None, help="download the dataset if missing")
    g.add_argument("--n-train", type=int, help="class-stratified training subset size")
    g.add_argument("--n-test", type=int, help="class-stratified test subset for per-epoch evaluation")
    g.add_argument("--student", help="student architecture (python -m ciard_bench.models)")
    g.add_argument("--student-kwargs", type=_json_dict, help='architecture arguments as JSON, e.g. \'{"width": 4}\'')
    g.add_argument("--clean-teacher", help="clean teacher: PATH | ARCH=PATH | rb:NAME")
    g.add_argument("--robust-teacher", help="robust teacher: PATH | ARCH=PATH | rb:NAME")
    g.add_argument("--teacher-model-dir", help="RobustBench model_dir (default ./models)")
    g.add_argument("--out", help="run folder (checkpoints, log, result)")
    o = parser.add_argument_group("optimisation (default: the method's released values)")
    o.add_argument("--epochs", type=int)
    o.add_argument("--batch-size", type=int)
    o.add_argument("--lr", type=float)
    o.add_argument("--momentum", type=float)
    o.add_argument("--weight-decay", type=float)
    o.add_argument("--schedule", help="ciard_released | cosine | multistep | ard_released | ...")
    o.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (Fair-ARD's code uses it)")
    o.add_argument("--eps", help="training L-inf radius (default 8/255)")
    o.add_argument("--alpha", help="training PGD step (default 2/255)")
    o.add_argument("--attack-steps", type=int, help="training PGD steps (default 10)")
    o.add_argument("--seed", type=int)
    e = parser.add_argument_group("evaluation and checkpoints")
    e.add_argument("--eval-every", type=int, help="evaluate (clean, PGD_TRADES) every N epochs")
    e.add_argument("--eval-from", type=int, help="first epoch evaluated (default 1; the last "
                   "epoch is always evaluated): the best checkpoint is chosen from there on")
    e.add_argument("--eval-batch-size", type=int)
    e.add_argument("--eval-teachers", action=argparse.BooleanOptionalAction, default=None,
                   help="also evaluate the teachers each evaluation (training curves, Fig. 3)")
    e.add_argument("--ckpt-every-steps", type=int, help="also checkpoint every N steps inside an epoch")
    d = parser.add_argument_group("device")
    d.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    d.add_argument("--amp", help="none | bf16 | fp16 (CUDA only)")
    d.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    d.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the student and teachers")
    d.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None,
                   help="cuDNN autotuning (CUDA; faster, not bitwise reproducible)")
    d.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="under torchrun: train-mode BatchNorm statistics of the global batch, so N "
                        "processes compute the one-process gradient (default: each process's own "
                        "shard, as DDP; one process: no effect)")
    d.add_argument("--num-workers", type=int, help="data-loader workers (default: 0 on CPU)")
    d.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is much faster "
                   "on a small machine shared with other processes)")


def add_method_arguments(parser: argparse.ArgumentParser, method_cls: type) -> None:
    """One flag per field of the method's Options dataclass (help text from its metadata)."""
    fields = dataclasses.fields(method_cls.Options)
    if not fields:
        return
    g = parser.add_argument_group(f"{method_cls.name} options")
    for f in fields:
        if _flag(f.name) in parser._option_string_actions:   # a method option may not shadow an engine flag
            raise UserError(f"method {method_cls.name!r} ({plugins.describe('method', method_cls.name)}): "
                            f"option {f.name!r} collides with the engine flag {_flag(f.name)}; "
                            "accepted: another option name")
        kw: dict[str, Any] = {"dest": f"opt__{f.name}", "default": None, "metavar": f.name.upper(),
                              "help": f"{f.metadata.get('help', '')} (default: {f.default})"}
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
            del kw["metavar"]
        elif "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
            del kw["metavar"]
        elif isinstance(f.default, int) or str(f.type).startswith("int"):
            kw["type"] = int
        elif isinstance(f.default, float) or str(f.type).startswith("float"):   # float | None too
            kw["type"] = parse_fraction
        g.add_argument(_flag(f.name), **kw)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- config file <- flags."""
    values: dict[str, Any] = load_config_file(args.config) if getattr(args, "config", None) else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    options = dict(values.get("method_options") or {})
    for key, value in vars(args).items():
        if value is None:
            continue
        if key.startswith("opt__"):
            options[key[5:]] = value
        elif key in names:
            values[key] = value
    values["method_options"] = options
    for key in ("eps", "alpha"):
        if key in values:
            values[key] = parse_eps(values[key], key)
    return TrainConfig(**values)
