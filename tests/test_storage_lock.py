"""The storage lock (``mammo.storage.lock``) on the local store and the S3 server: mutual
exclusion between real processes (a read-modify-write counter that loses no increment), fencing
tokens that only grow, expiry on a clock the test moves by hand, a killed holder, and local reads
of a file that keeps being replaced."""

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
from mammo.storage.lock import LeaseLost, acquire, hold
from mammo.storage.settings import LockSettings

WORKERS = 6
ROUNDS = 4

#: One worker: ROUNDS times take the lock, read the counter, pause, write it plus one, and note
#: the token. Without mutual exclusion increments are lost (two read the same value).
WORKER = """
import json, sys, time
from mammo import storage
from mammo.storage.lock import hold
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


#: The store, and the lock it gets: the local filesystem and S3 without conditional writes get
#: the listing-based lock, S3 with them the conditional lease. Both S3 kinds run on moto's server
#: (s3rver crashes under the six processes' PUT/DELETE races, a server bug of its own).
STORES = {"local": None, "s3-listing": "moto_env_listing", "s3-conditional": "moto_env"}


@pytest.fixture(params=list(STORES))
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if STORES[request.param] is None:
        return str(tmp_path / "store")
    return request.getfixturevalue(STORES[request.param]).uri


@pytest.mark.slow  # six real processes, each importing mammo: `make check` leaves it out
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
    if root.startswith("s3://") and storage.open_store(root).conditional_writes(lock):  # one object, left free
        assert storage.list_objects(lock) == [storage.join(lock, "lease.json")]
        assert storage.get_json(storage.join(lock, "lease.json")) == {"held": False, "number": max(tokens)}
    else:
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
    for record in ("last.json", "lease.json"):  # the token records of either kind of lock
        storage.delete(storage.join(lock, record))
    with hold(lock, floor=42) as lease:
        assert lease.token == 43  # the guarded object's record still keeps order


class ManualClock:
    """A clock that moves only when waited on: each ``sleep`` advances it and then runs the
    ``on_sleep`` callbacks (a holder's renewal, say), so expiry is checked without real waits."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.on_sleep: list = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for callback in list(self.on_sleep):
            callback()


def test_a_ticket_expires_only_when_its_holder_stops_renewing_and_the_frozen_holder_refuses_to_act(root: str) -> None:
    """Expiry by the clock, in one process (the holder's pid is alive, so only time can free
    it): renewed every second with a 3 s ttl, the lock stays taken through a 10 s wait; once
    renewals stop, the next waiter gets it soon after the ttl, and the old holder's check()
    refuses to act."""
    clock = ManualClock()
    lock = storage.join(root, "lock")
    settings = LockSettings(ttl_seconds=3, wait_seconds=10, clock_skew_seconds=0)
    holder = acquire(lock, settings=settings, clock=clock)
    holder._stop.set()  # renewals come from the clock below, not the thread's real-time timer
    renewed = {"at": clock.now}

    def renew_each_second() -> None:
        if clock.now - renewed["at"] >= 1:
            holder.renew()
            renewed["at"] = clock.now

    clock.on_sleep.append(renew_each_second)
    started = clock.now
    with pytest.raises(storage.StorageError, match=r"held by pid \d+ .* gave up after 10 s"):
        acquire(lock, settings=settings, clock=clock)
    assert clock.now - started > 10 > settings.ttl_seconds  # held well beyond one ttl
    holder.check()  # renewed: still entitled to act

    clock.on_sleep.clear()  # frozen: no more renewals
    frozen_at = renewed["at"]
    with hold(lock, settings=settings, clock=clock) as successor:
        assert frozen_at + settings.ttl_seconds < clock.now < frozen_at + settings.ttl_seconds + 1
        assert successor.token == holder.token + 1
        with pytest.raises(LeaseLost, match="not renewed for"):
            holder.check()
    holder.release()


def test_a_removed_ticket_makes_its_holder_stop(root: str) -> None:
    """Another process that took the ticket as expired removes it: check() says so."""
    lock = storage.join(root, "lock")
    lease = acquire(lock, settings=LockSettings(ttl_seconds=30, wait_seconds=5, clock_skew_seconds=0))
    lease.check()
    storage.delete(lease.ticket_uri)
    with pytest.raises(LeaseLost, match="ticket was removed or taken over"):
        lease.check()
    lease.release()


def test_a_killed_holder_frees_the_lock_at_once(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real process (pid liveness is what is tested) holds the lock with the default ttl and
    is killed: one look, no waiting, takes the lock, although the ticket has not expired."""
    lock = storage.join(root, "lock")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time\nfrom mammo.storage.lock import acquire\n"
         f"lease = acquire({lock!r})\nprint('held', flush=True)\ntime.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("MAMMO_LOCK_WAIT_SECONDS", "0")
        with pytest.raises(storage.StorageError, match="held by pid"):
            acquire(lock)  # alive: taken
    finally:
        holder.kill()
        holder.wait()
    with hold(lock) as lease:
        assert lease.token == 2


def test_a_store_that_ignores_conditional_writes_gets_the_listing_lock(s3_env) -> None:
    """s3rver ignores conditional headers (a second If-None-Match: * PUT overwrites): probed,
    it gets the listing-based lock, and nothing of the probe is left behind. (moto's server,
    which honours them, gets the one-object lease: the tests above, s3-conditional.)"""
    lock = storage.join(s3_env.uri, "lock")
    with hold(lock) as lease:
        assert lease.token == 1 and not lease.conditional
        held = [storage.uri.relative_key(lock, u) for u in storage.list_objects(lock)]
    assert held[0] == "last.json" and held[1].startswith("tickets/000000000001-") and len(held) == 2
    assert storage.list_objects(lock) == [storage.join(lock, "last.json")]


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
