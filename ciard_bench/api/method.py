"""The one interface every training method implements, and the method registry.

A method is an ``nn.Module`` that owns the student, its teachers and its adaptive state
(buffers), so one ``state_dict`` checkpoints all of it. The training engine only calls:

* ``forward(x, y) -> dict`` of named loss terms; ``"loss"`` is what the student minimises.
  A trainable teacher's loss (CIARD's ITT) is returned under its ``TeacherTraining.loss_key``
  only on steps where it trains.
* ``begin_epoch(epoch)`` / ``end_epoch(epoch)`` (1-indexed, as the released scripts count).
* ``teacher_trainings()``: teachers the method trains, each with its own optimiser settings.
* ``batch_norm_refresh(epoch)``: models whose BatchNorm statistics the engine recomputes after
  ``end_epoch`` by one pass over the training data (none by default; PeerAiD's SWA student).
* ``evaluated_student()``: the model evaluated each epoch and saved as the run's student (the
  student by default; PeerAiD's weight average of it).
* ``checkpoint_state()`` / ``load_checkpoint_state()``: everything but frozen teachers.

Under ``torchrun`` (``Context.dist``) each process sees its shard of the batch; a method
updates its adaptive state only from statistics passed through :meth:`Method.global_means`
or :meth:`Method.global_sums` (one all-reduce each), so the state is that of the global
batch and the same on every rank. In one process both return their inputs untouched.

Scalar adaptive state that the released codes keep as Python floats (temperatures, rates,
loss weights, first-step losses) lives in 0-dim float64 buffers (:func:`scalar_state`): the
in-place updates then round exactly as the released arithmetic does, on the device and
without a host sync. Where such a scalar meets a float32 tensor (a loss, logits) the result
stays float32, as Python-float * float32-tensor does; 0-dim by 0-dim products cast the
scalar first (``w.to(loss.dtype) * loss``). MPS has no float64: there the buffers fall back
to float32 with a warning.

The engine knows nothing about any particular method.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from .. import plugins
from ..distributed import Dist, all_reduce_sum_
from ..errors import UserError, choices_error

# Epochs (of 300) at which the adaptive methods multiply their adaptation rates (loss-weight and
# temperature rates) by 0.1, with the learning rate (docs/methods.md#rate-milestones). The
# released codes differ in whether the milestone epoch itself already has the lower rate:
# MTARD and B-MTARD after the epoch (``epoch > m``); ABSLD from the epoch (``epoch >= m``: its
# decay precedes the update that ends the epoch); CIARD with ``rate_decay=once`` from the epoch
# (``>=``), with ``rate_decay=released`` on every batch of the epoch itself (``==``).
RATE_MILESTONES = (215, 260, 285)
# CIFAR-100 conventions, the defaults of the ``c100_scale`` options, applied on 100-class data
# only (docs/methods.md#cifar-100-scale): RSLAD's and MTARD's CIFAR-100 scripts multiply both
# KL terms by 10; AdaAD's CIFAR-100 branch reduces by sum / B instead of sum / (B C), x C = x100.
C100_KL_SCALE = 10.0
C100_BATCHMEAN_SCALE = 100.0


@dataclass
class TeacherTraining:
    """A teacher the method trains alongside the student (after the student's step)."""
    name: str                       # attribute name of the module on the method
    loss_key: str                   # key of forward()'s dict holding its loss when active
    lr_at: Callable[[int], float]   # epoch (1-indexed) -> learning rate
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class Context:
    """What every method needs to know about the run."""
    num_classes: int
    epochs: int
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    dist: Dist = Dist()     # the processes of a torchrun run (one by default)


class Method(nn.Module):
    """Base class. Subclasses set the class attributes and implement ``forward``."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""                       # row label in the tables, the paper's spelling
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    teachers: ClassVar[tuple[str, ...]] = ()        # roles: "clean_teacher", "robust_teacher"
    train_defaults: ClassVar[dict[str, Any]] = {}   # epochs, batch_size, schedule, ... as released
    # logged term -> per-step weight term: the epoch log averages the term only over the steps
    # the weight covers (sum(value * weight) / sum(weight)), e.g. a scale that has no meaning
    # on steps where what it scales is empty
    log_weights: ClassVar[dict[str, str]] = {}

    @dataclass
    class Options:
        """Method hyperparameters (none by default)."""

    def __init__(self, student: nn.Module, teachers: dict[str, nn.Module], ctx: Context,
                 options: "Method.Options | None" = None):
        super().__init__()
        missing = [role for role in self.teachers if teachers.get(role) is None]
        if missing:
            raise UserError(f"method {self.name!r} needs {', '.join(missing)}; "
                            f"give them with --{missing[0].replace('_', '-')} SPEC")
        self.student = student
        for role in self.teachers:
            teacher = teachers[role]
            teacher.eval()
            teacher.requires_grad_(False)
            setattr(self, role, teacher)
        self.ctx = ctx
        self.opts = options if options is not None else self.Options()

    # -- hooks -------------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        """Called before the first step of ``epoch`` (1-indexed)."""

    def end_epoch(self, epoch: int) -> None:
        """Called after the last step of ``epoch``."""

    def teacher_trainings(self) -> list[TeacherTraining]:
        """Teachers this method trains (none by default)."""
        return []

    def batch_norm_refresh(self, epoch: int) -> list[nn.Module]:
        """Models whose BatchNorm running statistics the engine recomputes right after
        ``end_epoch(epoch)``: one pass over the training data, shuffled and augmented as an
        epoch of its own, each model in train mode without gradients; every statistic becomes
        the mean of the batches' statistics weighted by their sizes (SWA's ``bn_update``) and
        each model gets its mode back. Under torchrun each process passes its shard (the
        global batch with ``--sync-bn``) and rank 0's statistics are kept, as the student's.
        None by default; PeerAiD returns its SWA student on the epochs it averages."""
        return []

    def evaluated_student(self) -> nn.Module:
        """The model the engine evaluates after each epoch and saves as the run's student (the
        ``state_dict`` of the ``best`` and ``last`` checkpoints, what the tables and the
        evaluation load). The student by default; a method may return another model of the
        student's architecture, e.g. a weight average of it (PeerAiD's SWA student). A resume
        restores every model from ``checkpoint_state()``, whatever this returns."""
        return self.student

    def train(self, mode: bool = True) -> "Method":
        """Only the student follows ``train()``; teachers keep the modes the method sets."""
        self.training = mode
        self.student.train(mode)
        return self

    def to(self, *args: Any, **kwargs: Any) -> "Method":
        """``nn.Module.to``; on MPS (no float64) the float64 scalar state becomes float32 first."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]   # how nn.Module.to reads its arguments
        if device is not None and device.type == "mps":
            self.state_to_float32(f"{device.type} has no float64")
        return super().to(*args, **kwargs)

    def state_to_float32(self, why: str) -> None:
        """Cast the method's own float64 buffers to float32 (warns: the run may then drift
        ~1 ulp per update from the released Python-float arithmetic)."""
        names = [n for n, b in self._buffers.items() if b is not None and b.dtype == torch.float64]
        for name in names:
            self._buffers[name] = self._buffers[name].float()
        if names:
            warnings.warn(f"{why}: {self.name}'s adaptive state ({', '.join(names)}) runs in "
                          "float32, not float64 as the released code's Python floats; a long run "
                          "may drift slightly from the released trajectory", stacklevel=2)

    # -- checkpointing -----------------------------------------------------------------
    def _frozen_prefixes(self) -> tuple[str, ...]:
        trained = {t.name for t in self.teacher_trainings()}
        return tuple(f"{role}." for role in self.teachers if role not in trained)

    def checkpoint_state(self) -> dict[str, Tensor]:
        """State dict without frozen teachers (they are reloaded from their source)."""
        frozen = self._frozen_prefixes()
        return {k: v for k, v in self.state_dict().items() if not k.startswith(frozen)}

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        frozen = self._frozen_prefixes()
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(frozen)]
        if missing or result.unexpected_keys:
            raise UserError(f"checkpoint does not fit method {self.name!r}: missing "
                            f"{missing[:3]}, unexpected {result.unexpected_keys[:3]}")

    def state_summary(self) -> dict[str, Tensor]:
        """Scalar adaptive state to log each epoch (tensors; the engine syncs once)."""
        return {}

    def adaptive_state(self) -> dict[str, Tensor]:
        """The method's own buffers (its adaptive state, without the models' buffers)."""
        return {name: b for name, b in self._buffers.items() if b is not None}

    # -- statistics of the global batch (torchrun) -------------------------------------
    def global_means(self, means: Sequence[Tensor], count: int,
                     sums: Sequence[Tensor] = ()) -> list[Tensor]:
        """Means over this process's ``count`` samples -> means over the global batch (each
        process weighted by its count), by one all-reduce of a packed float64 buffer; each
        result keeps its input's dtype. ``sums`` (0-dim per-process sums or counts) ride in the
        same all-reduce; their sums over the processes follow the means in the result. In one
        process: the inputs themselves (detached)."""
        d = self.ctx.dist
        if not d.enabled:
            return list(means) + [s.detach() for s in sums]
        # float32 mean x count is exact in float64, so only the sum over processes rounds
        packed = torch.stack([m.detach().to(torch.float64).reshape(()) * count for m in means]
                             + [s.detach().to(torch.float64).reshape(()) for s in sums]
                             + [torch.full((), count, dtype=torch.float64, device=means[0].device)])
        all_reduce_sum_(packed, d)
        k = len(means)
        return ([(total / packed[-1]).to(m.dtype) for total, m in zip(packed[:k], means)]
                + [total.to(s.dtype) for total, s in zip(packed[k:-1], sums)])

    def global_sums(self, *parts: Tensor) -> list[Tensor]:
        """Per-process sums or counts -> sums over all processes, by one all-reduce of a
        packed float64 buffer; each result keeps its input's shape and dtype. In one
        process: the inputs themselves."""
        d = self.ctx.dist
        if not d.enabled:
            return list(parts)
        packed = all_reduce_sum_(torch.cat([p.detach().to(torch.float64).reshape(-1) for p in parts]), d)
        return [chunk.view_as(p).to(p.dtype)
                for chunk, p in zip(packed.split([p.numel() for p in parts]), parts)]


_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry. A name or table label that is empty or
    already taken (by a built-in or another plugin) is an error, which also catches a subclass
    that forgot its own ``name`` or ``label``."""
    if not isinstance(cls, type) or not issubclass(cls, Method):
        raise plugins.PluginError(f"{cls!r} is not a subclass of ciard_bench.api.Method")
    plugins.builtins_first(cls)
    if not cls.name:
        raise plugins.PluginError(f"method class {cls.__qualname__} has no name")
    if cls.name in _REGISTRY:
        raise plugins.clash("method", "name", cls.name, cls.name)
    if not cls.label:
        raise plugins.PluginError(f"method {cls.name!r} has no table label")
    for other in _REGISTRY.values():
        if other.label == cls.label:
            raise plugins.clash("method", "table label", cls.label, other.name)
    _REGISTRY[cls.name] = cls
    plugins.note("method", cls.name, cls)
    return cls


def _add_entry_point(name: str, obj: object) -> None:
    """An entry point naming a class (not a module) registers it, unless it did already."""
    if not (isinstance(obj, type) and _REGISTRY.get(getattr(obj, "name", None)) is obj):
        register_method(obj)  # type: ignore[arg-type]


plugins.track("method", _REGISTRY, adder=_add_entry_point)


def list_methods() -> list[str]:
    """Every registered method's name (built-ins and plugins), sorted."""
    plugins.load()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The class registered as ``name``; an unknown name is a one-line ``UserError``."""
    plugins.load()
    if name not in _REGISTRY:
        err = choices_error("method", name, list_methods())
        raise UserError(str(err) + plugins.failures_note())
    return _REGISTRY[name]


def make_options(cls: type[Method], values: dict[str, Any] | None) -> Method.Options:
    """Build ``cls.Options`` from a dict, rejecting unknown keys and bad choices in one line."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for method {cls.name!r}; accepted: "
                        f"{', '.join(sorted(fields)) or '(none)'}")
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{key} {value!r} is not a finite number for method {cls.name!r}; "
                            "accepted: a finite number")
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"{key} {value!r} is not valid for method {cls.name!r}; "
                            f"accepted: {', '.join(choices)}")
    return cls.Options(**values)


def create_method(name: str, student: nn.Module, teachers: dict[str, nn.Module], ctx: Context,
                  options: dict[str, Any] | None = None) -> Method:
    """Build a registered method from its name, models, run context and options."""
    cls = get_method(name)
    return cls(student, teachers, ctx, make_options(cls, options))


def milestone(epoch_of_300: float, epochs: int) -> int:
    """Scale an epoch milestone of the 300-epoch protocol to a run of ``epochs`` epochs."""
    return max(1, round(epoch_of_300 * epochs / 300))


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field carrying its ``--help`` text (and choices) for the CLI."""
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    return dataclasses.field(default=default, metadata=meta)


def scalar_state(value: float) -> Tensor:
    """A 0-dim float64 tensor for adaptive state the released code keeps as a Python float."""
    return torch.tensor(float(value), dtype=torch.float64)
