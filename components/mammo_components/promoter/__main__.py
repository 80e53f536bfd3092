"""`python -m mammo_components.promoter ...` is `mammo component promoter ...`."""

import sys

from mammo_components.cli import run_module

sys.exit(run_module(__package__))
