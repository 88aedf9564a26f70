"""The RobustBench model card (``model_info/<dataset>/Linf/<Name>.json``) and the issue text.

The card's fields are ``robustbench.utils.ModelInfo``'s (not re-declared here), filled the way
RobustBench's own files fill them: accuracies and ``reported`` are strings in percent with two
decimals (``"84.92"``), ``eps`` is ``"8/255"``, ``additional_data`` a bool,
``number_forward_passes`` an int; ModelInfo's corruption fields, unused for Linf, are left
out, as in RobustBench's Linf files. ``unreliable: true`` is added (another key RobustBench
uses) when the evaluation broke the protocol: ``--force`` past a failed check, a reduced
AutoAttack budget, or test points that are not from the named dataset.

Values come from defaults <- the ``--info`` YAML/JSON file <- flags; the measured ones
(dataset, eps, clean_acc, autoattack_acc) cannot be set.
"""
from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping

from .. import plugins
from .._compat import import_robustbench
from ..config import read_mapping_file
from ..errors import UserError
from ..models import NUM_CLASSES
from ..runs import is_in_results

# <Name><Year><FirstWordOfTheTitle>[_suffix]: matches every cifar10/cifar100 Linf zoo id but
# the reference model "Standard" (tests check this against robustbench's own model_dicts)
NAME_PATTERN = re.compile(
    r"^[A-Z][A-Za-z-]*(19|20)\d\d[A-Z][A-Za-z0-9-]*(_[A-Za-z0-9][A-Za-z0-9-]*)*$")
PROTOCOL_EPS = Fraction(8, 255)
PROTOCOL_N = 10000
# settable from --info / flags; "license" and "checkpoint_url" only go into the issue text
INFO_KEYS = ("link", "name", "authors", "additional_data", "number_forward_passes", "venue",
             "architecture", "reported", "footnote", "checkpoint_url", "license")
MEASURED_KEYS = ("dataset", "eps", "clean_acc", "autoattack_acc")
_ARCH_LABELS = {"resnet8": "ResNet-8", "resnet18": "ResNet-18", "resnet56": "ResNet-56",
                "mobilenet_v2": "MobileNetV2", "wrn_10_2": "WideResNet-10-2",
                "wrn_22_6": "WideResNet-22-6", "wrn_34_10": "WideResNet-34-10",
                "wrn_70_16": "WideResNet-70-16"}


def check_name(name: str) -> str:
    """A RobustBench model id, ``<Name><Year><FirstWordOfTheTitle>[_suffix]``, or a UserError."""
    if not NAME_PATTERN.match(name or ""):
        raise UserError(f"--name {name!r} is not a RobustBench model id; accepted: "
                        "<Name><Year><FirstWordOfTheTitle>[_suffix], e.g. Zhang2019Theoretically "
                        "or Chen2021LTD_WRN34_10")
    return name


def check_dataset(dataset: str) -> str:
    """``cifar10`` | ``cifar100`` (the Linf leaderboards a CIFAR student can enter)."""
    if dataset not in NUM_CLASSES:
        raise UserError(f"--dataset {dataset!r} has no leaderboard here; accepted: "
                        f"{', '.join(NUM_CLASSES)} (the test points may come from --data)")
    return dataset


def eps_text(eps: float) -> str:
    """``8/255`` when eps is a whole number of 255ths (RobustBench's spelling), else the float."""
    frac = Fraction(eps).limit_denominator(1 << 20)
    pixels = frac * 255
    return f"{pixels.numerator}/255" if pixels.denominator == 1 else f"{float(eps):g}"


def pct(value: float) -> str:
    """Percent as RobustBench stores it: a string with two decimals."""
    return f"{value:.2f}"


def load_info_file(path: str | None) -> dict:
    """Read and validate the ``--info`` YAML/JSON file (an empty dict without one)."""
    if path is None:
        return {}
    data = read_mapping_file(path, "--info file", "a YAML or JSON file", "model-card fields")
    return check_info(data, f"--info file {path!r}")


def check_info(values: Mapping[str, Any], where: str) -> dict:
    """Validate user-given card values: known keys, RobustBench's types."""
    out = {}
    for key, value in values.items():
        if key in MEASURED_KEYS:
            raise UserError(f"{where}: {key!r} is measured by the evaluation and cannot be set")
        if key not in INFO_KEYS:
            raise UserError(f"{where}: unknown field {key!r}; accepted: {', '.join(INFO_KEYS)}")
        if value is None:
            continue
        if key == "additional_data" and not isinstance(value, bool):
            raise UserError(f"{where}: additional_data must be true or false, not {value!r}")
        elif key == "number_forward_passes":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{where}: number_forward_passes must be an integer >= 1")
        elif key == "reported":
            try:
                value = pct(float(value))
            except (TypeError, ValueError) as err:
                raise UserError(f"{where}: reported {value!r} is not a number (percent, "
                                "e.g. 52.31)") from err
            if not 0 <= float(value) <= 100:
                raise UserError(f"{where}: reported {value} is not a percentage in [0, 100]")
        elif key not in ("additional_data", "number_forward_passes") and not isinstance(value, str):
            raise UserError(f"{where}: {key} must be text, not {type(value).__name__}")
        out[key] = value
    return out


def architecture_label(arch: Mapping) -> str:
    """``wrn_34_10`` -> ``WideResNet-34-10`` (RobustBench's spelling); other names unchanged."""
    return _ARCH_LABELS.get(arch["name"], arch["name"])


def _teacher_label(spec: str) -> str:
    if spec.startswith("rb:"):
        return f"{spec[3:]} (RobustBench)"
    if is_in_results(spec):     # a teacher its grid trained: results:runs/<cell id>
        return f"{spec.split(':', 1)[1].removeprefix('runs/')} (trained by its ciard-bench grid)"
    arch, _, path = spec.partition("=")
    # a local path means nothing to readers: keep its last component
    return f"{arch} ({Path(path).name})" if path else Path(spec).name


def training_footnote(config: Mapping | None, arch_label: str) -> str:
    """What the checkpoint's saved training config says: method and teachers, if any."""
    if not config or not config.get("method"):
        return ""
    method = str(config["method"])
    method = "standard (cross-entropy) training" if method == "standard" else method.upper()
    teachers = [f"the {role.split('_')[0]} teacher {_teacher_label(str(config[role]))}"
                for role in ("robust_teacher", "clean_teacher") if config.get(role)]
    if not teachers:
        return f"{arch_label} trained with {method}."
    return (f"Compressed model: a {arch_label} student adversarially distilled with {method} "
            f"from {' and '.join(teachers)}.")


def plugin_notes(used: list[dict]) -> list[str]:
    """A footnote sentence per plugin the model's method, architecture or data came from."""
    return [f"The {p['kind']} {p['name']!r} comes from the plugin {plugins.label(p)}"
            + (f" ({p['entry_point']})" if p.get("entry_point") else "") + "."
            for p in used]


def protocol_notes(*, n: int, eps: float, data: str, dataset: str, aa_budget: dict | None,
                   failed: list[str], roundtrip_ok: bool) -> tuple[list[str], bool]:
    """Footnote sentences for every departure from RobustBench's protocol, and ``unreliable``."""
    notes, unreliable = [], False
    if failed:
        notes.append("Submitted with --force although the sanity check(s) "
                     f"{', '.join(failed)} of the evaluation failed.")
        unreliable = True
    if not roundtrip_ok:
        notes.append("Submitted with --force although the exported model's clean accuracy "
                     "differs from the evaluated one by more than 0.05 pp.")
        unreliable = True
    if aa_budget:
        notes.append("AutoAttack ran with a reduced budget ("
                     + ", ".join(f"{k}={v}" for k, v in aa_budget.items())
                     + "), not the standard evaluation.")
        unreliable = True
    if data != dataset:
        notes.append(f"Evaluated on test points from {data!r}, not the {dataset} test set.")
        unreliable = True
    if n != PROTOCOL_N:
        notes.append(f"Evaluated on the first {n} test points, not {PROTOCOL_N}.")
    if Fraction(eps).limit_denominator(1 << 20) != PROTOCOL_EPS:
        notes.append(f"Uses eps = {eps_text(eps)} instead of 8/255.")
    return notes, unreliable


def model_info(*, dataset: str, eps: float, clean_acc: float, aa_acc: float, arch: Mapping,
               config: Mapping | None, user: Mapping[str, Any], notes: list[str],
               unreliable: bool) -> dict:
    """The card as RobustBench's files hold it (``ModelInfo`` fields, set ones only)."""
    import_robustbench()
    # heavy import (robustbench, seconds), and only after the _compat shim: kept lazy
    from robustbench.utils import ModelInfo

    label = user.get("architecture") or architecture_label(arch)
    footnote = user.get("footnote", training_footnote(config, label))
    card = ModelInfo(link=user.get("link", ""), name=user.get("name", ""),
                     authors=user.get("authors", ""),
                     additional_data=user.get("additional_data", False),
                     number_forward_passes=user.get("number_forward_passes", 1),
                     dataset=dataset, venue=user.get("venue", ""), architecture=label,
                     eps=eps_text(eps), clean_acc=pct(clean_acc),
                     reported=user.get("reported", pct(aa_acc)), autoattack_acc=pct(aa_acc),
                     footnote="<br>".join(filter(None, [footnote, *notes])))
    out = {k: v for k, v in dataclasses.asdict(card).items() if v is not None}
    if unreliable:
        out["unreliable"] = True
    return out
