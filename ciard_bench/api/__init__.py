"""The public extension API: everything a plugin needs, and nothing more.

A plugin adds a training method, a student architecture, a dataset or an evaluation attack
beside the built-ins, without a fork (``docs/plugins.md`` is the tutorial). The built-in
methods in ``ciard_bench/methods/`` import only this module (an import-linter contract in
``tests/test_layers.py``), so any of them is a complete example to copy.

**Methods** -- subclass :class:`Method` and decorate it with :func:`register_method`:

* class attributes: ``name`` (the CLI and config name), ``label`` (the table row; unique),
  ``description``, ``paper``, ``teachers`` (roles among ``"clean_teacher"``,
  ``"robust_teacher"``; each is given frozen and in eval mode as ``self.<role>``),
  ``train_defaults`` (``epochs``, ``batch_size``, ``lr``, ``momentum``, ``weight_decay``,
  ``schedule``, ``nesterov`` as released), ``log_weights``;
* ``Options``: a dataclass of hyperparameters. Each field built with :func:`option` becomes
  a switch of ``python -m ciard_bench.train --method NAME`` (``--my-option``; bool fields get
  ``--no-my-option``, ``choices`` a closed list), a key of ``method_options`` in a config file,
  and a setting a grid cell can carry. ``self.opts`` holds the values;
* ``forward(x, y) -> dict[str, Tensor]``: ``x`` in [0, 1] (N, C, H, W), ``y`` int64 labels
  (this process's shard under torchrun). ``"loss"`` (a finite 0-dim tensor with a graph) is
  what the student minimises; every other entry is logged per epoch (detach it). A teacher the
  method trains returns its loss under its :class:`TeacherTraining` ``loss_key`` on the steps
  it trains;
* hooks ``begin_epoch(epoch)`` / ``end_epoch(epoch)`` (1-indexed), ``teacher_trainings()``,
  ``state_summary()`` (0-dim tensors logged each epoch); since 1.1 ``evaluated_student()`` (the
  model evaluated and saved as the run's student; the student by default) and
  ``batch_norm_refresh(epoch)`` (models whose BatchNorm statistics the engine recomputes with a
  pass over the training data after ``end_epoch``; none by default);
* state: everything the step adapts must be a buffer (``self.register_buffer``) or a module of
  the method, so ``checkpoint_state()`` holds it and a resume is exact; a plain Python
  attribute is lost at a resume (the rehearsal's stop-and-resume check catches it). Scalars the
  reference code keeps as Python floats: :func:`scalar_state` (0-dim float64);
* under torchrun, adaptive state is updated only from :meth:`Method.global_means` /
  :meth:`Method.global_sums` (statistics of the global batch, equal on every rank); the inner
  maximisation passes ``shard=self.ctx.dist`` to :func:`pgd`;
* ``self.ctx`` (:class:`Context`): ``num_classes``, ``epochs``, ``eps``, ``alpha``, ``steps``,
  ``dist``.

**Models** -- :func:`register_model` (timm's decorator): ``f(num_classes=10, **kwargs) ->
nn.Module`` taking [0, 1] images and returning ``[batch, num_classes]`` logits.

**Datasets** -- :func:`register_dataset`: ``load(root: Path, download: bool) ->
DatasetArrays`` (:func:`make_arrays` builds one from uint8 N x H x W x 3 arrays).

**Attacks** -- :func:`register_attack` of an :class:`AttackSpec`: its ``build(model,
settings, state_path=None)`` returns a torchattacks ``Attack`` (torchattacks', AutoAttack's,
or :func:`function_attack` around the plugin's own ``fn(model, x, y, settings) -> x_adv``).

**Discovery** -- entry points in the groups ``ciard_bench.methods``, ``ciard_bench.models``,
``ciard_bench.datasets``, ``ciard_bench.attacks``, or ``--plugin MODULE|FILE.py`` (or the
``CIARD_BENCH_PLUGINS`` variable); see :mod:`ciard_bench.plugins`.

**Version policy** (:data:`API_VERSION`, ``major.minor``): the names in ``__all__`` and the
documented contract above change incompatibly only with a new major version. A minor
version may add names, optional arguments, options and hooks with defaults that keep today's
behaviour; a bug fix in a helper that moves a number is said in the changelog and the
commit. Everything not in ``__all__`` (other modules of the package) is internal and may
change in any release.
"""
from __future__ import annotations

from typing import Any, Callable

from torchattacks.attack import Attack

from ..attacks.implementations import FunctionAttack
from ..attacks.registry import KINDS, SANITY_ROLES, AttackSpec, list_attacks, register_attack
from ..data.arrays import DatasetArrays, list_datasets, make_arrays, register_dataset
from ..errors import UserError
from ..models.registry import create_model, list_models, register_model
from ..schedules import block_mean, cos_exp_decay
from .losses import (KL_EPS, absld_temperatures, cross_entropy_sum, entropy_balance_,
                     fair_class_weights, kl_elements, kl_mean, kl_per_sample, kl_sum, kle,
                     log_probs, lse_clip_bound, lse_distance, magnitude_scale, masked_kle,
                     masked_kle_parts, masked_kle_share, mtard_weights_, neg_entropy)
from .method import (C100_BATCHMEAN_SCALE, C100_KL_SCALE, RATE_MILESTONES, Context, Method,
                     TeacherTraining, create_method, get_method, list_methods, make_options,
                     milestone, option, register_method, scalar_state)
from .inner import eval_mode, pgd, random_start

API_VERSION = "1.1"   # 1.1: the hooks evaluated_student(), batch_norm_refresh()


def function_attack(fn: Callable[[Any, Any, Any, dict], Any]) -> Callable[..., Attack]:
    """An :class:`AttackSpec` ``build`` from a plain function ``fn(model, x, y, settings) ->
    x_adv``: the examples are checked to stay in the eps ball and in [0, 1]."""
    def build(model: Any, settings: dict, state_path: Any = None) -> Attack:
        return FunctionAttack(model, fn, settings)
    build.__name__ = getattr(fn, "__name__", "function_attack")
    return build


__all__ = [
    "API_VERSION",
    # methods
    "Method", "Context", "TeacherTraining", "option", "scalar_state", "milestone",
    "RATE_MILESTONES", "C100_KL_SCALE", "C100_BATCHMEAN_SCALE", "register_method",
    "get_method", "list_methods", "create_method", "make_options",
    # the inner maximisation
    "pgd", "random_start", "eval_mode",
    # loss helpers
    "KL_EPS", "kl_elements", "kle", "kl_sum", "kl_mean", "kl_per_sample", "log_probs",
    "masked_kle", "masked_kle_parts", "masked_kle_share", "neg_entropy", "entropy_balance_",
    "mtard_weights_", "magnitude_scale", "cross_entropy_sum", "lse_distance", "lse_clip_bound",
    "fair_class_weights", "absld_temperatures",
    # schedule helpers (a teacher's or a rate's schedule inside a method)
    "block_mean", "cos_exp_decay",
    # models
    "register_model", "create_model", "list_models",
    # datasets
    "register_dataset", "make_arrays", "DatasetArrays", "list_datasets",
    # attacks
    "AttackSpec", "register_attack", "list_attacks", "function_attack", "Attack", "KINDS",
    "SANITY_ROLES",
    # errors
    "UserError",
]
