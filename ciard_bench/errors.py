"""One exception type for every mistake a user can make, and the CLI wrapper that prints it.

A ``UserError`` message is a single line naming the bad value and what is accepted. Every
``python -m ciard_bench.<tool>`` entry point runs under :func:`cli_main`, which turns a
``UserError`` into ``error: <message>`` on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Sequence


class UserError(ValueError):
    """A bad input (argument, file, dataset, checkpoint). The message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def choices_error(what: str, value: object, accepted: Sequence[str]) -> UserError:
    """``unknown method 'foo'; accepted: a, b, c``."""
    return UserError(f"unknown {what} {value!r}; accepted: {', '.join(sorted(accepted))}")


def cli_main(run: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run an entry point, mapping ``UserError`` to one line on stderr and exit code 2."""
    try:
        code = run(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <what>; see --help`` and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)
