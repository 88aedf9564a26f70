"""CIARD's evaluation protocol: one registered record per attack.

Adding an attack is one ``register_attack(AttackSpec(...))`` here and one row in
``tests/test_attacks.py::SPECS``; evaluation, result JSON, table columns, captions and sanity
checks all read the record. Numbers are the paper's / released code's.
"""
from __future__ import annotations

import torchattacks

from ..errors import UserError
from ..utils import fraction_text
from .implementations import AutoAttackAdapter, CWLinf, UniformNoise
from .registry import AttackSpec, register_attack

_AA_STANDARD = ["apgd-ce", "apgd-t", "fab-t", "square"]


def _aa_derived(s: dict) -> dict:
    # pyautoattack uses 9 target classes (right for CIFAR-100 too); fewer classes need fewer.
    most = max(1, int(s["n_classes"]) - 1)
    n_target = min(9, most)
    chosen = s.get("n_target_classes")
    if chosen is not None:
        if s["version"] == "standard":
            raise UserError("AutoAttack version 'standard' uses its own target classes; "
                            "use version='custom' to set n_target_classes")
        if isinstance(chosen, bool) or not isinstance(chosen, int) or not 1 <= chosen <= most:
            raise UserError(f"AutoAttack n_target_classes {chosen!r} is not accepted; accepted: "
                            f"an integer from 1 to {most} (n_classes - 1)")
        n_target = chosen
    if s["version"] == "standard":
        if s.get("attacks"):
            raise UserError("AutoAttack version 'standard' runs a fixed attack list; "
                            "use version='custom' with attacks=[...]")
        return {"attacks": list(_AA_STANDARD), "apgd_n_restarts": 1, "fab_n_restarts": 1,
                "apgd_t_n_target_classes": n_target, "fab_t_n_target_classes": n_target,
                "square_p_init": 0.8}
    if s["version"] != "custom" or not s.get("attacks"):
        raise UserError(f"AutoAttack version {s['version']!r} needs attacks=[...]; accepted: "
                        "standard, or custom with attacks from apgd-ce, apgd-dlr, apgd-t, "
                        "fab, fab-t, square")
    return {"attacks": list(s["attacks"]), "apgd_t_n_target_classes": n_target,
            "fab_t_n_target_classes": n_target,
            "apgd_n_restarts": 5 if s.get("apgd_n_restarts") is None else int(s["apgd_n_restarts"])}


def _autoattack(model, s, state_path=None):
    return AutoAttackAdapter(model, s, state_path)


def _pgd(model, s, state_path=None):
    return torchattacks.PGD(model, eps=s["eps"], alpha=s["alpha"], steps=s["steps"],
                            random_start=s["random_start"])


def _pgd_caption(label: str):
    return lambda s: f"{label}: CE, {s['steps']} steps of {fraction_text(s['alpha'])}, random start"


def _aa_caption(s: dict) -> str:
    if s["version"] == "standard":
        return "AA: AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)"
    targets = ""
    if "apgd-t" in s["attacks"]:
        n = s["apgd_t_n_target_classes"]
        targets = f"; APGD-T on the {n} most likely wrong class{'es' if n > 1 else ''}"
    return (f"AA: AutoAttack custom ({', '.join(s['attacks']).upper()}, {s['n_iter']} "
            f"iterations{targets}): cheaper than standard, an upper bound on its robust accuracy")


register_attack(AttackSpec(
    "fgsm", "white-box", {"impl": "torchattacks.FGSM", "loss": "ce", "steps": 1,
                          "step_size": "eps", "random_start": False},
    label="FGSM", sanity="one_step",
    build=lambda model, s, state_path=None: torchattacks.FGSM(model, eps=s["eps"]),
    caption=lambda s: "FGSM: 1 step of eps",
    derive=lambda s: {"step_size": s["eps"]}))
register_attack(AttackSpec(
    "pgd_sat", "white-box", {"impl": "torchattacks.PGD", "loss": "ce", "steps": 20,
                             "alpha": 2 / 255, "random_start": True},
    label="PGD_SAT", sanity="pgd", build=_pgd, caption=_pgd_caption("PGD_SAT")))
register_attack(AttackSpec(
    "pgd_trades", "white-box", {"impl": "torchattacks.PGD", "loss": "ce", "steps": 20,
                                "alpha": 0.003, "random_start": True},
    label="PGD_TRADES", sanity="pgd", build=_pgd, caption=_pgd_caption("PGD_TRADES")))
register_attack(AttackSpec(
    "cw_inf", "white-box", {"impl": "ciard_bench.attacks.CWLinf", "loss": "cw_margin",
                            "kappa": 50.0, "steps": 30, "alpha": 2 / 255, "random_start": False,
                            "clamp_every_step": True},
    label="CW_inf", tex_label=r"CW$_\infty$", sanity="iterative",
    build=lambda model, s, state_path=None: CWLinf(
        model, eps=s["eps"], alpha=s["alpha"], steps=s["steps"], kappa=s["kappa"],
        random_start=s["random_start"], clamp_every_step=s["clamp_every_step"]),
    caption=lambda s: (f"CW_inf: CW margin (kappa {s['kappa']:g}), {s['steps']} steps of "
                       f"{fraction_text(s['alpha'])}, zero start, clamped every step "
                       "(torchattacks convention)")))
register_attack(AttackSpec(
    "square", "black-box", {"impl": "torchattacks.Square", "norm": "Linf", "n_queries": 100,
                            "n_restarts": 1, "p_init": 0.8, "loss": "margin",
                            "resc_schedule": True, "seed": 0},
    label="SA",
    build=lambda model, s, state_path=None: torchattacks.Square(
        model, norm=s["norm"], eps=s["eps"], n_queries=s["n_queries"],
        n_restarts=s["n_restarts"], p_init=s["p_init"], loss=s["loss"],
        resc_schedule=s["resc_schedule"], seed=s["seed"]),
    caption=lambda s: f"SA: Square (Linf), {s['n_queries']} queries"))
# AutoAttack's Square: 5000 queries, p_init 0.8, resc_schedule False (pyautoattack defaults)
register_attack(AttackSpec(
    "square_aa", "black-box", {"impl": "pyautoattack.AutoAttack", "norm": "Linf",
                               "version": "custom", "attacks": ["square"], "seed": 0,
                               "n_classes": 10, "batch_size": 250, "n_iter": 100,
                               "square_n_queries": 5000},
    label="SA_AA", build=_autoattack, derive=_aa_derived,
    caption=lambda s: f"SA_AA: AutoAttack's Square (Linf), {s['square_n_queries']} queries"))
# n_iter: APGD / FAB iterations; n_target_classes None: 9 target classes (fewer when
# n_classes < 10; custom only: APGD-T / FAB-T on that many most likely wrong classes);
# apgd_n_restarts None: pyautoattack's own (1 in standard, 5 in custom)
register_attack(AttackSpec(
    "aa", "white-box", {"impl": "pyautoattack.AutoAttack", "norm": "Linf",
                        "version": "standard", "attacks": None, "seed": 0, "n_classes": 10,
                        "batch_size": 250, "n_iter": 100, "square_n_queries": 5000,
                        "apgd_n_restarts": None, "n_target_classes": None},
    label="AA", sanity="ensemble", build=_autoattack, derive=_aa_derived, caption=_aa_caption))
register_attack(AttackSpec(
    "transfer_pgd_trades", "transfer", {"crafted_on": "source"}, base="pgd_trades",
    label="Transfer_PGD_TRADES", tex_label=r"Transfer PGD\_TRADES"))
register_attack(AttackSpec(
    "transfer_cw_inf", "transfer", {"crafted_on": "source"}, base="cw_inf",
    label="Transfer_CW_inf", tex_label=r"Transfer CW$_\infty$"))
register_attack(AttackSpec(
    "noise", "sanity", {"impl": "ciard_bench.attacks.UniformNoise", "distribution": "uniform",
                        "draws": 20},
    label="Noise", sanity="noise",
    build=lambda model, s, state_path=None: UniformNoise(model, eps=s["eps"], draws=s["draws"]),
    caption=lambda s: f"Noise: uniform in the eps ball, {s['draws']} draws per point"))
