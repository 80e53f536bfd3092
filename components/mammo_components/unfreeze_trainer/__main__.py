"""`python -m mammo_components.unfreeze_trainer ...` is `mammo component unfreeze-trainer ...`."""

import sys

from mammo_components.cli import run_module

sys.exit(run_module(__package__))
