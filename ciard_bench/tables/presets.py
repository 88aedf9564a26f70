"""The three scales of ``python -m ciard_bench.tables``: ``smoke``, ``quick``, ``paper``.

A :class:`Preset` is data: which datasets, students, teachers and methods make the grid,
how each cell is trained (engine settings applied on top of each method's released
defaults) and how it is evaluated. Every reduction from the paper's protocol is a field
here and is repeated in the table captions (``Preset.reductions``), so a table never hides
how it was made. Evaluation attacks always keep the protocol's steps and step sizes
(:data:`ciard_bench.attacks.PROTOCOL`); only the number of test points and, in ``smoke``,
AutoAttack's variant are reduced.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import choices_error

# Table rows, in the paper's order (Tables 3-6): registry name -> printed name.
METHOD_LABELS = {"sat": "SAT", "trades": "TRADES", "ard": "ARD", "rslad": "RSLAD",
                 "score": "SCORE", "fair_ard": "Fair-ARD", "absld": "ABSLD", "mtard": "MTARD",
                 "bmtard": "B-MTARD", "ciard": "CIARD"}
# Table 7 rows: CIARD options of each ablation (the full model is the Table 3 CIARD cell).
ABLATIONS = {"baseline": {"itt": False, "push": False}, "+ITT": {"push": False}, "+ITT+push": {}}
# The two students of the paper: Table 3/5 (ResNet-18), Table 4/6 (MobileNet-V2).
STUDENT_LABELS = {"resnet18": "ResNet-18", "mobilenet_v2": "MobileNet-V2"}
STUDENT_ATTACKS = ("fgsm", "pgd_sat", "pgd_trades", "cw_inf", "square", "transfer_pgd_trades",
                   "transfer_cw_inf", "aa")
TEACHER_ATTACKS = ("fgsm", "pgd_sat", "pgd_trades", "cw_inf")
ABLATION_ATTACKS = ("pgd_trades",)


@dataclass(frozen=True)
class TeacherPlan:
    """A teacher: an existing spec (``rb:NAME``, a file) or a model the pipeline trains."""

    label: str                       # the row of Table 2, e.g. "ResNet-56 (clean)"
    arch: str | None = None          # trained by the pipeline when ``spec`` is None
    kwargs: dict = field(default_factory=dict)
    spec: str | None = None          # rb:NAME | PATH | ARCH=PATH: used as is, not trained
    train: dict = field(default_factory=dict)   # TrainConfig overrides for training it


@dataclass(frozen=True)
class Preset:
    """One named scale of the experiment grid (see the module docstring)."""

    name: str
    description: str
    reductions: str                  # one line for the captions: what differs from the paper
    datasets: tuple[str, ...]
    students: dict                   # paper student label -> (registered arch, kwargs)
    teachers: dict                   # dataset (or "default") -> {"clean"|"robust": TeacherPlan}
    methods: tuple[str, ...] = tuple(METHOD_LABELS)
    train: dict = field(default_factory=dict)          # student TrainConfig overrides
    n_examples: int | None = None    # first N test points evaluated (None: whole test set)
    eval_batch_size: int = 128
    attack_overrides: dict = field(default_factory=dict)   # attack -> settings (AA variant)
    sanity_examples: int = 100       # eps sweep (robustness curve) and noise check points
    checkpoint: str = "best"         # which checkpoint the tables evaluate: best | last
    compare_paper: bool = False      # print the paper's numbers beside ours
    table_notes: dict = field(default_factory=dict)    # table name -> caption sentence
    assumed_step_s: dict = field(default_factory=dict)  # dry-run estimate before any run
    seed: int = 0

    def teacher_plans(self, dataset: str) -> dict[str, TeacherPlan]:
        """Clean and robust teacher of ``dataset`` (the preset's ``default`` for others)."""
        return self.teachers.get(dataset) or self.teachers["default"]

    def with_overrides(self, **values: Any) -> "Preset":
        return replace(self, **values)


_PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add a preset to the registry; a duplicate name is an error."""
    if preset.name in _PRESETS:
        raise ValueError(f"preset {preset.name!r} is registered twice")
    _PRESETS[preset.name] = preset
    return preset


def list_presets() -> list[str]:
    return list(_PRESETS)


def get_preset(name: str) -> Preset:
    if name not in _PRESETS:
        raise choices_error("preset", name, list_presets())
    return _PRESETS[name]


# --- smoke: every table from real runs on a 2-core CPU in <= 15 minutes --------------------
# Why each number (measured on a shared 2-core CPU, see results/README.md):
# * batch 16, lr 0.05: on this CPU a tiny model's cost per image hardly changes between
#   batch 16 and 64, so small batches buy more updates; in 64-96 steps a ResNet-18 stand-in
#   then learns digits (batch 64, lr 0.1: chance level for most methods);
# * MobileNet-V2 at width 0.125 costs ~1.4x the ResNet-18 stand-in per image (0.25: ~4x,
#   depthwise convolutions are slow on CPU); it learns slowly, which the tables show;
# * the clean teacher is the ResNet-18 stand-in (95 % in 3 epochs; a ResNet-8 reached 66 %);
# * widths keep >= 8 stem channels for the ResNets: torch 2.14's channels-last convolution
#   backward corrupts memory below that, and the engine's per-epoch evaluation feeds
#   permuted (channels-last) inputs;
# * --threads 1 is as fast as 2 for these models (2 threads: 1.24x on the ResNet, 0.94x on
#   the MobileNet, and 10-50x slower steps when another process holds the second core);
# * AutoAttack: pyautoattack's custom version runs APGD-CE with 5 restarts and APGD-T with 9
#   target classes; at 10 iterations that is 140 gradient steps per robust point.
_SMOKE_TEACHER_TRAIN = {"epochs": 3, "n_train": 1024, "batch_size": 32, "attack_steps": 3,
                        "n_test": 64, "eval_every": 3}
register_preset(Preset(
    name="smoke",
    description="offline digits, reduced-width students and teachers trained by the "
                "pipeline, 2 epochs: every table filled from real runs on 2 CPU cores",
    reductions="smoke preset: digits (offline); ResNet-18 -> resnet18_tiny (width 8), "
               "MobileNet-V2 -> mobilenet_v2_tiny (width 0.125); teachers ResNet-18-tiny "
               "(clean) and WRN-10-1 (TRADES) trained here, 3 epochs of 1024 training points; "
               "students 2 epochs of 512, batch 16, lr 0.05, training PGD 3 steps; best epoch "
               "chosen on 32 test points; eps sweep on 16 points; AutoAttack = APGD-CE + "
               "APGD-T with 10 iterations; numbers are not comparable to the paper",
    datasets=("digits",),
    students={"resnet18": ("resnet18_tiny", {"width": 8}),
              "mobilenet_v2": ("mobilenet_v2_tiny", {"width_mult": 0.125})},
    teachers={"default": {
        "clean": TeacherPlan("ResNet-18-tiny (clean)", "resnet18_tiny", {"width": 8},
                             train=_SMOKE_TEACHER_TRAIN),
        "robust": TeacherPlan("WRN-10-1 (robust, TRADES)", "wrn_10_2", {"widen_factor": 1},
                              train=_SMOKE_TEACHER_TRAIN)}},
    train={"epochs": 2, "n_train": 512, "n_test": 32, "batch_size": 16, "lr": 0.05,
           "attack_steps": 3, "eval_every": 1},
    n_examples=64,
    attack_overrides={"aa": {"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "n_iter": 10}},
    sanity_examples=16,
    table_notes={"table7": "With 2 epochs, ITT (released start: after epoch 50 of 300, here "
                           "after epoch 1 of 2) runs only in epoch 2, where its cosine learning "
                           "rate has reached 0: the +ITT row equals the baseline by "
                           "construction here."},
    # stated assumptions for --dry-run before anything ran (2 CPU cores): s/step, s/evaluation
    assumed_step_s={"teacher": 0.3, "student": 0.3, "eval_teacher": 15.0, "eval_student": 20.0},
))

# --- quick: the paper's models and datasets, a short schedule, one GPU in hours -----------
_PAPER_TEACHERS = {
    "cifar10": {"clean": TeacherPlan("ResNet-56 (clean)", "resnet56",
                                     train={"epochs": 200}),
                "robust": TeacherPlan("WRN-34-10 (robust)", spec="rb:Zhang2019Theoretically")},
    "cifar100": {"clean": TeacherPlan("WRN-22-6 (clean)", "wrn_22_6",
                                      train={"epochs": 200}),
                 "robust": TeacherPlan("WRN-70-16 (robust)", spec="rb:Gowal2020Uncovering")},
    # npz:PATH and other datasets: CIFAR-10's architectures, both trained here
    "default": {"clean": TeacherPlan("ResNet-56 (clean)", "resnet56", train={"epochs": 200}),
                "robust": TeacherPlan("WRN-34-10 (robust, TRADES)", "wrn_34_10",
                                      train={"epochs": 76})},
}
_PAPER_STUDENTS = {"resnet18": ("resnet18", {}), "mobilenet_v2": ("mobilenet_v2", {})}

register_preset(Preset(
    name="quick",
    description="the paper's students, teachers and datasets with a 30-epoch schedule and "
                "1,000 test points: one GPU in hours",
    reductions="quick preset: 30 epochs (milestones scaled), clean teachers trained here for "
               "30 epochs; first 1000 test points",
    datasets=("cifar10", "cifar100"),
    students=_PAPER_STUDENTS,
    teachers={k: {r: replace(t, train={"epochs": 30}) if t.spec is None else t
                  for r, t in v.items()} for k, v in _PAPER_TEACHERS.items()},
    train={"epochs": 30},
    n_examples=1000,
    # stated assumptions (one H100, batch 128, WRN-34-10 teacher): s/step, s/evaluation
    assumed_step_s={"teacher": 0.05, "student": 0.25, "eval_teacher": 600.0,
                    "eval_student": 300.0},
))

# --- paper: CIARD.md's full protocol ---------------------------------------------------------
register_preset(Preset(
    name="paper",
    description="the full protocol of CIARD.md: 300 epochs (each method's released "
                "schedule), RobustBench robust teachers, the whole test set",
    reductions="paper preset: full protocol (each method's released epochs and schedule)",
    datasets=("cifar10", "cifar100"),
    students=_PAPER_STUDENTS,
    teachers=_PAPER_TEACHERS,
    train={},
    n_examples=None,
    compare_paper=True,
    assumed_step_s={"teacher": 0.05, "student": 0.25, "eval_teacher": 6000.0,
                    "eval_student": 3000.0},
))
