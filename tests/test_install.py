"""The install traps of ECOSYSTEM.md stay solved."""
import base64
import hashlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def test_import_is_light_and_fast():
    code = ("import sys, time; t = time.perf_counter(); import ciard_bench; "
            "dt = time.perf_counter() - t; "
            "heavy = [m for m in ('torch', 'torchattacks', 'robustbench', 'pandas') if m in sys.modules]; "
            "print(dt, heavy); assert not heavy, heavy; assert dt < 3, dt")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_robustbench_files_are_installed():
    """torchattacks' wheel ships an old robustbench/: every robustbench file must match its own RECORD."""
    dist = metadata.distribution("robustbench")
    checked = 0
    for f in dist.files or []:
        if f.suffix != ".py" or not f.hash or not str(f).startswith("robustbench/"):
            continue
        data = Path(f.locate()).read_bytes()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert digest == f.hash.value, f"{f} was overwritten (torchattacks' vendored copy?)"
        checked += 1
    assert checked > 20


def test_robustbench_imports_through_the_alias():
    from ciard_bench._compat import import_robustbench

    rb = import_robustbench()
    import autoattack
    import pyautoattack

    assert autoattack is pyautoattack
    assert hasattr(rb.utils, "load_model")
    assert Path(rb.__file__).parent == Path(metadata.distribution("robustbench").locate_file("robustbench"))


def test_setuptools_still_has_pkg_resources():
    import pkg_resources  # noqa: F401  robustbench imports it; setuptools<81 is pinned

    major = int(metadata.version("setuptools").split(".")[0])
    assert major < 81
