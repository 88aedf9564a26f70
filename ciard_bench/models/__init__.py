"""Model registry, CIFAR architectures, checkpoint I/O, and teachers (a teacher spec -> a
frozen model: :mod:`.teachers`; RobustBench's zoo: :mod:`.zoo`).

Students: ``resnet18``, ``mobilenet_v2``; teachers: ``resnet56``, ``wrn_22_6``, ``wrn_34_10``,
``wrn_70_16``; CPU stand-ins used by the ``smoke`` preset and the tests: ``resnet18_tiny``,
``mobilenet_v2_tiny``, ``resnet8``, ``wrn_10_2``. Every model takes [0, 1] images and returns
logits; the ones that normalise do it inside ``forward``. ``python -m ciard_bench.models``
prints each model's parameters and FLOPs.
"""
from __future__ import annotations

from . import mobilenet, resnet, wide_resnet  # noqa: F401  (registers the architectures)
from .io import build_model, load_model_file, load_state_dict_checked, save_model_file
from .registry import (count_flops, count_parameters, create_model, list_models, model_kwargs,
                       register_model)
from .teachers import TEACHER_METHODS, load_teacher, zoo_dataset
from .zoo import (NUM_CLASSES, load_robustbench_teacher, robustbench_path,
                  write_random_zoo_file)

__all__ = ["NUM_CLASSES", "TEACHER_METHODS", "build_model", "count_flops", "count_parameters",
           "create_model", "list_models", "load_model_file", "load_robustbench_teacher",
           "load_state_dict_checked", "load_teacher", "model_kwargs", "register_model",
           "robustbench_path", "save_model_file", "write_random_zoo_file", "zoo_dataset"]
