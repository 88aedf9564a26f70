"""Run by tests/test_distributed.py under torchrun (2 gloo processes); not a test itself.

``python -m ciard_bench.train``'s arguments, trained through ``train()`` with a stop flag
that only rank 1 sets, during its own step 2 (as if only its process got the signal).
Each rank prints ``{"rank": ..., "interrupted": ...}`` as its last line.
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
result = engine.train(config_from_args(engine.build_parser("standard").parse_args(sys.argv[1:])),
                      stop=stop)
print(json.dumps({"rank": int(os.environ["RANK"]), "interrupted": result.get("interrupted")}))
