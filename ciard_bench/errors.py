"""One exception type for every mistake a user can make, and the CLI wrapper that prints it.

A ``UserError`` message is a single line naming the bad value and what is accepted. Every
``python -m ciard_bench.<tool>`` entry point runs under :func:`cli_main`, which turns a
``UserError`` into ``error: <message>`` on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any, Callable, NoReturn, Sequence

from . import plugins


class UserError(ValueError):
    """A bad input (argument, file, dataset, checkpoint). The message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def choices_error(what: str, value: object, accepted: Sequence[str]) -> UserError:
    """``unknown method 'foo'; accepted: a, b, c``."""
    return UserError(f"unknown {what} {value!r}; accepted: {', '.join(sorted(accepted))}")


# Third-party deprecation notices a user can do nothing about, printed at import time by
# torchattacks/robustbench (torch.jit.*) and robustbench (pkg_resources). Our own warnings
# (sanity checks, fallbacks) are kept.
THIRD_PARTY_NOISE = (
    (FutureWarning, r"`torch\.jit\.\w+` is deprecated"),
    (UserWarning, r"pkg_resources is deprecated"),
    (DeprecationWarning, r"pkg_resources|Deprecated call to `pkg_resources"),
    (DeprecationWarning, r"Importing from timm\.models"),   # robustbench imports old timm paths
)


def quiet_third_party_warnings() -> None:
    """Filter :data:`THIRD_PARTY_NOISE` (entry points and worker processes call this first)."""
    for category, pattern in THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=pattern, category=category)


def cli_main(run: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run an entry point, mapping ``UserError`` to one line on stderr and exit code 2.

    ``--plugin MODULE|FILE.py`` (repeatable, anywhere on the line) is taken out of ``argv``
    here, for every command alike, and loaded (:func:`ciard_bench.plugins.activate`)."""
    quiet_third_party_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, specs = plugins.strip_plugin_args(argv)
        if specs:
            plugins.activate(specs)
        code = run(argv)
    except (UserError, plugins.PluginError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


PLUGIN_HELP = ("load a plugin: an importable module or a .py file that registers methods, "
               "models, datasets or attacks (repeatable; also the CIARD_BENCH_PLUGINS "
               "variable; installed plugins' entry points load by themselves)")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <what>; see --help`` and exit code 2. A parser
    with ``--help`` shows ``--plugin`` (:func:`cli_main` takes it out of the line first)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.add_help:
            self.add_argument("--plugin", action="append", metavar="MODULE|FILE.py",
                              help=PLUGIN_HELP)

    def error(self, message: str) -> NoReturn:
        print(f"error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)
