"""``python -m ciard_bench.evaluate``."""
from .cli import main

raise SystemExit(main())
