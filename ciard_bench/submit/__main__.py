"""``python -m ciard_bench.submit``."""
from .cli import main

raise SystemExit(main())
