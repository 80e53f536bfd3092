"""`python -m mammo_components.evaluator ...` is `mammo component evaluator ...`."""

import sys

from mammo_components.cli import run_module

sys.exit(run_module(__package__))
