"""RobustBench's model zoo: where its files live, its names, class counts and entries, and
loading a zoo model offline. The one place that knows robustbench's layout.

robustbench 1.1.1 and ``weights_only``: ``load_model`` calls ``torch.load(model_path,
map_location='cpu')`` without ``weights_only`` (utils.py, single-model and ensemble paths).
Since torch 2.6 that defaults to ``weights_only=True``, so on torch 2.14 it cannot run code,
unless the environment sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``. To not depend on that, and
to turn HTML pages, truncated downloads and code-running pickles into one-line errors, each
file is first read with :func:`ciard_bench.checkpoint.load_checkpoint` (explicit
``weights_only=True``) before robustbench reads it; this costs one extra read of the file.
"""
from __future__ import annotations

import difflib
import importlib
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .._compat import import_robustbench
from ..checkpoint import create_temporary, load_checkpoint
from ..errors import UserError, choices_error
from ..utils import resolve_device

log = logging.getLogger(__name__)

# the leaderboards' class counts (the CIFAR datasets a student can be submitted for)
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
# robustbench.model_zoo.enums; `corruptions_3d` models live in the `corruptions` folder
_RB_DATASETS = ("cifar10", "cifar100", "imagenet")
_RB_THREATS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions",
               "corruptions_3d": "corruptions"}


def threat_folder(threat_model: str) -> str:
    """robustbench's folder (and ``ThreatModel`` value) of a threat model, any case."""
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
    return Path(model_dir) / dataset / threat_folder(threat_model) / f"{name}.pt"


def zoo_models(dataset: str, threat_model: str = "Linf") -> dict:
    """robustbench's ``model_dicts[dataset][threat]`` (name -> entry), the live dict."""
    import_robustbench()
    # heavy import (robustbench, seconds), and only after the _compat shim: kept lazy
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset(dataset)].get(ThreatModel(threat_folder(threat_model)), {})


def timm_name(name: str, dataset: str, threat_model: str = "Linf") -> str:
    """The timm model name robustbench serves ``name`` under (from the Hugging Face hub)."""
    return f"{name.lower().replace('-', '_')}_{dataset}_{threat_folder(threat_model).lower()}"


def _zoo_entry(name: str, dataset: str, threat_model: str) -> dict:
    zoo = zoo_models(dataset, threat_model)
    threat = threat_folder(threat_model)
    if name not in zoo:
        close = difflib.get_close_matches(name, list(zoo), n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else \
            f"{len(zoo)} models are listed in robustbench/model_zoo/{dataset}.py"
        raise UserError(f"unknown RobustBench model {name!r} for {dataset}/{threat}; {hint}")
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


def freeze(model: Any, device: Any) -> Any:
    """``model`` on ``device``, in eval mode, with ``requires_grad`` off: how teachers come."""
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
    import_robustbench()
    # heavy imports (robustbench, timm: seconds), and only after the _compat shim: kept lazy
    import timm

    rb_utils = importlib.import_module("robustbench.utils")
    path = robustbench_path(name, dataset, model_dir, threat_model)
    threat = threat_folder(threat_model)
    entry = _zoo_entry(name, dataset, threat)
    served = timm_name(name, dataset, threat)
    if timm.is_model(served) and not download:
        raise UserError(f"RobustBench model {name!r} is served by timm from the Hugging Face "
                        "hub, not from a file; allow downloading (download=True, --download)")
    if not timm.is_model(served) and not (dataset == "imagenet" and "Standard" in name):
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
    return freeze(model, device)


def write_random_zoo_file(name: str, dataset: str, model_dir: str | Path, images: torch.Tensor,
                          seed: int = 0, threat_model: str = "Linf") -> Path:
    """Save RobustBench's own architecture of ``name`` with random weights where
    ``robustbench.utils.load_model`` reads it, in the format of robustbench's files (a
    ``state_dict`` with DataParallel ``module.`` prefixes); returns the path.

    For a rehearsal (nothing downloaded): the real loading code then reads a model of the
    real size. Initialised by the architecture's own code under ``seed``; then its BatchNorm
    statistics are those of ``images`` ([0, 1], N x 3 x H x W: one forward in train mode,
    cumulative average), so a deep random network's logits stay of order one instead of
    growing with depth in eval mode. Written to a temporary file and renamed.
    """
    path = robustbench_path(name, dataset, model_dir, threat_model)
    entry = _zoo_entry(name, dataset, threat_folder(threat_model))
    if isinstance(entry["gdrive_id"], list):
        raise UserError(f"RobustBench model {name!r} is an ensemble of {len(entry['gdrive_id'])} "
                        "files; a random-weight stand-in is made for single-file models only")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = entry["model"]()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                    # cumulative: the statistics of this one batch
    model.train()
    with torch.no_grad():
        model(images)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
                       fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
