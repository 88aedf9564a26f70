"""Submit a student to a RobustBench-style leaderboard: ``python -m ciard_bench.submit``.

One command evaluates a checkpoint (a file or a training run folder) with AutoAttack
``standard`` through :func:`ciard_bench.evaluate.evaluate` (its sanity checks included) on
the first ``--n-examples`` test points at eps 8/255, RobustBench's protocol, then writes
under ``--out`` (default ``submissions/<Name>``)::

    model_info/<dataset>/Linf/<Name>.json   the card: robustbench.utils.ModelInfo's fields,
                                            accuracies as strings ("84.92"), eps "8/255"
    models/<dataset>/Linf/<Name>.pt         the weights where robustbench's load_model reads
                                            them (ciard-bench format: state_dict + arch)
    model_zoo_entry.py                      the model_dicts entry and how to register it
    new_model_issue.md                      RobustBench's "New Model(s)" issue, filled in
    submission.json                         the full evaluation, round trip, provenance

Before writing, the weights are exported to a scratch folder, loaded back through
``robustbench.utils.load_model`` (the entry registered at runtime by
:func:`register_zoo_entry`) and scored with ``robustbench.utils.clean_accuracy``: the clean
accuracy must match the card within 0.05 pp, RobustBench's acceptance check. A failed sanity
check (e.g. a model that is not deterministic in eval mode) or round trip refuses the
submission (exit 2, one line) unless ``--force``; a forced card is marked ``unreliable`` and
its footnote names the failures. ``--data`` (``npz:PATH``, ``digits``) takes the test points
from elsewhere than the leaderboard dataset, for tests; the card then says so, as it does for
fewer than 10,000 points or another eps.

``python -m ciard_bench.submit leaderboard CARD_DIR... --out FILE`` (:mod:`.leaderboard`)
builds a static leaderboard page from folders of such cards and RobustBench's own.
"""
from __future__ import annotations

from .card import check_name, model_info
from .cli import main
from .zoo import register_zoo_entry, roundtrip_clean_accuracy, zoo_weights_path

__all__ = ["check_name", "main", "model_info", "register_zoo_entry", "roundtrip_clean_accuracy",
           "zoo_weights_path"]
