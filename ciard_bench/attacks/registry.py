"""The attack registry: one :class:`AttackSpec` per attack, and what is built from it.

A spec holds everything the project says about an attack: its settings (the paper's /
released code's numbers), how to build it, its table label and caption phrase, its kind and
its role in the sanity checks. ``create_attack`` builds from the spec, ``attack_settings``
resolves the settings for the result JSON, ``describe_attack`` writes the caption from the
same resolved settings, so the three cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torchattacks.attack import Attack

from .. import plugins
from ..errors import UserError, choices_error
from ..utils import eval_mode
from .implementations import Transfer

KINDS = ("white-box", "black-box", "transfer", "sanity")
# roles in the dataset-level order checks of ciard_bench.sanity.order_checks
SANITY_ROLES = (
    "one_step",    # FGSM: no multi-step PGD may be weaker
    "pgd",         # multi-step PGD: <= every one_step attack, >= every ensemble
    "iterative",   # another iterative gradient attack (CW): >= every ensemble
    "ensemble",    # AutoAttack: <= every pgd and iterative attack (missed points counted)
    "noise",       # random noise in the eps ball, the masked-gradient check
)


@dataclass(frozen=True)
class AttackSpec:
    """One attack. ``build(model, settings, state_path)`` returns the ``Attack``; a transfer
    attack names its ``base`` instead and is built on the source model. ``caption(settings)``
    is the phrase a table caption uses; ``derive(settings)`` adds values computed from
    others (FGSM's step is eps)."""

    name: str
    kind: str
    settings: dict[str, Any]
    label: str                                          # table column (paper_results.csv)
    build: Callable[..., Attack] | None = None
    caption: Callable[[dict], str] | None = None
    base: str | None = None                             # transfer: the attack crafted on the source
    sanity: str | None = None                           # one of SANITY_ROLES
    tex_label: str | None = None                        # LaTeX, when escaping the label is not it
    derive: Callable[[dict], dict] | None = field(default=None, repr=False)


_REGISTRY: dict[str, AttackSpec] = {}
# name -> {"kind", **settings}: every hyperparameter of every attack, in registration order
PROTOCOL: dict[str, dict[str, Any]] = {}


def register_attack(spec: AttackSpec) -> AttackSpec:
    """Add ``spec``; a duplicate name, an unknown kind or role, or a spec that cannot be
    built is an error here, not at evaluation time."""
    if not isinstance(spec, AttackSpec):
        raise plugins.PluginError(f"{spec!r} is not a ciard_bench.api.AttackSpec")
    plugins.builtins_first(spec.build or spec.caption)
    if spec.name in _REGISTRY:
        raise plugins.clash("attack", "name", spec.name, spec.name)
    for other in _REGISTRY.values():
        if other.label == spec.label:
            raise plugins.clash("attack", "table label", spec.label, other.name)
    if spec.kind not in KINDS or (spec.sanity is not None and spec.sanity not in SANITY_ROLES):
        raise ValueError(f"attack {spec.name!r}: kind {spec.kind!r} / sanity role {spec.sanity!r}")
    if (spec.kind == "transfer") != (spec.base is not None) or (spec.build is None) != (spec.base is not None):
        raise ValueError(f"attack {spec.name!r}: a transfer attack names a base, any other a builder")
    if spec.base is not None and spec.base not in _REGISTRY:
        raise ValueError(f"attack {spec.name!r}: base {spec.base!r} is not registered")
    _REGISTRY[spec.name] = spec
    PROTOCOL[spec.name] = {"kind": spec.kind, **({"base": spec.base} if spec.base else {}),
                           **spec.settings}
    plugins.note("attack", spec.name, spec.build or spec.caption)
    return spec


def _add_entry_point(name: str, obj: Any) -> None:
    if not (isinstance(obj, AttackSpec) and _REGISTRY.get(obj.name) is obj):
        register_attack(obj)


plugins.track("attack", _REGISTRY, PROTOCOL, adder=_add_entry_point)


def get_attack(name: str) -> AttackSpec:
    """The spec of attack ``name``; an unknown name is a one-line ``UserError``."""
    plugins.load()
    if name not in _REGISTRY:
        raise UserError(str(choices_error("attack", name, list(_REGISTRY))) + plugins.failures_note())
    return _REGISTRY[name]


def list_attacks(kind: str | None = None) -> list[str]:
    """Registered attack names (in protocol order), optionally only one ``kind``."""
    plugins.load()
    return [n for n, s in _REGISTRY.items() if kind is None or s.kind == kind]


def attack_settings(name: str, eps: float = 8 / 255, **overrides: Any) -> dict:
    """Every hyperparameter of attack ``name`` after ``overrides``: for JSON and captions."""
    spec = get_attack(name)
    table = PROTOCOL[name]
    if spec.base is not None:
        base = attack_settings(spec.base, eps, **overrides)
        return {**base, "name": name, "kind": "transfer", "base": spec.base,
                "crafted_on": "source"}
    unknown = sorted(set(overrides) - set(table) - {"eps"})
    if unknown:
        raise UserError(f"attack {name!r} has no setting {unknown[0]!r}; accepted: "
                        f"{', '.join(sorted(k for k in table if k not in ('kind', 'impl')))}")
    settings = {"name": name, **table, **overrides, "eps": float(eps)}
    if spec.derive is not None:
        settings.update(spec.derive(settings))
    return settings


def describe_attack(name: str, eps: float, overrides: Mapping[str, dict],
                    transfer: str | None = None) -> str:
    """One caption phrase for attack ``name``, from the settings the evaluation used
    (``overrides``: attack name -> setting overrides, as a preset holds them; ``transfer``:
    how transfer examples were made, ``per_source`` or ``per_student``, the released way)."""
    spec = get_attack(name)
    settings = attack_settings(name, eps, **overrides.get(name, {}))
    if spec.base is not None:
        how = describe_attack(spec.base, eps, overrides)
        where = ("crafted once on the robust teacher for every point, every student scored "
                 "on the same examples" if transfer == "per_source"
                 else "crafted on the robust teacher")
        return f"Transfer {get_attack(spec.base).label} ({how}, {where})"
    return spec.caption(settings) if spec.caption is not None else name


def create_attack(name: str, model: torch.nn.Module, eps: float = 8 / 255, n_classes: int = 10,
                  seed: int = 0, source: torch.nn.Module | None = None,
                  state_path: str | Path | None = None, **overrides: Any) -> Attack:
    """Build attack ``name`` against ``model`` with the protocol settings (see ``PROTOCOL``).

    ``n_classes`` and ``seed`` reach the attacks that use them (AutoAttack, Square);
    ``source`` is the model transfer attacks craft on; ``state_path`` is AutoAttack's resume
    file; ``overrides`` replace table entries (``steps=100``, ``n_queries=5000`` ...).
    """
    spec = get_attack(name)
    base = PROTOCOL[spec.base or name]
    extra = {k: v for k, v in (("n_classes", n_classes), ("seed", seed)) if k in base}
    settings = attack_settings(name, eps, **{**extra, **overrides})
    if spec.base is not None:
        if source is None:
            raise UserError(f"attack {name!r} needs a source model to craft examples on "
                            "(--source PATH or rb:NAME)")
        attack = Transfer(model, create_attack(spec.base, source, eps, n_classes, seed,
                                               **overrides))
    else:
        attack = spec.build(model, settings, state_path=state_path)
    attack.settings = settings  # what the result JSON records
    return attack


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             attack: str | None = None, eps: float = 8 / 255, seed: int = 0) -> float:
    """Accuracy (percent) of ``model`` in eval mode, clean or under a registered attack.

    The attack's randomness comes from ``seed`` in a forked RNG, so the caller's stream is
    untouched (the training engine's per-epoch evaluation uses it between epochs).
    """
    correct = torch.zeros((), device=x.device)
    with eval_mode(model), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        atk = None
        if attack is not None:
            atk = create_attack(attack, model, eps=eps)
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            if atk is not None:
                xb = atk(xb, yb)
            with torch.no_grad():
                correct += (model(xb).argmax(1) == yb).sum()
    return 100.0 * correct.item() / len(x)
