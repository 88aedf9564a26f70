"""Plugins: methods, models, datasets and attacks from outside the package.

Two ways in, as pytest, Lightning and timm open up:

* **Entry points** of an installed distribution, in the groups :data:`GROUPS`
  (``ciard_bench.methods``, ``ciard_bench.models``, ``ciard_bench.datasets``,
  ``ciard_bench.attacks``), read with :mod:`importlib.metadata`. An entry point names a module
  (whose import registers with the ``register_*`` decorators of :mod:`ciard_bench.api`) or an
  object: a :class:`~ciard_bench.api.Method` subclass, a model factory, a dataset loader or an
  :class:`~ciard_bench.api.AttackSpec`, registered under its own name (a factory or loader
  under the entry point's name) unless its import registered it already.
* ``--plugin MODULE|FILE.py`` on any command, repeatable, or the environment variable
  :data:`ENV` (``os.pathsep``-separated). ``--plugin`` adds to the variable, so every process
  the command starts (the grid's local workers, torchrun processes, SLURM jobs through
  submitit) loads the same plugins.

Nothing is imported until the first lookup in a registry (:func:`load`), so ``import
ciard_bench`` stays as fast as without plugins (``benchmarks/import_time.py``). A plugin that
fails to import, or registers a name or table label that is taken, is named in one line on
stderr, with its entry point, and left out whole (what it registered before the failure is
taken back); the built-ins and the other plugins keep working.

Every registered name has an origin (:func:`origin`): ``None`` for a built-in, else the
distribution and version with the entry point, or the module or file with the file's sha256.
:func:`provenance` turns the names a run used into the record that ``result.json``,
``grid.json``, the page and the submission card carry.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, MutableMapping

ENV = "CIARD_BENCH_PLUGINS"
GROUPS = {"method": "ciard_bench.methods", "model": "ciard_bench.models",
          "dataset": "ciard_bench.datasets", "attack": "ciard_bench.attacks"}
# the built-in registries, imported before any plugin so that a clash with a built-in is seen
_BUILTINS = ("ciard_bench.methods", "ciard_bench.models", "ciard_bench.data", "ciard_bench.attacks")

# kind -> the registry dicts of that kind (a snapshot of them is restored when a plugin fails)
_REGISTRIES: dict[str, list[MutableMapping]] = {}
# kind -> object -> name registering an object of a plugin's entry point (set by each registry)
_ADDERS: dict[str, Callable[[str, Any], None]] = {}
_ORIGINS: dict[tuple[str, str], dict[str, Any]] = {}
_STATE = {"loaded": False, "loading": False, "current": None}
_DONE_SPECS: set[str] = set()
FAILURES: list[str] = []


class PluginError(ValueError):
    """A plugin's registration cannot be accepted (a taken name or label, a bad object)."""


def track(kind: str, *registries: MutableMapping,
          adder: Callable[[str, Any], None] | None = None) -> None:
    """A registry module hands its dicts (and how to register an entry point's object)."""
    _REGISTRIES.setdefault(kind, []).extend(registries)
    if adder is not None:
        _ADDERS[kind] = adder


def builtins_first(obj: Any) -> None:
    """Called by every ``register_*`` before it checks a name: an object from outside the
    package (a plugin module imported before any lookup) meets the built-ins registered
    already, so a clash names the plugin instead of breaking the built-ins' import."""
    module = getattr(obj, "__module__", None) or ""
    if module and module.split(".")[0] != "ciard_bench":
        for name in _BUILTINS:
            importlib.import_module(name)


def note(kind: str, name: str, obj: Any = None) -> None:
    """Called by every ``register_*``: ``name`` comes from the plugin being loaded, if any;
    outside a plugin's loading (its module imported directly, say by its own tests), from
    the distribution or file of the module that defines ``obj``; else it is a built-in."""
    current = _STATE["current"]
    if current is not None:
        _ORIGINS[(kind, name)] = dict(current)
        return
    module = getattr(obj, "__module__", None) or ""
    if module and module.split(".")[0] != "ciard_bench":
        _ORIGINS[(kind, name)] = _module_origin(module)


def _module_origin(module: str) -> dict[str, Any]:
    """The distribution and version a module belongs to, else its file and sha256."""
    where: dict[str, Any] = {"module": module, **_module_distribution(module)}
    if "distribution" not in where:
        file = getattr(sys.modules.get(module), "__file__", None)
        if file:
            where.update(file=Path(file).name, sha256=_sha256(Path(file)))
    return where


def origin(kind: str, name: str) -> dict[str, Any] | None:
    """Where ``name`` of ``kind`` (method, model, dataset, attack) comes from: None = built-in."""
    return _ORIGINS.get((kind, name))


def describe(kind: str, name: str) -> str:
    """``built-in`` or ``plugin <distribution> <version>`` / ``plugin <file> (sha256 ...)``."""
    o = origin(kind, name)
    return "built-in" if o is None else "plugin " + label(o)


def label(o: dict[str, Any]) -> str:
    if "distribution" in o:
        return f"{o['distribution']} {o.get('version') or ''}".strip()
    return f"{o.get('file') or o.get('module')} (sha256 {str(o.get('sha256'))[:12]})"


def said(entries: list[dict[str, Any]]) -> str:
    """``method 'akd' from ard-plugin 0.1.0, ...`` for :func:`provenance` entries, or
    ``built-ins only``: how a refused resume names the plugins of each side."""
    return ", ".join(f"{p['kind']} {p['name']!r} from {label(p)}" for p in entries) or "built-ins only"


def clash(kind: str, what: str, value: str, owner: str | None) -> PluginError:
    """The one-line error of a name or table label that is already taken."""
    holder = "a built-in" if owner is None or origin(kind, owner) is None else \
        f"{describe(kind, owner)}'s {kind} {owner!r}"
    return PluginError(f"{kind} {what} {value!r} is already used by {holder}")


def load() -> None:
    """Load every plugin once (entry points, then :data:`ENV`); cheap after the first call."""
    if _STATE["loaded"] or _STATE["loading"]:
        return
    _STATE["loading"] = True
    try:
        for name in _BUILTINS:
            importlib.import_module(name)
        for kind, group in GROUPS.items():
            for ep in _entry_points(group):
                _load_entry_point(kind, ep)
        for spec in specs_from_env():
            _load_spec(spec)
    finally:
        _STATE["loading"] = False
        _STATE["loaded"] = True


def activate(specs: list[str]) -> None:
    """``--plugin`` values: each file made absolute and added to :data:`ENV` (for the
    processes this one starts), then loaded. A missing file is a one-line error."""
    resolved = []
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        if spec.endswith(".py") or os.sep in spec or "/" in spec:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise PluginError(f"--plugin {spec!r}: no such file; accepted: an importable "
                                "module name or a path to a .py file")
            spec = str(path.resolve())
        resolved.append(spec)
    present = specs_from_env()
    os.environ[ENV] = os.pathsep.join(present + [s for s in resolved if s not in present])
    if _STATE["loaded"]:
        for spec in resolved:
            _load_spec(spec)
    else:
        load()


def specs_from_env() -> list[str]:
    return [s for s in os.environ.get(ENV, "").split(os.pathsep) if s.strip()]


def strip_plugin_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` without its ``--plugin X`` / ``--plugin=X`` pairs, and the X's."""
    rest, specs, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--plugin" and i + 1 < len(argv):
            specs.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--plugin="):
            specs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return rest, specs


def provenance(**used: Any) -> list[dict[str, Any]]:
    """The origins of the names a run used that are not built-in, e.g. ``provenance(
    method="akd", model=["tiny_cnn"], dataset="digits")`` -> ``[{"kind": "method", "name":
    "akd", "distribution": "ard-plugin", "version": "0.1.0", "entry_point": ...}]``."""
    out = []
    for kind, names in used.items():
        for name in ([names] if isinstance(names, str) else list(names or [])):
            o = origin(kind, name) if name else None
            if o is not None:
                out.append({"kind": kind, "name": name, **o})
    return out


def failures_note() -> str:
    """``; plugins that failed to load: ...`` for an unknown-name error, or ``""``."""
    return f" (not loaded: {'; '.join(FAILURES)})" if FAILURES else ""


# -- loading ---------------------------------------------------------------------------------
def _entry_points(group: str) -> list[Any]:
    from importlib.metadata import entry_points
    return sorted(entry_points(group=group), key=lambda ep: (ep.name, ep.value))


def _load_entry_point(kind: str, ep: Any) -> None:
    dist = getattr(ep, "dist", None)
    where = {"distribution": dist.metadata["Name"] if dist is not None else None,
             "version": dist.version if dist is not None else None,
             "entry_point": f"{ep.group}:{ep.name} = {ep.value}"}
    key = f"ep {where['entry_point']} {where['distribution']}"
    if key in _DONE_SPECS:
        return
    _DONE_SPECS.add(key)
    with _loading(where, f"plugin {where['distribution']} {where['version']} (entry point "
                         f"{where['entry_point']})"):
        obj = ep.load()
        if not isinstance(obj, type(sys)):     # an object, not a module: register it
            _ADDERS[kind](ep.name, obj)


def _load_spec(spec: str) -> None:
    if spec in _DONE_SPECS:
        return
    _DONE_SPECS.add(spec)
    if spec.endswith(".py"):
        path = Path(spec)
        where = {"file": path.name, "sha256": _sha256(path) if path.is_file() else None}
        with _loading(where, f"plugin file {spec!r} (--plugin or {ENV})"):
            if not path.is_file():
                raise FileNotFoundError(f"no such file {spec!r}")
            from importlib.util import module_from_spec, spec_from_file_location
            name = "ciard_bench_plugin_" + "".join(c if c.isalnum() else "_" for c in path.stem)
            module_spec = spec_from_file_location(name, path)
            module = module_from_spec(module_spec)
            sys.modules[name] = module          # pickling its classes needs the module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
        return
    where: dict[str, Any] = {"module": spec}
    with _loading(where, f"plugin module {spec!r} (--plugin or {ENV})"):
        where.update(_module_distribution(spec))
        if "distribution" not in where:      # the file's hash, found without importing it
            from importlib.util import find_spec
            found = find_spec(spec)
            if found is None or not found.origin:
                raise ModuleNotFoundError(f"no module named {spec!r}")
            where.update(file=Path(found.origin).name, sha256=_sha256(Path(found.origin)))
        importlib.import_module(spec)


def _module_distribution(module: str) -> dict[str, Any]:
    from importlib.metadata import packages_distributions, version
    names = packages_distributions().get(module.split(".")[0]) or []
    if not names:
        return {}
    return {"distribution": names[0], "version": version(names[0])}


@contextlib.contextmanager
def _loading(where: dict[str, Any], who: str) -> Iterator[None]:
    """Registrations inside are the plugin's; on any failure they are taken back and the
    plugin is named in one line on stderr (no traceback)."""
    snapshot = {id(r): dict(r) for rs in _REGISTRIES.values() for r in rs}
    origins = dict(_ORIGINS)
    previous, _STATE["current"] = _STATE["current"], where
    try:
        yield
    except (Exception, SystemExit) as err:     # noqa: BLE001 - a plugin may raise anything
        for rs in _REGISTRIES.values():
            for r in rs:
                r.clear()
                r.update(snapshot[id(r)])
        _ORIGINS.clear()
        _ORIGINS.update(origins)
        first = " ".join(str(err).split()) or type(err).__name__
        why = first if isinstance(err, PluginError) else \
            f"failed to import: {type(err).__name__}: {first}"
        line = f"{who}: {why}; left out, the built-ins and other plugins still work"
        FAILURES.append(f"{who}: {why}")
        print(f"ciard-bench: {line}", file=sys.stderr)
    finally:
        _STATE["current"] = previous


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
