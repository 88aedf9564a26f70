"""Test-wide settings.

Torch runs single-threaded in tests (and in the subprocesses they start, through
OMP_NUM_THREADS): the models here are tiny, and on a small shared machine two threads per
process make OpenMP spin-wait against every other process. CIARD_TEST_THREADS overrides.
"""
import os

THREADS = os.environ.get("CIARD_TEST_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", THREADS)

import torch  # noqa: E402

torch.set_num_threads(int(THREADS))
