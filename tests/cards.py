"""Model cards for the leaderboard tests (tests/test_leaderboard.py, tests/test_browser.py):
the card ``python -m ciard_bench.submit`` writes for the committed smoke CIARD student, three
cards in RobustBench's model_info format (fields and values as RobustBench's leaderboard
lists these entries), one hostile card and one malformed card."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOSTILE_ID = "Evil2025Card"

ROBUSTBENCH = {
    "Carmon2019Unlabeled": {
        "link": "https://arxiv.org/abs/1905.13736", "name": "Unlabeled Data Improves "
        "Adversarial Robustness", "authors": "Yair Carmon, Aditi Raghunathan, Ludwig Schmidt, "
        "Percy Liang, John C. Duchi", "additional_data": True, "number_forward_passes": 1,
        "dataset": "cifar10", "venue": "NeurIPS 2019", "architecture": "WideResNet-28-10",
        "eps": "8/255", "clean_acc": "89.69", "reported": "62.5", "autoattack_acc": "59.53"},
    "Zhang2019Theoretically": {
        "link": "https://arxiv.org/abs/1901.08573", "name": "Theoretically Principled Trade-off "
        "between Robustness and Accuracy", "authors": "Hongyang Zhang, Yaodong Yu, Jiantao Jiao, "
        "Eric P. Xing, Laurent El Ghaoui, Michael I. Jordan", "additional_data": False,
        "number_forward_passes": 1, "dataset": "cifar10", "venue": "ICML 2019",
        "architecture": "WideResNet-34-10", "eps": "8/255", "clean_acc": "84.92",
        "reported": "56.43", "autoattack_acc": "53.08"},
    "Standard": {
        "link": "https://github.com/RobustBench/robustbench/", "name": "Standardly trained model",
        "authors": "", "additional_data": False, "number_forward_passes": 1, "dataset": "cifar10",
        "venue": "N/A", "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "94.78",
        "reported": "0.0", "autoattack_acc": "0.0"},
}

PAYLOAD = '<script>window.__pwned = 1; alert("xss")</script>'
HOSTILE = {
    "link": "javascript:alert(document.domain)", "name": PAYLOAD,
    "authors": '<img src=x id="pwned-img" onerror="window.__pwned=2">',
    "additional_data": False, "number_forward_passes": 1, "dataset": "cifar10",
    "venue": '"><svg id="pwned-svg" onload="window.__pwned=3">',
    "architecture": "</td></tr></table><iframe id=\"pwned-frame\" src=\"data:text/html,x\">",
    "eps": "8/255", "clean_acc": "99.99", "reported": "99.0", "autoattack_acc": "99.00",
    "footnote": '<a id="pwned-link" href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>'}


def smoke_student_card() -> dict:
    """The card the submit command writes for the committed smoke CIARD ResNet student
    (its clean and AutoAttack accuracy from results/smoke/grid.json; digits points, so the
    card is marked unreliable)."""
    from ciard_bench.submit.card import model_info, protocol_notes

    cells = json.loads((ROOT / "results/smoke/grid.json").read_text())["cells"]
    res = next(c for c in cells if c["id"] == "digits/resnet18/ciard/seed0")["results"]
    notes, unreliable = protocol_notes(n=res["n"], eps=16 / 255, data="digits",
                                       dataset="cifar10", aa_budget=None, failed=[],
                                       roundtrip_ok=True)
    return model_info(dataset="cifar10", eps=16 / 255, clean_acc=res["clean"],
                      aa_acc=res["aa"], arch={"name": "resnet18"},
                      config={"method": "ciard", "clean_teacher": "resnet8=t.pt"},
                      user={"name": "smoke CIARD student"}, notes=notes, unreliable=unreliable)


def write_cards(root: Path, hostile: bool = True, malformed: bool = True) -> Path:
    """A folder of cards as ``model_info/cifar10/Linf/<id>.json`` (one L2 card too)."""
    board = root / "model_info" / "cifar10" / "Linf"
    board.mkdir(parents=True)
    (board / "Doe2025Smoke.json").write_text(json.dumps(smoke_student_card()))
    for name, card in ROBUSTBENCH.items():
        (board / f"{name}.json").write_text(json.dumps(card))
    l2 = root / "model_info" / "cifar10" / "L2"
    l2.mkdir()
    (l2 / "Rice2020Overfitting.json").write_text(json.dumps(
        {**ROBUSTBENCH["Zhang2019Theoretically"], "eps": "0.5", "clean_acc": "88.67",
         "autoattack_acc": "67.68", "name": "Overfitting in adversarially robust deep learning",
         "link": "https://arxiv.org/abs/2002.11569", "architecture": "PreActResNet-18"}))
    if hostile:
        (board / f"{HOSTILE_ID}.json").write_text(json.dumps(HOSTILE))
    if malformed:
        (board / "Broken2025Card.json").write_text('{"clean_acc": "90.0", "autoattack_acc": ')
    return root
