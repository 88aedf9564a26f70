"""python -m ciard_bench.submit leaderboard (issue 22): cards from folders, ranked by
AutoAttack accuracy per leaderboard, every field escaped, a javascript:/data: link is not a
link, a malformed card is one warning line naming its file and is skipped, nothing is
written but the page. The page in a real browser: tests/test_browser.py."""
from __future__ import annotations

import json
import re

import pytest
from cards import HOSTILE_ID, write_cards

from ciard_bench.submit import main
from ciard_bench.submit.leaderboard import CardError, read_card


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = write_cards(tmp_path_factory.mktemp("cards"))
    out = root / "site" / "leaderboard.html"
    return root, out


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr data-filterable data-dataset="([^"]*)" data-threat="([^"]*)" '
                      r'data-id="([^"]*)">\s*<td>(\d+)</td>', page)


def test_the_page_ranks_each_leaderboard_by_autoattack_accuracy(board, capsys):
    root, out = board
    before = sorted(p for p in root.rglob("*") if p.is_file())
    assert main(["leaderboard", str(root), "--out", str(out)]) == 0
    page = out.read_text()
    rows = _rows(page)
    linf = [(rid, int(rank)) for d, t, rid, rank in rows if t == "Linf"]
    # the hostile card claims 99 %, then Doe2025Smoke (64.50 on digits points), then RB's
    assert linf == [(HOSTILE_ID, 1), ("Doe2025Smoke", 2), ("Carmon2019Unlabeled", 3),
                    ("Zhang2019Theoretically", 4), ("Standard", 5)]
    assert [(rid, rank, t) for d, t, rid, rank in rows if t == "L2"] == [
        ("Rice2020Overfitting", "1", "L2")]
    # the malformed card: one warning line naming its file; the others still shown
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Broken2025Card.json" in err[0] and err[0].startswith("warning:")
    # the smoke student's card says it is unreliable (digits points, eps 16/255)
    smoke = page.split('data-id="Doe2025Smoke"', 1)[1].split("</tr>", 1)[0]
    assert '<span class="flag">unreliable</span>' in smoke and "64.50" in smoke
    # the paper link of a real card is a link; the page is the only file written
    assert '<a href="https://arxiv.org/abs/1905.13736" rel="noopener noreferrer nofollow">' in page
    after = sorted(p for p in root.rglob("*") if p.is_file())
    assert after == sorted(before + [out])


def test_hostile_fields_are_text_and_links_are_not_links(board):
    root, out = board
    if not out.is_file():
        assert main(["leaderboard", str(root), "--out", str(out)]) == 0
    page = out.read_text()
    row = page.split(f'data-id="{HOSTILE_ID}"', 1)[1].split("</tr>", 1)[0]
    for raw in ("<script", "<img", "<svg", "<iframe", "<a id=", "javascript:alert"):
        assert raw not in row.replace("(javascript:alert", ""), raw
    assert "&lt;script&gt;window.__pwned = 1; alert(&#34;xss&#34;)&lt;/script&gt;" in row
    assert 'href="javascript' not in page and 'href="data:' not in page and 'src="data:' not in page
    assert page.count("<script>") == 1               # the page's own, CSP-pinned


@pytest.mark.parametrize("text, why", [
    ('{"clean_acc": "90", "autoattack_acc": ', "not JSON"),
    ('["a list"]', "not an object"),
    ('{"clean_acc": "90"}', "no autoattack_acc"),
    ('{"clean_acc": "90", "autoattack_acc": "NaN"}', "not a percentage"),
    ('{"clean_acc": "190", "autoattack_acc": "50"}', "not a percentage"),
    ('{"clean_acc": "90", "autoattack_acc": "5O"}', "not a number"),
    ('{"clean_acc": "90", "autoattack_acc": "50", "name": {"x": 1}}', "name is dict"),
    ('{"clean_acc": "90", "autoattack_acc": "50", "unreliable": "yes"}', "not true or false"),
])
def test_a_malformed_card_says_why(tmp_path, text, why):
    path = tmp_path / "Bad2025Card.json"
    path.write_text(text)
    with pytest.raises(CardError, match=why):
        read_card(path)


def test_robustbench_spellings_are_read(tmp_path):
    path = tmp_path / "Rice2020Overfitting.json"
    path.write_text(json.dumps({"clean_acc": "88.67", "autoattack_acc": "67.68", "eps": 0.5,
                                "reported": "N/A", "footnote": None, "dataset": "cifar10"}))
    row = read_card(path)
    assert (row["threat"], row["eps"], row["reported"], row["robust"]) == ("L2", "0.5", None, 67.68)


def test_no_card_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    assert main(["leaderboard", str(tmp_path), "--out", str(tmp_path / "b.html")]) == 2
    assert main(["leaderboard", str(tmp_path / "absent"), "--out", str(tmp_path / "b.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "no readable card" in err[1] and "does not exist" in err[2]
    assert not (tmp_path / "b.html").exists()


def test_the_submit_record_beside_a_card_is_not_a_card(tmp_path):
    write_cards(tmp_path, hostile=False, malformed=False)
    (tmp_path / "submission.json").write_text(json.dumps({"format": "ciard-bench/submit/1"}))
    assert main(["leaderboard", str(tmp_path), "--out", str(tmp_path / "b.html")]) == 0
    assert len(_rows((tmp_path / "b.html").read_text())) == 5
