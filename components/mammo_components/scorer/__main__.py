"""`python -m mammo_components.scorer ...` is `mammo component scorer ...`."""

import sys

from mammo_components.cli import run_module

sys.exit(run_module(__package__))
