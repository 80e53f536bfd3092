"""`python -m mammo_components.preprocessor ...` is `mammo component preprocessor ...`."""

import sys

from mammo_components.cli import run_module

sys.exit(run_module(__package__))
