"""``python -m ciard_bench.tables.report RESULTS_DIR``."""
from . import main

raise SystemExit(main())
