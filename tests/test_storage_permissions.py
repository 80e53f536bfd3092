"""Files written by the local store and the atomic writers get the mode a plainly created file
would get (0666 less the umask), not mkstemp's 0600: a group sharing a volume can read them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from mammo import storage


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_local_store_files_are_group_readable(tmp_path: Path) -> None:
    source = tmp_path / "report.html"
    source.write_text("<html></html>")
    store = tmp_path / "store"
    storage.put_file(source, str(store / "runs" / "r1" / "report.html"))
    storage.put_bytes(b"{}", str(store / "runs" / "r1" / "metrics.json"))
    written = [p for p in (store / "runs" / "r1").iterdir() if p.is_file()]
    assert {p.name for p in written} >= {"report.html", "metrics.json"}
    umask = os.umask(0)
    os.umask(umask)
    for path in written:  # the sidecars too
        assert _mode(path) == 0o666 & ~umask, path
        assert _mode(path) & stat.S_IRGRP, path


def test_atomic_writers_follow_the_umask(tmp_path: Path) -> None:
    """Under umask 002 (a shared group volume) files are group-writable too; under 077 private.
    In a subprocess: the umask is read once per process."""
    probe = (
        "import os, stat, sys; from pathlib import Path\n"
        "from mammo.storage.atomic import write_text_atomic, atomic_path, link_or_copy\n"
        "root = Path(sys.argv[1])\n"
        "write_text_atomic(root / 'a.txt', 'x')\n"
        "with atomic_path(root / 'b.bin') as tmp: tmp.write_bytes(b'y')\n"
        "link_or_copy(root / 'b.bin', root / 'c.bin')\n"
        "print(' '.join(oct(stat.S_IMODE((root / n).stat().st_mode)) for n in ('a.txt', 'b.bin', 'c.bin')))\n"
    )
    for umask, expected in ((0o002, "0o664"), (0o077, "0o600")):
        folder = tmp_path / oct(umask)
        folder.mkdir()
        done = subprocess.run(
            [sys.executable, "-c", f"import os; os.umask({umask}); exec({probe!r})", str(folder)],
            capture_output=True, text=True, check=True,
        )
        assert done.stdout.split() == [expected] * 3

