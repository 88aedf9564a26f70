"""Texts a submission hands to people: RobustBench's "New Model(s)" issue and the zoo entry.

The issue follows RobustBench's template ``.github/ISSUE_TEMPLATE/new-model.md`` (title
``[New Model] <Name>``, label ``new-model``): paper information, one model's claim, the
model-zoo checkboxes. Fields the card leaves empty read ``(fill in)``.
"""
from __future__ import annotations

from typing import Any, Mapping

ARCHITECTURES_URL = ("https://github.com/RobustBench/robustbench/tree/master/robustbench/"
                     "model_zoo/architectures")
_FILL = "(fill in)"


def _or_fill(value: Any) -> str:
    return str(value) if value not in (None, "") else _FILL


def _license_boxes(license_: str | None) -> list[str]:
    mit = "x" if license_ and license_.upper() == "MIT" else " "
    custom = "x" if license_ and license_.upper() != "MIT" else " "
    where = license_ if custom == "x" else "(custom license URL here)"
    return [f"- [{mit}] I agree to release my model(s) under MIT license (check if true) **OR**",
            f"- [{custom}] I want my models to be released under a custom license, located "
            f"here: {where}"]


def issue_text(name: str, card: Mapping, *, arch: Mapping, user: Mapping, evaluation: Mapping,
               weights: str, command: str, aa_version: str | None) -> str:
    """The filled "New Model(s)" issue as Markdown."""
    aa = evaluation["attacks"]["aa"]
    subs = ", ".join(f"{k} {v:.2f}%" for k, v in aa.get("sub_accuracy", {}).items())
    sanity = evaluation["sanity"]
    checks = ("all passed" if sanity["passed"] else f"FAILED: {', '.join(sanity['failed'])}")
    lines = [
        f"**Title:** `[New Model] {name}` (label: `new-model`)", "", "---", "",
        "# Paper Information", "",
        f"- **Paper Title**: {_or_fill(card.get('name'))}",
        f"- **Paper URL**: {_or_fill(card.get('link'))}",
        f"- **Paper authors**: {_or_fill(card.get('authors'))}", "",
        "# Leaderboard Claim(s)", "",
        "## Model 1", "",
        f"- **Architecture**: {card['architecture']}",
        "- **Threat Model**: Linf",
        f"- **eps**: {card['eps']}",
        f"- **Clean accuracy**: {card['clean_acc']}%",
        f"- **Robust accuracy**: {card['autoattack_acc']}%",
        f"- **Additional data**: {str(card['additional_data']).lower()}",
        f"- **Evaluation method**: AutoAttack, version `{aa['settings']['version']}` "
        f"({', '.join(aa['settings']['attacks'])}; pyautoattack {aa_version or '?'}, "
        f"seed {aa['settings']['seed']}), on the first {evaluation['n_examples']} test points, "
        f"run by ciard-bench: `{command}`. Robust accuracy after each attack: {subs or '-'}. "
        f"ciard-bench sanity checks: {checks}.",
        f"- **Checkpoint and code**: {_or_fill(user.get('checkpoint_url'))} "
        f"(the file to share: `{weights}`)",
    ]
    if card.get("footnote"):
        lines.append(f"- **Notes**: {card['footnote']}")
    lines += ["", "# Model Zoo:", "",
              "- [x] I want to add my models to the Model Zoo (check if true)",
              "- [x] I use an architecture that is **not** included among those "
              f"[here]({ARCHITECTURES_URL}) (check if true). It is ciard-bench's "
              f"`{arch['name']}` (inputs in [0, 1], normalisation inside); see "
              "`model_zoo_entry.py`.",
              *_license_boxes(user.get("license")), ""]
    return "\n".join(lines)


def zoo_entry_text(name: str, dataset: str, arch: Mapping, weights: str) -> str:
    """A Python file holding the model-zoo entry (``model_dicts`` form) and how to use it."""
    kwargs = "".join(f", {k}={v!r}" for k, v in arch["kwargs"].items())
    return f'''"""RobustBench model-zoo entry for {name} ({dataset}, Linf), written by ciard-bench.

Offline, in any process (the weights are `{weights}`)::

    from ciard_bench.submit import register_zoo_entry
    register_zoo_entry({name!r}, {dataset!r}, model_dir="<this folder>/models")
    robustbench.utils.load_model({name!r}, model_dir="<this folder>/models",
                                 dataset={dataset!r}, threat_model="Linf")

For robustbench itself, ENTRY goes into the Linf OrderedDict of
robustbench/model_zoo/{dataset}.py once the weights are uploaded (gdrive_id) and the
architecture is available there (it is ciard-bench's `{arch["name"]}`, inputs in [0, 1],
normalisation inside the model).
"""
from ciard_bench.models import create_model

ENTRY = ({name!r}, {{
    "model": lambda: create_model({arch["name"]!r}, num_classes={arch["num_classes"]}{kwargs}),
    "gdrive_id": None,  # the Google-Drive id of {weights} once uploaded
}})
'''
