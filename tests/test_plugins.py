"""Plugins through the real command line: a ``--plugin FILE.py``, the ``CIARD_BENCH_PLUGINS``
variable and an installed distribution's entry points (a ``*.dist-info`` folder on
``PYTHONPATH``, the on-disk format pip writes) register methods, models and datasets; listings,
``result.json`` and ``--resume`` say where each comes from; and every misuse (a plugin that
fails to import, a taken name or table label, a method without a loss or with a non-finite
one, a model with the wrong output, a changed plugin at a resume, a missing file, an option
that shadows an engine flag, adaptive state kept outside the checkpoint, caught by the
rehearsal's stop and resume) is one line naming the plugin, never a traceback, while the
built-ins keep working.

Every command is a subprocess (plugins load once per process); runs are 1 epoch on a few
dozen images with 1 attack step and 1 thread.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TAIL = "; left out, the built-ins and other plugins still work"
FILE_WHO = "(--plugin or CIARD_BENCH_PLUGINS)"

# -- plugin sources -------------------------------------------------------------------------
HEADER = """\
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from ciard_bench.api import (Method, eval_mode, make_arrays, pgd, register_dataset,
                             register_method, register_model)
"""


def linear_model(name: str, extra_out: int = 0, decorate: bool = True) -> str:
    """A factory: flatten + one linear layer (``extra_out`` more outputs than classes)."""
    return f"""
{'@register_model' if decorate else ''}
def {name}(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes + {extra_out}))
"""


def sat_method(cls: str, name: str, label: str, loss: str = "{'loss': loss, 'loss_adv': loss.detach()}",
               decorate: bool = True) -> str:
    """A SAT copy (CE on PGD examples) under its own name and label; ``loss``: what forward returns."""
    return f"""
{'@register_method' if decorate else ''}
class {cls}(Method):
    name = {name!r}
    label = {label!r}
    description = "plugin copy of SAT: cross-entropy on PGD examples"
    paper = "a plugin"

    def forward(self, x, y):
        with eval_mode(self.student):
            x_adv = pgd(lambda xa: F.cross_entropy(self.student(xa), y), x, eps=self.ctx.eps,
                        alpha=self.ctx.alpha, steps=self.ctx.steps)
        loss = F.cross_entropy(self.student(x_adv), y)
        return {loss}
"""


def blobs_dataset(name: str) -> str:
    """A 10-class synthetic dataset of 32x32 RGB images (100 train, 20 test)."""
    return f"""
@register_dataset({name!r})
def load_{name}(root, download):
    rng = np.random.default_rng(0)
    y_tr, y_te = np.arange(100) % 10, np.arange(20) % 10
    x_tr = (rng.random((100, 32, 32, 3)) * 40 + y_tr[:, None, None, None] * 20).astype(np.uint8)
    x_te = (rng.random((20, 32, 32, 3)) * 40 + y_te[:, None, None, None] * 20).astype(np.uint8)
    return make_arrays({name!r}, x_tr, y_tr, x_te, y_te, [str(i) for i in range(10)])
"""


PLUGFILE = HEADER + linear_model("pf_linear") + blobs_dataset("pf_blobs") + \
    sat_method("PlugSAT", "pf_sat", "PF-SAT")

FILES = {
    "plugfile.py": PLUGFILE,
    "syntax_bad.py": HEADER + "def broken(:\n    pass\n",
    "import_bad.py": HEADER + "import ciard_no_such_dependency_xyz\n",
    # (b) clashes: each registers a model first, which must be taken back with the plugin
    "clash_name.py": HEADER + linear_model("zz_rolled_a") + sat_method("Clash", "rslad", "Not RSLAD"),
    "clash_label.py": HEADER + linear_model("zz_rolled_b") + sat_method("Clash", "uniq_label", "RSLAD"),
    "pa.py": HEADER + linear_model("zz_kept") + sat_method("PA", "pa_method", "Shared Label"),
    "pb.py": HEADER + linear_model("zz_rolled_c") + sat_method("PB", "pb_method", "Shared Label"),
    # (c) (d) (e) misbehaving method and model
    "misuse.py": HEADER + linear_model("bad_shape", extra_out=1)
    + sat_method("NoLoss", "no_loss", "No loss", loss="{'loss_adv': loss.detach()}")
    + sat_method("NanLoss", "nan_loss", "NaN loss", loss="{'loss': loss * float('nan')}")
    + sat_method("RowLoss", "row_loss", "Row loss", loss="{'loss': loss.expand(2)}")
    + sat_method("Detached", "detached_loss", "Detached loss", loss="{'loss': loss.detach()}"),
}

# an installed distribution: an undecorated Method subclass and a factory named by entry points
# (objects), and a module entry point whose import registers a dataset
MYPLUG_INIT = HEADER + linear_model("make_tiny", decorate=False) + \
    sat_method("EPSat", "ep_sat", "EP-SAT", decorate=False)
MYPLUG_DATA = HEADER + blobs_dataset("ep_blobs")
MYPLUG_EPS = """\
[ciard_bench.methods]
anything = myplug:EPSat

[ciard_bench.models]
ep_tiny = myplug:make_tiny

[ciard_bench.datasets]
ep_data = myplug.data
"""


# -- helpers --------------------------------------------------------------------------------
def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def distribution(site: Path, name: str, version: str, package: dict[str, str],
                 entry_points: str) -> None:
    """``site/<name>/...`` and ``site/<name>-<version>.dist-info/{METADATA,entry_points.txt}``."""
    write_files(site, {f"{name}/{rel}": text for rel, text in package.items()})
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)


def cli(module: str, *args: str, plugins: tuple = (), env_plugins: str | None = None,
        pythonpath: tuple = ()) -> subprocess.CompletedProcess:
    """``python -m ciard_bench.<module> [--plugin P]... ARGS`` in a clean environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("CIARD_BENCH_PLUGINS", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"
    if env_plugins is not None:
        env["CIARD_BENCH_PLUGINS"] = env_plugins
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    argv = [sys.executable, "-m", f"ciard_bench.{module}"]
    for p in plugins:
        argv += ["--plugin", str(p)]
    return subprocess.run(argv + list(args), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def train(out: Path, *args: str, method: str, student: str = "resnet8", dataset: str = "digits",
          **kw) -> subprocess.CompletedProcess:
    return cli("train", "--method", method, "--student", student, "--dataset", dataset,
               "--n-train", "64", "--n-test", "20", "--epochs", "1", "--batch-size", "32",
               "--attack-steps", "1", "--eval-batch-size", "20", "--threads", "1",
               "--out", str(out), *args, **kw)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


def ok(proc: subprocess.CompletedProcess, stderr_lines: int = 0) -> list[str]:
    """Exit 0, no traceback, and exactly ``stderr_lines`` ``ciard-bench: plugin`` lines on
    stderr (a training also logs there) -> those lines."""
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    found = [line for line in lines(proc.stderr) if line.startswith("ciard-bench: plugin")]
    assert len(found) == stderr_lines, proc.stderr
    return found


def one_line_error(proc: subprocess.CompletedProcess, before: int = 0) -> str:
    """Exit 2; stderr is ``before`` plugin lines then one ``error:`` line -> that line."""
    no_traceback(proc)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = lines(proc.stderr)
    assert len(err) == before + 1, proc.stderr
    assert all(line.startswith("ciard-bench: plugin ") for line in err[:-1]), proc.stderr
    assert err[-1].startswith("error: "), proc.stderr
    return err[-1]


def listed(stdout: str) -> dict[str, str]:
    """A listing (``--list-methods``, ``--list-datasets``, ``ciard_bench.models``) -> name: line."""
    return {line.split()[0]: line for line in lines(stdout)}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_origin(path: Path) -> str:
    return f"plugin {path.name} (sha256 {sha(path)[:12]})"


@pytest.fixture(scope="module")
def plugdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugins")
    write_files(root, FILES)
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    distribution(root, "myplug", "0.3.0", {"__init__.py": MYPLUG_INIT, "data.py": MYPLUG_DATA},
                 MYPLUG_EPS)
    return root


@pytest.fixture(scope="module")
def bad_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_site")
    distribution(root, "brokenplug", "1.0",
                 {"__init__.py": "raise ImportError('brokenplug needs libfoo 2.0')\n"},
                 "[ciard_bench.methods]\nbroken = brokenplug\n")
    return root


# -- 1. a plugin file ----------------------------------------------------------------------
def test_plugin_file_lists_trains_and_records_its_origin(plugdir, tmp_path):
    plug = plugdir / "plugfile.py"
    where = file_origin(plug)
    proc = cli("train", "--list-methods", plugins=[plug])
    ok(proc)
    methods = listed(proc.stdout)
    assert methods["pf_sat"].endswith(f"({where})"), methods["pf_sat"]
    assert "[a plugin]" in methods["pf_sat"]
    assert methods["ciard"].endswith("(built-in)") and methods["sat"].endswith("(built-in)")

    proc = cli("models", "--no-flops", "--pattern", "[pr]*", plugins=[plug])
    ok(proc)
    models = listed(proc.stdout)
    assert models["pf_linear"].endswith(f"  {where}"), models["pf_linear"]
    assert models["resnet8"].endswith("  built-in")

    proc = cli("train", "--list-datasets", plugins=[plug])
    ok(proc)
    datasets = listed(proc.stdout)
    assert datasets["pf_blobs"].endswith(where) and datasets["digits"].endswith("built-in")

    proc = train(tmp_path / "run", method="pf_sat", student="pf_linear", dataset="pf_blobs",
                 plugins=[plug])
    ok(proc)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["plugins"] == [
        {"kind": kind, "name": name, "file": "plugfile.py", "sha256": sha(plug)}
        for kind, name in (("method", "pf_sat"), ("model", "pf_linear"), ("dataset", "pf_blobs"))]
    assert result["last"]["epoch"] == 1


def test_env_variable_then_resume_refuses_a_changed_plugin_file(plugdir, tmp_path):
    plug = tmp_path / "plugfile.py"
    plug.write_text(PLUGFILE)
    before = sha(plug)
    out = tmp_path / "run"
    # a built-in student: only the method and the dataset come from the plugin
    args = dict(method="pf_sat", student="resnet8", dataset="pf_blobs")
    ok(train(out, env_plugins=str(plug), **args))
    result = json.loads((out / "result.json").read_text())
    assert result["plugins"] == [
        {"kind": "method", "name": "pf_sat", "file": "plugfile.py", "sha256": before},
        {"kind": "dataset", "name": "pf_blobs", "file": "plugfile.py", "sha256": before}]
    # the same plugin: the finished run resumes (nothing left to do)
    ok(train(out, "--resume", env_plugins=str(plug), **args))

    plug.write_text(PLUGFILE + "\n# a change\n")
    after = sha(plug)
    err = one_line_error(train(out, "--resume", plugins=[plug], **args))
    assert err.startswith(f"error: --resume: the run in {str(out)!r} was trained with "
                          f"method 'pf_sat' from plugfile.py (sha256 {before[:12]}), "
                          f"dataset 'pf_blobs' from plugfile.py (sha256 {before[:12]}), but now it is "
                          f"method 'pf_sat' from plugfile.py (sha256 {after[:12]})"), err


# -- 2. an installed distribution's entry points -------------------------------------------
def test_entry_points_of_an_installed_distribution(site, tmp_path):
    where = "plugin myplug 0.3.0"
    proc = cli("train", "--list-methods", pythonpath=[site])
    ok(proc)
    methods = listed(proc.stdout)
    # an entry point naming an undecorated Method subclass registers it under its own name
    assert methods["ep_sat"].endswith(f"({where})"), methods["ep_sat"]
    assert "anything" not in methods
    assert methods["ciard"].endswith("(built-in)")

    proc = cli("models", "--no-flops", "--pattern", "ep_*", pythonpath=[site])
    ok(proc)
    assert listed(proc.stdout)["ep_tiny"].endswith(f"  {where}")   # a factory: the entry point's name

    proc = train(tmp_path / "run", method="ep_sat", student="ep_tiny", dataset="ep_blobs",
                 pythonpath=[site])
    ok(proc)
    plugins = json.loads((tmp_path / "run" / "result.json").read_text())["plugins"]
    assert plugins == [
        {"kind": "method", "name": "ep_sat", "distribution": "myplug", "version": "0.3.0",
         "entry_point": "ciard_bench.methods:anything = myplug:EPSat"},
        {"kind": "model", "name": "ep_tiny", "distribution": "myplug", "version": "0.3.0",
         "entry_point": "ciard_bench.models:ep_tiny = myplug:make_tiny"},
        {"kind": "dataset", "name": "ep_blobs", "distribution": "myplug", "version": "0.3.0",
         "entry_point": "ciard_bench.datasets:ep_data = myplug.data"}]


# -- 3. misuse -----------------------------------------------------------------------------
def test_entry_point_that_fails_to_import_is_left_out(site, bad_site):
    proc = cli("train", "--list-methods", pythonpath=[bad_site, site])
    [line] = ok(proc, stderr_lines=1)
    assert line == ("ciard-bench: plugin brokenplug 1.0 (entry point ciard_bench.methods:broken = "
                    "brokenplug): failed to import: ImportError: brokenplug needs libfoo 2.0" + TAIL)
    methods = listed(proc.stdout)
    assert methods["ep_sat"].endswith("(plugin myplug 0.3.0)")    # the other plugin still works
    assert methods["ciard"].endswith("(built-in)")


def test_plugin_files_that_fail_to_import_are_left_out(plugdir):
    bad, missing_dep, good = (plugdir / n for n in ("syntax_bad.py", "import_bad.py", "plugfile.py"))
    proc = cli("train", "--list-methods", plugins=[bad, missing_dep, good])
    first, second = ok(proc, stderr_lines=2)
    assert first.startswith(f"ciard-bench: plugin file {str(bad)!r} {FILE_WHO}: failed to import: "
                            "SyntaxError: ") and first.endswith(TAIL), first
    assert second == (f"ciard-bench: plugin file {str(missing_dep)!r} {FILE_WHO}: failed to import: "
                      "ModuleNotFoundError: No module named 'ciard_no_such_dependency_xyz'" + TAIL)
    methods = listed(proc.stdout)
    assert methods["pf_sat"].endswith(f"({file_origin(good)})")   # loaded after the failures
    assert methods["ciard"].endswith("(built-in)")


def test_taken_names_and_labels_leave_the_plugin_out_whole(plugdir):
    files = [plugdir / n for n in ("clash_name.py", "clash_label.py", "pa.py", "pb.py")]
    proc = cli("models", "--no-flops", "--pattern", "zz_*", plugins=files)
    found = ok(proc, stderr_lines=3)
    who = {p.name: f"ciard-bench: plugin file {str(p)!r} {FILE_WHO}: " for p in files}
    assert found == [
        who["clash_name.py"] + "method name 'rslad' is already used by a built-in" + TAIL,
        who["clash_label.py"] + "method table label 'RSLAD' is already used by a built-in" + TAIL,
        who["pb.py"] + "method table label 'Shared Label' is already used by "
                       f"{file_origin(files[2])}'s method 'pa_method'" + TAIL]
    # the models registered before the clash in the same module are taken back
    models = listed(proc.stdout)
    assert sorted(models) == ["model", "zz_kept"], proc.stdout
    assert models["zz_kept"].endswith(file_origin(files[2]))

    proc = cli("train", "--list-methods", plugins=files)
    ok(proc, stderr_lines=3)
    methods = listed(proc.stdout)
    assert methods["rslad"].endswith("(built-in)") and "Revisiting Adversarial" in methods["rslad"]
    assert methods["pa_method"].endswith(f"({file_origin(files[2])})")
    assert "pb_method" not in methods and "uniq_label" not in methods
    assert methods["ciard"].endswith("(built-in)")


@pytest.mark.parametrize("method,student,expected", [
    ("no_loss", "resnet8", "method 'no_loss' ({origin}): forward returned a dict with keys "
                           "['loss_adv']; accepted: a dict whose 'loss' is a 0-dim tensor"),
    ("nan_loss", "resnet8", "method 'nan_loss' ({origin}): the loss of its first step (epoch 1) "
                            "is nan; accepted: a finite loss"),
    ("sat", "bad_shape", "model 'bad_shape' ({origin}) returned (2, 11) for 2 images of digits "
                         "((3, 32, 32)); accepted: [batch, 10] logits"),
    ("row_loss", "resnet8", "method 'row_loss' ({origin}): forward's 'loss' has shape (2,) and "
                            "requires_grad=True; accepted: a 0-dim tensor with a graph"),
    ("detached_loss", "resnet8", "method 'detached_loss' ({origin}): forward's 'loss' has shape "
                                 "() and requires_grad=False; accepted: a 0-dim tensor with a graph"),
], ids=["no-loss", "non-finite-loss", "bad-logits-shape", "per-sample-loss", "detached-loss"])
def test_misbehaving_plugin_method_or_model_is_one_line_naming_it(plugdir, tmp_path, method,
                                                                    student, expected):
    plug = plugdir / "misuse.py"
    err = one_line_error(train(tmp_path / "run", method=method, student=student, plugins=[plug]))
    assert err.startswith("error: " + expected.format(origin=file_origin(plug))), err
    assert not (tmp_path / "run" / "result.json").exists()


def test_missing_plugin_file_is_one_line(tmp_path):
    missing = tmp_path / "missing.py"
    err = one_line_error(cli("train", "--list-methods", plugins=[missing]))
    assert err == (f"error: --plugin {str(missing)!r}: no such file; accepted: an importable "
                   "module name or a path to a .py file")


# -- 4. an unknown method while a plugin failed --------------------------------------------
def test_unknown_method_names_the_plugin_that_failed(plugdir, tmp_path):
    bad = plugdir / "syntax_bad.py"
    proc = cli("train", "--method", "pf_sat", "--out", str(tmp_path / "run"), plugins=[bad])
    err = one_line_error(proc, before=1)
    assert err.startswith("error: unknown method 'pf_sat'; accepted: "), err
    assert "ciard" in err and "rslad" in err
    assert f" (not loaded: plugin file {str(bad)!r} {FILE_WHO}: failed to import: SyntaxError: " in err
    assert not (tmp_path / "run").exists()


# -- 5. an option that shadows an engine flag; a plugin's attack from Python ----------------
def test_an_option_named_like_an_engine_flag_is_one_line(tmp_path):
    plug = tmp_path / "shadow.py"
    plug.write_text(HEADER + "from dataclasses import dataclass\nfrom ciard_bench.api import option\n"
                    + sat_method("Shadow", "shadow", "Shadow").replace(
                        '    paper = "a plugin"\n',
                        '    paper = "a plugin"\n\n    @dataclass\n    class Options:\n'
                        '        epochs: int = option(3, "shadows --epochs")\n'))
    err = one_line_error(cli("train", "--method", "shadow", "--help", plugins=[plug]))
    assert err.startswith(f"error: method 'shadow' ({file_origin(plug)}): option 'epochs' "
                          "collides with the engine flag --epochs"), err


ATTACK = """\
import torch
from ciard_bench.api import AttackSpec, function_attack, register_attack


def sign_step(model, x, y, settings):
    x = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    grad, = torch.autograd.grad(loss, x)
    return (x + settings["eps"] * grad.sign()).clamp(0, 1).detach()


register_attack(AttackSpec("sign_step", "white-box", {}, label="SignStep",
                           build=function_attack(sign_step)))
"""


def test_a_plugins_attack_runs_from_python_on_the_first_call(tmp_path):
    """``evaluate(model, x, y, "sign_step")`` with the plugin given by CIARD_BENCH_PLUGINS only:
    the attack is found on the first call (plugins load before the names are checked), its
    examples are FGSM's (the same step through the torchattacks path), and the result names it."""
    plug = tmp_path / "attack_plugin.py"
    plug.write_text(ATTACK)
    code = (
        "import torch\n"
        "from ciard_bench.evaluate import evaluate\n"
        "from ciard_bench.models import create_model\n"
        "torch.manual_seed(0)\n"
        "model = create_model('resnet8', 10).eval()\n"
        "x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 10\n"
        "r = evaluate(model, x, y, 'sign_step,fgsm', 8 / 255, skip_misclassified=False,\n"
        "             expensive_checks=False)\n"
        "a, b = r['attacks']['sign_step'], r['attacks']['fgsm']\n"
        "print(a['correct'] == b['correct'], [p['name'] for p in r['plugins']])\n")
    env = {k: v for k, v in os.environ.items() if k != "CIARD_BENCH_PLUGINS"}
    env.update(CIARD_BENCH_PLUGINS=str(plug), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "['sign_step']"], proc.stdout


# -- 6. adaptive state kept outside the checkpoint: the rehearsal's stop and resume ---------
FORGETFUL = HEADER + '''

@register_method
class Forgetful(Method):
    """CE on PGD examples scaled by a step counter kept as a plain attribute: not a buffer, so
    not in checkpoint_state(), so a resumed run restarts it at 0 and trains differently."""
    name = "forgetful"
    label = "Forgetful"
    description = "a step counter outside the checkpoint"
    paper = "a plugin"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def forward(self, x, y):
        self.calls += 1
        with eval_mode(self.student):
            x_adv = pgd(lambda xa: F.cross_entropy(self.student(xa), y), x, eps=self.ctx.eps,
                        alpha=self.ctx.alpha, steps=1, start="uniform", shard=self.ctx.dist)
        loss = F.cross_entropy(self.student(x_adv), y) * (1.0 + 0.5 * self.calls)
        return {"loss": loss}
'''


def test_the_rehearsal_catches_state_left_out_of_the_checkpoint(tmp_path):
    """A plugin method whose adaptive state is a Python attribute: its rehearsed cell is
    stopped mid-epoch and resumed, differs from the straight run, and the rehearsal fails it
    in one line that names the plugin and the cause; the same method keeping the counter in
    a buffer passes."""
    import torch

    from ciard_bench.models import create_model, save_model_file
    teachers = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        teachers.append(tmp_path / f"t{seed}.pt")
        save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10},
                        teachers[-1])
    grid = ["--students", "resnet18", "--methods", "forgetful", "--no-figures", "--threads", "1",
            "--clean-teacher", str(teachers[0]), "--robust-teacher", str(teachers[1]), "--rehearse"]
    plug = tmp_path / "forgetful.py"
    plug.write_text(FORGETFUL)
    proc = cli("tables", "--results-dir", str(tmp_path / "bad"), *grid, plugins=[plug])
    no_traceback(proc)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    failed = [l for l in proc.stdout.splitlines() if l.startswith("failed: ")]
    assert len(failed) == 1 and "/forgetful/seed0: stopped at epoch 2 step 1 and resumed, the run " \
        "differs from the straight one" in failed[0], proc.stdout
    assert f"method 'forgetful' comes from the plugin {plug.name} (sha256 {sha(plug)[:12]})" \
        in failed[0] and "outside buffers or modules (checkpoint_state())" in failed[0], failed[0]

    kept = tmp_path / "kept.py"      # the fix the message names: the counter in a buffer
    kept.write_text(FORGETFUL.replace("self.calls = 0", "self.register_buffer('calls', "
                                      "torch.zeros((), dtype=torch.float64))"))
    proc = cli("tables", "--results-dir", str(tmp_path / "good"), *grid, plugins=[kept])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_a_grid_resumed_with_another_plugin_version_says_so(plugdir, tmp_path):
    """A finished cut grid whose plugin file then changes: the same tables command refuses
    in one line naming the cell and both versions, and writes nothing new; with the file
    as it was, the command re-renders as before."""
    import shutil

    import torch

    from ciard_bench.models import create_model, save_model_file
    teachers = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        teachers.append(tmp_path / f"t{seed}.pt")
        save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10},
                        teachers[-1])
    plug = tmp_path / "plugfile.py"
    shutil.copy(plugdir / "plugfile.py", plug)
    grid = ["--results-dir", str(tmp_path / "grid"), "--students", "resnet18", "--methods",
            "pf_sat", "--epochs", "1", "--n-train", "64", "--n-test", "16", "--n-examples", "8",
            "--sanity-examples", "8", "--threads", "1", "--no-figures",
            "--clean-teacher", str(teachers[0]), "--robust-teacher", str(teachers[1])]
    ok(cli("tables", *grid, plugins=[plug]))
    table = (tmp_path / "grid" / "table_beyond.md").read_text()
    old = file_origin(plug)
    plug.write_text(plug.read_text() + "\n# version 2\n")
    proc = cli("tables", *grid, plugins=[plug])
    no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    err = lines(proc.stderr)
    assert len(err) == 2 and err[0].startswith("preset smoke: 3 cells"), proc.stderr   # its log line
    err = err[1]
    assert err.startswith("error: cell digits/resnet18/pf_sat/seed0 was trained with method "
                          f"'pf_sat' from {old.removeprefix('plugin ')}, the grid now has method "
                          f"'pf_sat' from {file_origin(plug).removeprefix('plugin ')}"), err
    assert (tmp_path / "grid" / "table_beyond.md").read_text() == table


def test_a_slurm_job_carries_the_plugins_of_the_command_that_submitted_it(tmp_path, monkeypatch):
    """The pickled job names the submitting command's plugins and loads them itself, so they
    reach the job (and its torchrun processes) whatever sbatch's --export passes; the real
    SLURM run of a --plugin grid is tests/test_plugin_tutorial.py's."""
    import pickle

    from ciard_bench.grid.cells import build_grid
    from ciard_bench.grid.presets import get_preset
    from ciard_bench.grid.slurm import CellJob

    specs = [str(tmp_path / "a.py"), "some_module"]
    monkeypatch.setenv("CIARD_BENCH_PLUGINS", os.pathsep.join(specs))
    grid = build_grid(get_preset("smoke"), tmp_path, students=["resnet18"], methods=["sat"])
    job = pickle.loads(pickle.dumps(CellJob(grid, grid.cells[0].id, "train", "best")))
    assert job.plugins == specs
