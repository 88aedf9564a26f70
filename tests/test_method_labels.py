"""Each method carries its own table label; the tables take their rows from the registry."""
import pytest

from ciard_bench.methods import Method, get_method, list_methods, register_method
from ciard_bench.grid.presets import METHOD_LABELS

# the paper's rows (Tables 3-6), in its order, as printed
PAPER_ROWS = [("sat", "SAT"), ("trades", "TRADES"), ("ard", "ARD"), ("rslad", "RSLAD"),
              ("score", "SCORE"), ("fair_ard", "Fair-ARD"), ("absld", "ABSLD"), ("mtard", "MTARD"),
              ("bmtard", "B-MTARD"), ("ciard", "CIARD")]


def test_table_rows_come_from_the_methods_in_the_paper_order():
    assert list(METHOD_LABELS.items()) == PAPER_ROWS
    assert get_method("adaad").label == "AdaAD" and get_method("standard").label == "Standard"


def test_every_method_has_its_own_label():
    labels = [get_method(n).label for n in list_methods()]
    assert all(labels) and len(set(labels)) == len(labels)


def test_a_subclass_that_keeps_its_parents_label_is_refused():
    class Copy(get_method("rslad")):   # forgot `label`: would print as a second "RSLAD" row
        name = "rslad_copy"

    with pytest.raises(ValueError, match="label 'RSLAD'"):
        register_method(Copy)
    assert "rslad_copy" not in list_methods()
    assert issubclass(Copy, Method)


def test_methods_all_is_every_registered_method_paper_rows_first(tmp_path):
    """``tables --methods all``: one student cell per registered method (built-ins, IAD and any
    installed plugin), the paper's ten in its order first; an unknown name is one line."""
    from ciard_bench.errors import UserError
    from ciard_bench.grid.cells import build_grid
    from ciard_bench.grid.presets import get_preset

    grid = build_grid(get_preset("smoke"), tmp_path, students=["resnet18"], methods=["all"])
    rows = [c.method for c in grid.cells if c.kind == "student"]
    assert sorted(rows) == list_methods()
    assert rows[:10] == [name for name, _ in PAPER_ROWS]
    with pytest.raises(UserError, match="method 'nope' is not registered; accepted: "):
        build_grid(get_preset("smoke"), tmp_path, methods=["nope"])
