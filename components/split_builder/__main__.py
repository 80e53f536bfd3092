"""`python -m mammo_components.split_builder ...` is `mammo component split-builder ...`."""

import sys

from mammo_components.cli import main

sys.exit(main(["split-builder", *sys.argv[1:]]))
