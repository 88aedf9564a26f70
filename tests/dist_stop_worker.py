"""Run by tests/test_distributed.py under torchrun (2 gloo processes); not a test itself.

``python -m ciard_bench.train``'s arguments, trained through ``train()`` with a stop flag
that only rank 1 sets, during its own step 2 (as if only its process got the signal).
Each rank writes ``{"rank": ..., "interrupted": ...}`` to ``<out>.rank<R>.json`` (its own
file: two ranks printing to torchrun's one stdout can run their lines together).
"""
import json
import os
import sys
import threading

from ciard_bench import train as engine
from ciard_bench.config import config_from_args

stop = threading.Event()
real_step, steps = engine.train_step, [0]


def step(*args, **kwargs):
    steps[0] += 1
    if steps[0] == 2 and os.environ["RANK"] == "1":
        stop.set()
    return real_step(*args, **kwargs)


engine.train_step = step
cfg = config_from_args(engine.build_parser("standard").parse_args(sys.argv[1:]))
result = engine.train(cfg, stop=stop)
rank = int(os.environ["RANK"])
with open(f"{cfg.out}.rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "interrupted": result.get("interrupted")}, f)
