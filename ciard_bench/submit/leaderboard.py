"""``python -m ciard_bench.submit leaderboard CARD_DIR... --out FILE``: a RobustBench-style
leaderboard page from folders of model cards, so a student can be seen among published
entries, offline.

Cards are RobustBench's ``model_info`` JSON (``robustbench.utils.ModelInfo``'s fields, the
format :mod:`.card` writes): every ``*.json`` under the given folders, except the
``submission.json`` records that ``python -m ciard_bench.submit`` writes beside its card. A
card's leaderboard is its ``dataset`` field (else its folder's parent,
``model_info/<dataset>/<threat>/``) and its threat model the folder's name when that is one of
RobustBench's (``Linf``, ``L2``, ``corruptions``, ``corruptions_3d``), else read from eps
(``8/255`` is Linf, a plain number L2). Rows are ranked within each leaderboard by
AutoAttack robust accuracy (corruption accuracy for the corruption boards), then clean
accuracy.

Cards are untrusted input. Every field reaches the page through jinja2's autoescaping, a
paper link is a link only when it is an ``http(s)`` URL (:func:`ciard_bench.web.safe_url`),
and the page's Content-Security-Policy runs only its own script. A footnote's ``<br>`` (the
separator RobustBench's cards use) becomes a line break; every other tag stays text. A malformed card (not
JSON, not an object, a missing or impossible clean or robust accuracy, a field of the
wrong type, over 1 MB; a ``reported`` value that is no number is left out, not an error) is skipped with a one-line warning naming its file, so one bad card in a folder of
many does not block the rest; no card at all is a one-line error. Nothing from a card is
used as a path or a command: the page is the one file ``--out`` names.
"""
from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..errors import ArgumentParser, UserError, cli_main
from ..web import render_page, safe_url

THREATS = ("Linf", "L2", "corruptions", "corruptions_3d")
MAX_BYTES = 1 << 20
_TEXT = ("name", "authors", "venue", "architecture", "footnote", "link", "dataset",
         "threat_model")
_ACC = ("clean_acc", "autoattack_acc", "corruptions_acc")


class CardError(ValueError):
    """Why a card cannot be shown."""


def _percent(card: dict, key: str, required: bool) -> float | None:
    value = card.get(key)
    if value is None or value == "":
        if required:
            raise CardError(f"no {key}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CardError(f"{key} is {type(value).__name__}, not a number")
    try:
        number = float(value)
    except ValueError:
        raise CardError(f"{key} {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number) or not 0 <= number <= 100:
        raise CardError(f"{key} {number:g} is not a percentage in [0, 100]")
    return number


def _threat(path: Path, card: dict) -> str:
    if path.parent.name in THREATS:
        return path.parent.name
    if card.get("threat_model") in THREATS:
        return card["threat_model"]
    if "corruptions_acc" in card:
        return "corruptions"
    eps = str(card.get("eps") or "")
    return "Linf" if re.fullmatch(r"\d+/255", eps) else "L2" if eps else "unknown"


def read_card(path: Path) -> dict[str, Any]:
    """One card as a leaderboard row, or a CardError saying why it cannot be."""
    if path.stat().st_size > MAX_BYTES:
        raise CardError(f"larger than {MAX_BYTES} bytes")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CardError(f"not JSON ({err})") from None
    if not isinstance(card, dict):
        raise CardError(f"a JSON {type(card).__name__}, not an object")
    for key in _TEXT:
        if card.get(key) is not None and not isinstance(card[key], str):
            raise CardError(f"{key} is {type(card[key]).__name__}, not text")
    for key in ("additional_data", "unreliable"):
        if card.get(key) is not None and not isinstance(card[key], bool):
            raise CardError(f"{key} is not true or false")
    passes = card.get("number_forward_passes")
    if passes is not None and (isinstance(passes, bool) or not isinstance(passes, int)):
        raise CardError("number_forward_passes is not an integer")
    eps = card.get("eps")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (str, int, float))):
        raise CardError("eps is not text or a number")
    card["eps"] = "" if eps is None else str(eps)
    threat = _threat(path, card)
    robust_key = "corruptions_acc" if threat.startswith("corruptions") else "autoattack_acc"
    row = {key: _percent(card, key, key in ("clean_acc", robust_key)) for key in _ACC}
    try:    # the paper's own number is shown, never ranked on: text that is no number stays
        row["reported"] = _percent(card, "reported", False)
    except CardError:
        row["reported"] = None
    row.update({key: card.get(key) or "" for key in (*_TEXT, "eps")})
    row.update({"id": path.stem, "file": str(path), "threat": threat, "robust": row[robust_key],
                "dataset": card.get("dataset") or path.parent.parent.name or "unknown",
                "url": safe_url(card.get("link")), "additional_data": card.get("additional_data"),
                "unreliable": card.get("unreliable") is True, "passes": passes})
    return row


def collect(folders: list[str]) -> tuple[list[dict], list[str]]:
    """Every card under ``folders`` (ranked) and one warning line per skipped file."""
    rows, warnings = [], []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise UserError(f"card folder {folder!r} does not exist or is not a folder")
        for path in sorted(root.rglob("*.json")):
            if path.name == "submission.json" or not path.is_file():
                continue            # the submit command's record beside its card
            try:
                rows.append(read_card(path))
            except (CardError, OSError) as err:
                warnings.append(f"warning: skipped card {str(path)!r}: {err}")
    rows.sort(key=lambda r: (r["dataset"], r["threat"], -r["robust"], -r["clean_acc"], r["id"]))
    for key in {(r["dataset"], r["threat"]) for r in rows}:
        group = [r for r in rows if (r["dataset"], r["threat"]) == key]
        for rank, row in enumerate(group, 1):
            row["rank"] = rank
    return rows, warnings


def build_leaderboard(rows: list[dict], title: str = "Leaderboard") -> str:
    """The page's HTML for ranked rows."""
    groups = Counter((r["dataset"], r["threat"]) for r in rows)
    default = groups.most_common(1)[0][0] if groups else ("", "")
    return render_page("leaderboard.html.j2", title=title, rows=rows,
                       datasets=sorted({r["dataset"] for r in rows}),
                       threats=sorted({r["threat"] for r in rows}), default=default)


def _run(argv: list[str] | None) -> int:
    p = ArgumentParser(prog="python -m ciard_bench.submit leaderboard",
                       description="A static leaderboard page (sortable, filterable by dataset "
                       "and threat model, ranked by AutoAttack accuracy) from folders of "
                       "RobustBench model_info cards.")
    p.add_argument("folders", nargs="+", metavar="CARD_DIR",
                   help="folders searched for *.json cards (e.g. a submission's --out folder, "
                   "RobustBench's model_info)")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--title", default="Leaderboard")
    args = p.parse_args(argv)
    rows, warnings = collect(args.folders)
    for line in warnings:
        print(line, file=sys.stderr)
    if not rows:
        raise UserError(f"no readable card in {', '.join(args.folders)}")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {args.out!r} is a folder; give the page's file name")
    atomic_write_text(out, build_leaderboard(rows, args.title))
    print(f"wrote {out}: {len(rows)} cards, {len(warnings)} skipped")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ciard_bench.submit leaderboard``; bad input is one line and exit code 2."""
    return cli_main(_run, argv)
