"""``python -m ciard_bench.tables``: build the grid, train and evaluate what is missing,
write the tables and figures. See :mod:`ciard_bench.tables` for the results layout."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path

import torch

from ..errors import ArgumentParser, UserError, cli_main
from ..utils import positive_int
from ..grid import launchers, migrate, rehearsal, runner, slurm, store, transfers
from ..reports import figures, render
from ..reports import rehearsal as rehearsal_report
from ..reports.frames import all_tables
from ..grid.cells import build_grid, parse_shard, select_kinds, shard_cells
from ..grid.presets import Preset, get_preset, list_presets
from ..reports.html import write_report

log = logging.getLogger("ciard_bench.tables")


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m ciard_bench.tables",
                       description="The paper's Tables 2-7 (and AutoAttack) from real runs: "
                       "trains what is missing, evaluates, renders.")
    p.add_argument("--preset", default="smoke",
                   help=f"{' | '.join(list_presets())} (default smoke)")
    p.add_argument("--results-dir", help="results folder (default results/<preset>; runs go to "
                   "<results>/runs/)")
    p.add_argument("--dry-run", action="store_true", help="print the grid, what is done and an "
                   "estimate of the compute left; run nothing")
    p.add_argument("--rehearse", action="store_true", help="every cell through its real code "
                   "path for a few steps and test points, its cost measured and projected; "
                   "writes <results>-rehearsal/ (rehearsal.md, rehearsal.json), never results")
    p.add_argument("--memory-budget", metavar="GB", help="with --rehearse: also name the cells "
                   "whose projected peak memory exceeds GB, and a setting that fits (24, 40 and "
                   "80 are always shown)")
    p.add_argument("--render-only", action="store_true", help="train nothing: render the tables "
                   "from what the results folder holds (missing cells are marked)")
    p.add_argument("--migrate-paths", action="store_true", help="once, for a results folder "
                   "written before results folders could move: rewrite the absolute paths its "
                   "records name the grid's teachers by (and each cell's out) relative to the "
                   "folder, and the page likewise; nothing else changes, nothing is run")
    p.add_argument("--shard", help="i/n: run only every n-th cell starting at i (0 <= i < n)")
    p.add_argument("--only", type=_csv, help="cell kinds to run: teacher,student,ablation "
                   "(with --shard: run --only teacher first)")
    p.add_argument("--dataset", type=_csv, help="datasets instead of the preset's (comma list; "
                   "cifar10, cifar100, digits, tiny_imagenet, npz:PATH)")
    p.add_argument("--students", type=_csv, help="resnet18,mobilenet_v2 (default both)")
    p.add_argument("--methods", type=_csv, help="table rows to run: registered method names "
                   "(a plugin's too; one beyond the paper's ten is a row of table_beyond), or "
                   "all = every registered method (default: the preset's)")
    p.add_argument("--checkpoint", choices=("best", "last"), help="checkpoint the tables "
                   "evaluate (default: the preset's, best as the released code)")
    p.add_argument("--transfer-examples", metavar="per-source|per-student",
                   help="per-source: craft each transfer attack's examples once on the source, "
                   "on every point, and score every student on them (a new results folder's "
                   "default); per-student: craft them again for each student on the points it "
                   "classifies correctly, as the released script (the default of a folder "
                   "evaluated that way before). docs/protocol.md#transfer-examples")
    p.add_argument("--clean-teacher", help="clean teacher spec for every dataset (PATH | "
                   "ARCH=PATH | rb:NAME) instead of the preset's")
    p.add_argument("--robust-teacher", help="robust teacher spec, likewise")
    p.add_argument("--model-dir", default="models", help="RobustBench model_dir for rb: teachers")
    p.add_argument("--data-root", default="data")
    p.add_argument("--download", action="store_true", help="download missing datasets")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--workers", help="cells run side by side, one process each (default: on CPU "
                   "the usable cores / --threads, on CUDA 1)")
    p.add_argument("--threads", help="torch CPU threads per worker (default 1 on CPU: tiny "
                   "models gain little from a second thread and lose 10-50x when another "
                   "process holds the core it spins on)")
    p.add_argument("--seeds", help="seeds every cell is trained with (default: the preset's); "
                   "tables show mean +- std over seeds")
    p.add_argument("--compare-paper", action=argparse.BooleanOptionalAction, default=None,
                   help="write tableN_vs_paper.* (default: on for the paper preset)")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--verbose", action="store_true", help="also log epochs and attacks")
    o = p.add_argument_group("reductions (recorded in grid.json and the captions)")
    o.add_argument("--epochs", help="student epochs instead of the preset's")
    o.add_argument("--teacher-epochs", help="epochs of the teachers the pipeline trains")
    o.add_argument("--n-train", help="training points of every run")
    o.add_argument("--n-test", help="test points of the per-epoch evaluation")
    o.add_argument("--n-examples", help="test points of the final evaluation")
    o.add_argument("--sanity-examples", help="points of the eps sweep (robustness curves)")
    _launcher_arguments(p)
    return p


def _launcher_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("launchers (README: Tables)")
    g.add_argument("--launcher", choices=launchers.LAUNCHERS, default="local",
                   help="local: worker processes on this machine (default); slurm: one SLURM "
                   "job per cell's training and evaluation, through submitit")
    g.add_argument("--devices", help="local: cuda:0,cuda:1,... one worker pinned to each "
                   "device, or cpu (with --workers N)")
    g.add_argument("--procs-per-cell", help="train each cell on N processes through torchrun "
                   "(local: N of --devices per cell, or N CPU processes; slurm: N processes in one "
                   "job, give it N GPUs); evaluation stays one process (default 1)")
    g.add_argument("--status", action="store_true", help="print every cell's state (store) and "
                   "SLURM job (squeue), one line per cell, and exit")
    s = p.add_argument_group("--launcher slurm (each job; default: the partition's)")
    s.add_argument("--partition")
    s.add_argument("--gpus-per-job")
    s.add_argument("--cpus-per-job", help="CPUs per job, also its torch threads (default 1)")
    s.add_argument("--mem", help="memory per job, sbatch's format (16G)")
    s.add_argument("--time", help="time limit per job (MINUTES, HH:MM:SS, D-HH:MM:SS); a job "
                   "at its limit requeues and resumes (default: the partition's)")
    s.add_argument("--account")
    s.add_argument("--qos")
    s.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE",
                   help="any other sbatch option, repeatable (constraint=a100)")
    s.add_argument("--wait", action="store_true", help="wait for the jobs, then render")


def apply_overrides(preset: Preset, args: argparse.Namespace) -> tuple[Preset, dict]:
    """The preset with the reduction flags applied, and what was changed."""
    changed = {k: positive_int(getattr(args, k), "--" + k.replace("_", "-"))
               for k in ("epochs", "teacher_epochs", "n_train", "n_test", "n_examples",
                         "sanity_examples") if getattr(args, k) is not None}
    train = {**preset.train, **{k: v for k, v in changed.items()
                                if k in ("epochs", "n_train", "n_test")}}
    teach = {k: v for k, v in changed.items() if k in ("n_train", "n_test")}
    if "teacher_epochs" in changed:
        teach["epochs"] = changed["teacher_epochs"]
    teachers = {d: {r: dataclasses.replace(t, train={**t.train, **teach}) if t.spec is None else t
                    for r, t in plans.items()} for d, plans in preset.teachers.items()}
    values = {"train": train, "teachers": teachers}
    for key in ("n_examples", "sanity_examples"):
        if key in changed:
            values[key] = changed[key]
    # the rows, datasets and students a cut grid has instead of the preset's (a plugin's
    # method among them): said in the captions, which otherwise name the preset's own
    for key, given, own in (("methods", args.methods, preset.methods),
                            ("datasets", args.dataset, preset.datasets),
                            ("students", args.students, tuple(preset.students))):
        if given and tuple(given) != tuple(own):
            changed[key] = "+".join(given)
    if args.checkpoint:
        values["checkpoint"] = args.checkpoint
    if "epochs" in changed:  # the preset's notes describe its own schedule
        values["table_notes"] = {}
    if changed:
        values["reductions"] = preset.reductions + "; overrides: " + ", ".join(
            f"{k}={v}" for k, v in changed.items())
    return preset.with_overrides(**values), changed


def _dry_run(grid, cells, which: str) -> int:
    est = runner.estimate(grid, cells, which)
    print(f"preset {grid.preset.name}: {len(grid.cells)} cells, {len(cells)} selected; "
          f"results in {grid.results}")
    print(f"{'cell':<44}{'status':<9}{'steps left':>11}{'train s':>10}{'eval s':>9}")
    for row in est["cells"]:
        print(f"{row['id']:<44}{row['status']:<9}{row.get('steps_left', 0):>11}"
              f"{row['train_s']:>10.0f}{row['eval_s']:>9.0f}")
    basis = " and ".join(est["basis"]) or "nothing left"
    print(f"compute left: about {est['total_s'] / 60:.1f} min ({basis}; assumed s/step and "
          f"s/evaluation when nothing measured yet: {est['assumed']})")
    return 0


def _render(grid, which: str, compare: bool, with_figures: bool) -> list[Path]:
    written = []
    # tables of the preset's own checkpoint keep the plain names; the other get a suffix
    suffix = "" if which == get_preset(grid.preset.name).checkpoint else f"_{which}"
    for table in all_tables(grid, which):
        text = render.caption(grid, table, which)
        written += render.write_table(table, text, grid.results, suffix)
        if compare:
            frame = render.comparison(table, grid)
            if len(frame):
                cmp = dataclasses.replace(table, name=f"{table.name}_vs_paper", highlight=False, samples={},
                                          frame=frame.set_index(["row", "dataset", "attack",
                                                                 "metric"]))
                written += render.write_table(cmp, "The paper's printed numbers beside ours "
                                              "(diff = ours - paper). " + text, grid.results,
                                              suffix)
    if with_figures:
        written += figures.training_curves(grid, grid.results)
        written += figures.robustness_curves(grid, grid.results, which, suffix)
        written += figures.seed_spread(grid, grid.results, which, suffix)
    return written


def _slurm_options(args: argparse.Namespace) -> slurm.SlurmOptions:
    def count(flag: str) -> int | None:
        value = getattr(args, flag)
        return None if value is None else positive_int(value, "--" + flag.replace("_", "-"))
    return slurm.check_cluster(slurm.SlurmOptions(
        partition=args.partition, gpus_per_job=count("gpus_per_job"),
        cpus_per_job=count("cpus_per_job") or 1, mem=args.mem, account=args.account,
        qos=args.qos, time_min=slurm.parse_time(args.time) if args.time else None,
        extra=slurm.parse_extra(args.slurm_extra)))


def _launch_slurm(args: argparse.Namespace, grid, cells, which: str) -> bool:
    """Submit what is neither done nor queued; True when the tables are to be rendered
    now (nothing left queued: all done, or --wait waited for the jobs)."""
    options = _slurm_options(args)
    # under the store lock: two submissions started at once on one folder take turns, and
    # the second sees the first one's jobs as queued instead of submitting them again
    with store.store_lock(grid.results):
        launchers.claim_slurm(grid.results)
        store.write_grid(grid, which, {c.id for c in cells})
        summary = slurm.submit(grid, cells, which, options)
    for task, jid in summary["submitted"].items():
        print(f"submitted: {task}: job {jid}")
    for task, jid in summary["queued"].items():
        print(f"already queued: {task}: job {jid}")
    for text in summary["blocked"]:
        print(f"blocked: {text}")
    print(f"{grid.preset.name}: submitted {len(summary['submitted'])} jobs, "
          f"{len(summary['queued'])} already queued, {summary['done']} cells done, "
          f"{len(summary['blocked'])} tasks blocked; logs in {grid.results}/runs/<cell>/slurm/")
    if not (summary["submitted"] or summary["queued"]):
        return True
    if not args.wait:
        print(f"watch: python -m ciard_bench.tables --preset {grid.preset.name} --results-dir "
              f"{grid.results} --status (with the same grid flags), or squeue --me; rerun "
              "the same command to render the tables once the jobs are done")
        return False
    slurm.wait(grid)
    return True


def _run(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    launchers.check_flags(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for name in ("ciard_bench.train", "ciard_bench.evaluate", "ciard_bench.attacks"):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.WARNING)
    start = time.perf_counter()
    preset, changed = apply_overrides(get_preset(args.preset), args)
    shard = parse_shard(args.shard)
    results = Path(args.results_dir or Path("results") / preset.name)
    if args.migrate_paths:
        return _migrate(results)
    if args.launcher == "slurm":     # jobs may start in another working directory
        results = results.resolve()
    device, devices = launchers.local_devices(args.devices, args.device, args.workers)
    procs = launchers.procs_per_cell(args.procs_per_cell, devices, args.gpus_per_job)
    devices = launchers.device_groups(devices, procs)
    workers, threads = launchers.parallelism(device, args.workers if devices is None else
                                   str(len(devices)), args.threads)
    if devices and args.threads is None:     # the cores shared among the GPU workers
        threads = max(1, launchers.usable_cores() // workers)
    if procs > 1 and devices is None and args.workers is None:   # each cell takes procs cores
        workers = max(1, workers // procs)
    torch.set_num_threads(threads)
    specs = {k: v for k, v in (("clean", args.clean_teacher), ("robust", args.robust_teacher)) if v}
    grid = build_grid(preset, results, datasets=args.dataset, students=args.students,
                      methods=args.methods, teacher_specs=specs,
                      settings={"device": device, "data_root": args.data_root,
                                "download": args.download, "model_dir": args.model_dir,
                                "overrides": changed,
                                "transfer_examples": transfers.folder_transfer_mode(
                                    results, store.read_json(results / "grid.json"),
                                    args.transfer_examples),
                                **({"procs_per_cell": procs} if procs > 1 else {})},
                      seeds=args.seeds)
    which = preset.checkpoint
    if args.dry_run:
        return _dry_run(grid, shard_cells(select_kinds(grid.cells, args.only), shard), which)
    real = plan = None
    if args.rehearse:
        budgets = _budgets(args.memory_budget)
        real, (grid, plan) = grid, rehearsal.prepare(grid, rehearsal.folder_for(results), specs)
        grid.settings["rehearse"]["launcher"] = args.launcher
        results = grid.results
        log.info("rehearsal of %s in %s (%s)", preset.name, results, rehearsal.NOTE)
        if not args.verbose:    # untrained models: skipped sanity checks and the planned stops
            for name in ("ciard_bench.sanity", "ciard_bench.train"):
                logging.getLogger(name).setLevel(logging.ERROR)
    elif args.memory_budget is not None:
        raise UserError("--memory-budget goes with --rehearse (it reads the rehearsal's "
                        "measurements); accepted: --rehearse --memory-budget GB")
    cells = shard_cells(select_kinds(grid.cells, args.only), shard)
    if args.status:
        print("\n".join(slurm.status_lines(grid, which)))
        return 0
    summary = {"skipped": len(cells), "trained": 0, "evaluated": 0, "blocked": [],
               "failed": {}, "by_kind": {}}
    if args.launcher == "slurm" and not args.render_only:
        if not _launch_slurm(args, grid, cells, which):
            return 0
        args.render_only = True
    if not args.render_only:
        log.info("preset %s: %d cells (%d in this run), %d seed(s), %d worker(s) x %d thread(s), "
                 "results in %s", preset.name, len(grid.cells), len(cells), len(grid.seeds),
                 workers, threads, results)
        live = slurm.alive(results) if slurm.jobs(results) else {}
        launchers.claim_local(results, {f"{c} {k}": f"{j} {s}" for (c, k), (j, s) in live.items()})
        try:
            summary = runner.run_cells(grid, cells, which, workers=workers, threads=threads,
                                       devices=devices)
        finally:
            launchers.release_local(results)
    compare = preset.compare_paper if args.compare_paper is None else args.compare_paper
    with store.store_lock(results):      # other writers' renders and grid.json wait meanwhile
        written = _render(grid, which, compare, args.figures)
    wall = time.perf_counter() - start
    # one record per invocation that did (or could not do) work; a pure re-render adds none,
    # so running the command again on a finished grid rewrites grid.json unchanged
    record = None
    if summary["trained"] or summary["evaluated"] or summary["blocked"] or summary["failed"]:
        record = {"wall_s": round(wall, 1), "workers": workers, "threads": threads,
                  "shard": args.shard, "only": args.only, "trained": summary["trained"],
                  "evaluated": summary["evaluated"], "blocked": summary["blocked"],
                  "failed": summary["failed"], "by_kind": summary["by_kind"]}
    store.write_grid(grid, which, {c.id for c in cells}, add_run=record)
    with store.store_lock(results):      # the page reads the grid.json and tables just written
        written += write_report(results, grid.preset.reductions)
    counts = store.grid_record(grid, which)["counts"]
    for kind, t in summary["by_kind"].items():
        print(f"timing: {t['cells']:>2} {kind} cells: train {t['train_s']:7.1f} s, "
              f"evaluate {t['eval_s']:7.1f} s")
    how = "in SLURM jobs" if args.launcher == "slurm" else \
        f"{workers} worker(s) x {threads} thread(s)"
    print(f"{preset.name}: trained {summary['trained']}, evaluated {summary['evaluated']}, "
          f"blocked {len(summary['blocked'])}, failed {len(summary['failed'])} cells in "
          f"{wall:.0f} s ({how}); "
          f"grid: {', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}; "
          f"wrote {len(written)} files to {results}")
    for cid, error in summary["failed"].items():
        print(f"failed: {cid}: {error} (traceback: {results / 'runs' / cid / 'cell-error.log'})")
    unfinished = [c.id for c in cells if args.launcher == "slurm"
                  and store.status(grid, c, which) != store.DONE]
    for cid in unfinished:      # its jobs ended without finishing it (failed, cancelled)
        print(f"not done: {cid} (job logs: {results / 'runs' / cid / 'slurm'}; rerun to resubmit)")
    if real is not None:
        runs = (store.read_json(results / "grid.json") or {}).get("runs", [])
        report = rehearsal_report.write_report(real, grid, plan, summary, which,
                                               sum(r.get("wall_s", 0.0) for r in runs), budgets)
        counts = report["counts"]
        print(f"rehearsal: {counts['pass']} of {len(report['cells'])} cells passed, "
              f"{counts['fail']} failed; projected {report['projected_total_h']:.4g} h on "
              f"{report['device']} (--dry-run assumes {report['dry_run_total_h']:.4g} h); "
              f"report: {results / 'rehearsal.md'}")
        if counts["fail"]:
            return 1
    return 1 if summary["failed"] or unfinished else 0


def _migrate(results: Path) -> int:
    """``--migrate-paths``: rewrite ``results`` once (:mod:`ciard_bench.grid.migrate`)."""
    if not results.is_dir():
        raise UserError(f"--migrate-paths: {str(results)!r} is not a folder; accepted: a "
                        "results folder of python -m ciard_bench.tables (--results-dir)")
    with store.store_lock(results):
        report = migrate.migrate_paths(results)
    for name, changed in report["files"].items():
        print(f"rewrote {name}: " + ", ".join(f"{k} {old!r} -> {new!r}"
                                               for k, (old, new) in changed.items()))
    if report["page"]:
        print(f"rewrote {results / 'index.html'}: {report['page']} settings in its drill-downs")
    print(f"{results}: {len(report['files'])} records and {report['page']} page entries "
          "rewritten" if report["files"] or report["page"] else
          f"{results}: nothing to rewrite (its paths are relative to the folder already)")
    return 0


def _budgets(text: str | None) -> tuple[float, ...]:
    """The memory budgets of a rehearsal's report: 24, 40, 80 and ``--memory-budget``."""
    extra = ()
    if text is not None:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"--memory-budget {text!r} is not valid; accepted: a number of GB "
                            "> 0, e.g. 24, 40 or 80")
        extra = (value,)
    return tuple(sorted(set(rehearsal_report.BUDGETS + extra)))


def main(argv: list[str] | None = None) -> int:
    """Entry point; a ``UserError`` prints one line and exits with code 2."""
    return cli_main(_run, argv)
