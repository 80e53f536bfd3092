"""A lock on object storage: one holder at a time, with expiry and fencing tokens.

Two ways, chosen per bucket at run time (``Store.conditional_writes``, setting
``MAMMO_STORAGE_CONDITIONAL_WRITES``):

- **Conditional writes** (``ConditionalLease``), where the store honours ``If-None-Match: *``
  and ``If-Match: <etag>`` on PUT (MinIO, AWS S3, GCS and R2 do; probed once per bucket): one
  object, ``<lock>/lease.json``, created only if absent or taken over only over the ETag that
  was read (free, expired, or its process dead), and renewed only over the holder's own last
  ETag. The store arbitrates every race; a holder taken over cannot renew or release over its
  successor. The guarded write itself can be conditional too (``mammo.production.swap``).
- **Listing-based** (below), for stores without them: the local filesystem, and S3 services
  that ignore the headers without an error (the s3rver test server does: a conditional PUT
  simply overwrites, so a lock built on it would silently not lock). It needs only what every
  store here guarantees: an object is visible to every later listing once its PUT returned, and
  gone once its DELETE returned (strong read-after-write consistency: AWS S3, MinIO, a local
  disk). Every process sharing a lock must use the same way; ``auto`` makes them agree.

The algorithm is Lamport's bakery, with the participants found by listing instead of a fixed
table. Below ``<lock>/``:

    choosing/<id>.json                     "I am picking a number" (brief)
    tickets/<number:012d>-<id>.json        "I want the lock, or hold it": number, owner, expiry
    last.json                              the latest holder's number

To acquire: write ``choosing/<id>``; list ``tickets/`` and take 1 + the highest number seen
(and above ``last.json`` and ``floor``); write the ticket; remove ``choosing/<id>``; wait until every
entry of ``choosing/`` seen after that is gone (someone still picking might pick a lower
number); then wait until no live ticket is lower than ours, by (number, id). Anyone who starts
picking after our ticket exists sees it and picks a higher number; anyone who was picking is
waited for; so two holders at once are impossible while every participant is alive.

Expiry: a holder that dies (a killed pod) must not block the others forever. Every entry
carries ``expires_at`` (wall clock); the holder renews its ticket every ``ttl / 3`` from a
thread. Others treat an entry as gone ``clock_skew`` seconds after it expired, or at once when
it belongs to this host and pid namespace and its process no longer exists. A holder that
could not renew in time (paused, partitioned) must not act: ``Lease.check()`` raises
``LeaseLost`` once the time since its last successful renewal leaves less than a third of
the ttl, or when its ticket was removed.

Fencing: ``Lease.token`` grows with every acquisition: once the lock is held, the holder takes
the larger of its ticket number, the latest holder's token (``last.json``) plus one and the
caller's ``floor`` plus one (e.g. the token recorded in the object the lock guards), and
records it in ``last.json`` - only the holder writes there, so tokens are unique even when two
waiters picked the same ticket number. The guarded write records its token; a holder that finds a higher token recorded has
been superseded and must stop. The remaining window - a holder paused for longer than the ttl
between its last check and its write - is closed by the conditional guarded write where the
store has conditional writes; elsewhere the defaults (ttl 120 s, checks right before the write) make it a matter of a process
frozen for minutes at one exact instruction.

Time: every reading of the wall clock, the monotonic clock and every wait goes through a
``Clock`` (``SYSTEM_CLOCK`` by default), so expiry, renewal deadlines and waiting limits can be
checked with a clock a test moves by hand instead of with sleeps.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from mammo.errors import ArtifactNotFoundError, DataError, IntegrityError, PreconditionFailed, StorageError
from mammo.storage.api import open_store
from mammo.storage.base import Store
from mammo.storage.settings import LockSettings, load_env_settings
from mammo.storage.uri import join

log = logging.getLogger(__name__)

CHOOSING = "choosing"
TICKETS = "tickets"
#: The token of the latest holder, so that tokens keep growing after every ticket is gone.
LAST = "last.json"
#: The one object of the lock on stores with conditional writes (``ConditionalLease``).
LEASE = "lease.json"
_POLL_MIN_SECONDS = 0.02
_POLL_MAX_SECONDS = 0.5


class Clock(Protocol):
    """Where the lock reads the time and waits."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (compared across hosts, for expiry)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for this process's own deadlines)."""

    def sleep(self, seconds: float) -> None:
        """Wait (between polls)."""


class SystemClock:
    """The real clocks: ``time.time``, ``time.monotonic``, ``time.sleep``."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


class LeaseLost(StorageError):
    """The lock was lost (expired, superseded or removed): the holder must not act."""


def _namespace() -> str:
    """This host and pid namespace: processes with the same value can see each other's pids."""
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = 0
    return f"{socket.gethostname()}/{pidns}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class Entry:
    """One ``choosing/`` or ``tickets/`` object as read back."""

    uri: str
    id: str
    number: int
    host: str
    pid: int
    created_at: float
    expires_at: float
    intent: dict[str, Any] = field(default_factory=dict)

    @property
    def order(self) -> tuple[int, str]:
        return self.number, self.id

    def gone(self, now: float, skew: float) -> bool:
        """Expired (beyond the clock-skew allowance), or its process died on this host."""
        if now > self.expires_at + skew:
            return True
        return self.host == _namespace() and not _alive(self.pid)

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.created_at, timezone.utc).isoformat(timespec="seconds")
        return f"pid {self.pid} on {self.host.split('/')[0]} since {since}"


def _ticket_name(number: int, ident: str) -> str:
    return f"{number:012d}-{ident}.json"


def _parse_number(name: str) -> int | None:
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


class Lease:
    """A held lock: ``token`` for fencing, ``check()`` before every guarded write."""

    #: Whether the store honours conditional writes (``ConditionalLease``): the guarded write
    #: can then be conditional too (``mammo.production.swap``).
    conditional = False

    def __init__(self, store: Store, lock_uri: str, entry: Entry, settings: LockSettings,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.lock_uri = lock_uri
        self.token = entry.number
        self._entry = entry
        self._settings = settings
        self._clock = clock
        self._renewed_at = clock.monotonic()
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None
        self.released = False

    @property
    def ticket_uri(self) -> str:
        return self._entry.uri

    # --- renewal --------------------------------------------------------------------------

    def _write(self, intent: dict[str, Any] | None = None) -> None:
        """Put the ticket again with a fresh expiry (and intent); record when, on success."""
        started = self._clock.monotonic()
        now = self._clock.time()
        with self._mutex:
            if self.released:
                return
            entry = self._entry
            body = _entry_body(
                entry.id, entry.number, now + self._settings.ttl_seconds,
                entry.intent if intent is None else intent, created_at=entry.created_at,
            )
            self._put(body)
            self._entry = Entry(**{**entry.__dict__, "expires_at": now + self._settings.ttl_seconds,
                                   "intent": json.loads(body)["intent"]})
            self._renewed_at = started

    def _put(self, body: bytes) -> None:
        self.store.put_bytes(body, self._entry.uri)

    def _ours(self) -> bool:
        return self.store.exists(self._entry.uri)

    def _remove(self) -> None:
        self.store.delete(self._entry.uri)

    def renew(self) -> None:
        """Put the ticket again with a fresh expiry now (the renewal thread does this every
        ttl / 3)."""
        self._write()

    def _renew_loop(self) -> None:
        interval = self._settings.ttl_seconds / 3
        while not self._stop.wait(interval):
            try:
                self._write()
            except Exception as exc:  # noqa: BLE001 - check() notices the missed renewal
                log.warning("could not renew the lock %s (%s); retrying", self.lock_uri, exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
        self._thread.start()

    def set_intent(self, intent: dict[str, Any]) -> None:
        """Record what this holder is about to create (kept by garbage collection while this
        ticket exists, even if the holder dies), then check the lease."""
        self._write(intent)
        self.check()

    # --- checks and release ---------------------------------------------------------------

    def remaining(self) -> float:
        return self._settings.ttl_seconds - (self._clock.monotonic() - self._renewed_at)

    def check(self) -> None:
        """Raise ``LeaseLost`` unless this lease certainly still holds for a while."""
        if self.released:
            raise LeaseLost(f"lock {self.lock_uri}: already released")
        if self.remaining() < self._settings.ttl_seconds / 3:
            raise LeaseLost(
                f"lock {self.lock_uri}: not renewed for {self._clock.monotonic() - self._renewed_at:.0f} s "
                f"(ttl {self._settings.ttl_seconds:g} s); stopping before changing anything"
            )
        if not self._ours():
            raise LeaseLost(f"lock {self.lock_uri}: our ticket was removed or taken over (taken as expired); stopping")

    def release(self) -> None:
        """Stop renewing and remove the ticket (a renewal in flight finishes first, so it
        cannot put the ticket back afterwards)."""
        self._stop.set()
        with self._mutex:
            if self.released:
                return
            self.released = True
            try:
                self._remove()
            except StorageError as exc:
                log.warning("could not remove the lock ticket %s (%s); it expires in %g s",
                            self._entry.uri, exc, self._settings.ttl_seconds)


class ConditionalLease(Lease):
    """The lease as one object, ``<lock>/lease.json``, only ever written over the ETag this
    holder last wrote: a renewal after another process took the lease over as expired is
    refused by the store instead of overwriting the new holder."""

    conditional = True

    def __init__(self, store: Store, lock_uri: str, entry: Entry, settings: LockSettings, clock: Clock,
                 *, etag: str, previous_intent: dict[str, Any]) -> None:
        super().__init__(store, lock_uri, entry, settings, clock)
        self._etag = etag
        self._previous_intent = previous_intent

    def _put(self, body: bytes) -> None:
        held = {**json.loads(body), "held": True, "previous_intent": self._previous_intent}
        try:
            info = self.store.put_bytes_if(json.dumps(held, sort_keys=True).encode(), self._entry.uri, self._etag)
        except PreconditionFailed:
            raise LeaseLost(f"lock {self.lock_uri}: taken over by another process (ours had expired)") from None
        self._etag = info.etag

    def _ours(self) -> bool:
        try:
            return self.store.stat(self._entry.uri).etag == self._etag
        except ArtifactNotFoundError:
            return False

    def _remove(self) -> None:
        free = {"held": False, "number": self.token}
        try:
            self.store.put_bytes_if(json.dumps(free, sort_keys=True).encode(), self._entry.uri, self._etag)
        except PreconditionFailed:
            pass  # taken over since: nothing of ours left to release


def _read_lease(uri: str, data: bytes | None) -> tuple[Entry | None, int, list[dict[str, Any]]]:
    """``lease.json`` as (its holder, None when free; its token; the intents it keeps: the
    holder's and that of the holder it took over from). An unreadable object holds nothing."""
    try:
        body = json.loads(data) if data is not None else {}
        number = int(body.get("number", 0))
        kept = [dict(body.get("previous_intent") or {})]
        if not body.get("held"):
            return None, number, kept
        entry = Entry(uri=uri, id=str(body["id"]), number=number, host=str(body["host"]), pid=int(body["pid"]),
                      created_at=float(body["created_at"]), expires_at=float(body["expires_at"]),
                      intent=dict(body.get("intent") or {}))
        return entry, number, [entry.intent, *kept]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, 0, []


def _acquire_conditional(store: Store, lock_uri: str, floor: int, intent: dict[str, Any], settings: LockSettings,
                         clock: Clock) -> Lease:
    """Create ``lease.json`` (``If-None-Match: *``) or take it over when free or its holder is
    gone (``If-Match`` its ETag); whoever loses the race looks again."""
    uri = join(lock_uri, LEASE)
    ident = uuid.uuid4().hex
    deadline = clock.monotonic() + settings.wait_seconds
    attempt = 0
    while True:
        try:
            data, etag = store.get_bytes_and_etag(uri)
        except ArtifactNotFoundError:
            data, etag = None, None
        holder, number, _ = _read_lease(uri, data)
        now = clock.time()
        if holder is None or holder.gone(now, settings.clock_skew_seconds):
            # A holder that died may have staged objects: garbage collection keeps its intent
            # for one more holding.
            kept = holder.intent if holder is not None else {}
            token = max(floor, number, _last_token(store, lock_uri)) + 1
            body = _entry_body(ident, token, now + settings.ttl_seconds, intent, created_at=now,
                               held=True, previous_intent=kept)
            try:
                info = store.put_bytes_if(body, uri, etag)
            except PreconditionFailed:
                pass  # another process was quicker: look again
            else:
                entry = Entry(uri, ident, token, _namespace(), os.getpid(), now, now + settings.ttl_seconds, intent)
                lease = ConditionalLease(store, lock_uri, entry, settings, clock, etag=info.etag, previous_intent=kept)
                lease.start()
                log.debug("lock %s acquired with token %d (conditional writes)", lock_uri, token)
                return lease
        elif clock.monotonic() > deadline:
            raise StorageError(
                f"lock {lock_uri}: held by {holder.describe()}; gave up after {settings.wait_seconds:g} s "
                "(MAMMO_LOCK_WAIT_SECONDS)"
            )
        attempt += 1
        clock.sleep(_poll_delay(attempt))


def _entry_body(ident: str, number: int, expires_at: float, intent: dict[str, Any], *, created_at: float,
                **extra: Any) -> bytes:
    return json.dumps({
        "id": ident, "number": number, "host": _namespace(), "pid": os.getpid(), "created_at": created_at,
        "expires_at": expires_at, "intent": intent, **extra,
    }, sort_keys=True).encode()


class Reader:
    """Reads ``choosing``/``tickets`` entries; an entry's content is fetched only when its
    ETag is new to this reader (renewals change it every ttl/3), so polling costs listings."""

    def __init__(self, store: Store, lock_uri: str) -> None:
        self.store = store
        self.lock_uri = lock_uri
        self._seen: dict[tuple[str, str], Entry] = {}

    def entries(self, kind: str) -> list[Entry]:
        """The entries present now (unreadable ones count as expired at once: they cannot block
        anyone)."""
        entries = []
        for info in self.store.list_info(join(self.lock_uri, kind)):
            cached = self._seen.get((info.uri, info.etag))
            if cached is None:
                cached = self._load(info.uri)
                if cached is None:
                    continue  # released between the listing and the read
                self._seen[(info.uri, info.etag)] = cached
            entries.append(cached)
        return entries

    def _load(self, uri: str) -> Entry | None:
        name = uri.rsplit("/", 1)[-1]
        try:
            data = json.loads(self.store.get_bytes(uri))
            return Entry(
                uri=uri, id=str(data["id"]), number=int(data["number"]), host=str(data["host"]),
                pid=int(data["pid"]), created_at=float(data["created_at"]),
                expires_at=float(data["expires_at"]), intent=dict(data.get("intent") or {}),
            )
        except ArtifactNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, DataError, IntegrityError):
            return Entry(uri, name, _parse_number(name) or 0, "?", 0, 0.0, 0.0)


def read_entries(store: Store, lock_uri: str, kind: str) -> list[Entry]:
    """The entries of ``choosing`` or ``tickets`` present now."""
    return Reader(store, lock_uri).entries(kind)


def _last_token(store: Store, lock_uri: str) -> int:
    """The token of the latest holder (``last.json``), 0 if none or unreadable."""
    try:
        value = json.loads(store.get_bytes(join(lock_uri, LAST))).get("token")
    except (StorageError, DataError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0


def _poll_delay(attempt: int) -> float:
    """Growing, jittered waits between looks (so that waiters do not poll in step)."""
    delay = min(_POLL_MAX_SECONDS, _POLL_MIN_SECONDS * 1.5 ** attempt)
    return random.uniform(delay / 2, delay)


def _clean(store: Store, entries: list[Entry], settings: LockSettings, keep: str, now: float) -> None:
    """Remove entries long expired (a further ttl past their expiry) or of dead processes:
    they hold nothing, and an expired holder's intent has been kept long enough."""
    for entry in entries:
        if entry.id == keep:
            continue
        dead = entry.host == _namespace() and not _alive(entry.pid)
        if dead or now > entry.expires_at + settings.clock_skew_seconds + settings.ttl_seconds:
            try:
                store.delete(entry.uri)
            except StorageError:
                pass


def acquire(lock_uri: str, *, floor: int = 0, intent: dict[str, Any] | None = None,
            settings: LockSettings | None = None, clock: Clock = SYSTEM_CLOCK) -> Lease:
    """Take the lock at ``lock_uri`` (a prefix), waiting up to ``settings.wait_seconds``;
    ``StorageError`` naming the current holder when it does not come free in time."""
    settings = settings or load_env_settings(LockSettings)
    store = open_store(lock_uri)
    intent = dict(intent or {})
    if store.conditional_writes(lock_uri):
        return _acquire_conditional(store, lock_uri, floor, intent, settings, clock)
    ident = uuid.uuid4().hex
    choosing_uri = join(lock_uri, CHOOSING, f"{ident}.json")
    started = clock.time()
    store.put_bytes(_entry_body(ident, 0, started + settings.ttl_seconds, {}, created_at=started), choosing_uri)
    try:
        names = [info.uri.rsplit("/", 1)[-1] for info in store.list_info(join(lock_uri, TICKETS))]
        numbers = [n for n in map(_parse_number, names) if n is not None]
        # Read after the listing: a holder records its token before removing its ticket, so
        # a token is either still listed or already recorded here.
        number = max([floor, _last_token(store, lock_uri), *numbers]) + 1
        ticket_uri = join(lock_uri, TICKETS, _ticket_name(number, ident))
        now = clock.time()
        body = _entry_body(ident, number, now + settings.ttl_seconds, intent, created_at=now)
        store.put_bytes(body, ticket_uri)
    finally:
        store.delete(choosing_uri)
    data = json.loads(body)
    lease = Lease(store, lock_uri, Entry(ticket_uri, ident, number, data["host"], data["pid"],
                                         data["created_at"], data["expires_at"], intent), settings, clock)
    lease.start()
    try:
        _wait_turn(store, lock_uri, lease, settings, floor, clock)
    except BaseException:
        lease.release()
        raise
    return lease


def _wait_turn(store: Store, lock_uri: str, lease: Lease, settings: LockSettings, floor: int,
               clock: Clock) -> None:
    deadline = clock.monotonic() + settings.wait_seconds
    me = lease._entry.order
    reader = Reader(store, lock_uri)
    # Whoever is still picking a number may pick one lower than ours: wait for them.
    pending = {e.id for e in reader.entries(CHOOSING)}
    attempt = 0
    while True:
        now = clock.time()
        if pending:
            choosing = [e for e in reader.entries(CHOOSING)
                        if e.id in pending and not e.gone(now, settings.clock_skew_seconds)]
            pending = {e.id for e in choosing}
        tickets = reader.entries(TICKETS)
        ahead = [e for e in tickets if e.order < me and not e.gone(now, settings.clock_skew_seconds)]
        if not pending and not ahead:
            if not any(e.id == me[1] for e in tickets):
                raise LeaseLost(f"lock {lock_uri}: our ticket was removed while waiting (taken as expired)")
            # Two who picked a number at the same moment share it (the id breaks the tie), so
            # the token is made unique here, where only the holder writes.
            lease.token = max(lease.token, floor + 1, _last_token(store, lock_uri) + 1)
            store.put_bytes(json.dumps({"token": lease.token}).encode(), join(lock_uri, LAST))
            _clean(store, tickets + reader.entries(CHOOSING), settings, keep=me[1], now=now)
            log.debug("lock %s acquired with token %d", lock_uri, lease.token)
            return
        if clock.monotonic() > deadline:
            holder = min(ahead, key=lambda e: e.order) if ahead else None
            who = holder.describe() if holder else "a process still choosing"
            raise StorageError(
                f"lock {lock_uri}: held by {who}; gave up after {settings.wait_seconds:g} s "
                "(MAMMO_LOCK_WAIT_SECONDS)"
            )
        attempt += 1
        clock.sleep(_poll_delay(attempt))


@contextmanager
def hold(lock_uri: str, *, floor: int = 0, intent: dict[str, Any] | None = None,
         settings: LockSettings | None = None, clock: Clock = SYSTEM_CLOCK) -> Iterator[Lease]:
    """``with hold(uri) as lease:`` - acquire, and release whatever happens inside."""
    lease = acquire(lock_uri, floor=floor, intent=intent, settings=settings, clock=clock)
    try:
        yield lease
    finally:
        lease.release()


def intents(lock_uri: str) -> list[dict[str, Any]]:
    """The intents of every ticket present (live or expired but not yet cleaned up): what
    in-flight or interrupted holders may still point at."""
    store = open_store(lock_uri)
    found = [e.intent for e in read_entries(store, lock_uri, TICKETS)]
    lease_uri = join(lock_uri, LEASE)
    try:
        found += _read_lease(lease_uri, store.get_bytes(lease_uri))[2]
    except ArtifactNotFoundError:
        pass
    return [i for i in found if i]
