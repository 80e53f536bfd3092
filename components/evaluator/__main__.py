"""`python -m mammo_components.evaluator ...` is `mammo component evaluator ...`."""

import sys

from mammo_components.cli import main

sys.exit(main(["evaluator", *sys.argv[1:]]))
