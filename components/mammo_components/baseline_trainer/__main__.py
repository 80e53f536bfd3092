"""`python -m mammo_components.baseline_trainer ...` is `mammo component baseline-trainer ...`."""

import sys

from mammo_components.cli import run_module

sys.exit(run_module(__package__))
