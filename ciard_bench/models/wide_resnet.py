"""Wide ResNets, built from RobustBench's own classes so zoo and released checkpoints load.

* ``wrn_34_10`` / ``wrn_10_2``: ``robustbench.model_zoo.architectures.wide_resnet.WideResNet``
  (the TRADES code), ReLU, no input normalisation. RobustBench builds ``Zhang2019Theoretically``
  with ``sub_block1=True``: a copy of the first block group that TRADES defines and never
  calls in ``forward``. We default to ``sub_block1=False`` (46.16 M parameters, the real
  network; with it 48.26 M) and :func:`~ciard_bench.models.io.load_state_dict_checked` drops
  the unused ``sub_block1.*`` entries of such checkpoints. Pass ``sub_block1=True`` to get
  RobustBench's exact module.
* ``wrn_70_16`` / ``wrn_22_6``: ``robustbench...dm_wide_resnet.DMWideResNet`` (DeepMind's
  layout) with Swish and normalisation inside ``forward``. ``wrn_70_16`` is built as the zoo's
  cifar100 ``Gowal2020Uncovering`` entry (CIFAR-100 mean/std). ``wrn_22_6`` follows MTARD's
  released ``WideResNet_22_6``, the CIFAR-100 clean teacher, which normalises with the
  CIFAR-10 mean/std (a quirk kept so its checkpoints behave as trained; ``normalize=``).

RobustBench is imported inside the factories (through ``ciard_bench._compat``), so
``import ciard_bench.models`` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch.nn as nn

from .._compat import import_robustbench
from ..errors import UserError, choices_error
from .registry import register_model

_NORMALIZE = ("cifar10", "cifar100", "none")
_ACTIVATIONS = ("swish", "relu")


def _robustbench_module(name: str) -> Any:
    import_robustbench()   # heavy (robustbench, seconds): only when a TRADES/DM WRN is built
    return importlib.import_module(f"robustbench.model_zoo.architectures.{name}")


def _check_depth(depth: int) -> None:
    if depth < 10 or (depth - 4) % 6:
        raise UserError(f"WideResNet depth {depth} is not valid; accepted: 6n+4 "
                        "(10, 16, 22, 28, 34, 70, ...)")


def _trades_wrn(num_classes: int, depth: int, widen_factor: int, sub_block1: bool,
                drop_rate: float) -> Any:
    _check_depth(depth)
    arch = _robustbench_module("wide_resnet")
    return arch.WideResNet(depth=depth, num_classes=num_classes, widen_factor=widen_factor,
                           sub_block1=bool(sub_block1), dropRate=drop_rate)


def _dm_wrn(num_classes: int, depth: int, widen_factor: int, activation: str,
            normalize: str) -> Any:
    _check_depth(depth)
    if activation not in _ACTIVATIONS:
        raise choices_error("activation", activation, _ACTIVATIONS)
    if normalize not in _NORMALIZE:
        raise choices_error("normalize", normalize, _NORMALIZE)
    arch = _robustbench_module("dm_wide_resnet")
    mean, std = {"cifar10": (arch.CIFAR10_MEAN, arch.CIFAR10_STD),
                 "cifar100": (arch.CIFAR100_MEAN, arch.CIFAR100_STD),
                 "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}[normalize]
    act = arch.Swish if activation == "swish" else nn.ReLU
    return arch.DMWideResNet(num_classes=num_classes, depth=depth, width=widen_factor,
                             activation_fn=act, mean=mean, std=std)


@register_model
def wrn_34_10(num_classes: int = 10, depth: int = 34, widen_factor: int = 10,
              sub_block1: bool = False, drop_rate: float = 0.0) -> Any:
    """WRN-34-10 (TRADES; RobustBench ``Zhang2019Theoretically``): 46.16 M parameters."""
    return _trades_wrn(num_classes, depth, widen_factor, sub_block1, drop_rate)


@register_model
def wrn_10_2(num_classes: int = 10, depth: int = 10, widen_factor: int = 2,
             sub_block1: bool = False, drop_rate: float = 0.0) -> Any:
    """WRN-10-2, same class as ``wrn_34_10``: its CPU stand-in."""
    return _trades_wrn(num_classes, depth, widen_factor, sub_block1, drop_rate)


@register_model
def wrn_70_16(num_classes: int = 10, depth: int = 70, widen_factor: int = 16,
              activation: str = "swish", normalize: str = "cifar100") -> Any:
    """WRN-70-16 of Gowal et al. 2020 (RobustBench cifar100 ``Gowal2020Uncovering``): 267 M."""
    return _dm_wrn(num_classes, depth, widen_factor, activation, normalize)


@register_model
def wrn_22_6(num_classes: int = 10, depth: int = 22, widen_factor: int = 6,
             activation: str = "swish", normalize: str = "cifar10") -> Any:
    """WRN-22-6 clean teacher for CIFAR-100 (MTARD's ``WideResNet_22_6``): 9.7 M parameters."""
    return _dm_wrn(num_classes, depth, widen_factor, activation, normalize)
