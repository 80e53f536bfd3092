"""The storage lock (``mammo.storage.lease``) on the local store and the S3 server, with real
processes: mutual exclusion (a read-modify-write counter that loses no increment), fencing
tokens that only grow, expiry, and local reads of a file that keeps being replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mammo import storage
from mammo.errors import IntegrityError
from mammo.storage.lease import LeaseLost, acquire, hold
from mammo.storage.settings import LockSettings

pytestmark = pytest.mark.slow  # real processes and whole runs: `make check` leaves them out

WORKERS = 6
ROUNDS = 4

#: One worker: ROUNDS times take the lock, read the counter, pause, write it plus one, and note
#: the token. Without mutual exclusion increments are lost (two read the same value).
WORKER = """
import json, sys, time
from mammo import storage
from mammo.storage.lease import hold
lock, counter = sys.argv[1], sys.argv[2]
tokens = []
for _ in range({rounds}):
    with hold(lock) as lease:
        value = storage.get_json(counter)
        time.sleep(0.02)
        lease.check()
        storage.put_json(value + 1, counter)
        tokens.append(lease.token)
print(json.dumps(tokens))
"""


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_env").uri


def test_processes_take_turns_and_tokens_only_grow(root: str) -> None:
    lock, counter = storage.join(root, "lock"), storage.join(root, "counter.json")
    storage.put_json(0, counter)
    code = WORKER.format(rounds=ROUNDS)
    procs = [
        subprocess.Popen([sys.executable, "-c", code, lock, counter], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ))
        for _ in range(WORKERS)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * WORKERS, outs[0][1][-2000:]
    assert storage.get_json(counter) == WORKERS * ROUNDS  # no increment lost
    tokens = [t for out, _ in outs for t in json.loads(out)]
    assert len(set(tokens)) == len(tokens)  # every holding had its own token
    for out, _ in outs:
        mine = json.loads(out)
        assert mine == sorted(mine)
    assert storage.list_objects(lock) == [storage.join(lock, "last.json")]  # released, no ticket left
    assert storage.get_json(storage.join(lock, "last.json"))["token"] == max(tokens)


def test_tokens_grow_across_holders_and_above_the_callers_floor(root: str) -> None:
    lock = storage.join(root, "lock")
    with hold(lock) as lease:
        assert lease.token == 1
    with hold(lock) as lease:
        assert lease.token == 2  # no ticket left, but the last holder's token is recorded
    with hold(lock, floor=41) as lease:
        assert lease.token == 42
    storage.delete(storage.join(lock, "last.json"))
    with hold(lock, floor=42) as lease:
        assert lease.token == 43  # the guarded object's record still keeps order


def test_a_lease_that_was_not_renewed_refuses_to_act(root: str) -> None:
    """A holder frozen past its ttl (renewal thread starved) must not write: check() says so.
    Here the renewal cannot happen because the ttl is shorter than the renewal interval allows
    to catch up: the ticket is removed behind its back, as another process would after expiry."""
    lock = storage.join(root, "lock")
    lease = acquire(lock, settings=LockSettings(ttl_seconds=30, wait_seconds=5, clock_skew_seconds=0))
    lease.check()
    storage.delete(lease.ticket_uri)
    with pytest.raises(LeaseLost, match="ticket was removed"):
        lease.check()
    lease.release()
    lease2 = acquire(lock, settings=LockSettings(ttl_seconds=3, wait_seconds=5, clock_skew_seconds=0))
    lease2._stop.set()  # no more renewals: as if the process were frozen
    time.sleep(2.2)
    with pytest.raises(LeaseLost, match="not renewed"):
        lease2.check()
    lease2.release()


def test_a_live_holder_keeps_the_lock_beyond_its_ttl_and_a_killed_one_frees_it_at_once(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = storage.join(root, "lock")
    monkeypatch.setenv("MAMMO_LOCK_CLOCK_SKEW_SECONDS", "0")
    monkeypatch.setenv("MAMMO_LOCK_TTL_SECONDS", "3")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time\nfrom mammo.storage.lease import acquire\n"
         f"lease = acquire({lock!r})\nprint('held', flush=True)\ntime.sleep(8)\n"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    # Alive and renewing every second: the lock stays taken for longer than its ttl.
    monkeypatch.setenv("MAMMO_LOCK_WAIT_SECONDS", "4")
    started = time.monotonic()
    with pytest.raises(storage.StorageError, match="held by pid"):
        acquire(lock)
    assert time.monotonic() - started >= 4
    holder.kill()
    holder.wait()
    # One look, no waiting: its ticket has not expired (renewed each second with a 3 s ttl), but
    # its pid is gone on this host, so the lock is free at once.
    monkeypatch.setenv("MAMMO_LOCK_WAIT_SECONDS", "0")
    with hold(lock) as lease:
        assert lease.token == 2


def test_local_reads_of_a_file_being_replaced_never_fail(tmp_path: Path) -> None:
    """A manifest or lock entry replaced while read: the reader may meet the new bytes and the
    old checksum sidecar; it must read again, not call that damage. Real damage still fails."""
    uri = str(tmp_path / "manifest.json")
    storage.put_bytes(b"0" * 4000, uri)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            storage.put_bytes(str(i).encode() * 4000, uri)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 3
        reads = 0
        while time.monotonic() < deadline:
            storage.get_bytes(uri)
            storage.get_file(uri, tmp_path / "copy")
            reads += 1
    finally:
        stop.set()
        thread.join()
    assert reads > 10
    Path(uri).write_bytes(b"damaged")
    with pytest.raises(IntegrityError, match="integrity check failed"):
        storage.get_bytes(uri)
