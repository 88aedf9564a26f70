"""Test-wide settings.

Torch runs single-threaded in tests (and in the subprocesses they start, through
OMP_NUM_THREADS): the models here are tiny, and on a small shared machine two threads per
process make OpenMP spin-wait against every other process. CIARD_TEST_THREADS overrides.

The default run is one test process. ``-n 2 --dist loadgroup`` (pytest-xdist) spreads it over
two: each module then runs whole in one of them, so its module fixtures are made once, and
the modules that start several training processes at once (torchrun, the real SLURM: a test
marked ``slurm`` by ``slurm_helpers.needs_slurm``) all run in the same one, one after
another (the single-node cluster is shared, and two process groups spinning in their
collectives on 2 cores slow each other down many times over).
"""
import os

import pytest

THREADS = os.environ.get("CIARD_TEST_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", THREADS)

import torch  # noqa: E402

torch.set_num_threads(int(THREADS))


PROCESS_GROUPS = {"test_distributed", "test_distributed_grad", "test_distributed_state"}


def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("xdist"):
        return
    together = PROCESS_GROUPS | {item.module.__name__ for item in items
                                 if item.get_closest_marker("slurm")}
    for item in items:
        name = item.module.__name__
        item.add_marker(pytest.mark.xdist_group("processes" if name in together else name))
