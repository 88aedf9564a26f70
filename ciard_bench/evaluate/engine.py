"""The evaluation engine: attacks in batches, per-example results, sanity checks.

:func:`evaluate` takes a model and the first ``n_examples`` test points (RobustBench's
convention) and returns one JSON-ready dict: per attack the accuracy (percent) with a 95 %
Wilson interval, W-R = (clean + robust) / 2, per-example correctness as a 0/1 string in
test-set order, timing and every setting; the per-example worst case over the white-box
attacks; the sanity checks of :mod:`ciard_bench.sanity`.

Conventions. A point counts as robust when it is classified correctly clean AND under the
attack (RobustBench / AutoAttack). So attacks skip points misclassified clean
(``skip_misclassified=True``, the default): the result cannot change and the cost falls with
accuracy. The remaining points are attacked in order, ``batch_size`` at a time, after
``seed_everything(seed)`` for each attack: running a torchattacks attack on those points in
those batches with the same seed gives the same examples. ``skip_misclassified=False``
attacks every point (torchattacks' own ``attack(x, y)`` on full batches).

Extra sanity cost (``expensive_checks``, on the first ``sanity_examples`` points): an eps
sweep of PGD-20 (eps in {0, 2, 4, eps, 16, 128}/255, step max(2/255, 2.5 eps/20)), i.e.
6 x 20 forward+backward passes per point, and uniform noise (20 forward passes per point).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .. import plugins, sanity
from ..attacks import PROTOCOL, AutoAttackAdapter, create_attack, get_attack, list_attacks
from ..checkpoint import atomic_write_json
from ..errors import UserError, choices_error
from ..faults import kill_point
from ..utils import eval_mode, seed_everything, tensor_sha256
from . import transfer as transfer_mod
from .scoring import decode_mask, encode_mask, predict, wilson  # noqa: F401  (public here too)
from .scoring import entry as _entry
from .reuse import reusable_attacks

log = logging.getLogger(__name__)

FORMAT = "ciard-bench/eval/1"
SWEEP_EPS = (0.0, 2 / 255, 4 / 255, 16 / 255, 128 / 255)  # + the evaluation eps
SWEEP_STEP_SCALE = 2.5  # Madry et al.: step = 2.5 eps / steps, so large eps are reachable
DEFAULT_ATTACKS = ("fgsm", "pgd_sat", "pgd_trades", "cw_inf", "aa", "square")


@dataclass
class Options:
    """How to run the attacks (shared by :func:`evaluate` and :func:`robustness_curve`)."""

    eps: float = 8 / 255
    batch_size: int = 128
    seed: int = 0
    n_classes: int = 10
    device: Any = "cpu"
    skip_misclassified: bool = True
    source: torch.nn.Module | None = None
    aa_state: Any = None
    overrides: dict = field(default_factory=dict)
    progress: bool = False
    transfer: str = transfer_mod.DEFAULT
    transfer_examples: Any = None    # name -> (examples on every point, info); per_source


def resolve_attacks(spec: str | Sequence[str], with_source: bool = False) -> list[str]:
    """``"all"`` | ``"pgd_sat,aa"`` | a list -> attack names. ``all`` = white-box + square,
    plus the transfer attacks when a source model is given."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    plugins.load()          # a plugin's attacks are in PROTOCOL from here on
    for name in filter(None, names):
        if name == "all":
            out += list(DEFAULT_ATTACKS) + (list_attacks("transfer") if with_source else [])
        elif name not in PROTOCOL:
            raise choices_error("attack", name, list_attacks() + ["all"])
        else:
            out.append(name)
    if not out:
        raise UserError("no attack given; accepted: all, or a comma list of "
                        + ", ".join(list_attacks()))
    return list(dict.fromkeys(out))


@contextmanager
def _captured_warnings(logger_name: str) -> Iterator[list[str]]:
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda rec: records.append(rec.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def run_attack(attack: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               clean_ok: torch.Tensor, opt: Options, desc: str = "") -> dict:
    """Attack the points ``skip_misclassified`` leaves; per-example robustness and x_adv."""
    idx = clean_ok.nonzero().flatten() if opt.skip_misclassified else torch.arange(len(y))
    extra: dict = {}
    if isinstance(attack, AutoAttackAdapter):  # one call: AA batches itself and keeps its state
        with _captured_warnings("auto-attack") as warns:
            x_adv = attack(x[idx], y[idx]).cpu() if len(idx) else x[:0]
        flags = attack.robust_flags.cpu() if len(idx) else torch.zeros(0, dtype=torch.bool)
        trusted = ~attack.from_state.cpu() if len(idx) else flags
        extra = {"sub_robust": dict(attack.sub_robust), "resumed_after": list(attack.restored),
                 "aa_warnings": warns}
    else:
        chunks = [attack(x[j].to(opt.device), y[j].to(opt.device)).detach().cpu()
                  for j in tqdm(idx.split(opt.batch_size), desc=desc, leave=False,
                                disable=not opt.progress) if len(j)]
        x_adv = torch.cat(chunks) if chunks else x[:0]
        flags = trusted = None
    scored = predict(model, x_adv, opt.batch_size, opt.device) == y[idx]
    # re-score in other batches: catches batch-dependent (train-mode BN) or random models
    rescored = predict(model, x_adv, max(1, opt.batch_size // 2), opt.device) == y[idx]
    reported = scored if flags is None else flags  # AutoAttack's own verdict when it has one
    ok = torch.zeros(len(y), dtype=torch.bool)
    ok[idx] = scored if flags is None else scored & flags
    return {"ok": ok & clean_ok, "idx": idx, "x_adv": x_adv, "reported": reported,
            "rescored": rescored, "trusted": trusted, "extra": extra}


def _evaluate_attack(name: str, model, x, y, clean_ok, clean_acc: float, opt: Options):
    if opt.transfer == transfer_mod.PER_SOURCE and get_attack(name).kind == "transfer":
        return transfer_mod.evaluate_transfer(name, model, x, y, clean_ok, clean_acc, opt)
    seed_everything(opt.seed)
    over = dict(opt.overrides.get(name, {}))
    if "batch_size" in PROTOCOL[name]:  # AutoAttack batches itself: use ours
        over.setdefault("batch_size", opt.batch_size)
    attack = create_attack(name, model, eps=opt.eps, n_classes=opt.n_classes, seed=opt.seed,
                           source=opt.source, state_path=opt.aa_state if name == "aa" else None,
                           **over)
    start = time.perf_counter()
    res = run_attack(attack, model, x, y, clean_ok, opt, desc=name)
    elapsed = time.perf_counter() - start
    entry = {"name": name, "kind": attack.settings["kind"], **_entry(res["ok"], clean_acc),
             "n_attacked": len(res["idx"]), "time_s": elapsed,
             "time_per_attacked_s": elapsed / max(1, len(res["idx"])),
             "settings": {**attack.settings, "seed": opt.seed,
                          **({"examples": transfer_mod.PER_STUDENT}
                             if attack.settings["kind"] == "transfer" else {})}}
    if res["extra"].get("sub_robust") is not None:
        res["extra"]["sub_accuracy"] = {k: 100.0 * v / len(y)
                                        for k, v in res["extra"]["sub_robust"].items()}
    entry.update(res["extra"])
    keep = res["trusted"] if res["trusted"] is not None else slice(None)
    checks = [sanity.check_perturbation(name, x[res["idx"]], res["x_adv"], opt.eps),
              sanity.check_rescore(name, res["reported"][keep], res["rescored"][keep])]
    return entry, res["ok"], checks


def _fingerprint(model, x, y, clean_ok, names, opt: Options) -> str:
    """What a cached attack result depends on: model outputs, points, every setting."""
    with torch.no_grad():
        probe = model(x[:8].to(opt.device)).float().cpu()
        # the transfer attacks' examples depend on the source model: probe it too
        source = None if opt.source is None else opt.source(x[:8].to(opt.device)).float().cpu()
    blob = json.dumps({"eps": opt.eps, "seed": opt.seed, "n": len(y), "skip": opt.skip_misclassified,
                       "transfer": opt.transfer,
                       "batch_size": opt.batch_size, "overrides": opt.overrides, "n_classes": opt.n_classes,
                       "clean": encode_mask(clean_ok), "y": tensor_sha256(y), "x": tensor_sha256(x),
                       "probe": [round(v, 4) for v in probe.flatten().tolist()],
                       "source": None if source is None else [round(v, 4) for v in source.flatten().tolist()]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_cache(path: Any, key: str) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError:
        return {}
    if data.get("key") != key:
        log.warning("ignoring %s: it was written for other points, model or settings", path)
        return {}
    return data.get("attacks", {})


def _restores_modes(fn):
    """Run ``fn(model, ..., source=...)`` with the model (and source) in eval mode, and give
    every submodule its own train/eval mode back on every exit, exceptions included: a caller
    inside a training loop must not continue with BatchNorm frozen."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with eval_mode(model, kwargs.get("source")):
            return fn(model, *args, **kwargs)
    return wrapper


@_restores_modes
def robustness_curve(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     eps_list: Sequence[float], attack: str = "pgd_trades", *,
                     batch_size: int = 128, seed: int = 0, n_classes: int | None = None,
                     device: Any = None, step_scale: float | None = None,
                     progress: bool = False, **overrides: Any) -> dict:
    """Accuracy (percent) of ``attack`` at each eps of ``eps_list`` on ``x, y``: plot data.

    The attack keeps its protocol settings; with ``step_scale`` its step becomes
    ``max(protocol step, step_scale * eps / steps)`` so that large radii are reachable.
    """
    device = device if device is not None else _model_device(model)
    if len(y) == 0:   # an accuracy of no points is no number (it would be NaN in the JSON)
        raise UserError("robustness_curve: no points given; accepted: at least one point")
    clean_ok = predict(model, x, batch_size, device) == y
    n_classes = n_classes or int(model(x[:1].to(device)).shape[1])
    accs, settings = [], []
    for eps in eps_list:
        over = dict(overrides)
        table = PROTOCOL[attack]
        if step_scale is not None and "alpha" in table and "steps" in table:
            steps = over.get("steps", table["steps"])
            over["alpha"] = max(table["alpha"], step_scale * eps / steps)
        opt = Options(eps=float(eps), batch_size=batch_size, seed=seed, n_classes=n_classes,
                      device=device, progress=progress)
        seed_everything(seed)
        atk = create_attack(attack, model, eps=float(eps), n_classes=n_classes, seed=seed, **over)
        accs.append(100.0 * run_attack(atk, model, x, y, clean_ok, opt)["ok"].float().mean().item())
        settings.append(atk.settings)
    return {"attack": attack, "eps": [float(e) for e in eps_list], "accuracy": accs,
            "clean": 100.0 * clean_ok.float().mean().item(), "n": len(y),
            "step_scale": step_scale, "alpha": [s.get("alpha") for s in settings], "seed": seed}


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def preflight_checks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     batch_size: int, n_classes: int, device: Any) -> list[dict]:
    """The cheap model checks (eval mode, deterministic, logits, input gradients) on the first
    ``min(n, batch_size, 64)`` points: what :func:`evaluate` checks before any attack."""
    head = x[:min(len(x), batch_size, 64)].to(device)
    with torch.no_grad():
        logits = model(head)
    return [sanity.check_eval_mode(model), sanity.check_deterministic(model, head),
            sanity.check_logits(logits, n_classes),
            sanity.check_gradients(model, head, y[:len(head)].to(device))]


def _expensive_checks(model, x, y, clean_ok, correct: dict, opt: Options, k: int):
    start, k = time.perf_counter(), min(k, len(y))
    xs, ys = x[:k], y[:k]
    eps_list = sorted({*SWEEP_EPS, opt.eps})
    curve = robustness_curve(model, xs, ys, eps_list, "pgd_sat", batch_size=opt.batch_size,
                             seed=opt.seed, n_classes=opt.n_classes, device=opt.device,
                             step_scale=SWEEP_STEP_SCALE)
    checks = sanity.check_eps_sweep(curve["eps"], curve["accuracy"], curve["clean"],
                                    opt.n_classes, k)
    seed_everything(opt.seed)
    noise = create_attack("noise", model, eps=opt.eps)
    sub_opt = Options(**{**opt.__dict__, "progress": False})
    noise_ok = run_attack(noise, model, xs, ys, clean_ok[:k], sub_opt)["ok"]
    noise_acc = 100.0 * noise_ok.float().mean().item()
    pgd = next((a for a in ("pgd_trades", "pgd_sat") if a in correct), None)
    pgd_acc = (100.0 * correct[pgd][:k].float().mean().item() if pgd
               else curve["accuracy"][curve["eps"].index(opt.eps)])
    checks.append(sanity.check_noise(noise_acc, pgd or "pgd_sat(sweep)", pgd_acc, k,
                                     noise.settings["draws"]))
    cost = {"n_points": k, "time_s": time.perf_counter() - start,
            "eps_sweep": f"{len(eps_list)} x PGD-20 (pgd_sat, step max(2/255, 2.5 eps/20))",
            "noise": f"uniform noise, {noise.settings['draws']} forward passes per point"}
    return checks, curve, cost


@_restores_modes
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             attacks: str | Sequence[str] = "all", eps: float = 8 / 255, *,
             batch_size: int = 128, seed: int = 0, n_classes: int | None = None,
             device: Any = None, source: torch.nn.Module | None = None,
             skip_misclassified: bool = True, expensive_checks: bool = True,
             sanity_examples: int = 100, aa_state: Any = None,
             overrides: dict | None = None, progress: bool = False, cache: Any = None,
             transfer: str = transfer_mod.DEFAULT, transfer_store: Any = None,
             source_id: str | None = None, reuse: dict | None = None) -> dict:
    """Run ``attacks`` on ``(x, y)`` (images in [0, 1]) and return the result dict.

    ``overrides`` maps an attack name to setting overrides (``{"aa": {"version": "custom",
    "attacks": ["apgd-ce"]}}``); ``aa_state`` is AutoAttack's resume file. With ``cache`` (a
    JSON path) every finished attack is recorded there at once, and a restarted evaluation
    of the same model, points and settings reuses those results instead of attacking again
    (AutoAttack itself resumes mid-cascade from ``aa_state``). ``model`` and ``source`` run
    in eval mode and get their own modes back afterwards, also when an attack raises.

    ``transfer`` (``per_source``, the default, or ``per_student``) says how the transfer
    attacks' examples are made (:mod:`.transfer`); per source, a ``transfer_store``
    (:class:`~.transfer.TransferStore`) with the source checkpoint's ``source_id`` keeps
    them for every other model scored on them, else they are crafted here, once per attack.

    ``reuse`` (:func:`.reuse.reuse_from` a stored result): attacks evaluated before on this
    model, points and settings, taken as they were instead of attacking again, and the
    expensive checks with them, only if this model's clean mask is the one they were scored
    against (the grid passes them when only the transfer examples' mode changed,
    :func:`ciard_bench.grid.keys.reusable`). The result lists the attacks under ``reused``.
    """
    start = time.perf_counter()
    device = torch.device(device) if device is not None else _model_device(model)
    names = resolve_attacks(attacks, with_source=source is not None)
    # contiguous: a permuted (channels-last) batch gives gradients pyautoattack cannot .view()
    x, y = x.detach().cpu().float().contiguous(), y.detach().cpu().long()
    if len(y) == 0 or (expensive_checks and sanity_examples < 1):
        raise UserError(f"nothing to evaluate: {len(y)} points, sanity_examples {sanity_examples}; "
                        "accepted: at least one point (and sanity_examples >= 1 with expensive checks)")
    with torch.no_grad():
        width = int(model(x[:1].to(device)).shape[1])
    if n_classes is not None and width != n_classes:
        raise UserError(f"the model has {width} outputs but the data has {n_classes} classes")
    opt = Options(eps=float(eps), batch_size=batch_size, seed=seed, n_classes=n_classes or width,
                  device=device, skip_misclassified=skip_misclassified, source=source,
                  aa_state=aa_state, overrides=dict(overrides or {}), progress=progress,
                  transfer=transfer_mod.check_mode(transfer))
    if source is not None:
        opt.transfer_examples = transfer_mod.examples_provider(source, x, y, opt, transfer_store,
                                                               source_id)
    checks = preflight_checks(model, x, y, batch_size=opt.batch_size, n_classes=opt.n_classes,
                              device=opt.device)
    clean_ok = predict(model, x, batch_size, device) == y
    clean = _entry(clean_ok)
    entries, correct = {}, {}
    key = _fingerprint(model, x, y, clean_ok, names, opt) if cache is not None else None
    reused = reusable_attacks(reuse, clean_ok, names)
    cached = {**reused, **_read_cache(cache, key)}
    for name in tqdm(names, desc="attacks", disable=not progress):
        if name in cached:
            entries[name], more = cached[name]["entry"], cached[name]["checks"]
            correct[name] = decode_mask(entries[name]["correct"])
            log.info("%s: %.2f%% (%s)", name, entries[name]["accuracy"],
                     "reused" if name in reused else f"cached in {cache}")
        else:
            entries[name], correct[name], more = _evaluate_attack(name, model, x, y, clean_ok,
                                                                  clean["accuracy"], opt)
            if cache is not None:
                cached[name] = {"entry": entries[name], "checks": more}
                atomic_write_json(cache, {"key": key, "attacks": cached})
                kill_point("attack_done")    # tests: a kill between two attacks
        checks += more
        log.info("%s: %.2f%% (%.1f s)", name, entries[name]["accuracy"], entries[name]["time_s"])
    kinds = {a: e["kind"] for a, e in entries.items()}
    checks += sanity.order_checks({a: e["accuracy"] for a, e in entries.items()}, correct,
                                  kinds, len(y))
    white = [a for a in names if kinds[a] == "white-box"]
    worst = clean_ok.clone()
    for a in white:
        worst &= correct[a]
    curve, cost = None, {"expensive_checks": expensive_checks}
    if expensive_checks:
        if reused and reuse.get("expensive"):   # they depend on the model, points, settings
            sweep = reuse["expensive"]
            more, curve, sweep_cost = sweep["checks"], sweep["curve"], sweep["cost"]
        else:
            more, curve, sweep_cost = _expensive_checks(model, x, y, clean_ok, correct, opt,
                                                        sanity_examples)
        checks += more
        cost.update(sweep_cost)
    notes = [] if source is not None or "all" not in str(attacks) else [
        "transfer attacks skipped: no --source model given"]
    return {"format": FORMAT, "n_examples": len(y), "eps": opt.eps, "seed": seed,
            "batch_size": batch_size, "n_classes": opt.n_classes, "device": str(device),
            "skip_misclassified": skip_misclassified,
            "robust_convention": "robust = correct on the clean point and on the attacked point",
            "correct_encoding": "one character per example in test-set order, 1 = correct",
            "clean": clean, "attacks": entries,
            "worst_case_white_box": {"attacks": white, **_entry(worst, clean["accuracy"])},
            "robustness_curve": curve, "sanity": {**sanity.summarize(checks), "cost": cost},
            "notes": notes, "time_s": time.perf_counter() - start,
            **({"reused": sorted(reused)} if reused else {}),
            **({"plugins": used} if (used := plugins.provenance(attack=names)) else {})}
