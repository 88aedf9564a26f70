"""``python -m ciard_bench.models``: see :mod:`ciard_bench.models.cli`."""
import sys

from .cli import main

sys.exit(main())
