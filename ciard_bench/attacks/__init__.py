"""The evaluation attacks of CIARD's protocol, built on torchattacks and pyautoattack.

One registered record per attack (:class:`AttackSpec`, all in :mod:`.protocol`) holds its
settings, builder, table label, caption phrase, kind and sanity-check role; :data:`PROTOCOL`
is the settings view of the registry. ``create_attack`` builds an attack from the record and
``attack_settings`` returns the resolved values for the result JSON and the table captions,
so the two cannot disagree. Every attack is a torchattacks ``Attack`` (``attack(x, y) ->
x_adv``, inputs in [0, 1]), whose base class puts the model in eval mode for the attack and
restores its mode afterwards.

* ``cw_inf`` -- :class:`CWLinf`: PGD on the CW margin loss (Carlini & Wagner 2017, the
  loss of ``attack_eval.py`` in eminentgu/CIARD). torchattacks clamps to [0, 1] after every
  step and so does ``CWLinf`` by default; the released code clamps only after the last step
  (``clamp_every_step=False`` reproduces it).
* ``square`` is torchattacks' Square with 100 queries, as the released ``attack_eval.py``;
  ``square_aa`` is AutoAttack's own Square (5000 queries, ``p_init`` 0.8, no schedule rescale).
* ``aa`` runs pyautoattack (Croce & Hein 2020) one sub-attack at a time on the points still
  robust -- the same cascade, batches and seeds as ``run_standard_evaluation`` -- so it can
  keep its own resume file: pyautoattack 0.2.0's ``state_path`` cannot be restored (it
  writes the attack set as a string and reads back an unbound ``y_adv``).
* ``transfer_*`` craft the examples on a ``source`` model (the robust teacher) and are scored
  on the model under evaluation. ``noise`` (uniform noise in the eps ball) is a sanity check.
"""
from __future__ import annotations

from . import protocol  # noqa: F401  (registers the protocol's attacks)
from .implementations import (AutoAttackAdapter, CWLinf, FunctionAttack, Transfer, UniformNoise,
                              cw_margin_loss)
from .registry import (KINDS, PROTOCOL, SANITY_ROLES, AttackSpec, accuracy, attack_settings,
                       create_attack, describe_attack, get_attack, list_attacks, register_attack)

__all__ = ["KINDS", "PROTOCOL", "SANITY_ROLES", "AttackSpec", "AutoAttackAdapter", "CWLinf", "FunctionAttack",
           "Transfer", "UniformNoise", "accuracy", "attack_settings", "create_attack",
           "cw_margin_loss", "describe_attack", "get_attack", "list_attacks", "register_attack"]
