"""The image smoke test (tests/images): collected only when scripts/images-smoke.sh runs it,
with the images it built (``MAMMO_SMOKE_STORE`` names their private buildah storage). The plain
``pytest`` run of ``make test`` skips this folder; ``make test`` runs it afterwards through
``make images-smoke``."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("MAMMO_SMOKE_STORE") else ["test_*.py"]
