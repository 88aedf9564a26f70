"""``python -m ciard_bench.models [--pattern P] [--num-classes C] [--no-flops]``.

Prints one row per registered model: parameters (millions) and forward GFLOPs per 32x32
image. Models are built on PyTorch's ``meta`` device (shapes only, no memory, no weights
initialised), which makes even the 267 M-parameter WRN-70-16 instant to count.
"""
from __future__ import annotations

import torch

from .. import plugins
from ..errors import ArgumentParser, UserError, cli_main
from ..utils import positive_int
from .registry import count_flops, count_parameters, create_model, list_models


def model_table(pattern: str | None = None, num_classes: int = 10,
                flops: bool = True) -> list[dict]:
    """Rows ``{"name", "params", "gflops", "from"}`` (``gflops`` None when not counted;
    ``from``: built-in or the plugin that registered it)."""
    names = list_models(pattern)
    if not names:
        raise UserError(f"no model matches {pattern!r}; models: {', '.join(list_models())}")
    rows = []
    for name in names:
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes)
        gflops = count_flops(model) / 1e9 if flops else None
        rows.append({"name": name, "params": count_parameters(model), "gflops": gflops,
                     "from": plugins.describe("model", name)})
    return rows


def _run(argv: list[str] | None) -> int:
    parser = ArgumentParser(prog="python -m ciard_bench.models",
                                     description="Registered models: parameters and FLOPs.")
    parser.add_argument("--pattern", default=None, help="fnmatch filter, e.g. 'wrn_*'")
    parser.add_argument("--num-classes", default="10", help="classifier size (default 10)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    args = parser.parse_args(argv)
    rows = model_table(args.pattern, positive_int(args.num_classes, "--num-classes"),
                       flops=not args.no_flops)
    width = max(len("model"), *(len(r["name"]) for r in rows))
    print(f"{'model':<{width}}  {'params (M)':>10}  {'GFLOPs/image':>12}  from")
    for r in rows:
        gf = "-" if r["gflops"] is None else f"{r['gflops']:.3f}"
        print(f"{r['name']:<{width}}  {r['params'] / 1e6:>10.3f}  {gf:>12}  {r['from']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; a ``UserError`` becomes one line on stderr and exit code 2."""
    return cli_main(_run, argv)
