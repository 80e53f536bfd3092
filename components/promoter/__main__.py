"""`python -m mammo_components.promoter ...` is `mammo component promoter ...`."""

import sys

from mammo_components.promoter.cli import main

sys.exit(main(sys.argv[1:]))
