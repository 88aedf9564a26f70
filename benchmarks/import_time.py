"""Import time of ciard_bench: plugins add nothing to the import and load at the first lookup.

For each setup, in a fresh interpreter per run (the median of ``--repeats`` runs is printed;
the setups take turns, so a load that changes during the run reaches all of them):

* ``installed``: the environment as it is (the plugins installed in it, if any, are listed
  first: e.g. ``examples/ard-plugin`` once ``.ci/run`` has installed it);
* ``+ entry point``: one more installed plugin, i.e. a distribution on the path whose entry
  point in the group ``ciard_bench.methods`` names a module that registers a method;
* ``+ file``: the same module as a file in the ``CIARD_BENCH_PLUGINS`` variable (what
  ``--plugin FILE.py`` sets);

it measures the whole ``python -c "import ciard_bench"`` process (interpreter start included;
``python -c pass`` is printed beside it), and inside one process the three stages a command
goes through: ``import ciard_bench``, ``import ciard_bench.methods`` (torch, the API and the
built-in methods) and the first ``list_methods()`` (the other built-in registries, the entry
point scan, every plugin). After each stage it records whether torch and any plugin's
module (the installed ones' and the added one) are imported, which shows where a plugin's
cost lands: at the first lookup, never at ``import ciard_bench``. The added plugin is
written to a temporary folder; nothing is installed.

    python benchmarks/import_time.py                          # 7 runs per setup
    python benchmarks/import_time.py --repeats 3 --importtime # + -X importtime's slowest
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "ciard_bench_timing_plugin"
GROUPS = ("ciard_bench.methods", "ciard_bench.models", "ciard_bench.datasets",
          "ciard_bench.attacks")
PLUGIN_SOURCE = '''"""A method that exists to be registered (benchmarks/import_time.py)."""
from ciard_bench.api import Method, register_method


@register_method
class TimingPlugin(Method):
    name = "timing_plugin"
    label = "Timing plugin"

    def forward(self, x, y):
        raise NotImplementedError
'''
# Runs in the child: only json, os, sys and time are imported before the first stage.
# PLUGIN_MODULES: the installed plugins' top-level modules and the added one.
PROBE = '''
import json, os, sys, time

PLUGINS = set(os.environ["PLUGIN_MODULES"].split(","))

def seen():
    return {"torch": "torch" in sys.modules,
            "plugin": any(m.split(".")[0] in PLUGINS or m.endswith("%(plugin)s")
                          for m in sys.modules)}

t0 = time.perf_counter()
import ciard_bench
t1 = time.perf_counter()
after_import = seen()
import ciard_bench.methods
t2 = time.perf_counter()
after_methods = seen()
names = ciard_bench.methods.list_methods()
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "methods_s": t2 - t1, "lookup_s": t3 - t2,
                  "after_import": after_import, "after_methods": after_methods,
                  "after_lookup": seen(), "registered": "timing_plugin" in names,
                  "plugin_methods": [n for n in names
                                     if ciard_bench.plugins.origin("method", n) is not None]}))
''' % {"plugin": PLUGIN}


def write_plugin(folder: Path) -> Path:
    """The plugin module and, beside it, the ``.dist-info`` that makes it an installed
    distribution for :mod:`importlib.metadata` once ``folder`` is on the path."""
    module = folder / f"{PLUGIN}.py"
    module.write_text(PLUGIN_SOURCE)
    info = folder / "ciard_bench_timing_plugin-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ciard-bench-timing-plugin\n"
                                   "Version: 0.0.0\n")
    (info / "entry_points.txt").write_text(f"[ciard_bench.methods]\ntiming_plugin = {PLUGIN}\n")
    return module


def installed_plugins() -> list[str]:
    """``group:name = value`` of every ciard-bench entry point already installed here."""
    from importlib.metadata import entry_points
    return [f"{ep.group}:{ep.name} = {ep.value}" for group in GROUPS
            for ep in entry_points(group=group)]


def setups(folder: Path, module: Path, installed: list[str]) -> dict[str, dict[str, str]]:
    """Setup name -> the child's environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("CIARD_BENCH_PLUGINS", "PYTHONPATH")}
    modules = {e.split("= ")[1].split(":")[0].split(".")[0] for e in installed} | {PLUGIN}
    base["PLUGIN_MODULES"] = ",".join(sorted(modules))
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {"installed": base,
            "+ entry point": {**base, "PYTHONPATH": path},
            "+ file": {**base, "CIARD_BENCH_PLUGINS": str(module)}}


def process_s(code: str, env: dict[str, str]) -> float:
    """Wall seconds of ``python -c code`` from start to exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def probe(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(envs: dict[str, dict[str, str]], repeats: int) -> dict[str, dict]:
    """Every setup once per round, ``repeats`` rounds (a load that drifts during the run
    then reaches every setup alike); medians per setup."""
    runs: dict[str, list[dict]] = {name: [] for name in envs}
    for _ in range(repeats):
        for name, env in envs.items():
            runs[name].append({**probe(env), "process_s": process_s("import ciard_bench", env)})
    out = {}
    for name, rs in runs.items():
        result = {key: statistics.median(r[key] for r in rs)
                  for key in ("process_s", "import_s", "methods_s", "lookup_s")}
        for key in ("after_import", "after_methods", "after_lookup", "registered",
                    "plugin_methods"):
            values = [json.dumps(r[key], sort_keys=True) for r in rs]
            result[key] = json.loads(values[0]) if len(set(values)) == 1 else "varies"
        out[name] = {**result, "runs": rs}
    return out


def slowest_imports(env: dict[str, str], top: int) -> list[tuple[float, str]]:
    """``python -X importtime -c "import ciard_bench"``: the ``top`` largest cumulative times."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ciard_bench"],
                         cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    rows = []
    for line in out.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]) / 1e6, parts[2].rstrip()))
    return sorted(rows, reverse=True)[:top]


def _flags(seen: dict | str) -> str:
    if not isinstance(seen, dict):
        return str(seen)
    return "/".join(("yes" if seen[k] else "no") for k in ("torch", "plugin"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="fresh interpreters per setup (median)")
    p.add_argument("--importtime", action="store_true",
                   help="also print the slowest imports of `import ciard_bench` (-X importtime)")
    p.add_argument("--out", help="write every run as JSON here")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    record = {"python": sys.version.split()[0], "cpu_count": os.cpu_count(),
              "load_average_before": list(os.getloadavg()), "repeats": args.repeats}
    record["installed_plugins"] = installed_plugins()
    with tempfile.TemporaryDirectory() as tmp:
        module = write_plugin(Path(tmp))
        envs = setups(Path(tmp), module, record["installed_plugins"])
        probe(envs["installed"])        # warm-up, not counted: the first run reads cold files
        record["python_c_pass_s"] = statistics.median(process_s("pass", envs["installed"])
                                                      for _ in range(args.repeats))
        record["setups"] = measure(envs, args.repeats)
        if args.importtime:
            record["slowest_imports"] = slowest_imports(envs["+ entry point"], 12)
    record["load_average_after"] = list(os.getloadavg())
    print(f"python {record['python']}, {args.repeats} runs per setup (medians), load average "
          f"{record['load_average_before'][0]:.2f} -> {record['load_average_after'][0]:.2f}; "
          f"`python -c pass` takes {record['python_c_pass_s']:.3f} s")
    print("installed plugins: " + ("; ".join(record["installed_plugins"]) or "none"))
    print("after: is torch / any plugin module imported after the stage; plugin methods: "
          "those the first lookup lists")
    head = (f"{'setup':13s} {'process s':>9s} {'import ciard_bench':>19s} {'after':>7s} "
            f"{'import .methods':>16s} {'after':>7s} {'1st list_methods()':>19s} {'after':>7s}  "
            f"plugin methods")
    print(head)
    for name, r in record["setups"].items():
        names = r["plugin_methods"]
        print(f"{name:13s} {r['process_s']:9.3f} {1e3 * r['import_s']:16.1f} ms "
              f"{_flags(r['after_import']):>7s} {r['methods_s']:14.2f} s "
              f"{_flags(r['after_methods']):>7s} {1e3 * r['lookup_s']:16.1f} ms "
              f"{_flags(r['after_lookup']):>7s}  "
              f"{', '.join(names) if isinstance(names, list) else names}")
    for seconds, name in record.get("slowest_imports", []):
        print(f"  {seconds:7.3f} s cumulative  {name}")
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
