"""Small shared helpers: eps parsing, device resolution, seeding, provenance, eval mode,
recomputing BatchNorm statistics."""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import random
import subprocess
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .errors import UserError


def parse_fraction(text: str | float | int, what: str = "value") -> float:
    """Parse ``"8/255"``, ``"0.031"`` or a number, with ``fractions.Fraction`` (never ``eval``)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return finite(float(text), what)
    try:
        return float(Fraction(str(text).strip()))   # "nan" and "inf" are not fractions
    except (ValueError, ZeroDivisionError) as err:
        raise UserError(f"{what} {text!r} is not a number; accepted: a float or a fraction "
                        "like 8/255") from err


def finite(value: float, what: str = "value", accepted: str = "a finite number") -> float:
    """``value`` if it is a finite number, else a one-line ``UserError`` naming it."""
    if not math.isfinite(value):
        raise UserError(f"{what} {value!r} is not a finite number; accepted: {accepted}")
    return value


def parse_eps(text: str | float, what: str = "eps", allow_zero: bool = False) -> float:
    """Parse an L-inf radius for images in [0, 1]; reject pixel units (8 instead of 8/255)."""
    eps = parse_fraction(text, what)
    if eps != eps or eps < 0 or (eps == 0 and not allow_zero):
        raise UserError(f"{what} {text!r} must be > 0; accepted: a radius in (0, 1] "
                        "for images in [0, 1], e.g. 8/255")
    if eps > 1:
        hint = f" (did you mean {text}/255?)" if eps <= 255 else ""
        raise UserError(f"{what} {text!r} looks like pixel units{hint}; accepted: a radius "
                        "in (0, 1] for images in [0, 1], e.g. 8/255")
    return eps


def fraction_text(value: float) -> str:
    """``2/255`` when ``value`` is a fraction with denominator <= 255 (to 1e-12), else ``%g``."""
    frac = Fraction(value).limit_denominator(255)
    if abs(float(frac) - value) < 1e-12:
        return f"{frac.numerator}/{frac.denominator}"
    return f"{value:g}"


def positive_int(text: str | int, what: str) -> int:
    """Parse an integer > 0 with a one-line error."""
    try:
        value = int(str(text))
    except ValueError as err:
        raise UserError(f"{what} {text!r} is not an integer; accepted: an integer > 0") from err
    if value <= 0:
        raise UserError(f"{what} {value} must be > 0; accepted: an integer > 0")
    return value


def resolve_device(name: str | None = "auto") -> "Any":
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> ``torch.device``; clear error without a GPU."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} was asked for but this machine has no CUDA GPU; "
                            "accepted here: cpu, auto")
        try:
            dev = torch.device(name)
        except RuntimeError as err:
            raise UserError(f"device {name!r} is not valid; accepted: auto, cpu, cuda, cuda:N") from err
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} does not exist; this machine has "
                            f"{torch.cuda.device_count()} GPU(s)")
        return dev
    raise UserError(f"device {name!r} is not valid; accepted: auto, cpu, cuda, cuda:N")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def git_revision() -> str | None:
    """The git commit of the ciard-bench source tree, if it is a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    if out.returncode != 0 or not rev:
        return None
    return rev + ("-dirty" if dirty.stdout.strip() else "")


def provenance(device: Any = None, seed: int | None = None) -> dict:
    """Versions, git revision, device and host: recorded in every result JSON."""
    versions = {}
    for pkg in ("ciard-bench", "torch", "torchvision", "torchattacks", "pyautoattack",
                "robustbench", "numpy", "pandas"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    info = {"versions": versions, "git_revision": git_revision(), "python": platform.python_version(),
            "platform": platform.platform(), "hostname": platform.node(), "seed": seed}
    if device is not None:
        info["device"] = str(device)
        try:
            if torch.device(device).type == "cuda":
                info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        except (RuntimeError, AssertionError):
            pass
    info["cpu_count"] = os.cpu_count()
    return info


def tensor_sha256(t: Any) -> str:
    """sha256 of a tensor's values in memory order: any change, including a reordering of the
    points, changes it (sums and counts do not see a permutation)."""
    flat = t.detach().cpu().contiguous().reshape(-1)   # the raw bytes: any dtype, also bfloat16
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def rng_state(device) -> dict[str, Any]:
    """Every RNG the training step draws from (torch CPU/CUDA, numpy, python) as tensors/lists."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_gauss": random.getstate()[2],
             "numpy": torch.from_numpy(np_state[1].astype("int64")), "numpy_pos": int(np_state[2])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype("uint32"), state["numpy_pos"], 0, 0.0))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def eval_mode(*modules: Any) -> Iterator[None]:
    """Put ``modules`` (``nn.Module`` or None) in eval mode; restore every submodule's own mode
    afterwards."""
    saved = [(m, [(sub, sub.training) for sub in m.modules()]) for m in modules if m is not None]
    for m, _ in saved:
        m.eval()
    try:
        yield
    finally:
        for _, flags in saved:
            for sub, was_training in flags:
                sub.training = was_training


@torch.no_grad()
def recompute_batch_norm(model: Any, batches: Iterable[torch.Tensor]) -> int:
    """Replace the running statistics of every BatchNorm layer of ``model`` by those of
    ``batches`` (inputs), as SWA's ``bn_update`` (PeerAiD ``utils/SWA.py``): the statistics
    reset to mean 0 and variance 1, the model in train mode, and before each batch of b
    inputs, after n, every layer's momentum set to b / (n + b), so that each statistic ends
    as the mean of the batches' (the unbiased variance for ``running_var``) weighted by their
    sizes. The layers' momenta and every submodule's mode are restored; ``num_batches_tracked``
    counts on, as there. Returns the number of inputs seen (0, and nothing changed, without
    BatchNorm layers)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    modes = [(sub, sub.training) for sub in model.modules()]
    for m in norms:
        if m.running_mean is not None:
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
    model.train()
    seen = 0
    try:
        for x in batches:
            b = x.shape[0]
            for m in norms:
                m.momentum = b / (seen + b)
            model(x)
            seen += b
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for sub, was_training in modes:
            sub.training = was_training
    return seen
