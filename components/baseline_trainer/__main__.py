"""`python -m mammo_components.baseline_trainer ...` is `mammo component baseline-trainer ...`."""

import sys

from mammo_components.cli import main

sys.exit(main(["baseline-trainer", *sys.argv[1:]]))
