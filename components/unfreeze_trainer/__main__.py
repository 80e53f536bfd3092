"""`python -m mammo_components.unfreeze_trainer ...` is `mammo component unfreeze-trainer ...`."""

import sys

from mammo_components.cli import main

sys.exit(main(["unfreeze-trainer", *sys.argv[1:]]))
