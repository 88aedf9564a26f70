"""``python -m ciard_bench.reports RESULTS_DIR``: rebuild a results folder's HTML page."""
from .html import main

raise SystemExit(main())
