"""benchmarks/gpu_check.py keeps working (issue 13, item 5): its ``--device cpu --tiny`` run,
as a user runs it, gives every student, configuration and attack with real numbers."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile"]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# slow (-m slow): what the GPU check times (the training step, the evaluation attacks) is
# checked in test_train.py and test_evaluate.py; this runs the script end to end
@pytest.mark.slow
def test_gpu_check_runs_on_cpu_at_tiny_sizes(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert list(res["students"]) == ["resnet18_tiny", "resnet8", "wrn_10_2"]
    assert res["skipped"] == [] and res["peaks"] == {"name": "cpu", "known": False}
    for student, s in res["students"].items():
        assert list(s["configs"]) == CONFIGS
        assert _positive(s["flops_per_step"]["ours"])
        # the released structure does more work: the robust teacher's unused clean forward
        assert s["flops_per_step"]["released"] > s["flops_per_step"]["ours"]
        for name in CONFIGS:
            variants = s["configs"][name]
            assert list(variants) == (["ours", "released"] if name in ("fp32", "bf16") else ["ours"])
            for vname, v in variants.items():
                where = f"{student} {name} {vname}"
                for key in ("images_per_s", "ms_per_step", "peak_memory_mb", "tflop_per_step",
                            "achieved_tflops"):
                    assert _positive(v[key]), (where, key, v[key])
                assert v["achieved_tflops"] * 1e12 == pytest.approx(
                    s["flops_per_step"][vname] * v["steps"] / v["seconds"], rel=1e-12)
                assert v["fraction_of_peak"] is None          # no peak known for a CPU
                diff = v["loss_rel_diff_vs_fp32"]
                assert all(math.isfinite(d) and d >= 0 for d in diff["per_step"]), where
                if name == "fp32":
                    assert diff["max"] == 0.0                  # fp32 against itself
                else:                                          # bf16 changes the numbers, a bit
                    assert 0.0 < diff["first_step"] < 0.5, (where, diff)
            if "released" in variants:                          # same math, same first state
                assert variants["released"]["loss_rel_diff_vs_ours"]["first_step"] < (
                    1e-5 if name == "fp32" else 0.2)
    attacks = {r["attack"]: r for r in res["attacks"]}
    assert list(attacks) == ["fgsm", "pgd_sat", "pgd_trades", "cw_inf", "square"]
    assert all(_positive(r["images_per_s"]) and r["n_attacked"] == 8 for r in attacks.values())
    # PGD_TRADES is 20 steps where FGSM is one: 19 more forwards and input backwards per image
    pgd, fgsm = (attacks[a]["passes_per_image"] for a in ("pgd_trades", "fgsm"))
    assert pgd["forward"] - fgsm["forward"] == 19 and pgd["backward_input"] - fgsm["backward_input"] == 19
    assert "bf16+channels_last+compile" in proc.stdout and "img/s" in proc.stdout
