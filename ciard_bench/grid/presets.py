"""The three scales of ``python -m ciard_bench.tables``: ``smoke``, ``quick``, ``paper``.

A :class:`Preset` is data: which datasets, students, teachers and methods make the grid,
how each cell is trained (engine settings applied on top of each method's released
defaults) and how it is evaluated. Every reduction from the paper's protocol is a field
here and is repeated in the table captions (``Preset.reductions``), so a table never hides
how it was made. Evaluation attacks keep the protocol's steps
(:data:`ciard_bench.attacks.PROTOCOL`); the CPU presets evaluate at eps 16/255 with the
step sizes doubled to match, fewer test points and a reduced AutoAttack, all in captions.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from ..errors import choices_error
from ..methods import get_method

# Table rows, in the paper's order (Tables 3-6): registry name -> the method's own table label.
TABLE_METHODS = ("sat", "trades", "ard", "rslad", "score", "fair_ard", "absld", "mtard", "bmtard",
                 "ciard")
METHOD_LABELS = {name: get_method(name).label for name in TABLE_METHODS}
# The methods readers compare with beyond the paper's ten (issue 26): IAD (both released
# scripts), the Fair-ARD paper's re-weighting on RSLAD, MTARD and IAD-I, and PeerAiD. The
# cpu, quick and paper presets train them too; they are the rows of table_beyond and never
# enter Tables 3-6, which keep exactly the paper's rows.
BEYOND_METHODS = ("iad_i", "iad_ii", "fair_rslad", "fair_mtard", "fair_iad", "peeraid")
GRID_METHODS = TABLE_METHODS + BEYOND_METHODS


def method_label(name: str) -> str:
    """A method's table row: the paper's spelling for the ten, else the class's ``label``."""
    return METHOD_LABELS.get(name) or get_method(name).label


def row_methods(methods: "Sequence[str]") -> list[str]:
    """The methods in table order: the paper's ten in its order (Tables 3-6), then any other
    method (one beyond the paper, a plugin's: table_beyond's rows) in the order given."""
    present = list(dict.fromkeys(methods))
    return [m for m in TABLE_METHODS if m in present] + [m for m in present if m not in TABLE_METHODS]


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
    methods: tuple[str, ...] = GRID_METHODS
    train: dict = field(default_factory=dict)          # student TrainConfig overrides
    n_examples: int | None = None    # first N test points evaluated (None: whole test set)
    eval_batch_size: int = 128
    attack_overrides: dict = field(default_factory=dict)   # attack -> settings (AA variant)
    sanity_examples: int = 100       # eps sweep (robustness curve) and noise check points
    checkpoint: str = "best"         # which checkpoint the tables evaluate: best | last
    compare_paper: bool = False      # print the paper's numbers beside ours
    table_notes: dict = field(default_factory=dict)    # table name -> caption sentence
    assumed_step_s: dict = field(default_factory=dict)  # dry-run estimate before any run
    seed: int = 0                    # the first seed; seeds k = seed, seed + 1, ...
    seeds: int = 1                   # how many seeds every cell is trained with (--seeds)

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


# --- CPU presets: smoke (the README's first command) and cpu (the 3-seed study) -------------
# Both train the same cells, so the smoke tables are a one-seed, three-method slice of the
# cpu study: SAT (the reference the attack strength is set on) and the paper's central
# comparison, CIARD against MTARD (a full smoke of 12 cells took 17-18 minutes; B-MTARD,
# MTARD's sibling, is in the cpu study). RSLAD is left out of the smoke: its loss is a
# KL averaged over batch x classes (1/10 of a batch-mean KL's gradient on 10 classes) on
# the robust teacher's soft labels only, and in 6 epochs the ResNet stand-in reached 84 %
# clean and the MobileNet stand-in ~40 %. Why each number (measured on the project's 2-core CPU, one thread per cell):
# * students are trained until they have learned digits: the SAT ResNet-18 stand-in reached
#   91 % clean / 72 % PGD_TRADES after 3 epochs of the full training set at batch 32, lr 0.1,
#   3 training-PGD steps (~0.2 s/step); 6 epochs leave room for the slower methods, and
#   with 6 epochs ITT trains after epoch 1 of 6: the released share, epochs 51-300 of 300;
# * eps 16/255 (training and evaluation; the attacks keep the protocol's steps and step
#   sizes): at 8/255 the SAT student kept 89 % under PGD_TRADES and even the clean teacher
#   61 % (the digits are 8x8 images upscaled 4x: blocky, with large margins), so the
#   tables could not separate robust from non-robust training; training PGD takes 3 steps
#   of 6/255 from a random start (1.1 eps of travel); the evaluation's gradient attacks
#   keep their steps and double their step sizes (below); the engine's per-epoch
#   PGD_TRADES (best-epoch choice only) keeps 0.003;
# * MobileNet-V2 stand-in: width 0.25 with half the blocks per stage (11 of 17). At width
#   0.125 and full depth (2-4 channels in the first blocks) it was near chance after 2
#   epochs; width 0.25 at full depth costs ~4x the ResNet stand-in per image, half depth 1.7x;
# * the clean teacher is the ResNet-18 stand-in (standard training), the robust teacher a
#   WRN-10-1 (TRADES), both 6 epochs of the full training set;
# * the final evaluation uses the first 200 of the 359 digits test points (the attacks cost
#   ~2x the training of a cell on the whole set), the per-epoch evaluation (best-epoch
#   choice) the first 100; the eps sweep 32;
# * AutoAttack: pyautoattack's custom version, APGD-CE (1 restart, as in standard) and APGD-T
#   (9 targets) at 10 iterations: 100 gradient steps per robust point, cheaper than
#   standard (an upper bound on its robust accuracy; the captions say so).
_CPU_TRAIN = {"epochs": 6, "batch_size": 32, "lr": 0.1, "attack_steps": 3, "eps": 16 / 255,
              "alpha": 6 / 255, "n_test": 100, "eval_every": 1}
_CPU_TEACHER_TRAIN = _CPU_TRAIN
_CPU_STUDENTS = {"resnet18": ("resnet18_tiny", {"width": 8}),
                 "mobilenet_v2": ("mobilenet_v2_tiny", {"width_mult": 0.25, "depth_mult": 0.5})}
_CPU_TEACHERS = {"default": {
    "clean": TeacherPlan("ResNet-18-tiny (clean)", "resnet18_tiny", {"width": 8},
                         train=_CPU_TEACHER_TRAIN),
    "robust": TeacherPlan("WRN-10-1 (robust, TRADES)", "wrn_10_2", {"widen_factor": 1},
                          train=_CPU_TEACHER_TRAIN)}}


def _cpu_reductions(best_epochs: str, aa_targets: int) -> str:
    return ("digits (offline, 1438 training and 359 test images); ResNet-18 -> "
            "resnet18_tiny (width 8), MobileNet-V2 -> mobilenet_v2_tiny (width 0.25, "
            "half the blocks); teachers ResNet-18-tiny (clean) and WRN-10-1 (TRADES) "
            "trained here; every run 6 epochs of the full training set at batch 32, lr "
            "0.1, each method's released schedule scaled to 6 "
            "epochs (epoch e gets the mean rate of the released epochs it stands for); eps "
            "16/255 in training (PGD 3 steps of 6/255) and evaluation (step sizes doubled; "
            "digits keep large margins at 8/255); "
            f"first 200 test points; best epoch chosen {best_epochs}on the first 100; eps sweep "
            f"on 32 points; AutoAttack = APGD-CE (1 restart) + APGD-T ({aa_targets} targets) with "
            "10 iterations; numbers are not comparable to the paper's")


_CPU_REDUCTIONS = _cpu_reductions("", 9)
# eps is twice the protocol's, so the gradient attacks' step sizes are too (same steps, same
# travel relative to eps: at 0.003 PGD_TRADES' 20 steps could not cross the 16/255 ball and
# was weaker than FGSM on the clean teacher)
_CPU_ATTACKS = {"pgd_sat": {"alpha": 4 / 255}, "pgd_trades": {"alpha": 0.006},
                "cw_inf": {"alpha": 4 / 255}, "transfer_pgd_trades": {"alpha": 0.006},
                "transfer_cw_inf": {"alpha": 4 / 255},
                "aa": {"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "n_iter": 10,
                       "apgd_n_restarts": 1}}

# The smoke's two savings over the cpu study's cells (20 % of its CPU time: 13 min 2 s instead
# of 15 min 47 s on a quiet 2-core machine, results/README.md):
# * the per-epoch evaluation (best-epoch choice) runs from epoch 4 on, except in the CIARD
#   cell whose training curves are the figure: in all 82 cells of the cpu study and the
#   earlier smoke, the best epoch was 4, 5 or 6, so the same checkpoints are chosen and the
#   smoke's numbers stay those of the cpu study's seed 0 (tests/test_committed_results.py);
# * AutoAttack's APGD-T runs on the 3 most likely wrong classes instead of 9 (its first
#   three targets; the captions say so): the AA column may be a little weaker than the cpu
#   study's.
_SMOKE_TRAIN = {**_CPU_TRAIN, "eval_from": 4}
_SMOKE_TEACHERS = {"default": {role: replace(plan, train=_SMOKE_TRAIN)
                               for role, plan in _CPU_TEACHERS["default"].items()}}
_SMOKE_ATTACKS = {**_CPU_ATTACKS, "aa": {**_CPU_ATTACKS["aa"], "n_target_classes": 3}}

register_preset(Preset(
    name="smoke",
    description="offline digits, 3 of the 10 methods, one seed: every table filled from "
                "students that learned the task, on 2 CPU cores in under 15 minutes",
    reductions="smoke preset: SAT, MTARD and CIARD only (the cpu preset runs all ten with "
               "3 seeds); " + _cpu_reductions("among epochs 4-6 (all epochs for the training "
                                              "curves) ", 3),
    datasets=("digits",),
    students=_CPU_STUDENTS,
    teachers=_SMOKE_TEACHERS,
    methods=("sat", "mtard", "ciard"),
    train=_SMOKE_TRAIN,
    n_examples=200,
    attack_overrides=_SMOKE_ATTACKS,
    sanity_examples=32,
    # stated assumptions for --dry-run and the first ETA (one 2-core CPU, one thread per
    # cell): s/step, s/evaluation; measured values replace them as cells finish
    assumed_step_s={"teacher": 0.25, "student": 0.35, "eval_teacher": 20.0, "eval_student": 45.0},
))

register_preset(Preset(
    name="cpu",
    description="the smoke preset's cells for the paper's ten methods and the six beyond "
                "them (table_beyond), both students, the Table 2 teachers and the Table 7 "
                "ablations, 3 seeds: a study of about 4 hours on 2 CPU cores (resumable, so "
                "it can run in parts)",
    reductions="cpu preset: " + _CPU_REDUCTIONS,
    datasets=("digits",),
    students=_CPU_STUDENTS,
    teachers=_CPU_TEACHERS,
    train=_CPU_TRAIN,
    n_examples=200,
    attack_overrides=_CPU_ATTACKS,
    sanity_examples=32,
    seeds=3,
    assumed_step_s={"teacher": 0.25, "student": 0.35, "eval_teacher": 20.0, "eval_student": 45.0},
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

# --- paper: the full protocol of docs/protocol.md -------------------------------------------
register_preset(Preset(
    name="paper",
    description="the paper's full protocol: 300 epochs (each method's released "
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
