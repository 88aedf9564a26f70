"""``python -m ciard_bench.submit``: evaluate by RobustBench's protocol, write a submission.

Every input is checked before anything is loaded or written; a failed sanity check or a
failed round trip refuses the submission (exit 2, one line) unless ``--force``, and then the
card says so. See :mod:`ciard_bench.submit` for the files written.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import plugins
from ..checkpoint import atomic_write_bytes, atomic_write_json, atomic_write_text, load_checkpoint
from ..data import load_dataset, to_float_nchw
from ..errors import ArgumentParser, UserError, cli_main
from ..evaluate import evaluate, preflight_checks, summary_table
from ..models import NUM_CLASSES, load_model_file
from ..runs import RunDir, check_writable, resolve_checkpoint
from ..utils import parse_eps, positive_int, provenance, resolve_device
from . import card as cards
from .issue import issue_text, zoo_entry_text
from .leaderboard import main as leaderboard_main
from .zoo import (ACCEPT_TOLERANCE_PP, THREAT, check_name_free, export_weights,
                  register_zoo_entry, roundtrip_clean_accuracy, zoo_weights_path)

FORMAT = "ciard-bench/submit/1"
_FLAG_FIELDS = {"paper_title": "name", "link": "link", "authors": "authors", "venue": "venue",
                "architecture": "architecture", "reported": "reported", "footnote": "footnote",
                "additional_data": "additional_data", "checkpoint_url": "checkpoint_url",
                "license": "license"}


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m ciard_bench.submit",
                       description="Evaluate a student by RobustBench's protocol (AutoAttack "
                       "standard, first N test points, eps 8/255) and write a leaderboard "
                       "submission: card, zoo-layout weights, zoo entry, issue text.")
    p.add_argument("--checkpoint", required=True, help="a ciard-bench checkpoint or run folder")
    p.add_argument("--name", required=True, help="RobustBench id <Name><Year><FirstWord>[_suffix]")
    p.add_argument("--dataset", required=True, help="leaderboard: cifar10 | cifar100")
    p.add_argument("--data", help="where the test points come from (default: --dataset); "
                   "npz:PATH or digits for tests, which marks the card unreliable")
    p.add_argument("--data-root", default="data")
    p.add_argument("--n-examples", default="10000", help="first N test points (default 10000)")
    p.add_argument("--eps", default="8/255")
    p.add_argument("--batch-size", default="128")
    p.add_argument("--seed", default="0")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="output folder (default: submissions/<name>)")
    p.add_argument("--info", help="YAML/JSON with card fields: " + ", ".join(cards.INFO_KEYS))
    p.add_argument("--paper-title", help="the card's 'name' field (the paper title)")
    for flag in ("link", "authors", "venue", "architecture", "reported", "footnote"):
        p.add_argument(f"--{flag}", help=f"the card's '{flag}' field (overrides --info)"
                       + ("; protocol notes are always appended" if flag == "footnote" else ""))
    p.add_argument("--checkpoint-url", help="where the weights can be downloaded (issue text)")
    p.add_argument("--license", help="MIT, or the URL of a custom license (issue text)")
    p.add_argument("--additional-data", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--aa-state", help="AutoAttack resume file (JSON) for long runs; "
                   "delete it when the checkpoint changes")
    p.add_argument("--no-expensive-checks", dest="expensive_checks", action="store_false",
                   help="skip the eps-sweep and noise sanity checks")
    p.add_argument("--sanity-examples", default="100")
    p.add_argument("--force", action="store_true",
                   help="write the submission despite failed checks; the card says so")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    # tests only: a cut AutoAttack budget; the card then says so and is marked unreliable
    p.add_argument("--aa-n-iter", help=argparse.SUPPRESS)
    p.add_argument("--aa-square-queries", help=argparse.SUPPRESS)
    return p


def _validate(args: argparse.Namespace) -> dict:
    """Check every input that needs no loading; returns the parsed values."""
    cards.check_name(args.name)
    cards.check_dataset(args.dataset)
    check_name_free(args.name, args.dataset)
    flags = {field: getattr(args, attr) for attr, field in _FLAG_FIELDS.items()}
    user = {**cards.load_info_file(args.info), **cards.check_info(
        {k: v for k, v in flags.items() if v is not None}, "flags")}
    budget = {k: positive_int(v, f"--aa-{k.replace('_', '-')}")
              for k, v in (("n_iter", args.aa_n_iter), ("square_n_queries", args.aa_square_queries))
              if v is not None}
    out = Path(args.out or Path("submissions") / args.name)
    check_writable(out)
    return {"eps": parse_eps(args.eps), "n": positive_int(args.n_examples, "--n-examples"),
            "batch_size": positive_int(args.batch_size, "--batch-size"), "seed": _seed(args.seed),
            "sanity_examples": positive_int(args.sanity_examples, "--sanity-examples"),
            "device": resolve_device(args.device), "user": user, "aa_budget": budget,
            "out": out, "data": args.data or args.dataset,
            "n_classes": NUM_CLASSES[args.dataset]}


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError as err:
        raise UserError(f"--seed {text!r} is not an integer") from err


def _load_points(args: argparse.Namespace, v: dict) -> tuple:
    data = load_dataset(v["data"], root=args.data_root)
    if data.num_classes != NUM_CLASSES[args.dataset]:
        raise UserError(f"--data {v['data']!r} has {data.num_classes} classes but {args.dataset} "
                        f"has {NUM_CLASSES[args.dataset]}")
    if v["n"] > len(data.y_test):
        raise UserError(f"--n-examples {v['n']} is larger than the {len(data.y_test)} test "
                        f"points of {v['data']!r}")
    return to_float_nchw(data.x_test[:v["n"]]), data.y_test[:v["n"]]


def _load_student(path: str, device: Any) -> tuple:
    """The model, its metadata, and its training config: the run folder's record when the
    checkpoint is one of a run folder's (``run.json``, which ``--migrate-paths`` rewrites),
    else the one the checkpoint saved (or None)."""
    model, meta = load_model_file(path, device=device)
    file, sha = resolve_checkpoint(path)
    saved = load_checkpoint(file, sha)
    config = _recorded_config(Path(file)) or (saved.get("config") if isinstance(saved, Mapping)
                                               else None)
    return model, meta, config if isinstance(config, Mapping) else None


def _recorded_config(file: Path) -> Mapping | None:
    """The config ``run.json`` records for the run whose current checkpoint ``file`` is."""
    if file.parent.name != "checkpoints":
        return None
    state = RunDir(file.parent.parent).read_state()
    current = {entry.get("file") for entry in (state.get("last"), state.get("best")) if entry}
    config = state.get("config") if file.name in current else None
    return config if isinstance(config, Mapping) else None


def _refuse_on_checks(checks: list[dict], force: bool) -> list[str]:
    failed = [c for c in checks if c["passed"] is False]
    if failed and not force:
        names = ", ".join(c["name"] for c in failed)
        raise UserError(f"refusing to submit: sanity check(s) {names} "
                        f"failed ({failed[0]['name']}: {failed[0]['message']}); fix the model or "
                        "pass --force (the card then says so)")
    return [c["name"] for c in failed]


def _preflight(model, x, y, v: dict, force: bool) -> None:
    """evaluate()'s cheap model checks, before hours of AutoAttack are spent on a refusal."""
    model.eval()
    with torch.no_grad():   # the width first: labels beyond it would break the gradient check
        logits = model(x[:1].to(v["device"]))
    if logits.ndim == 2 and logits.shape[1] != v["n_classes"]:
        raise UserError(f"the checkpoint's model has {logits.shape[1]} outputs but the "
                        f"leaderboard dataset has {v['n_classes']} classes")
    _refuse_on_checks(preflight_checks(model, x, y, batch_size=v["batch_size"],
                                       n_classes=v["n_classes"], device=v["device"]), force)


def _roundtrip(args, v: dict, model, meta: dict, x, y, clean_text: str) -> tuple[bytes, dict]:
    """Export to a scratch zoo folder, load it back through robustbench, compare clean accuracy."""
    with tempfile.TemporaryDirectory(prefix="ciard-submit-") as tmp:
        path = zoo_weights_path(tmp, args.name, args.dataset)
        sha = export_weights(model, meta["arch"], path, name=args.name, dataset=args.dataset,
                             source_sha256=meta["sha256"])
        register_zoo_entry(args.name, args.dataset, meta["arch"])
        loaded = roundtrip_clean_accuracy(args.name, args.dataset, tmp, x, y, v["batch_size"],
                                          v["device"])
        blob = path.read_bytes()
    diff = abs(loaded - float(clean_text))
    check = {"clean_acc_card": clean_text, "clean_acc_loaded": loaded, "difference_pp": diff,
             "tolerance_pp": ACCEPT_TOLERANCE_PP, "passed": diff <= ACCEPT_TOLERANCE_PP,
             "loader": "robustbench.utils.load_model + robustbench.utils.clean_accuracy",
             "weights_sha256": sha}
    if not check["passed"] and not args.force:
        raise UserError(f"refusing to submit: the model robustbench loads from the exported file "
                        f"scores {loaded:.2f}% clean, the card says {clean_text}% (more than "
                        f"{ACCEPT_TOLERANCE_PP} pp apart); pass --force to write it anyway")
    return blob, check


def _evaluate(args, v: dict, model, x, y) -> dict:
    return evaluate(model, x, y, ["aa"], v["eps"], batch_size=v["batch_size"], seed=v["seed"],
                    n_classes=v["n_classes"], device=v["device"],
                    expensive_checks=args.expensive_checks,
                    sanity_examples=v["sanity_examples"], aa_state=args.aa_state,
                    overrides={"aa": v["aa_budget"]} if v["aa_budget"] else None,
                    progress=args.progress)


def _write(args, v: dict, card: dict, blob: bytes, record: dict, result: dict) -> dict:
    out, name, dataset = v["out"], args.name, args.dataset
    files = {"weights": zoo_weights_path(out / "models", name, dataset),
             "model_info": out / "model_info" / dataset / THREAT / f"{name}.json",
             "model_zoo_entry": out / "model_zoo_entry.py",
             "issue": out / "new_model_issue.md", "record": out / "submission.json"}
    rel = {k: str(p.relative_to(out)) for k, p in files.items()}
    atomic_write_bytes(files["weights"], blob)
    atomic_write_json(files["model_info"], card)
    atomic_write_text(files["model_zoo_entry"],
                      zoo_entry_text(name, dataset, record["checkpoint"]["arch"], rel["weights"]))
    atomic_write_text(files["issue"], issue_text(
        name, card, arch=record["checkpoint"]["arch"], user=v["user"], evaluation=result,
        weights=rel["weights"],
        command=shlex.join(record["command"]),
        aa_version=record["provenance"]["versions"].get("pyautoattack")))
    atomic_write_json(files["record"], {**record, "files": rel})
    return files


def _run(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    v = _validate(args)
    x, y = _load_points(args, v)
    model, meta, config = _load_student(args.checkpoint, v["device"])
    _preflight(model, x, y, v, args.force)
    result = _evaluate(args, v, model, x, y)
    failed = _refuse_on_checks(result["sanity"]["checks"], args.force)
    clean, robust = result["clean"]["accuracy"], result["attacks"]["aa"]["accuracy"]
    blob, roundtrip = _roundtrip(args, v, model, meta, x, y, cards.pct(clean))
    notes, unreliable = cards.protocol_notes(
        n=len(y), eps=v["eps"], data=v["data"], dataset=args.dataset, aa_budget=v["aa_budget"],
        failed=failed, roundtrip_ok=roundtrip["passed"])
    used = plugins.provenance(method=(config or {}).get("method"), model=meta["arch"]["name"],
                              dataset=(config or {}).get("dataset"))
    card = cards.model_info(dataset=args.dataset, eps=v["eps"], clean_acc=clean, aa_acc=robust,
                            arch=meta["arch"], config=config, user=v["user"],
                            notes=notes + cards.plugin_notes(used), unreliable=unreliable)
    record = {"format": FORMAT, "name": args.name, "dataset": args.dataset,
              "threat_model": THREAT, "data": v["data"], "model_info": card,
              "forced": bool(args.force and (failed or not roundtrip["passed"])),
              "failed_checks": failed, "roundtrip": roundtrip,
              "checkpoint": {"path": str(args.checkpoint), "arch": meta["arch"],
                             "sha256": meta["sha256"], "config": config},
              "evaluation": result,
              "command": ["python", "-m", "ciard_bench.submit", *(argv or sys.argv[1:])],
              "provenance": provenance(v["device"], v["seed"]),
              **({"plugins": used} if used else {})}
    files = _write(args, v, card, blob, record, result)
    print(summary_table(result))
    print(f"round trip through robustbench.utils.load_model: {roundtrip['clean_acc_loaded']:.2f}% "
          f"clean (card {card['clean_acc']}%)" + ("" if roundtrip["passed"] else " MISMATCH"))
    if record["forced"]:
        print("forced: the card is marked unreliable and its footnote names the failures")
    empty = [k for k in ("link", "name", "authors", "venue") if not card.get(k)]
    if empty:
        print(f"fill in before submitting: {', '.join(empty)} (--info FILE or flags)")
    for key in ("model_info", "weights", "model_zoo_entry", "issue", "record"):
        print(f"wrote {files[key]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ciard_bench.submit``, or ``... submit leaderboard CARD_DIR... --out FILE``
    (:mod:`.leaderboard`); a ``UserError`` prints one line and exits 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["leaderboard"]:
        return leaderboard_main(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return cli_main(_run, argv)
