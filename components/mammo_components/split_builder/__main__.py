"""`python -m mammo_components.split_builder ...` is `mammo component split-builder ...`."""

import sys

from mammo_components.cli import run_module

sys.exit(run_module(__package__))
