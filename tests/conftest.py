"""Test-wide settings.

Torch runs single-threaded in tests (and in the subprocesses they start, through
OMP_NUM_THREADS): the models here are tiny, and on a small shared machine two threads per
process make OpenMP spin-wait against every other process. CIARD_TEST_THREADS overrides.

The README's test command runs the suite in two parts. First every test that starts no
process group, spread over two test processes (``-n 2 --dist loadgroup``, pytest-xdist):
each module runs whole in one of them, so its module fixtures are made once. Then, in one
test process and alone on the machine, the tests marked ``processes`` (added here): those
that start several training processes at once (torchrun's gloo process groups, the modules
of PROCESS_GROUPS and tests marked so by hand) or drive the real SLURM (marked ``slurm`` by
``slurm_helpers.needs_slurm``). Two process groups, or one beside another test process,
spinning in their collectives on 2 cores slow each other down many times over (a
torchrun test once aborted inside gloo so), and the single-node cluster is shared. A plain
``pytest`` runs everything in one process; ``-n 2`` without the split keeps the
``processes`` tests in one of the two test processes.
"""
import os

import pytest

THREADS = os.environ.get("CIARD_TEST_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", THREADS)

import torch  # noqa: E402

torch.set_num_threads(int(THREADS))


PROCESS_GROUPS = {"test_distributed", "test_distributed_grad", "test_distributed_state"}


def _starts_processes(item) -> bool:
    return (item.module.__name__ in PROCESS_GROUPS or item.get_closest_marker("slurm") is not None
            or item.get_closest_marker("processes") is not None)


@pytest.hookimpl(tryfirst=True)      # before -m selects on the marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if _starts_processes(item):
            item.add_marker(pytest.mark.processes)
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        together = item.get_closest_marker("processes") is not None
        item.add_marker(pytest.mark.xdist_group("processes" if together else item.module.__name__))
