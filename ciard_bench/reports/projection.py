"""What a rehearsal's measurements project for the real cells: seconds of a step, of a
cell's training, per-epoch evaluations and final evaluation, peak memory and what makes
a cell fit a memory budget. :mod:`.rehearsal` writes them into the report.

Projections (all stated in the report):

* **a training step at the real batch B** (with ``--procs-per-cell N``, a process's step at
  its batch B / N; the processes' gradient all-reduce is not included): on a GPU the step
  measured at B; on a CPU
  ``seconds = b x batch`` fitted (least squares through the origin) to the median step
  times measured at batch 2 and 4, checked against the step measured at batch 8 (its error
  is reported);
* **peak memory at B**: on a GPU ``max_memory_allocated`` at B; on a CPU a line through the
  peak of every tensor the step holds (parameters, gradients, optimiser state,
  activations, temporaries: ``measure.LiveBytes``) at batch 2 and 4, checked at 8 (without
  the allocator's overhead, which a GPU adds);
* **a cell**: steps (``ceil(n_train / B) x epochs``) x seconds per step, plus the engine's
  per-epoch evaluation (clean + PGD_TRADES-20 on the per-epoch test points of every
  evaluated epoch), plus the final evaluation: every attack's forward and gradient passes
  per point (from its settings) x the measured seconds per pass x the test points, the
  sanity checks and the whole-test-set clean pass. Attack passes assume every point stays
  robust to the end (AutoAttack's cascade and the skip of misclassified points make the
  real cost lower): an upper bound. Transfer examples crafted once per source (the
  default) count their gradient passes on the source once, in the source cell's final
  evaluation, and one forward pass per point in each student's; crafted per student,
  every student counts the source's passes;
* **disk**: the rehearsal's ``last`` and ``best`` checkpoint files of each trained cell are
  the real cell's sizes (the same architectures, method state and optimiser state);
* **memory budgets**: a cell whose projected peak exceeds a budget gets the first setting
  that fits: ``--amp bf16`` (activations assumed halved, the fp32 model state kept), a
  smaller per-process batch (N processes per cell, B / N each), or both.
"""
from __future__ import annotations

import math
from typing import Any

from ..attacks import attack_settings, get_attack
from ..config import resolve
from ..data import load_dataset
from ..grid import runner, store, transfers
from ..grid.cells import Cell, Grid
from ..runs import local_dataset

GB = 1e9
TEST_SIZES = {"cifar10": 10000, "cifar100": 10000, "tiny_imagenet": 10000, "digits": 359}
SANITY_PASSES = (6 * 20, 20)     # eps sweep (6 radii x PGD-20) and uniform noise (20 draws)
BF16_ACTIVATIONS = 0.5           # assumed: autocast stores activations in half the bytes


def line(points: dict[str, float]) -> tuple[float, float]:
    """``(a, b)`` of ``y = a + b x`` through the measured ``{batch: y}`` (least squares)."""
    xs = [float(k) for k in points]
    ys = list(points.values())
    if len(xs) == 1:
        return 0.0, ys[0] / xs[0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def through_origin(points: dict[str, float]) -> float:
    """``b`` of ``y = b x`` through the measured ``{batch: y}`` (least squares)."""
    return sum(float(k) * y for k, y in points.items()) / sum(float(k) ** 2 for k in points)


def _at(measured: dict, key: str, batch: int) -> tuple[float, dict | None]:
    """The value of ``key`` at ``batch`` (measured, or on the fitted line) and the check of
    the line against the batch not used to fit it. Seconds (``s``, ``*_s``) go through the origin:
    a small batch's timing on a shared CPU is too noisy to fix an intercept (two points
    gave negative slopes), and a step's fixed cost is small beside a full batch's;
    memory (deterministic) gets its intercept, the model state."""
    rows = measured["batch"]
    if str(batch) in rows and rows[str(batch)][key] is not None:
        return float(rows[str(batch)][key]), None
    points = {k: rows[str(k)][key] for k in measured["fit"]}
    a, b = (0.0, through_origin(points)) if key == "s" or key.endswith("_s") else line(points)
    check = None
    for k in measured["check"]:
        got, want = rows[str(k)][key], a + b * k
        if got:
            check = {"batch": k, "measured": got, "projected": want,
                     "error_pct": 100.0 * (want - got) / got}
    return a + b * batch, check


def step_projection(measured: dict) -> dict[str, Any]:
    """Seconds and peak bytes of one step at the real batch (see the module docstring)."""
    b, rows = measured["real_batch"], measured["batch"]
    seconds, s_check = _at(measured, "s", b)
    peak, m_check = _at(measured, "peak_bytes", b)
    slope = line({k: rows[str(k)]["peak_bytes"] for k in measured["fit"]})[1] \
        if len(measured["fit"]) > 1 else 0.0
    state = rows[str(max(measured["fit"]))]["state_bytes"]
    procs = measured.get("procs", 1)
    how = (f"measured at batch {b} on {measured['device']}" if str(b) in rows else
           f"line through batches {', '.join(map(str, measured['fit']))} on "
           f"{measured['device']}, checked at {', '.join(map(str, measured['check']))}")
    if procs > 1:
        how += f" (a process of {procs}; their gradient all-reduce not included)"
    return {"batch": b, "procs": procs, "s": seconds, "peak_bytes": peak, "state_bytes": state,
            "activation_bytes": max(peak - state, 0.0), "activation_bytes_per_point": slope,
            "how": how, "time_check": s_check, "memory_check": m_check}


def fit_budget(step: dict, budget_gb: float) -> dict[str, Any]:
    """Whether the step fits ``budget_gb`` and, if not, the first setting that does."""
    state, act, per_point = step["state_bytes"], step["activation_bytes"], \
        step["activation_bytes_per_point"]
    if step["peak_bytes"] <= budget_gb * GB:
        return {"fits": True}
    out = {"fits": False}
    if state > budget_gb * GB:
        out["setting"] = (f"none: the model state alone is {state / GB:.1f} GB (needs sharding, "
                          "which ciard-bench does not do)")
        return out
    # fewest GPUs first, and on each count bf16 only when fp32 does not fit; ``n`` times the
    # processes the step was measured with (``procs``: its batch is a process's)
    procs = step.get("procs", 1)
    for n, amp in ((1, True), (2, False), (2, True), (4, False), (4, True), (8, False), (8, True)):
        if step["batch"] % n:
            continue
        less = act - per_point * (step["batch"] - step["batch"] / n)
        need = state + max(less, 0.0) * (BF16_ACTIVATIONS if amp else 1.0)
        if need <= budget_gb * GB:
            parts = (["--amp bf16"] if amp else []) + (
                [f"{n * procs} processes per cell (batch {step['batch'] // n} each)"]
                if n > 1 else [])
            out.update(setting=" + ".join(parts), projected_gb=need / GB)
            return out
    out["setting"] = "none found up to bf16 and 8 processes"
    return out


def attack_passes(name: str, eps: float, n_classes: int, overrides: dict) -> dict[str, float]:
    """Passes per point of an attack that runs to its end: gradient and forward passes on
    the model, gradient passes on the transfer source."""
    s = attack_settings(name, eps, **({"n_classes": n_classes} if name.startswith("aa")
                                      or name == "square_aa" else {}), **overrides)
    if get_attack(name).kind == "transfer":
        return {"gradient": 0.0, "forward": 1.0, "source": float(s["steps"])}
    if s["impl"] == "pyautoattack.AutoAttack":
        grads, fwds, it = 0.0, 1.0, s["n_iter"]
        for sub in s["attacks"]:
            if sub in ("apgd-ce", "apgd-dlr"):
                grads += it * s["apgd_n_restarts"]
            elif sub == "apgd-t":
                grads += it * s["apgd_t_n_target_classes"]
            elif sub == "fab-t":
                grads += it * s["fab_t_n_target_classes"] * s.get("fab_n_restarts", 1)
            elif sub == "fab":
                grads += it * n_classes
            elif sub == "square":
                fwds += s["square_n_queries"]
        return {"gradient": grads, "forward": fwds, "source": 0.0}
    if s["impl"] == "torchattacks.Square":
        return {"gradient": 0.0, "forward": 1.0 + s["n_queries"] * s["n_restarts"], "source": 0.0}
    return {"gradient": float(s.get("steps", 1)), "forward": 1.0, "source": 0.0}


def _per_point(passes: dict | None, eval_batch: int) -> dict[str, float]:
    """Seconds per point of a forward and a gradient pass at the evaluation's batch."""
    if not passes:
        return {"forward": math.nan, "gradient": math.nan}
    return {kind: _at(passes, f"{kind}_s", eval_batch)[0] / eval_batch
            for kind in ("forward", "gradient")}


def _sizes(cfg: Any) -> tuple[int, int]:
    """(training points, test points) of the real dataset."""
    name = cfg.dataset
    if name in TEST_SIZES:
        n_train = runner.TRAIN_SIZES[name]
        return cfg.n_train or n_train, TEST_SIZES[name]
    data = load_dataset(name, root=cfg.data_root)
    return cfg.n_train or len(data.y_train), len(data.y_test)


def cell_projection(real: Grid, grid: Grid, cell: Cell, real_cell: Cell,
                    records: dict[str, dict]) -> dict[str, Any]:
    """Seconds the real cell will take on the rehearsal's device (module docstring)."""
    record, eval_batch = records[cell.id], real.preset.eval_batch_size
    own = _per_point(record.get("passes"), eval_batch)
    out: dict[str, Any] = {"train_s": 0.0, "epoch_eval_s": 0.0}
    if real_cell.trained and "measured" in record:
        cfg = resolve(real_cell.config)
        step = step_projection(record["measured"])
        n_train, n_test_all = _sizes(cfg)
        steps = math.ceil(n_train / cfg.batch_size) * cfg.epochs
        epochs = [e for e in range(1, cfg.epochs + 1) if e == cfg.epochs or (
            e >= cfg.eval_from and e % cfg.eval_every == 0)]
        models = [own] + ([_per_point(records.get(t, {}).get("passes"), eval_batch)
                           for t in cell.needs] if cfg.eval_teachers else [])
        out.update(step=step, steps=steps, train_s=steps * step["s"],
                   epoch_eval_s=len(epochs) * (cfg.n_test or n_test_all) * sum(
                       m["forward"] + 20 * m["gradient"] for m in models))
    out.update(_evaluation(real, grid, cell, real_cell, records, own))
    out["total_s"] = out["train_s"] + out["epoch_eval_s"] + out["eval_s"]
    return out


def _evaluation(real: Grid, grid: Grid, cell: Cell, real_cell: Cell, records: dict[str, dict],
                own: dict[str, float]) -> dict[str, Any]:
    """The final evaluation's projection: every attack, the clean passes, the sanity checks."""
    p = real.preset
    data_cfg = real_cell.config or next(c.config for c in real.cells
                                        if c.dataset == real_cell.dataset and c.config)
    _, n_test_all = _sizes(resolve(data_cfg))
    classes = _classes(grid, cell)
    n = min(p.n_examples or n_test_all, n_test_all)
    eps = real_cell.config.eps if real_cell.config else 8 / 255
    source = _per_point(records.get(cell.source, {}).get("passes"), p.eval_batch_size) \
        if cell.source else {}
    ran = (store.read_json(store.eval_path(grid, cell, p.checkpoint)) or {}).get("attacks", {})
    shared = transfers.transfer_mode(real) == "per_source"
    attacks = {}
    for name in real_cell.attacks:
        k = attack_passes(name, eps, classes, p.attack_overrides.get(name, {}))
        if shared and k["source"]:      # crafted in the source's evaluation (below)
            k = {**k, "source": 0.0}
        per_point = (k["gradient"] * own["gradient"] + k["forward"] * own["forward"]
                     + (k["source"] * source.get("gradient", math.nan) if k["source"] else 0.0))
        attacks[name] = {"passes": k, "s_per_point": per_point, "s": n * per_point,
                         "rehearsal": {key: ran.get(name, {}).get(key)
                                       for key in ("time_s", "n_attacked")}}
    crafting = {}
    if shared:      # this cell as a source: each transfer attack crafted once, on every point
        used = dict.fromkeys(a for c in real.cells if c.source == real_cell.id
                             for a in c.attacks if get_attack(a).kind == "transfer")
        for name in used:
            k = attack_passes(name, eps, classes, p.attack_overrides.get(name, {}))
            crafting[name] = {"gradient_passes": k["source"],
                              "s": n * k["source"] * own["gradient"]}
    extra = own["forward"] * n + (own["forward"] * n_test_all if n < n_test_all else 0.0)
    if real_cell.kind != "ablation":
        m = min(p.sanity_examples, n)
        extra += m * (SANITY_PASSES[0] * own["gradient"] + SANITY_PASSES[1] * own["forward"])
    return {"eval_points": n, "attacks": attacks,
            **({"transfer_crafting": crafting} if crafting else {}),
            "eval_s": sum(a["s"] for a in attacks.values()) + extra
            + sum(c["s"] for c in crafting.values())}


def _classes(grid: Grid, cell: Cell) -> int:
    name = local_dataset(cell.dataset, grid.results)
    return store.cached_dataset(name, grid.settings["data_root"], False).num_classes
